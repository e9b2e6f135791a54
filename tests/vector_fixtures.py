"""Tiny fastText vectors and a dictionary built from the packaged English sample (seconds to train).

WECHSEL on the tiny fixtures moves English onto English: source and target vectors are the same
word vectors and the dictionary pairs each common word with itself. FOCUS gets token-level vectors
of each target tokenizer.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from builders import DATA

TEXT = DATA / "bible_en.txt"
# Small enough to train in about a second; min_count 1 so that every token seen gets a vector.
TINY = {"dim": 16, "epochs": 2, "min_count": 1, "bucket": 20_000, "threads": 1, "quiet": True}


def identity_dictionary(path: Path, words: int = 200) -> Path:
    """The most frequent words of the sample paired with themselves, lower-cased (so `God` is
    found only through the title-case fallback), after a comment and a blank line."""
    counts = Counter(w.lower() for w in re.findall(r"\w+", TEXT.read_text(encoding="utf-8")))
    lines = ["# tiny identity dictionary", ""] + [f"{w}\t{w}" for w, _ in counts.most_common(words)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def crosslingual_options(root: Path, tok_dirs: dict[str, Path]) -> dict[str, dict[str, dict[str, str]]]:
    """method -> target tokenizer name -> options, for `transplant(..., options=...)`.

    Training caches under `root` (never in the user's cache).
    """
    from transplant.methods.vectors import train_vectors

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOKENTRANSPLANT_CACHE", str(root / "cache"))
        words = train_vectors([TEXT], root / "en.bin", **TINY)
        tokens = {name: train_vectors([TEXT], root / f"en-{name}.bin", tokenizer=folder, **TINY)
                  for name, folder in tok_dirs.items()}
    dictionary = identity_dictionary(root / "en-en.tsv")
    wechsel = {"wechsel.source_vectors": str(words), "wechsel.target_vectors": str(words),
               "wechsel.dictionary": str(dictionary)}
    return {"wechsel": {name: dict(wechsel) for name in tok_dirs},
            "focus": {name: {"focus.vectors": str(path)} for name, path in tokens.items()}}
