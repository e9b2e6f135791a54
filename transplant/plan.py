"""The plan: how every new embedding row is made from the old matrix.

Most initializers are linear in the old embeddings, ``E_new[i] = sum_j W[i, j] * E_old[j]``,
so a plan stores ``W`` sparsely (CSR), plus rows that are statistics of the old matrix
(mean, a multivariate-normal sample, a random baseline) recorded by *kind*, not by value.
Statistical rows are recomputed from whichever matrix the plan is applied to, so re-applying a
plan to a fine-tune of the base model uses the fine-tune's statistics. Rows that are neither
(hypernetwork outputs) are stored as dense overrides.

A plan is saved as ``transplant_plan.safetensors`` (arrays) + ``transplant_plan.json``
(provenance, method chain, statistics).

Example:
    >>> plan = Plan.load("out/")  # doctest: +SKIP
    >>> new_embeddings = plan.apply(old_embeddings)  # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from .errors import TransplantError

PLAN_WEIGHTS = "transplant_plan.safetensors"
PLAN_JSON = "transplant_plan.json"

LINEAR, MEAN, NORMAL, RANDOM, OVERRIDE = 0, 1, 2, 3, 4


@dataclass
class Row:
    """One planned row: a weighted mix of old rows, or a statistical kind."""

    source: str  # provenance label: exact, special, fvt, byte, mean, multivariate, random, pad
    indices: tuple[int, ...] = ()
    weights: tuple[float, ...] = ()
    kind: int = LINEAR


@dataclass
class EmbeddingStats:
    """Mean, covariance factor and scale of an embedding matrix (for statistical rows)."""

    mean: torch.Tensor
    chol: torch.Tensor | None
    std: float

    @classmethod
    def of(cls, matrix: torch.Tensor, rows: int, need_cov: bool = False, need_std: bool = True) -> "EmbeddingStats":
        """Statistics of the first `rows` rows; covariance and scale only when asked (they cost)."""
        # Chunk by chunk (~16 MB of float32 per block): the matrix may be bf16 and larger than we
        # want to widen at once. Per-block sums in float32, running totals in float64.
        dim = matrix.shape[1]
        chunk = max(64, (4 << 20) // dim)
        total = torch.zeros(dim, dtype=torch.float64)
        gram = torch.zeros(dim, dim, dtype=torch.float64) if need_cov else None
        sq = 0.0
        for start in range(0, rows, chunk):
            block = matrix[start:min(rows, start + chunk)].to(torch.float32)
            total += block.sum(0).to(torch.float64)
            if need_std:
                sq += float(torch.linalg.vector_norm(block.to(torch.float64)) ** 2)
            if gram is not None:
                block = block.to(torch.float64)
                gram += block.T @ block
        mean = total / rows
        std = float(np.sqrt(max(sq / (rows * dim) - float((mean * mean).mean()), 1e-12))) if need_std else 0.0
        chol = None
        if gram is not None:
            cov = gram / rows - torch.outer(mean, mean)
            cov = (cov + cov.T) / 2
            jitter = 1e-6 * float(cov.diagonal().mean())
            eye = torch.eye(dim, dtype=torch.float64)
            for _ in range(6):
                factor, info = torch.linalg.cholesky_ex(cov + jitter * eye)
                if int(info) == 0:
                    chol = factor.to(torch.float32)
                    break
                jitter *= 10
        return cls(mean.to(torch.float32), chol, std)


@dataclass
class Plan:
    """Sparse new x old weights, statistical rows, dense overrides and provenance."""

    old_size: int
    indptr: np.ndarray
    indices: np.ndarray
    weights: np.ndarray
    kinds: np.ndarray
    provenance: list[str]
    meta: dict = field(default_factory=dict)
    seed: int = 0
    override_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    override_values: np.ndarray | None = None

    @property
    def new_size(self) -> int:
        return len(self.kinds)

    @classmethod
    def from_rows(cls, rows: list[Row], old_size: int, meta: dict | None = None, seed: int = 0) -> "Plan":
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        for i, r in enumerate(rows):
            indptr[i + 1] = indptr[i] + len(r.indices)
        indices = np.fromiter((j for r in rows for j in r.indices), dtype=np.int64, count=int(indptr[-1]))
        weights = np.fromiter((w for r in rows for w in r.weights), dtype=np.float32, count=int(indptr[-1]))
        kinds = np.array([r.kind for r in rows], dtype=np.int8)
        if len(indices) and (indices.min() < 0 or indices.max() >= old_size):
            raise TransplantError("plan refers to old rows outside the embedding matrix (internal error)")
        return cls(old_size, indptr, indices, weights, kinds, [r.source for r in rows], meta or {}, seed)

    # -- inspection ----------------------------------------------------------------------
    def row(self, i: int) -> tuple[str, list[int], list[float]]:
        s, e = self.indptr[i], self.indptr[i + 1]
        return self.provenance[i], self.indices[s:e].tolist(), self.weights[s:e].tolist()

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.provenance:
            out[p] = out.get(p, 0) + 1
        return out

    def stats_of(self, matrix: torch.Tensor, rows: int | None = None) -> EmbeddingStats | None:
        """The statistics this plan's non-linear rows need (None when every row is linear)."""
        kinds = set(np.unique(self.kinds).tolist()) - {LINEAR, OVERRIDE}
        if not kinds:
            return None
        return EmbeddingStats.of(matrix, rows or self.old_size, need_cov=NORMAL in kinds, need_std=RANDOM in kinds)

    # -- application ---------------------------------------------------------------------
    def iter_apply(self, old: torch.Tensor, chunk_rows: int | None = None, stats: EmbeddingStats | None = None,
                   stat_rows: int | None = None) -> Iterator[torch.Tensor]:
        """Yield the new matrix in row chunks, in `old`'s dtype, never holding it whole in float32.

        Args:
            old: the old matrix (rows x dim), any float dtype; may be larger than the plan's
                old vocabulary (padded rows are ignored for statistics).
            stats: precomputed statistics of `old` (computed here when None).
            stat_rows: how many leading rows of `old` are real tokens (default: plan.old_size).
            chunk_rows: rows per chunk; by default sized so the gathered float32 pieces of a
                chunk take about 8 MB whatever the hidden size (smaller chunks measured no
                slower, and keep peak memory at about one old matrix).
        """
        if old.shape[0] < self.old_size:
            raise TransplantError(
                f"the embedding matrix has {old.shape[0]} rows but the old tokenizer has {self.old_size} ids "
                "(use the tokenizer that belongs to this model)")
        if stats is None:
            stats = self.stats_of(old, stat_rows)
        dim = old.shape[1]
        if chunk_rows is None:
            pieces_per_row = max(1.0, len(self.indices) / max(self.new_size, 1))
            chunk_rows = max(64, int((2 << 20) / (dim * pieces_per_row)))
        overrides = {int(r): k for k, r in enumerate(self.override_rows)}
        for start in range(0, self.new_size, chunk_rows):
            stop = min(self.new_size, start + chunk_rows)
            out = self._mix(old, start, stop)
            kinds = self.kinds[start:stop]
            for local in np.nonzero(kinds != LINEAR)[0]:
                out[local] = self._stat_row(int(kinds[local]), start + int(local), stats, dim, overrides)
            yield out.to(old.dtype)

    def _mix(self, old: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Linear rows start..stop in float32 (a gather of the old rows they use + index_add)."""
        out = torch.zeros(stop - start, old.shape[1], dtype=torch.float32)
        lo, hi = int(self.indptr[start]), int(self.indptr[stop])
        if hi > lo:
            idx = torch.from_numpy(self.indices[lo:hi])
            w = torch.from_numpy(self.weights[lo:hi]).unsqueeze(1)
            counts = torch.from_numpy(np.diff(self.indptr[start:stop + 1]))
            target = torch.repeat_interleave(torch.arange(stop - start), counts)
            out.index_add_(0, target, old[idx].to(torch.float32) * w)
        return out

    def apply(self, old: torch.Tensor, **kwargs) -> torch.Tensor:
        """The whole new matrix (see `iter_apply`)."""
        return torch.cat(list(self.iter_apply(old, **kwargs)), 0)

    def _stat_row(self, kind: int, row: int, stats: EmbeddingStats, dim: int, overrides: dict) -> torch.Tensor:
        if kind == MEAN:
            return stats.mean
        if kind == OVERRIDE:
            return torch.from_numpy(self.override_values[overrides[row]]).to(torch.float32)
        # One generator per row: the same row gets the same sample however the plan is chunked.
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + row)
        z = torch.randn(dim, generator=gen)
        if kind == NORMAL:
            if stats.chol is None:
                return stats.mean
            return stats.mean + stats.chol @ z
        if kind == RANDOM:
            return z * stats.std
        raise TransplantError(f"unknown row kind {kind} in plan (the plan file is corrupted; recompute it)")

    # -- persistence ---------------------------------------------------------------------
    def save(self, folder: str | Path) -> list[str]:
        folder = Path(folder)
        arrays = {"indptr": self.indptr, "indices": self.indices, "weights": self.weights, "kinds": self.kinds,
                  "override_rows": self.override_rows}
        if self.override_values is not None:
            arrays["override_values"] = self.override_values
        save_file(arrays, str(folder / PLAN_WEIGHTS))
        doc = {"format": "tokentransplant-plan/1", "old_size": self.old_size, "new_size": self.new_size,
               "seed": self.seed, "counts": self.counts(), "meta": self.meta, "provenance": self.provenance}
        (folder / PLAN_JSON).write_text(json.dumps(doc, indent=1, ensure_ascii=False))
        return [PLAN_WEIGHTS, PLAN_JSON]

    @classmethod
    def load(cls, folder: str | Path) -> "Plan":
        folder = Path(folder)
        if folder.is_file():
            folder = folder.parent
        wpath, jpath = folder / PLAN_WEIGHTS, folder / PLAN_JSON
        if not wpath.exists() or not jpath.exists():
            raise TransplantError(f"no plan in {folder} (expected {PLAN_WEIGHTS} and {PLAN_JSON} from `transplant run`)")
        try:
            doc = json.loads(jpath.read_text())
            arrays = load_file(str(wpath))
        except Exception as exc:
            raise TransplantError(f"unreadable plan in {folder}: {exc} (recompute it with `transplant run`)") from None
        return cls(doc["old_size"], arrays["indptr"], arrays["indices"], arrays["weights"], arrays["kinds"],
                   doc["provenance"], doc.get("meta", {}), doc.get("seed", 0),
                   arrays.get("override_rows", np.zeros(0, dtype=np.int64)), arrays.get("override_values"))
