"""The `transplant` command line: `commands.py` (the click group and its commands), `eval_cmd.py`
(`transplant eval`), `tokenizer.py` and `vectors.py` (the `tokenizer` and `vectors` groups),
`spec_options.py` (the `run` options, generated from `RunSpec`), `tables.py` (what they print)."""

from transplant.cli.commands import cli, entry, main

__all__ = ["cli", "entry", "main"]
