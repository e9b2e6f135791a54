"""`Plan`: the data of a plan and what it says about itself; its other methods come from one module each.

    assembly.py  `Plan.assemble`, `Plan.from_rows`: planned rows -> a plan
    apply.py     `plan.apply`, `plan.iter_apply`, `plan.stats_of`: a plan x an old matrix -> the new matrix
    storage.py   `plan.save`, `Plan.load`, `plan.validate`, `plan.check_target`: files and checks

Example:
    >>> plan = Plan.load("out/")  # doctest: +SKIP
    >>> plan.counts()  # doctest: +SKIP
    {'special': 3, 'exact': 9120, 'fvt': 22880}
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from transplant.core.plan.apply import PlanApplication
from transplant.core.plan.assembly import PlanAssembly
from transplant.core.plan.storage import PlanStorage


@dataclass
class Plan(PlanAssembly, PlanApplication, PlanStorage):
    """Sparse new x old weights (CSR: row i mixes `indices[indptr[i]:indptr[i+1]]` with those
    `weights`), statistical rows by kind, dense overrides and provenance.

    Example:
        >>> plan = Plan.from_rows([Row("exact", (1,), (1.0,)), Row("fvt", (0, 1), (0.5, 0.5))], old_size=2)  # doctest: +SKIP
        >>> plan.row(1)  # doctest: +SKIP
        ('fvt', [0, 1], [0.5, 0.5])
    """

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

    def row(self, i: int) -> tuple[str, list[int], list[float]]:
        """(provenance, old ids, weights) of row `i`."""
        s, e = self.indptr[i], self.indptr[i + 1]
        return self.provenance[i], self.indices[s:e].tolist(), self.weights[s:e].tolist()

    def made_rows(self) -> np.ndarray:
        """Boolean mask of rows a method made (not copied exactly, not a special token, not padding)."""
        copied = {"exact", "byte", "special", "special-mean", "pad"}
        return np.array([p not in copied for p in self.provenance], dtype=bool)

    def counts(self) -> dict[str, int]:
        """Provenance label -> number of rows."""
        out: dict[str, int] = {}
        for p in self.provenance:
            out[p] = out.get(p, 0) + 1
        return out
