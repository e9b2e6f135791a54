"""Content fingerprints recorded in plans and cards, so a result names exactly what it was made from."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_fingerprint(path: str | Path) -> str:
    """sha256 (16 hex digits) of a file's content, read in 8 MiB blocks.

    Example:
        >>> _ = Path("hello.txt").write_bytes(b"hello\\n")
        >>> file_fingerprint("hello.txt")
        '5891b5b522d5df08'
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(8 << 20):
            h.update(block)
    return h.hexdigest()[:16]
