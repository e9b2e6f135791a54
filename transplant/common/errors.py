"""The one exception type users see: a single line naming the problem and the fix."""


class TransplantError(Exception):
    """Bad input or an impossible request; the CLI prints it as one line and exits non-zero.

    Example:
        >>> raise TransplantError("tokenizer file not found: tok.json (pass a tokenizer.json or a folder holding one)")
        Traceback (most recent call last):
        ...
        transplant.common.errors.TransplantError: tokenizer file not found: tok.json (pass a tokenizer.json or a folder holding one)
    """
