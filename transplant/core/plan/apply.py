"""Applying a plan: the new matrix from an old one, chunk by chunk, with its statistical rows.

Statistical rows (mean, multivariate sample, random) are recomputed from whichever matrix the
plan is applied to, so re-applying a plan to a fine-tune of the base model uses the fine-tune's
statistics.

Example:
    >>> new_embeddings = plan.apply(old_embeddings)  # doctest: +SKIP
    >>> for chunk in plan.iter_apply(old_embeddings): ...  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from transplant.common.errors import TransplantError
from transplant.core.plan.types import LINEAR, MEAN, MULTIVARIATE, OVERRIDE, RANDOM


@dataclass
class EmbeddingStats:
    """Mean, covariance factor and scale of an embedding matrix (for statistical rows).

    Example:
        >>> EmbeddingStats.of(torch.ones(3, 2), rows=3).mean.tolist()
        [1.0, 1.0]
    """

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


class PlanApplication:
    """The methods of `Plan` that make the new matrix (`apply`, `iter_apply`, `stats_of`)."""

    def stats_of(self, matrix: torch.Tensor, rows: int | None = None) -> EmbeddingStats | None:
        """The statistics this plan's non-linear rows need (None when every row is linear)."""
        kinds = set(np.unique(self.kinds).tolist()) - {LINEAR, OVERRIDE}
        if not kinds:
            return None
        return EmbeddingStats.of(matrix, rows or self.old_size, need_cov=MULTIVARIATE in kinds,
                                 need_std=RANDOM in kinds)

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
        dense_pos = np.full(self.new_size, -1, dtype=np.int64)
        dense_pos[self.override_rows] = np.arange(len(self.override_rows))
        for start in range(0, self.new_size, chunk_rows):
            stop = min(self.new_size, start + chunk_rows)
            out = self._mix(old, start, stop)
            kinds = self.kinds[start:stop]
            dense = np.nonzero(kinds == OVERRIDE)[0]
            if len(dense):
                out[torch.from_numpy(dense)] = torch.from_numpy(
                    np.asarray(self.override_values[dense_pos[start + dense]], dtype=np.float32))
            means = np.nonzero(kinds == MEAN)[0]
            if len(means):
                out[torch.from_numpy(means)] = stats.mean
            for local in np.nonzero((kinds != LINEAR) & (kinds != OVERRIDE) & (kinds != MEAN))[0]:
                out[local] = self._stat_row(int(kinds[local]), start + int(local), stats, dim)
            if self.scales is not None:
                out *= torch.from_numpy(self.scales[start:stop]).unsqueeze(1)
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

    def _stat_row(self, kind: int, row: int, stats: EmbeddingStats, dim: int) -> torch.Tensor:
        # One generator per row: the same row gets the same sample however the plan is chunked.
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + row)
        z = torch.randn(dim, generator=gen)
        if kind == MULTIVARIATE:
            if stats.chol is None:
                return stats.mean
            return stats.mean + stats.chol @ z
        if kind == RANDOM:
            return z * stats.std
        raise TransplantError(f"unknown row kind {kind} in plan (the plan file is corrupted; recompute it)")
