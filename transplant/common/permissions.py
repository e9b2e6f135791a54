"""File modes that follow the user's umask.

`safetensors` (and `tempfile.mkstemp`) create files readable by their owner only (0600); an
output folder whose other files follow the umask (0644 under the usual 022) would then hold one
file nobody else can read: a model shared on a cluster loads for its owner and fails for others.

Example:
    >>> from pathlib import Path
    >>> import os
    >>> _ = Path("private.bin").write_bytes(b"x"); os.chmod("private.bin", 0o600)
    >>> follow_umask("private.bin")
    >>> oct(os.stat("private.bin").st_mode & 0o777) == oct(0o666 & ~umask())
    True
"""

from __future__ import annotations

import os
from pathlib import Path


def umask() -> int:
    """The process's umask (read without changing it for longer than the call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: str | Path) -> None:
    """Give a regular file the mode a plain `open(path, "w")` would have had (0666 minus the umask)."""
    os.chmod(path, 0o666 & ~umask())
