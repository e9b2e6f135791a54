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

from transplant.common.errors import TransplantError
from transplant.io.shardio import validate_shard

PLAN_WEIGHTS = "transplant_plan.safetensors"
PLAN_JSON = "transplant_plan.json"

LINEAR, MEAN, NORMAL, RANDOM, OVERRIDE = 0, 1, 2, 3, 4


@dataclass
class Row:
    """One planned row: a weighted mix of old rows, a statistical kind, or a dense value.

    `output` is the row for the LM head when it differs from the input row (a method that makes
    the two sides differently, e.g. OMP with a donor's head); None means the same row on both.
    """

    source: str  # provenance label: exact, special, fvt, byte, mean, multivariate, random, pad
    indices: tuple[int, ...] = ()
    weights: tuple[float, ...] = ()
    kind: int = LINEAR
    value: np.ndarray | None = None  # the dense row of kind OVERRIDE (length = hidden size)
    output: "Row | None" = None


@dataclass
class RowBlock:
    """Many rows at once, as arrays (methods that make 10^5 rows of k = 64 atoms never build tuples).

    Args:
        ids: new ids, shape (n,).
        indices, weights: old ids and weights, shape (n, k); a zero weight pads a shorter row.
            None for dense rows.
        values: dense rows, shape (n, dim) (kind OVERRIDE), instead of indices/weights.
        source: provenance label of every row.
        output: the LM-head rows of the same ids, when they differ from these (same shapes rules).

    Example:
        >>> RowBlock(np.array([5, 6]), np.array([[0, 1], [2, 2]]), np.array([[.5, .5], [1., 0.]]), source="omp").n
        2
    """

    ids: np.ndarray
    indices: np.ndarray | None = None
    weights: np.ndarray | None = None
    source: str = "block"
    values: np.ndarray | None = None
    output: "RowBlock | None" = None

    @property
    def n(self) -> int:
        return len(self.ids)

    def select(self, keep: np.ndarray) -> "RowBlock":
        """The rows where boolean mask `keep` is true."""
        pick = (lambda a: None if a is None else a[keep])
        return RowBlock(self.ids[keep], pick(self.indices), pick(self.weights), self.source, pick(self.values),
                        self.output.select(keep) if self.output is not None else None)


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
    # Per-row multiplier applied after mixing (output-side calibration); None = all ones.
    scales: np.ndarray | None = None
    # The LM head's rows when they differ from the input rows (same new_size); None = same rows.
    output: "Plan | None" = None

    @property
    def new_size(self) -> int:
        return len(self.kinds)

    def side(self, tensor: str) -> "Plan":
        """The rows for `tensor` ("input" or "output"): the output side falls back to the input rows."""
        if tensor not in ("input", "output"):
            raise ValueError(f"tensor must be 'input' or 'output', not {tensor!r}")
        return self.output if tensor == "output" and self.output is not None else self

    @property
    def untied_rows(self) -> bool:
        """True when the LM head gets rows (or scales) of its own."""
        return self.output is not None

    @classmethod
    def from_rows(cls, rows: list[Row], old_size: int, meta: dict | None = None, seed: int = 0) -> "Plan":
        """A plan from one `Row` per new id (row i = new id i); rows with an `output` make an output side."""
        return cls.assemble(len(rows), old_size, dict(enumerate(rows)), [], meta, seed)

    @classmethod
    def assemble(cls, size: int, old_size: int, rows: dict[int, Row], blocks: list[RowBlock],
                 meta: dict | None = None, seed: int = 0, fill: Row | None = None) -> "Plan":
        """A plan of `size` rows from single rows and bulk blocks; ids nobody made get `fill`.

        Blocks stay arrays all the way (a (n, k) block becomes CSR by reshaping, not by tuples).
        """
        fill = fill or Row("pad", kind=MEAN)
        frags = [_Fragment.of_rows(rows)] + [_Fragment.of_block(b) for b in blocks]
        covered = np.zeros(size, dtype=bool)
        for f in frags:
            if len(f.ids) and (f.ids.min() < 0 or f.ids.max() >= size):
                raise TransplantError("an initializer returned ids outside the new vocabulary (internal error)")
            if covered[f.ids].any() or len(np.unique(f.ids)) != len(f.ids):
                raise TransplantError("two initializers made the same row (internal error)")
            covered[f.ids] = True
        missing = np.nonzero(~covered)[0]
        if len(missing):
            frags.append(_Fragment.of_rows({int(i): fill for i in missing}))
        inp = _assemble_side(size, old_size, frags)
        plan = cls(old_size, *inp[:5], meta or {}, seed, inp[5], inp[6])
        if any(f.has_output for f in frags):
            out = _assemble_side(size, old_size, [f.output_fragment() for f in frags])
            plan.output = cls(old_size, *out[:5], {}, seed, out[5], out[6])
        return plan

    # -- inspection ----------------------------------------------------------------------
    def row(self, i: int) -> tuple[str, list[int], list[float]]:
        s, e = self.indptr[i], self.indptr[i + 1]
        return self.provenance[i], self.indices[s:e].tolist(), self.weights[s:e].tolist()

    def made_rows(self) -> np.ndarray:
        """Boolean mask of rows a method made (not copied exactly, not a special token, not padding)."""
        copied = {"exact", "byte", "special", "special-mean", "pad"}
        return np.array([p not in copied for p in self.provenance], dtype=bool)

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
        if kind == NORMAL:
            if stats.chol is None:
                return stats.mean
            return stats.mean + stats.chol @ z
        if kind == RANDOM:
            return z * stats.std
        raise TransplantError(f"unknown row kind {kind} in plan (the plan file is corrupted; recompute it)")

    # -- persistence ---------------------------------------------------------------------
    def _arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        arrays = {"indptr": self.indptr, "indices": self.indices, "weights": self.weights, "kinds": self.kinds,
                  "override_rows": self.override_rows}
        if self.override_values is not None:
            arrays["override_values"] = np.ascontiguousarray(self.override_values, dtype=np.float32)
        if self.scales is not None:
            arrays["scales"] = self.scales
        return {prefix + k: v for k, v in arrays.items()}

    def save(self, folder: str | Path) -> list[str]:
        folder = Path(folder)
        arrays = self._arrays()
        doc = {"format": PLAN_FORMAT, "old_size": self.old_size, "new_size": self.new_size,
               "seed": self.seed, "counts": self.counts(), "meta": self.meta, "provenance": self.provenance}
        if self.output is not None:
            arrays.update(self.output._arrays(OUTPUT_PREFIX))
            doc["output_counts"] = self.output.counts()
            doc["output_provenance"] = self.output.provenance
        save_file(arrays, str(folder / PLAN_WEIGHTS))
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
        if doc.get("format") not in READABLE_FORMATS:
            raise TransplantError(f"plan {jpath} has format {doc.get('format')!r}, this version reads "
                                  f"{', '.join(map(repr, READABLE_FORMATS))} (recompute the plan with this "
                                  "version's `transplant run`)")
        for key in ("old_size", "new_size", "provenance", "meta"):
            if key not in doc:
                raise bad(f"no {key!r} entry")

        def side(prefix: str, provenance) -> "Plan":
            for name in ("indptr", "indices", "weights", "kinds", "override_rows"):
                if prefix + name not in arrays:
                    raise _Invalid(wpath)(f"no {prefix + name!r} array")
            return cls(doc["old_size"], arrays[prefix + "indptr"], arrays[prefix + "indices"],
                       arrays[prefix + "weights"], arrays[prefix + "kinds"], provenance, doc["meta"],
                       doc.get("seed", 0), arrays[prefix + "override_rows"], arrays.get(prefix + "override_values"),
                       arrays.get(prefix + "scales"))

        plan = side("", doc["provenance"])
        if OUTPUT_PREFIX + "kinds" in arrays or "output_provenance" in doc:
            if "output_provenance" not in doc:
                raise bad("output-side arrays without 'output_provenance'")
            plan.output = side(OUTPUT_PREFIX, doc["output_provenance"])
            plan.output.meta = {}
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
        self._validate_arrays(bad, dim)
        if self.output is not None:
            if self.output.old_size != self.old_size or self.output.new_size != self.new_size:
                raise bad(f"the output side has {self.output.new_size} rows for {self.new_size} input rows")
            self.output._validate_arrays(lambda problem: bad(f"output side: {problem}"), dim)
        rows = self.new_size
        special = meta.get("special_map", {})
        if not isinstance(special, dict) or not all(
                isinstance(k, str) and k.isascii() and k.isdigit() and int(k) < self.old_size
                and _is_int(v) and 0 <= v < rows for k, v in special.items()):
            raise bad("bad special_map (must map old special ids to new row ids)")

    def _validate_arrays(self, bad, dim: int) -> None:
        """Check one side's arrays (see `validate`); normalise dtypes to what `apply` uses."""
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
        if self.scales is not None:
            if (not isinstance(self.scales, np.ndarray) or self.scales.dtype.kind != "f"
                    or self.scales.shape != (rows,)):
                raise bad(f"scales is not a float array of {rows} entries")
            if not np.all(np.isfinite(self.scales)):
                raise bad("non-finite scales")
            self.scales = self.scales.astype(np.float32, copy=False)

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


