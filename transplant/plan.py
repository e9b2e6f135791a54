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
from .shardio import validate_shard

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
        doc = {"format": PLAN_FORMAT, "old_size": self.old_size, "new_size": self.new_size,
               "seed": self.seed, "counts": self.counts(), "meta": self.meta, "provenance": self.provenance}
        (folder / PLAN_JSON).write_text(json.dumps(doc, indent=1, ensure_ascii=False))
        return [PLAN_WEIGHTS, PLAN_JSON]

    @classmethod
    def load(cls, folder: str | Path) -> "Plan":
        """Read a saved plan and validate it whole (see `validate`) before anything uses it."""
        folder = Path(folder)
        if folder.is_file():
            folder = folder.parent
        wpath, jpath = folder / PLAN_WEIGHTS, folder / PLAN_JSON
        if not wpath.exists() or not jpath.exists():
            raise TransplantError(f"no plan in {folder} (expected {PLAN_WEIGHTS} and {PLAN_JSON} from `transplant run`)")
        bad = _Invalid(jpath)
        try:
            doc = json.loads(jpath.read_bytes().decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            raise bad(f"not UTF-8 JSON ({_first_line(exc)})") from None
        try:
            validate_shard(wpath)
            arrays = load_file(str(wpath))
        except TransplantError as exc:
            raise _Invalid(wpath)(str(exc).rsplit(" (", 1)[0].replace(f"{wpath} ", "file ")) from None
        except Exception as exc:  # safetensors raises its own error types
            raise _Invalid(wpath)(f"unreadable ({_first_line(exc)})") from None
        if not isinstance(doc, dict):
            raise bad("not a JSON object")
        if doc.get("format") != PLAN_FORMAT:
            raise TransplantError(f"plan {jpath} has format {doc.get('format')!r}, this version reads only "
                                  f"{PLAN_FORMAT!r} (recompute the plan with this version's `transplant run`)")
        for key in ("old_size", "new_size", "provenance", "meta"):
            if key not in doc:
                raise bad(f"no {key!r} entry")
        for name in ("indptr", "indices", "weights", "kinds", "override_rows"):
            if name not in arrays:
                raise _Invalid(wpath)(f"no {name!r} array")
        plan = cls(doc["old_size"], arrays["indptr"], arrays["indices"], arrays["weights"], arrays["kinds"],
                   doc["provenance"], doc["meta"], doc.get("seed", 0), arrays["override_rows"],
                   arrays.get("override_values"))
        if doc["new_size"] != plan.new_size:
            raise bad(f"new_size {doc['new_size']!r} but {plan.new_size} rows in {PLAN_WEIGHTS}")
        plan.validate(source=str(folder))
        return plan

    def validate(self, source: str = "the plan") -> None:
        """Check the whole plan before it is used; raise TransplantError naming the first problem.

        Checks dtypes and shapes of the arrays, the CSR structure (indptr starts at 0, never
        decreases, ends at len(indices)), old ids in [0, old_size), finite weights, known row
        kinds, overrides (one dense row per OVERRIDE row), one provenance label per row, both
        vocabulary fingerprints, the special-token map and the base embedding shape. Integer
        and float arrays are normalised to the dtypes `apply` uses.
        """
        bad = _Invalid(source)
        if not _is_int(self.old_size) or self.old_size < 1:
            raise bad(f"bad old_size {self.old_size!r}")
        arrays = {"indptr": self.indptr, "indices": self.indices, "weights": self.weights, "kinds": self.kinds,
                  "override_rows": self.override_rows}
        for name, arr in arrays.items():
            if not isinstance(arr, np.ndarray) or arr.ndim != 1:
                raise bad(f"array {name!r} is not one-dimensional")
            if arr.dtype.kind not in ("f" if name == "weights" else "iu"):
                raise bad(f"array {name!r} has dtype {arr.dtype}")
        # Signed 64-bit before any arithmetic (an unsigned indptr would hide a decrease).
        self.indptr, self.indices = self.indptr.astype(np.int64, copy=False), self.indices.astype(np.int64, copy=False)
        self.override_rows = self.override_rows.astype(np.int64, copy=False)
        self.weights = self.weights.astype(np.float32, copy=False)
        rows = len(self.kinds)
        if rows < 1:
            raise bad("no rows")
        unknown = set(np.unique(self.kinds).tolist()) - set(KIND_NAMES)
        if unknown:
            raise bad(f"unknown row kinds {sorted(unknown)}")
        self.kinds = self.kinds.astype(np.int8, copy=False)
        if len(self.indptr) != rows + 1:
            raise bad(f"indptr has {len(self.indptr)} entries for {rows} rows (needs {rows + 1})")
        if int(self.indptr[0]) != 0 or int(self.indptr[-1]) != len(self.indices) or np.any(np.diff(self.indptr) < 0):
            raise bad("indptr is not a row index (must start at 0, never decrease, end at len(indices))")
        if len(self.weights) != len(self.indices):
            raise bad(f"{len(self.weights)} weights for {len(self.indices)} indices")
        if len(self.indices) and (int(self.indices.min()) < 0 or int(self.indices.max()) >= self.old_size):
            raise bad(f"indices outside the old vocabulary 0..{self.old_size - 1}")
        if not np.all(np.isfinite(self.weights)):
            raise bad("non-finite weights")
        if not isinstance(self.provenance, list) or not all(isinstance(p, str) for p in self.provenance):
            raise bad("provenance is not a list of labels")
        if len(self.provenance) != rows:
            raise bad(f"{len(self.provenance)} provenance labels for {rows} rows")
        if not _is_int(self.seed):
            raise bad(f"bad seed {self.seed!r}")
        if not isinstance(self.meta, dict):
            raise bad("meta is not an object")
        meta = self.meta
        for key in ("old_fingerprint", "new_fingerprint"):
            if not isinstance(meta.get(key), str) or not meta[key]:
                raise bad(f"no tokenizer fingerprint meta.{key}")
        dim, old_rows = meta.get("dim"), meta.get("old_rows")
        if not _is_int(dim) or dim < 1 or not _is_int(old_rows) or old_rows < self.old_size:
            raise bad("no base embedding shape (meta.old_rows >= old_size and meta.dim)")
        given = self.override_rows
        wanted = np.nonzero(self.kinds == OVERRIDE)[0]
        if len(np.unique(given)) != len(given) or set(given.tolist()) != set(wanted.tolist()):
            raise bad("override_rows do not match the rows of kind override")
        values = self.override_values
        if len(given):
            if (not isinstance(values, np.ndarray) or values.dtype.kind != "f"
                    or values.shape != (len(given), dim)):
                raise bad(f"override_values is not a float array of shape ({len(given)}, {dim})")
            if not np.all(np.isfinite(values)):
                raise bad("non-finite override_values")
        special = meta.get("special_map", {})
        if not isinstance(special, dict) or not all(
                isinstance(k, str) and k.isascii() and k.isdigit() and int(k) < self.old_size
                and _is_int(v) and 0 <= v < rows for k, v in special.items()):
            raise bad("bad special_map (must map old special ids to new row ids)")

    def record_base(self, rows: int, dim: int) -> None:
        """Record the shape of the base model's embedding (checked when the plan is re-applied)."""
        self.meta["old_rows"], self.meta["dim"] = int(rows), int(dim)

    def check_target(self, rows: int, dim: int, old_fingerprint: str, new_fingerprint: str, model, plan_folder) -> None:
        """Refuse a model or a tokenizer this (validated) plan was not made for."""
        if old_fingerprint != self.meta["old_fingerprint"]:
            raise TransplantError(f"{model} uses a different tokenizer than the plan was made for (apply plans only "
                                  "to checkpoints of the same base model; recompute with `transplant run`)")
        if new_fingerprint != self.meta["new_fingerprint"]:
            raise TransplantError(f"the tokenizer in {plan_folder} is not the one the plan was made for (restore the "
                                  "plan folder's tokenizer files, or recompute with `transplant run`)")
        if (rows, dim) != (self.meta["old_rows"], self.meta["dim"]):
            raise TransplantError(
                f"{model} has a {rows}x{dim} embedding but the plan was made for a "
                f"{self.meta['old_rows']}x{self.meta['dim']} one (apply plans only to checkpoints of the same base "
                "model; recompute with `transplant run`)")


PLAN_FORMAT = "tokentransplant-plan/1"
KIND_NAMES = {LINEAR: "linear", MEAN: "mean", NORMAL: "multivariate", RANDOM: "random", OVERRIDE: "override"}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class _Invalid:
    """Builds the one-line error for a plan that fails validation: `corrupt plan SOURCE: PROBLEM (fix)`."""

    def __init__(self, source) -> None:
        self.source = source

    def __call__(self, problem: str) -> TransplantError:
        return TransplantError(f"corrupt plan {self.source}: {problem} (recompute it with `transplant run`)")
