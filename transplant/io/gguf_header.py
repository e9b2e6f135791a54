"""The key/value header of a GGUF file (license, languages, quantization, source repo), read
without the gguf package and without reading any tensor: what the model card says about a
model that came from a GGUF file.

Example:
    >>> meta = gguf_metadata("SmolLM2-135M-Instruct.Q4_1.gguf")  # doctest: +SKIP
    >>> file_type_name(meta["general.file_type"])  # doctest: +SKIP
    'Q4_1'
"""

from __future__ import annotations

import struct
from pathlib import Path

_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def gguf_metadata(path: str | Path, prefix: str = "general.") -> dict:
    """The key/value metadata of a GGUF file whose keys start with `prefix` (header only; fast)."""
    out: dict = {}
    try:
        with open(path, "rb") as fh:
            if fh.read(4) != b"GGUF":
                return out
            version, = struct.unpack("<I", fh.read(4))
            if version < 2:
                return out
            _tensors, n_kv = struct.unpack("<QQ", fh.read(16))

            def string() -> str:
                n, = struct.unpack("<Q", fh.read(8))
                return fh.read(n).decode("utf-8", "replace")

            def value(kind: int):
                if kind == 8:
                    return string()
                if kind == 9:
                    sub, n = struct.unpack("<IQ", fh.read(12))
                    return [value(sub) for _ in range(n)]
                fmt = _GGUF_SCALARS[kind]
                return struct.unpack(fmt, fh.read(struct.calcsize(fmt)))[0]

            for _ in range(n_kv):
                key = string()
                kind, = struct.unpack("<I", fh.read(4))
                if not key.startswith(prefix) and kind == 9:
                    # Skip big arrays (the vocabulary) without building them when possible.
                    sub, n = struct.unpack("<IQ", fh.read(12))
                    if sub in _GGUF_SCALARS:
                        fh.seek(n * struct.calcsize(_GGUF_SCALARS[sub]), 1)
                    else:
                        for _ in range(n):
                            value(sub)
                    continue
                v = value(kind)
                if key.startswith(prefix):
                    out[key] = v
    except (OSError, KeyError, struct.error, UnicodeDecodeError):
        pass
    return out


def file_type_name(file_type) -> str | None:
    """The quantization name of `general.file_type` (e.g. 3 -> Q4_1), or None when absent."""
    if not isinstance(file_type, int):
        return None
    try:
        from gguf import LlamaFileType

        return LlamaFileType(file_type).name.replace("MOSTLY_", "")
    except Exception:
        return {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 15: "Q4_K_M",
                17: "Q5_K_M", 18: "Q6_K", 32: "BF16"}.get(file_type, f"GGUF file type {file_type}")


__all__ = ["file_type_name", "gguf_metadata"]
