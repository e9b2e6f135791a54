"""The `transplant` command line."""

from transplant.cli.main import main

__all__ = ["main"]
