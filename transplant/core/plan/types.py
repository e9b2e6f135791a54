"""What initializers hand to a plan: row kinds, single rows, bulk row blocks, and `Made`, all of them.

A row is either linear in the old embeddings (`LINEAR`: old ids and weights), a statistic of the
old matrix recomputed whenever the plan is applied (`MEAN`, `MULTIVARIATE`, `RANDOM`), or a dense
value stored as it is (`OVERRIDE`).

Example:
    >>> made = Made(rows={0: Row("exact", (4,), (1.0,)), 1: Row("mean", kind=MEAN)})
    >>> made.ids().tolist()
    [0, 1]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Row kinds, stored per row in the plan file (so their values never change).
LINEAR, MEAN, MULTIVARIATE, RANDOM, OVERRIDE = 0, 1, 2, 3, 4
KIND_NAMES = {LINEAR: "linear", MEAN: "mean", MULTIVARIATE: "multivariate", RANDOM: "random", OVERRIDE: "override"}


@dataclass
class Row:
    """One planned row: a weighted mix of old rows, a statistical kind, or a dense value.

    `output` is the row for the LM head when it differs from the input row (a method that makes
    the two sides differently, e.g. OMP with a donor's head); None means the same row on both.

    Example:
        >>> Row("fvt", (12, 40), (0.5, 0.5)).kind == LINEAR
        True
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
class Made:
    """The rows one initializer made (what `assign` returns): single rows by new id, bulk blocks, or both.

    Args:
        rows: new id -> `Row`, for methods that make few rows or rows of a statistical kind.
        blocks: `RowBlock`s, for methods that make many rows as arrays.

    Example:
        >>> made = Made(blocks=[RowBlock(np.array([7, 3]), np.array([[1], [2]]), np.array([[1.], [1.]]))])
        >>> made.ids().tolist(), made.n
        ([7, 3], 2)
    """

    rows: dict[int, Row] = field(default_factory=dict)
    blocks: list[RowBlock] = field(default_factory=list)

    def ids(self) -> np.ndarray:
        """Every new id made, the rows' then each block's (an id made twice is listed twice)."""
        return np.concatenate([np.fromiter(self.rows, dtype=np.int64, count=len(self.rows))]
                              + [np.asarray(b.ids, dtype=np.int64).reshape(-1) for b in self.blocks])

    @property
    def n(self) -> int:
        return len(self.rows) + sum(b.n for b in self.blocks)

    def add(self, other: "Made") -> None:
        """Take in `other`'s rows and blocks too (how the planner gathers a whole chain)."""
        self.rows.update(other.rows)
        self.blocks.extend(other.blocks)
