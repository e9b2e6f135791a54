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


# What a full disk looks like from the writers used here: OSError ENOSPC (or a quota), torch's
# zip writer ("PytorchStreamWriter failed writing file ...: file write failed", "unexpected pos
# N vs M"), safetensors' Rust error (`IoError(Os { code: 28, kind: StorageFull, ...`).
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "StorageFull", "unexpected pos",
                   "file write failed")


def is_disk_full(exc: BaseException) -> bool:
    """True when `exc` says a write ran out of disk space (the one rule for every writer).

    Example:
        >>> is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
        True
        >>> is_disk_full(RuntimeError("[enforce fail at inline_container.cc:783] . unexpected pos 64 vs 52"))
        True
        >>> is_disk_full(RuntimeError("shape mismatch"))
        False
    """
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno in _DISK_FULL_ERRNOS
    return isinstance(exc, Exception) and any(text in str(exc) for text in _DISK_FULL_TEXT)


def disk_full_hint(exc: BaseException, then: str = "run the command again") -> str:
    """The fix the commands print after a system error that says the disk is full (else nothing).

    Example:
        >>> disk_full_hint(OSError(errno.ENOSPC, "No space left on device"))
        ' (free some disk space, or write to another disk, then run the command again)'
        >>> disk_full_hint(PermissionError(errno.EACCES, "Permission denied"))
        ''
    """
    if is_disk_full(exc):
        return f" (free some disk space, or write to another disk, then {then})"
    return ""
