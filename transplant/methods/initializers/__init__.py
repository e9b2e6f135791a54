"""Embedding initializers: each file one method, registered by name in `registry.py`."""

from transplant.methods.initializers.options import Option
from transplant.methods.initializers.registry import (
                                                      BaseInitializer,
                                                      InitContext,
                                                      available,
                                                      declared_options,
                                                      format_options,
                                                      get_initializer,
                                                      resolve_options,
)

__all__ = ["BaseInitializer", "InitContext", "Option", "available", "declared_options", "format_options",
           "get_initializer", "resolve_options"]
