"""The one exception type users see: a single line naming the problem and the fix."""

import errno


class TransplantError(Exception):
    """Bad input or an impossible request; the CLI prints it as one line and exits non-zero.

    Example:
        >>> raise TransplantError("tokenizer file not found: tok.json (pass a tokenizer.json or a folder holding one)")
        Traceback (most recent call last):
        ...
        transplant.common.errors.TransplantError: tokenizer file not found: tok.json (pass a tokenizer.json or a folder holding one)
    """


def disk_full_hint(exc: BaseException, then: str = "run the command again") -> str:
    """The fix the commands print after a system error that says the disk is full (else nothing).

    Example:
        >>> disk_full_hint(OSError(errno.ENOSPC, "No space left on device"))
        ' (free some disk space, or write to another disk, then run the command again)'
        >>> disk_full_hint(PermissionError(errno.EACCES, "Permission denied"))
        ''
    """
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f" (free some disk space, or write to another disk, then {then})"
    return ""