# /2 adds per-tensor rows (an `output.`-prefixed side), per-row scales and bulk dense rows; a /1
# plan is the /2 plan without them and is still read.
PLAN_FORMAT = "tokentransplant-plan/2"
READABLE_FORMATS = ("tokentransplant-plan/1", PLAN_FORMAT)
OUTPUT_PREFIX = "output."
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


@dataclass
class _Fragment:
    """Rows of some ids in CSR pieces (one initializer's result), before they are put in id order."""

    ids: np.ndarray
    counts: np.ndarray
    indices: np.ndarray
    weights: np.ndarray
    kinds: np.ndarray
    labels: list[str]
    dense_ids: np.ndarray
    dense: np.ndarray | None
    out: "_Fragment | None" = None

    @property
    def has_output(self) -> bool:
        return self.out is not None

    def output_fragment(self) -> "_Fragment":
        return self.out if self.out is not None else self

    @classmethod
    def of_rows(cls, rows: dict[int, Row]) -> "_Fragment":
        ids = np.fromiter(rows, dtype=np.int64, count=len(rows))
        items = list(rows.values())
        frag = cls._from_items(ids, items)
        if any(r.output is not None for r in items):
            frag.out = cls._from_items(ids, [r.output if r.output is not None else r for r in items])
        return frag

    @classmethod
    def _from_items(cls, ids: np.ndarray, items: list[Row]) -> "_Fragment":
        counts = np.fromiter((len(r.indices) for r in items), dtype=np.int64, count=len(items))
        total = int(counts.sum())
        indices = np.fromiter((j for r in items for j in r.indices), dtype=np.int64, count=total)
        weights = np.fromiter((w for r in items for w in r.weights), dtype=np.float32, count=total)
        kinds = np.fromiter((r.kind for r in items), dtype=np.int8, count=len(items))
        dense_at = [k for k, r in enumerate(items) if r.kind == OVERRIDE]
        for k in dense_at:
            if items[k].value is None:
                raise TransplantError(f"a dense row ({items[k].source}) has no value (internal error)")
        dense = np.stack([np.asarray(items[k].value, dtype=np.float32) for k in dense_at]) if dense_at else None
        return cls(ids, counts, indices, weights, kinds, [r.source for r in items], ids[dense_at], dense)

    @classmethod
    def of_block(cls, block: RowBlock) -> "_Fragment":
        n = block.n
        ids = np.asarray(block.ids, dtype=np.int64)
        if block.values is not None:
            values = np.asarray(block.values, dtype=np.float32)
            if values.ndim != 2 or values.shape[0] != n:
                raise TransplantError(f"block {block.source}: values must have shape (n, dim) (internal error)")
            frag = cls(ids, np.zeros(n, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32),
                       np.full(n, OVERRIDE, np.int8), [block.source] * n, ids, values)
        else:
            idx = np.asarray(block.indices, dtype=np.int64).reshape(n, -1)
            w = np.asarray(block.weights, dtype=np.float32).reshape(n, -1)
            if idx.shape != w.shape:
                raise TransplantError(f"block {block.source}: indices and weights differ in shape (internal error)")
            keep = w != 0  # zero weights pad short rows; they cost nothing when dropped here
            frag = cls(ids, keep.sum(1).astype(np.int64), idx[keep], w[keep], np.zeros(n, np.int8),
                       [block.source] * n, np.zeros(0, np.int64), None)
        if block.output is not None:
            if not np.array_equal(np.asarray(block.output.ids), ids):
                raise TransplantError(f"block {block.source}: output rows for other ids (internal error)")
            frag.out = cls.of_block(RowBlock(ids, block.output.indices, block.output.weights,
                                             block.output.source, block.output.values))
        return frag


