"""Streaming safetensors shards: rewrite a few tensors of a shard without loading the rest.

`safetensors` reads lazily but writes only from a dict of in-memory tensors, which would put a
whole shard (several GB for a 7B model) in RAM. The format is simple (8-byte little-endian
header length, JSON header, raw data), so here we write the header ourselves and stream every
untouched tensor's bytes from the source file and every replaced tensor chunk by chunk.

Example:
    >>> src = f"{model_dir}/model.safetensors"
    >>> header, data_start = read_header(src)
    >>> header["model.embed_tokens.weight"]["dtype"], header["model.embed_tokens.weight"]["shape"]
    ('F32', [500, 32])
    >>> rows = NewTensor("F32", [600, 32], lambda: (torch.full((100, 32), float(i)) for i in range(6)))
    >>> sizes = rewrite_shard(src, "new.safetensors", {"model.embed_tokens.weight": rows})  # 6 chunks
    >>> sizes["model.embed_tokens.weight"] == rows.nbytes == 600 * 32 * 4
    True
    >>> from safetensors.torch import load_file
    >>> new, old = load_file("new.safetensors"), load_file(src)
    >>> new["model.embed_tokens.weight"][::100, 0].tolist()
    [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    >>> all(new[k].equal(old[k]) for k in old if k != "model.embed_tokens.weight")  # streamed over as is
    True
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from transplant.common.errors import TransplantError
from transplant.common.safetensors_header import INDEX_NAME, read_header, shard_map, validate_shard  # noqa: F401  (re-exported)

DTYPE_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}
_COPY_BLOCK = 64 << 20


@dataclass
class NewTensor:
    """A tensor to write: its safetensors dtype name, shape, and a producer of its bytes in order."""

    dtype: str
    shape: list[int]
    chunks: Callable[[], Iterable[torch.Tensor]]

    @property
    def nbytes(self) -> int:
        size = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8}[self.dtype]
        for s in self.shape:
            size *= s
        return size


def rewrite_shard(src: str | Path, dst: str | Path, replace: dict[str, NewTensor],
                  drop: Iterable[str] = (), add: dict[str, NewTensor] | None = None) -> dict[str, int]:
    """Write `dst` = `src` with the tensors in `replace` swapped, those in `drop` left out and
    those in `add` appended (e.g. an untied LM head that the tied source never stored).

    Returns the byte size of every tensor written (for the shard index's total_size).

    Example:
        >>> sizes = rewrite_shard(f"{model_dir}/model.safetensors", "headless.safetensors", {},
        ...                       drop=["lm_head.weight"])  # as a tied model stores it
        >>> "lm_head.weight" in sizes
        False
        >>> head = NewTensor("F32", [500, 32], lambda: [torch.zeros(500, 32)])
        >>> sizes = rewrite_shard("headless.safetensors", "untied.safetensors", {}, add={"lm_head.weight": head})
        >>> sizes["lm_head.weight"], len(sizes)
        (64000, 21)
    """
    header, data_start = read_header(src)
    meta = header.pop("__metadata__", None)
    drop = set(drop)
    new_header: dict = {}
    offset = 0
    plan: list[tuple[str, int, int] | tuple[str, NewTensor]] = []
    # Keep the source order so untouched tensors are read sequentially.
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        if name in drop:
            continue
        if name in replace:
            t = replace[name]
            new_header[name] = {"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, offset + t.nbytes]}
            plan.append((name, t))
            offset += t.nbytes
        else:
            begin, end = info["data_offsets"]
            new_header[name] = {"dtype": info["dtype"], "shape": info["shape"],
                                "data_offsets": [offset, offset + end - begin]}
            plan.append((name, data_start + begin, end - begin))
            offset += end - begin
    for name, t in (add or {}).items():
        if name in new_header:
            raise TransplantError(f"tensor {name} already in {src} (internal error: cannot add it)")
        new_header[name] = {"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, offset + t.nbytes]}
        plan.append((name, t))
        offset += t.nbytes
    missing = set(replace) - set(new_header)
    if missing:
        raise TransplantError(f"tensors {sorted(missing)} not in {src} (internal error: stale shard index)")
    if meta is not None:
        new_header["__metadata__"] = meta
    blob = json.dumps(new_header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the format aligns tensor data to 8 bytes
    sizes: dict[str, int] = {}
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        fout.write(struct.pack("<Q", len(blob)))
        fout.write(blob)
        run_start, run_length = 0, 0  # untouched tensors lie back to back: copy each run at once
        for item in plan:
            if isinstance(item[1], NewTensor):
                _copy_range(fin, fout, run_start, run_length, src)
                run_length = 0
                name, tensor = item
                written = 0
                for chunk in tensor.chunks():
                    data = chunk.contiguous().view(torch.uint8).numpy()
                    fout.write(memoryview(data))
                    written += data.nbytes
                if written != tensor.nbytes:
                    raise TransplantError(f"wrote {written} bytes for {name}, expected {tensor.nbytes} (internal error)")
                sizes[name] = written
            else:
                name, start, length = item
                if run_length and run_start + run_length != start:
                    _copy_range(fin, fout, run_start, run_length, src)
                    run_length = 0
                if not run_length:
                    run_start = start
                run_length += length
                sizes[name] = length
        _copy_range(fin, fout, run_start, run_length, src)
    return sizes


def _copy_range(fin, fout, start: int, length: int, src: str | Path) -> None:
    """Append `length` bytes of `fin` from `start` to `fout`, in the kernel where it can
    (`copy_file_range`: no trip through Python's buffers), else block by block."""
    if not length:
        return
    fout.flush()
    done = 0
    copy_range = getattr(os, "copy_file_range", None)
    if copy_range is not None:
        try:
            while done < length:
                n = copy_range(fin.fileno(), fout.fileno(), min(length - done, 1 << 30), start + done)
                if n == 0:
                    break  # end of file: reported as truncation below
                done += n
        except OSError:  # not supported between these files (another filesystem type, an old kernel)
            pass
        fout.seek(0, os.SEEK_END)  # copy_file_range without an out offset moved the fd's position
    fin.seek(start + done)
    while done < length:
        block = fin.read(min(_COPY_BLOCK, length - done))
        if not block:
            raise TransplantError(f"{src} is truncated (re-download or re-save the checkpoint)")
        fout.write(block)
        done += len(block)


def copy_or_link(src: Path, dst: Path, link: bool) -> None:
    """Hard-link when asked and possible (same filesystem), else copy the bytes."""
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copyfile(src, dst)


def tensor_sizes(path: str | Path) -> dict[str, int]:
    header, _ = read_header(path)
    return {k: v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"}
