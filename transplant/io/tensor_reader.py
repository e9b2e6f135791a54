"""Tensors read from a checkpoint's safetensors shards with plain reads, and set into a model
built on the meta device: what the layer-by-layer calibration read and the frozen models of the
training commands use instead of safetensors' memory map.

Why not the map: the pages a memory map touches stay in the process's resident set until the
file is closed, so a model loaded through it costs its size twice while it loads (the file's pages
and the tensors), and a read layer by layer would grow to the whole checkpoint.

Example:
    >>> from transplant.io.checkpoint import locate_embeddings
    >>> reader = TensorReader(locate_embeddings(Path(model_dir)))
    >>> reader.shape("model.norm.weight"), reader.read("model.norm.weight", torch.float32).dtype
    ((32,), torch.float32)
"""

from __future__ import annotations

from pathlib import Path

import torch

from transplant.common.safetensors_header import read_header
from transplant.io.checkpoint import EmbeddingLayout


_DTYPES = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


class TensorReader:
    """Tensors read from the checkpoint's shards by key, with plain reads into a fresh buffer.

    Not through safetensors' memory map: the pages a map touches stay in this process's resident
    set until the file is closed, so a layer-by-layer read would grow to the whole checkpoint.
    """

    def __init__(self, layout: EmbeddingLayout) -> None:
        self.layout = layout
        self.headers: dict[str, tuple[dict, int]] = {}

    def _entry(self, key: str) -> tuple[Path, dict, int]:
        shard = self.layout.shard_of[key]
        if shard not in self.headers:
            self.headers[shard] = read_header(self.layout.folder / shard)
        header, start = self.headers[shard]
        return self.layout.folder / shard, header[key], start

    def read(self, key: str, dtype: torch.dtype, into: torch.Tensor | None = None) -> torch.Tensor:
        """Tensor `key` in `dtype`; read into the bytes of `into` (uint8, large enough) when given."""
        path, entry, start = self._entry(key)
        begin, end = entry["data_offsets"]
        size = end - begin
        buf = into[:size] if into is not None else torch.empty(size, dtype=torch.uint8)
        with open(path, "rb", buffering=0) as fh:
            fh.seek(start + begin)
            view, got = memoryview(buf.numpy()), 0
            while got < size:
                n = fh.readinto(view[got:])
                if not n:
                    raise OSError(f"{path}: the file ends inside tensor {key} (is the checkpoint complete?)")
                got += n
        t = buf.view(_DTYPES[entry["dtype"]]).reshape(entry["shape"])
        return t if t.dtype == dtype or not t.is_floating_point() else t.to(dtype)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._entry(key)[1]["shape"])

    def nbytes(self, key: str) -> int:
        _, entry, _ = self._entry(key)
        return entry["data_offsets"][1] - entry["data_offsets"][0]


def put_parameter(module: torch.nn.Module, name: str, value: torch.Tensor) -> None:
    """Set parameter `name` (dotted, under `module`) to `value`, frozen."""
    owner_name, _, leaf = name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    if tuple(owner._parameters[leaf].shape) != tuple(value.shape):
        raise ValueError(f"{name}: the checkpoint holds {tuple(value.shape)}, the model {tuple(owner._parameters[leaf].shape)}")
    owner._parameters[leaf] = torch.nn.Parameter(value, requires_grad=False)
