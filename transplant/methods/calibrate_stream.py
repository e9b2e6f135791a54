"""Calibration's read, one decoder layer at a time: the source model's body is never whole in memory.

Calibration needs the final hidden states of a few thousand tokens of text. Loading the whole
source model for that costs its full size (a 7B model: 14.5 GB in bf16, 29 GB in float32). Here
the model is built on the meta device (`accelerate.init_empty_weights`, buffers such as rotary
tables made for real), its small parts outside the decoder layers (final norm, position tables)
are read once, and each decoder layer's tensors are read from the checkpoint just before it runs
and let go as soon as it has run (forward hooks), in the checkpoint's own dtype: peak memory is
one layer plus the activations of one batch, whatever the depth. The text goes through as few
batches as the activation budget allows (one for the default 4,096 tokens at 7B widths), so each
layer is read once. The model's own `forward` runs, so masks, positions, Gemma's scaled
embeddings and every architecture's quirks are transformers' own.

Where this cannot be built (the checkpoint names a tensor transformers converts on load, a custom
embedding module, a layer stack that is not one `ModuleList`), `open_streamed` says why and the
caller loads the whole model as before.

Example:
    >>> from transplant.io.checkpoint import locate_embeddings
    >>> streamed = open_streamed(Path(model_dir), locate_embeddings(Path(model_dir)))
    >>> streamed.why_not is None, streamed.layers, streamed.dtype
    (True, 2, torch.float32)
    >>> streamed.peak_bytes(tokens=4096) < 50 << 20  # a tiny model: a few MB
    True
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from transplant.common.safetensors_header import read_header
from transplant.io.checkpoint import EmbeddingLayout, _converted_names, _match_key

log = logging.getLogger(__name__)

# Activations of one batch are kept under this (the attention scores, the MLP's widest product):
# one 4,096-token batch at Mistral-7B widths in bf16 is about 0.7 GB, so the default text goes
# through in one or two batches and each layer is read once or twice.
ACTIVATION_BUDGET = 768 << 20


@dataclass
class StreamedModel:
    """A source model whose decoder layers are read from the checkpoint as they run.

    `model` is the whole causal LM, every parameter on the meta device except the small ones
    outside the layers; run its `base_model` (the LM head stays on meta). `why_not` says why
    streaming could not be set up (then `model` is None and the caller loads the whole model).
    """

    model: torch.nn.Module | None
    why_not: str | None = None
    layers: int = 0
    dtype: torch.dtype = torch.float32
    layer_bytes: int = 0  # the largest decoder layer's tensors, as stored
    other_bytes: int = 0  # what stays in memory outside the layers (norms, position tables)
    width: int = 0  # hidden size
    widest: int = 0  # the widest activation per token (the MLP's inner width, or the hidden size)
    heads: int = 0
    reads: dict = field(default_factory=lambda: defaultdict(int))  # layer index -> times read (tests)

    def batch_tokens(self, ctx: int) -> int:
        """Tokens per batch that keep one batch's activations under `ACTIVATION_BUDGET` (at least one chunk)."""
        return max(ctx + 1, ACTIVATION_BUDGET // max(1, self._bytes_per_token(ctx)))

    def _bytes_per_token(self, ctx: int) -> int:
        size = torch.finfo(self.dtype).bits // 8
        # residual, normed, attention output, three MLP-wide products, and one row of attention
        # scores per head (float32 inside softmax on the CPU)
        return (4 * self.width + 3 * self.widest) * size + self.heads * (ctx + 1) * 4

    def peak_bytes(self, tokens: int, ctx: int = 512) -> int:
        """Expected peak of the read: one layer (the previous one is let go before the next is
        read), the small parts, one batch's activations and the float32 hidden states kept for the fit."""
        batch = min(tokens + tokens // ctx + 1, self.batch_tokens(ctx))
        return self.layer_bytes + self.other_bytes + batch * self._bytes_per_token(ctx) + tokens * self.width * 4


def _layer_stack(base: torch.nn.Module) -> tuple[str, torch.nn.ModuleList] | None:
    """The decoder layers: the `ModuleList` of the base model holding the most parameters."""
    best, best_n = None, 0
    for name, module in base.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module):
            n = sum(p.numel() for p in module.parameters())
            if n > best_n:
                best, best_n = (name, module), n
    return best


def open_streamed(folder: Path, layout: EmbeddingLayout, trust_remote_code: bool = False) -> StreamedModel:
    """Build the source model on the meta device with its decoder layers read on demand.

    Example:
        >>> from transplant.io.checkpoint import locate_embeddings
        >>> streamed = open_streamed(Path(model_dir), locate_embeddings(Path(model_dir)))
        >>> streamed.model.base_model.layers[0].mlp.up_proj.weight.device  # read when the layer runs
        device(type='meta')
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    dtype = layout.dtype
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    model.eval()
    base = model.base_model
    emb = model.get_input_embeddings()
    if not isinstance(emb, torch.nn.Embedding):
        return StreamedModel(None, f"its input embedding is a custom module ({type(emb).__name__})")
    stack = _layer_stack(base)
    if stack is None:
        return StreamedModel(None, "no stack of decoder layers found")
    stack_name, layers = stack
    prefix = f"{model.base_model_prefix}." if base is not model else ""
    converted = _converted_names(model, layout.shard_of)
    params = dict(base.named_parameters())
    key_of: dict[str, str] = {}
    for name, p in params.items():
        if p is emb.weight:
            continue  # the new rows of the ids the text uses are set in place for the read
        key = _match_key([prefix + name], layout.shard_of, model.base_model_prefix or "", converted)
        if key is None:
            return StreamedModel(None, f"no checkpoint tensor loads into {prefix + name} as it is")
        key_of[name] = key
    reader = _Reader(layout)
    other = [n for n in key_of if not n.startswith(stack_name + ".")]
    for name in other:  # small: final norm, position tables, GPT-2's wpe, Bloom's embedding norm
        _put(base, name, reader.read(key_of[name], dtype))
    streamed = StreamedModel(model, layers=len(layers), dtype=dtype, width=int(emb.embedding_dim))
    streamed.other_bytes = sum(reader.nbytes(key_of[n]) for n in other)
    for i, layer in enumerate(layers):
        own = {n: key_of[f"{stack_name}.{i}.{n}"] for n, _ in layer.named_parameters()}
        streamed.layer_bytes = max(streamed.layer_bytes, sum(reader.nbytes(k) for k in own.values()))
        layer.register_forward_pre_hook(_loader(layer, own, reader, dtype, streamed.reads, i))
        layer.register_forward_hook(_releaser(layer))
    widths = [m.out_features for m in layers[0].modules() if isinstance(m, torch.nn.Linear)]
    streamed.widest = max(widths + [streamed.width])
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    streamed.heads = int(getattr(text, "num_attention_heads", 0) or getattr(text, "n_head", 0) or 1)
    return streamed


class _Reader:
    """Tensors read from the checkpoint's shards by key, with plain reads into a fresh buffer.

    Not through safetensors' memory map: the pages a map touches stay in this process's resident
    set until the file is closed, so a layer-by-layer read would grow to the whole checkpoint.
    """

    _DTYPES = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16,
               "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
               "BOOL": torch.bool}

    def __init__(self, layout: EmbeddingLayout) -> None:
        self.layout = layout
        self.headers: dict[str, tuple[dict, int]] = {}

    def _entry(self, key: str) -> tuple[Path, dict, int]:
        shard = self.layout.shard_of[key]
        if shard not in self.headers:
            self.headers[shard] = read_header(self.layout.folder / shard)
        header, start = self.headers[shard]
        return self.layout.folder / shard, header[key], start

    def read(self, key: str, dtype: torch.dtype) -> torch.Tensor:
        path, entry, start = self._entry(key)
        begin, end = entry["data_offsets"]
        buf = bytearray(end - begin)
        with open(path, "rb", buffering=0) as fh:
            fh.seek(start + begin)
            view, got = memoryview(buf), 0
            while got < len(buf):
                n = fh.readinto(view[got:])
                if not n:
                    raise OSError(f"{path}: the file ends inside tensor {key} (is the checkpoint complete?)")
                got += n
        stored = self._DTYPES[entry["dtype"]]
        t = torch.frombuffer(buf, dtype=torch.uint8).view(stored).reshape(entry["shape"]) if buf else \
            torch.empty(entry["shape"], dtype=stored)
        return t if t.dtype == dtype or not t.is_floating_point() else t.to(dtype)

    def nbytes(self, key: str) -> int:
        _, entry, _ = self._entry(key)
        return entry["data_offsets"][1] - entry["data_offsets"][0]


def _put(module: torch.nn.Module, name: str, value: torch.Tensor) -> None:
    """Set parameter `name` (dotted, under `module`) to `value`, frozen."""
    owner_name, _, leaf = name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    if tuple(owner._parameters[leaf].shape) != tuple(value.shape):
        raise ValueError(f"{name}: the checkpoint holds {tuple(value.shape)}, the model {tuple(owner._parameters[leaf].shape)}")
    owner._parameters[leaf] = torch.nn.Parameter(value, requires_grad=False)


def _loader(layer: torch.nn.Module, keys: dict[str, str], reader: _Reader, dtype: torch.dtype, reads, index: int):
    def load(module, args):
        for name, key in keys.items():
            _put(layer, name, reader.read(key, dtype))
        reads[index] += 1
    return load


def _releaser(layer: torch.nn.Module):
    def release(module, args, output):
        for sub in layer.modules():
            for leaf, p in list(sub._parameters.items()):
                if p is not None and p.device.type != "meta":
                    sub._parameters[leaf] = torch.nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=False)
    return release
