"""`Option`: one setting an initializer declares, typed and checked (`transplant run --set knn.k=20`).

Example:
    >>> Option("temperature", float, 0.1, "softmax temperature").parse("0.05")
    0.05
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


@dataclass(frozen=True)
class Option:
    """One setting an initializer accepts: its name, type (int, float, str or bool), default and help.

    Example:
        >>> Option("k", int, 20, "neighbours per new token").parse("32")
        32
    """

    name: str
    type: type
    default: Any
    help: str = ""

    def parse(self, value: Any) -> Any:
        """`value` (a command-line string or an already typed value) as this option's type.

        Raises:
            ValueError: the value is not one of this type (the message says what was expected).
        """
        if self.type is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
                return value.strip().lower() in _TRUE
            raise ValueError(f"expects true or false, not {value!r}")
        if self.type is str:
            if isinstance(value, str):
                return value
            raise ValueError(f"expects a string, not {value!r}")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(f"expects {_TYPE_WORDS[self.type]}, not {value!r}")
        try:
            if self.type is int and isinstance(value, float):
                raise ValueError
            parsed = self.type(value.strip() if isinstance(value, str) else value)
        except ValueError:
            raise ValueError(f"expects {_TYPE_WORDS[self.type]}, not {value!r}") from None
        if isinstance(parsed, float) and not math.isfinite(parsed):
            raise ValueError(f"expects a finite number, not {value!r}")
        return parsed

    def describe(self) -> str:
        """`type, default VALUE` (e.g. `int, default 20`)."""
        default = str(self.default).lower() if self.type is bool else self.default
        if default == "":
            default = '"" (unset)'
        return f"{self.type.__name__}, default {default}"


_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