def _assemble_side(size: int, old_size: int, frags: list[_Fragment]):
    """(indptr, indices, weights, kinds, provenance, override_rows, override_values) in id order."""
    ids = np.concatenate([f.ids for f in frags])
    counts = np.concatenate([f.counts for f in frags])
    flat_idx = np.concatenate([f.indices for f in frags])
    flat_w = np.concatenate([f.weights for f in frags])
    kinds_cat = np.concatenate([f.kinds for f in frags])
    labels = [label for f in frags for label in f.labels]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    order = np.argsort(ids, kind="stable")
    if not np.array_equal(ids[order], np.arange(size)):
        raise TransplantError("planned rows do not cover the new vocabulary once each (internal error)")
    counts_o = counts[order]
    indptr = np.zeros(size + 1, dtype=np.int64)
    np.cumsum(counts_o, out=indptr[1:])
    # Source position of every output entry: its row's start in the fragments + offset in the row.
    gather = np.repeat(starts[order] - indptr[:-1], counts_o) + np.arange(int(indptr[-1]))
    indices, weights = flat_idx[gather], flat_w[gather]
    if len(indices) and (indices.min() < 0 or indices.max() >= old_size):
        raise TransplantError("plan refers to old rows outside the embedding matrix (internal error)")
    kinds = kinds_cat[order]
    provenance = [labels[i] for i in order.tolist()]
    dense_parts = [(f.dense_ids, f.dense) for f in frags if f.dense is not None]
    if dense_parts:
        d_ids = np.concatenate([d for d, _ in dense_parts])
        d_val = np.concatenate([v for _, v in dense_parts])
        d_order = np.argsort(d_ids, kind="stable")
        override_rows, override_values = d_ids[d_order], d_val[d_order]
    else:
        override_rows, override_values = np.zeros(0, dtype=np.int64), None
    return indptr, indices, weights, kinds, provenance, override_rows, override_values
