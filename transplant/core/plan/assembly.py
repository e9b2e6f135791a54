"""Assembly: the rows and blocks of a whole method chain put in id order as one sparse (CSR) plan.

Each initializer's result becomes a `_Fragment` (its rows as CSR pieces, in the order made);
`_assemble_side` sorts all fragments' rows by new id at once, as arrays.

Example:
    >>> plan = Plan.assemble(4, 10, {0: Row("exact", (3,), (1.0,))}, [])  # doctest: +SKIP
    >>> plan.provenance  # doctest: +SKIP
    ['exact', 'pad', 'pad', 'pad']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from transplant.common.errors import TransplantError
from transplant.core.plan.types import MEAN, OVERRIDE, Row, RowBlock

_P = TypeVar("_P", bound="PlanAssembly")  # the class a constructor is called on (`Plan`)


class PlanAssembly:
    """The constructors of `Plan` from planned rows (`assemble`, `from_rows`)."""

    @classmethod
    def from_rows(cls: type[_P], rows: list[Row], old_size: int, meta: dict | None = None, seed: int = 0) -> _P:
        """A plan from one `Row` per new id (row i = new id i); rows with an `output` make an output side."""
        return cls.assemble(len(rows), old_size, dict(enumerate(rows)), [], meta, seed)

    @classmethod
    def assemble(cls: type[_P], size: int, old_size: int, rows: dict[int, Row], blocks: list[RowBlock],
                 meta: dict | None = None, seed: int = 0, fill: Row | None = None) -> _P:
        """A plan of `size` rows from single rows and bulk blocks; ids nobody made get `fill`.

        Blocks stay arrays all the way (a (n, k) block becomes CSR by reshaping, not by tuples).
        """
        fill = fill or Row("pad", kind=MEAN)
        # An empty block (a method that placed none of the tokens it was asked for) adds nothing,
        # not even an output side; its arrays may have any width, so it is never reshaped.
        frags = [_Fragment.of_rows(rows)] + [_Fragment.of_block(b) for b in blocks if b.n]
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
