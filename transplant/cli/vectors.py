"""`transplant vectors ...`: auxiliary fastText vectors for the cross-lingual methods.

Example:
    $ transplant vectors train --text en/train.txt --out en.bin                  # WECHSEL, source side
    $ transplant vectors train --text de/train.txt --out de.bin                  # WECHSEL, target side
    $ transplant vectors train --text de/train.txt --tokenizer de-bpe/ --out de-tok.bin   # FOCUS
"""

from __future__ import annotations

import time

import click

from transplant.methods.vectors import DIM, EPOCHS, MIN_COUNT


@click.group("vectors")
def vectors() -> None:
    """Train auxiliary fastText vectors (for wechsel and focus)."""


@vectors.command("train")
@click.option("--text", "texts", multiple=True, required=True, help="UTF-8 text file(s) to train on (repeatable).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Where to write the fastText .bin.")
@click.option("--tokenizer", default=None,
              help="Learn one vector per token of this tokenizer.json / folder (FOCUS: the NEW tokenizer) "
                   "instead of one per word.")
@click.option("--dim", type=click.IntRange(min=1), default=DIM, show_default=True, help="Vector dimension.")
@click.option("--epochs", type=click.IntRange(min=1), default=EPOCHS, show_default=True, help="Passes over the text.")
@click.option("--min-count", type=click.IntRange(min=1), default=MIN_COUNT, show_default=True,
              help="Words (tokens) seen fewer times get no vector of their own.")
@click.option("--model", "algorithm", type=click.Choice(["skipgram", "cbow"]), default="skipgram", show_default=True,
              help="fastText training objective.")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True, help="fastText threads.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT (only fastText vectors, never another file).")
def train(texts, out, tokenizer, dim, epochs, min_count, algorithm, threads, overwrite) -> None:
    """Train fastText vectors on TEXT (cached by content: the same inputs return at once)."""
    from transplant.common.progress import is_quiet
    from transplant.methods.vectors import train_vectors

    started = time.perf_counter()
    path = train_vectors(list(texts), out, dim=dim, epochs=epochs, min_count=min_count, tokenizer=tokenizer,
                         model=algorithm, threads=threads, quiet=is_quiet(), overwrite=overwrite)
    click.echo(f"vectors: {path} ({time.perf_counter() - started:.1f}s)")
