"""`transplant tokenizer ...`: train the target tokenizer.

Example:
    $ transplant tokenizer train --text de/train.txt --vocab-size 32000 --out de-tok --like smollm2-135m-instruct
    $ transplant tokenizer train --text de/train.txt --vocab-size 32000 --out de-super --supertokens
"""

from __future__ import annotations

import click


@click.group("tokenizer")
def tokenizer() -> None:
    """Train a target tokenizer (byte-level BPE or Unigram, optionally with supertokens)."""


@tokenizer.command("train")
@click.option("--text", "texts", multiple=True, required=True, help="UTF-8 text file(s) to train on (repeatable).")
@click.option("--vocab-size", type=click.IntRange(min=1), required=True, help="Tokens to learn (a small text may saturate below).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output tokenizer folder.")
@click.option("--like", default=None, help="Copy this model's (or tokenizer's) special tokens, roles, chat template "
              "and pre-tokenization, so the result transplants cleanly onto it; for a model type whose tokenizer "
              "class transformers forces (e.g. qwen2), that class's pre-tokenization, so AutoTokenizer loads the "
              "transplanted model's tokenizer as written.")
@click.option("--algorithm", type=click.Choice(["bpe", "unigram"]), default="bpe", show_default=True,
              help="Byte-level BPE, or Unigram with byte fallback.")
@click.option("--supertokens", is_flag=True, help="Learn multi-word tokens in a second stage (SuperBPE curriculum; BPE).")
@click.option("--supertoken-share", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2,
              show_default=True, help="Share of the vocabulary learned in the supertoken stage.")
@click.option("--held-out", type=click.FloatRange(0, 0.5), default=0.02, show_default=True,
              help="Share of each text's end kept out of training, to report bytes per token.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier output folder.")
def train(texts, vocab_size, out, like, algorithm, supertokens, supertoken_share, held_out, overwrite) -> None:
    """Train a tokenizer on TEXT and write it to OUT (a transformers tokenizer folder)."""
    from transplant.train.tokenizer_train import train_tokenizer

    summary = train_tokenizer(list(texts), vocab_size, out, like=like, algorithm=algorithm, supertokens=supertokens,
                              supertoken_share=supertoken_share, held_out=held_out, overwrite=overwrite)
    for line in summary.lines():
        click.echo(line)
