"""Embedding initializers: each file one method, registered by name in `registry.py`."""

from .registry import InitContext, Initializer, available, get_initializer

__all__ = ["InitContext", "Initializer", "available", "get_initializer"]
