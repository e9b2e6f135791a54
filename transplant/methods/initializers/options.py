"""`Option`: one setting an initializer declares, typed and checked (`transplant run --set knn.k=20`).

An option declares its type and, where a value can be meaningless, its range (`low`/`high`,
open or closed), its `choices`, or that it must be given (`required`, with how to get one). The
run's specification checks every setting against them before anything is loaded.

Example:
    >>> Option("temperature", float, 0.1, "softmax temperature", low=0, low_open=True).parse("0.05")
    0.05
    >>> Option("k", int, 10, "neighbours", low=1).parse("0")
    Traceback (most recent call last):
    ...
    ValueError: must be at least 1, not 0
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
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: the value must be above `low`, not equal to it
    high_open: bool = False
    choices: tuple[str, ...] | None = None
    required: str | None = None  # when set, an empty value is refused with this hint

    def check(self, value: Any) -> None:
        """Refuse a typed value outside the declared range or choices (`ValueError` saying why)."""
        if self.required and value in ("", None):
            raise ValueError(f"must be given ({self.required})")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"must be one of {', '.join(self.choices)}, not {value!r}")
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            raise ValueError(f"must be {'above' if self.low_open else 'at least'} {_num(self.low)}, not {value}")
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            raise ValueError(f"must be {'below' if self.high_open else 'at most'} {_num(self.high)}, not {value}")

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
                self.check(value)
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
        self.check(parsed)
        return parsed

    def describe(self) -> str:
        """`type, default VALUE` (e.g. `int, default 20`)."""
        default = str(self.default).lower() if self.type is bool else self.default
        if default == "":
            default = '"" (unset)'
        limits = []
        if self.choices is not None:
            limits.append(f"one of {', '.join(self.choices)}")
        if self.low is not None:
            limits.append(f"{'>' if self.low_open else '>='} {_num(self.low)}")
        if self.high is not None:
            limits.append(f"{'<' if self.high_open else '<='} {_num(self.high)}")
        return f"{self.type.__name__}, default {default}" + (f", {', '.join(limits)}" if limits else "")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
