"""Storage and validation: a plan as `transplant_plan.safetensors` (arrays) + `transplant_plan.json`
(provenance, method chain, statistics), read back only after the whole plan is checked.

Example:
    >>> plan.save("out/")  # doctest: +SKIP
    ['transplant_plan.safetensors', 'transplant_plan.json']
    >>> plan = Plan.load("out/")  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypeVar

import numpy as np
from safetensors.numpy import load_file, save_file
from typing_extensions import Self

from transplant.common.errors import TransplantError
from transplant.common.permissions import follow_umask
from transplant.common.safetensors_header import validate_shard
from transplant.core.plan.types import KIND_NAMES, OVERRIDE

PLAN_WEIGHTS = "transplant_plan.safetensors"
PLAN_JSON = "transplant_plan.json"
# /2 adds per-tensor rows (an `output.`-prefixed side), per-row scales and bulk dense rows; a /1
# plan is the /2 plan without them and is still read.
PLAN_FORMAT = "tokentransplant-plan/2"
READABLE_FORMATS = ("tokentransplant-plan/1", PLAN_FORMAT)
OUTPUT_PREFIX = "output."

_P = TypeVar("_P", bound="PlanStorage")  # the class `load` is called on (`Plan`)


class PlanStorage:
    """The methods of `Plan` that write, read and check it (`save`, `load`, `validate`, `check_target`)."""

    def _arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        arrays = {"indptr": self.indptr, "indices": self.indices, "weights": self.weights, "kinds": self.kinds,
                  "override_rows": self.override_rows}
        if self.override_values is not None:
            arrays["override_values"] = np.ascontiguousarray(self.override_values, dtype=np.float32)
        if self.scales is not None:
            arrays["scales"] = self.scales
        return {prefix + k: v for k, v in arrays.items()}

    def save(self, folder: str | Path) -> list[str]:
        """Write the plan's two files into `folder`; returns their names."""
        folder = Path(folder)
        arrays = self._arrays()
        doc = {"format": PLAN_FORMAT, "old_size": self.old_size, "new_size": self.new_size,
               "seed": self.seed, "counts": self.counts(), "meta": self.meta, "provenance": self.provenance}
        if self.output is not None:
            arrays.update(self.output._arrays(OUTPUT_PREFIX))
            doc["output_counts"] = self.output.counts()
            doc["output_provenance"] = self.output.provenance
        save_file(arrays, str(folder / PLAN_WEIGHTS))
        follow_umask(folder / PLAN_WEIGHTS)  # safetensors writes 0600; the rest of the output follows the umask
        (folder / PLAN_JSON).write_text(json.dumps(doc, indent=1, ensure_ascii=False))
        return [PLAN_WEIGHTS, PLAN_JSON]

    @classmethod
    def load(cls, folder: str | Path) -> Self:
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

        def side(prefix: str, provenance) -> Self:
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
