"""ZeTT-style hypernetwork: trained once per base model, it predicts input and LM-head rows for
any new tokenizer's tokens from their old-tokenizer pieces (`transplant run --method hypernet`).

Public names load on first use, so the `hypernet` command's `--help` (and `transplant hypernet
--help`) does not import torch. The training code lives in `hypernet.training`, so the package's
`train` is always the function, whatever was imported before.

Example:
    >>> from hypernet import HyperNet, TrainConfig, train  # doctest: +SKIP
    >>> train(TrainConfig(model="smollm2-135m-instruct", texts=["de.txt"], out="hn", steps=200))  # doctest: +SKIP
    >>> net = HyperNet.load("hn")  # doctest: +SKIP
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load on first use
    from hypernet.model import HyperNet, HyperNetConfig  # noqa: F401
    from hypernet.settings import TrainConfig  # noqa: F401
    from hypernet.training import train  # noqa: F401

_PUBLIC = {"HyperNet": "hypernet.model", "HyperNetConfig": "hypernet.model", "TrainConfig": "hypernet.settings",
           "train": "hypernet.training"}

__all__ = list(_PUBLIC)


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'hypernet' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later lookups skip this hook
    return value
