"""Initializers by name, imported lazily so heavy optional dependencies load only when used.

Adding an initializer is one new file in this folder plus one line in `_REGISTRY`.

Example:
    >>> get_initializer("fvt").name
    'fvt'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module
from typing import Protocol

from ..align import Alignment
from ..errors import TransplantError
from ..plan import Row

_REGISTRY: dict[str, str] = {
    "special": "special:SpecialInitializer",
    "exact": "exact:ExactInitializer",
    "fvt": "fvt:FVTInitializer",
    "mean": "mean:MeanInitializer",
    "multivariate": "multivariate:MultivariateInitializer",
    "random": "random:RandomInitializer",
}


@dataclass
class InitContext:
    """What an initializer may look at: the alignment and free-form options."""

    alignment: Alignment
    options: dict = field(default_factory=dict)


class Initializer(Protocol):
    name: str

    def assign(self, ctx: InitContext, todo: list[int]) -> dict[int, Row]:
        """Rows for those of `todo` (new ids) this method can make; the rest go down the chain."""


def available() -> list[str]:
    return sorted(_REGISTRY)


def get_initializer(name: str) -> Initializer:
    if name not in _REGISTRY:
        raise TransplantError(f"unknown method {name!r} (choose one of: {', '.join(available())})")
    module, cls = _REGISTRY[name].split(":")
    try:
        found = import_module(f"{__package__}.{module}")
    except ModuleNotFoundError as exc:
        if (exc.name or "").startswith(__package__):
            raise
        from ..sources import missing_package

        raise TransplantError(missing_package(exc, f"method {name!r}")) from None
    return getattr(found, cls)()
