"""Vocabulary extension: learn N new tokens from a corpus on top of a model's own tokenizer and
initialize only their rows.

New BPE merges are learned over the model tokenizer's own tokenization of the corpus (inside its
own pre-tokens) and appended after its merges (`tokenizer_train.append_merges`): every old id
keeps its id and its bytes, and a text where no new merge applies encodes exactly as before.
The checkpoint is then written by the ordinary transplant path, where every old token is an
exact copy (so every old row is bit-identical) and the new rows come from the chosen method.

Example:
    >>> result = extend(model_dir, [text_file], 20, "tiny-ext", method="fvt")
    >>> len(result.new_tokens), result.new_tokens[:3]  # byte-level spelling: `Ġ` is a space
    (20, ['Ġlife', 'ave', 'ater'])
    >>> result.transplant.plan.new_size  # the 500 old rows, then the new ones
    520
    >>> from safetensors.torch import load_file
    >>> old, new = load_file(f"{model_dir}/model.safetensors"), load_file("tiny-ext/model.safetensors")
    >>> bool((new["model.embed_tokens.weight"][:500] == old["model.embed_tokens.weight"]).all())
    True
    >>> result = extend("smollm2-135m-instruct", ["de/train.txt"], 4000, "smollm2-de-ext")  # doctest: +SKIP
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from transplant.common.errors import TransplantError
from transplant.common.texts import read_texts
from transplant.common.progress import bar, stage

if TYPE_CHECKING:
    from transplant.api import TransplantResult

# A new token joins at most this many old tokens (inside one pre-token: one word and its space).
MAX_JOINED = 8


@dataclass
class ExtendResult:
    """The transplant that wrote the extended checkpoint, and the tokens that were added."""

    transplant: "TransplantResult"
    new_tokens: list[str]


def extend(model: str | Path, texts: list[str | Path], add: int, out: str | Path, *, method: str = "auto",
           options: dict | None = None, pad_to_multiple_of: int | None = None, overwrite: bool = False,
           eval_texts: list[str] | None = None, min_frequency: int = 2,
           allow_forced_tokenizer_class: bool = False) -> ExtendResult:
    """Add up to `add` tokens learned on `texts` to `model`'s tokenizer and write the checkpoint.

    Args:
        model: any `--model` form.
        texts: UTF-8 text files of the language or domain to extend for.
        add: new tokens wanted (fewer when the text has no more pairs seen `min_frequency` times).
        out: output folder (a transplant output: weights, tokenizer, config, card, plan).
        method: initializer of the new rows (old rows are always exact copies); "auto": the
            hypernetwork known for the model, else FVT, with the output scale of the new rows
            calibrated on `texts` (see `transplant.methods.auto`).
        options, pad_to_multiple_of, overwrite, eval_texts, allow_forced_tokenizer_class: as for
            `transplant()`.
    """
    from transplant.api import transplant
    from transplant.io.sources import resolve_model
    from transplant.train.tokenizer_train import append_merges
    from transplant.io.tokenizer_out import save_json
    from transplant.core.vocab import load_tokenizer

    if add < 1:
        raise TransplantError(f"--add must be at least 1, not {add}")
    folder = resolve_model(model)
    src = load_tokenizer(folder)
    lines = [line for text in read_texts(texts, what="training text", fix=" (pass UTF-8 text files with --text)")
             for line in text.splitlines() if line.strip()]
    if not lines:
        raise TransplantError("the training texts are empty (pass real text with --text)")
    tok = src.tokenizer

    def pieces():
        for line in bar(lines, desc="extend: reading", unit="line"):
            text = tok.normalizer.normalize_str(line) if tok.normalizer is not None else line
            if tok.pre_tokenizer is not None:
                for piece, _ in tok.pre_tokenizer.pre_tokenize_str(text):
                    yield piece
            else:
                yield text
            yield None

    stage(f"extend: learning up to {add:,} new tokens on {len(lines):,} lines")
    new_tok, new_tokens = append_merges(tok, pieces(), add, max_symbols=MAX_JOINED, min_frequency=min_frequency)
    if not new_tokens:
        raise TransplantError("the text gave no new token (every frequent pair is already a token; pass more text)")
    stage(f"extend: {len(new_tokens):,} new tokens")
    with tempfile.TemporaryDirectory(prefix="extend-tok-") as tmp:
        tok_dir = Path(tmp) / "tokenizer"
        tok_dir.mkdir()
        base = Path(src.folder or folder)
        for name in ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "chat_template.json"):
            if (base / name).is_file():
                shutil.copy2(base / name, tok_dir / name)
        save_json(new_tok, tok_dir / "tokenizer.json")  # a full disk is one line, as every write
        # `auto` calibrates the new rows on the text they were learned from; an explicit method
        # gives exactly what it gave before `auto` existed.
        calibration = (read_texts(texts)
                       if method == "auto" else None)
        # The model as the caller named it (not its resolved folder, e.g. a cache folder of a
        # converted GGUF): the card and the plan name it so, and `heal` finds its teacher by it.
        result = transplant(model, tok_dir, out, method=method, options=options, calibrate_texts=calibration,
                            allow_forced_tokenizer_class=allow_forced_tokenizer_class,
                            pad_to_multiple_of=pad_to_multiple_of, overwrite=overwrite, eval_texts=eval_texts,
                            input_paths=[Path(p) for p in texts],
                            card=_card_facts(model, folder, texts, lines, new_tok, new_tokens))
    return ExtendResult(result, new_tokens)


def _card_facts(model: str | Path, folder: Path, texts: list[str | Path], lines: list[str], tok, new_tokens: list[str]
                ) -> dict:
    """What the model card says of an extension: the tokens added, their text, the languages spoken.

    The extended model still speaks its source's languages (every old token kept), plus the one
    recognized in the extension text.
    """
    from transplant.common.language import detect_language
    from transplant.io.card import source_card_metadata

    languages = source_card_metadata(folder, model).get("language") or []
    found = detect_language(lines)
    languages = list(dict.fromkeys(languages + [found] * bool(found)))
    decode = tok.decoder.decode if tok.decoder is not None else "".join
    return {"kind": "extension", "language": languages or None, "new_tokenizer": str(model),
            "extension": {"added": len(new_tokens), "texts": [str(t) for t in texts],
                          "examples": [decode([t]) for t in new_tokens[:12]]}}


__all__ = ["extend", "ExtendResult"]
