"""The safetensors header, checked against the file's size without reading any tensor data.

A safetensors file is an 8-byte little-endian header length, a JSON header (dtype, shape and data
offsets of every tensor) and the raw data. Checkpoint shards (`io.shardio`) and saved plans
(`core.plan`) are read only after this check, so a truncated or damaged file fails with one line.

Example:
    >>> header, data_start = validate_shard(f"{model_dir}/model.safetensors")
    >>> header["model.norm.weight"]["dtype"], header["model.norm.weight"]["shape"]
    ('F32', [32])
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from transplant.common.errors import TransplantError

# Bits per element of every safetensors dtype (sub-byte float types included).
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64,
    "I64": 64, "U64": 64,
}
_MAX_HEADER = 100 << 20
INDEX_NAME = "model.safetensors.index.json"


def validate_shard(path: str | Path) -> tuple[dict, int]:
    """Check a safetensors file's header against its size, without reading tensor data.

    The header must parse (UTF-8 JSON object); every tensor needs a known dtype, a shape, and
    data offsets that match shape x dtype size; the tensors must tile the data section exactly,
    so header length + last end offset == file size (a truncated or padded file fails here).

    Returns (header dict, byte offset where tensor data starts).
    """
    path = Path(path)
    fix = "re-download or re-save the checkpoint"
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) != 8:
                raise TransplantError(f"{path} is not a safetensors file (too short; {fix})")
            (length,) = struct.unpack("<Q", raw)
            if length < 2 or length > _MAX_HEADER:
                raise TransplantError(f"{path} is not a safetensors file (bad header length; {fix})")
            if 8 + length > size:
                raise TransplantError(f"{path} is truncated: its header needs {8 + length} bytes, the file has "
                                      f"{size} ({fix})")
            blob = fh.read(length)
    except FileNotFoundError:
        raise TransplantError(f"shard file not found: {path} ({fix})") from None
    try:
        header = json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise TransplantError(f"{path} has a corrupt header (not UTF-8 JSON; {fix})") from None
    if not isinstance(header, dict):
        raise TransplantError(f"{path} has a corrupt header (not a JSON object; {fix})")
    data_start = 8 + length
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            if info is not None and not isinstance(info, dict):
                raise TransplantError(f"{path} has a corrupt header (__metadata__ is not an object; {fix})")
            continue
        bad = f"{path} has a corrupt header entry for tensor {name!r}"
        if not isinstance(info, dict):
            raise TransplantError(f"{bad} (not an object; {fix})")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in DTYPE_BITS:
            raise TransplantError(f"{bad} (unknown dtype {dtype!r}; {fix})")
        if not isinstance(shape, list) or not all(_is_count(s) for s in shape):
            raise TransplantError(f"{bad} (bad shape {shape!r}; {fix})")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets)
                or offsets[0] > offsets[1]):
            raise TransplantError(f"{bad} (bad data_offsets {offsets!r}; {fix})")
        bits = DTYPE_BITS[dtype]
        for s in shape:
            bits *= s
        if bits % 8 or offsets[1] - offsets[0] != bits // 8:
            raise TransplantError(f"{bad} (data_offsets {offsets} do not match shape {shape} of {dtype}; {fix})")
        spans.append((offsets[0], offsets[1], name))
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            raise TransplantError(f"{path} has a corrupt header (tensor {name!r} starts at byte {begin}, expected "
                                  f"{end}; {fix})")
        end = stop
    if data_start + end != size:
        what = "truncated" if data_start + end > size else "longer than its header says"
        raise TransplantError(f"{path} is {what}: header + data need {data_start + end} bytes, the file has "
                              f"{size} ({fix})")
    return header, data_start


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_header(path: str | Path) -> tuple[dict, int]:
    """Return (header dict, byte offset where tensor data starts); the file is validated first."""
    return validate_shard(path)


def shard_map(folder: Path) -> dict[str, str]:
    """Checkpoint tensor name -> shard file name (from the index, else from the shard headers).

    Every shard's header is validated against its file size here, before anything is read or
    copied, so a truncated or corrupt download fails up front with one clear message.

    Example:
        >>> names = shard_map(Path(model_dir))
        >>> names["lm_head.weight"], len(names)
        ('model.safetensors', 21)
    """
    index = folder / INDEX_NAME
    if index.exists():
        try:
            weight_map = json.loads(index.read_bytes().decode("utf-8"))["weight_map"]
        except (ValueError, KeyError, TypeError):
            raise TransplantError(f"malformed {index}: no weight_map (re-save the checkpoint)") from None
        if not isinstance(weight_map, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and v and Path(v).name == v for k, v in weight_map.items()):
            raise TransplantError(f"malformed {index}: weight_map must map tensor names to shard file names "
                                  "(re-save the checkpoint)")
        headers = {}
        for shard in sorted(set(weight_map.values())):
            if not (folder / shard).is_file():
                raise TransplantError(f"shard {shard} named in {index} is missing (re-download the checkpoint)")
            headers[shard] = read_header(folder / shard)[0]
        for name, shard in weight_map.items():
            if name not in headers[shard]:
                raise TransplantError(f"{index} lists {name} in {shard}, which does not hold it "
                                      "(stale index; re-save the checkpoint)")
        return dict(weight_map)
    out: dict[str, str] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        header, _ = read_header(shard)
        out.update({k: shard.name for k in header if k != "__metadata__"})
    return out
