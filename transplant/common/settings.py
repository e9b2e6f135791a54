"""Settings declared once: a dataclass field carries its help text, command-line flag, range and
choices (`setting(...)`); the command's options are generated from it
(`transplant.cli.spec_options.dataclass_options`) and every value, from the command line, a
recipe or Python, is checked against it (`check_declared`). A new option is one field.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Demo:
    ...     lr: float = setting(1e-2, "Learning rate.", flag="--lr", gt=0)
    ...     batch_size: int = setting(4, "Windows per step.", flag="--batch-size", ge=1)
    >>> check_declared(Demo(lr=float("nan")), "demo")
    Traceback (most recent call last):
    ...
    transplant.common.errors.TransplantError: --lr must be a finite number above 0, not nan (see `demo --help`)
    >>> check_declared(Demo(batch_size=0), "demo")
    Traceback (most recent call last):
    ...
    transplant.common.errors.TransplantError: --batch-size must be a whole number >= 1, not 0 (see `demo --help`)
"""

from __future__ import annotations

import math
from dataclasses import MISSING, Field, field, fields
from typing import Any


def setting(default: Any = MISSING, help: str = "", *, flag: str | None = None, ge: float | None = None,
            gt: float | None = None, lt: float | None = None, le: float | None = None,
            choices: tuple[str, ...] | None = None, path: str | None = None, default_factory: Any = MISSING) -> Any:
    """A declared field: its default, help, `flag` (None: recipe and Python only), range (`ge`/`gt`
    below, `lt`/`le` above), `choices`, and `path="dir"` for a folder argument."""
    meta = {"help": help, "flag": flag, "ge": ge, "gt": gt, "lt": lt, "le": le, "choices": choices, "path": path,
            "declared": True}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def declared(cls) -> list[Field]:
    """The declared fields of a dataclass (class or instance), in order."""
    return [f for f in fields(cls) if f.metadata.get("declared")]


def base_type(f: Field) -> tuple[str, bool]:
    """(the field's type name: int, float, bool, str, list; whether None is allowed), from its annotation."""
    text = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    parts = [p.strip() for p in text.split("|")]
    optional = "None" in parts
    name = next(p for p in parts if p != "None")
    return ("list" if name.startswith("list") else name), optional


def flag_of(f: Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _want(f: Field, kind: str) -> str:
    m = f.metadata
    if m["choices"]:
        return "one of " + ", ".join(m["choices"])
    if kind == "bool":
        return "true or false"
    if kind == "int":
        return (f"a whole number from {m['ge']:g} to {m['le']:g}" if m["le"] is not None
                else f"a whole number >= {m['ge']:g}" if m["ge"] is not None else "a whole number")
    low = f"above {m['gt']:g}" if m["gt"] is not None else f">= {m['ge']:g}" if m["ge"] is not None else ""
    high = f"below {m['lt']:g}" if m["lt"] is not None else f"at most {m['le']:g}" if m["le"] is not None else ""
    return "a finite number" + (f" {low}" if low else "") + (f" and {high}" if low and high else f" {high}" if high
                                                            else "")


def _ok(value: Any, f: Field, kind: str) -> bool:
    m = f.metadata
    if m["choices"]:
        return value in m["choices"]
    if kind == "bool":
        return isinstance(value, bool)
    if kind in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, int if kind == "int" else (int, float)):
            return False
        if kind == "float" and not math.isfinite(value):
            return False
        return ((m["ge"] is None or value >= m["ge"]) and (m["gt"] is None or value > m["gt"])
                and (m["lt"] is None or value < m["lt"]) and (m["le"] is None or value <= m["le"]))
    return True


def check_declared(cfg: Any, command: str) -> None:
    """Every declared value of `cfg` of its type and in its range, else one line naming the flag
    (`nan` passes no range: it compares false with everything)."""
    from transplant.common.errors import TransplantError

    for f in declared(cfg):
        value = getattr(cfg, f.name)
        kind, optional = base_type(f)
        if value is None and optional:
            continue
        if not _ok(value, f, kind):
            raise TransplantError(f"{flag_of(f)} must be {_want(f, kind)}, not {value!r} (see `{command} --help`)")


__all__ = ["base_type", "check_declared", "declared", "flag_of", "setting"]
