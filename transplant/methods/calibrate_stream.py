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

from transplant.common.memory import trim_heap
from transplant.io.checkpoint import EmbeddingLayout, _converted_names, _match_key
from transplant.io.tensor_reader import TensorReader, put_parameter
from transplant.io.frozen_load import layer_stack

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
    stack = layer_stack(base)
    if stack is None:
        return StreamedModel(None, "no stack of decoder layers found")
    stack_name, layers = stack
    prefix = f"{model.base_model_prefix}." if base is not model else ""
    converted = _converted_names(model, layout.shard_of)
    params = dict(base.named_parameters())
    reader = TensorReader(layout)
    key_of: dict[str, str] = {}
    for name, p in params.items():
        if p is emb.weight:
            continue  # the new rows of the ids the text uses are set in place for the read
        key = _match_key([prefix + name], layout.shard_of, model.base_model_prefix or "", converted)
        if key is None:
            return StreamedModel(None, f"no checkpoint tensor loads into {prefix + name} as it is")
        if reader.shape(key) != tuple(p.shape):  # e.g. experts merged on load: checked before the read
            return StreamedModel(None, f"{key} is stored as {reader.shape(key)}, {prefix + name} is {tuple(p.shape)}")
        key_of[name] = key
    other = [n for n in key_of if not n.startswith(stack_name + ".")]
    for name in other:  # small: final norm, position tables, GPT-2's wpe, Bloom's embedding norm
        put_parameter(base, name, reader.read(key_of[name], dtype))
    streamed = StreamedModel(model, layers=len(layers), dtype=dtype, width=int(emb.embedding_dim))
    streamed.other_bytes = sum(reader.nbytes(key_of[n]) for n in other)
    pool: dict[str, torch.Tensor] = {}
    for i, layer in enumerate(layers):
        own = {n: key_of[f"{stack_name}.{i}.{n}"] for n, _ in layer.named_parameters()}
        streamed.layer_bytes = max(streamed.layer_bytes, sum(reader.nbytes(k) for k in own.values()))
        layer.register_forward_pre_hook(_loader(layer, own, reader, dtype, streamed.reads, i, pool))
        layer.register_forward_hook(_releaser(layer))
    widths = [m.out_features for m in layers[0].modules() if isinstance(m, torch.nn.Linear)]
    streamed.widest = max(widths + [streamed.width])
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    streamed.heads = int(getattr(text, "num_attention_heads", 0) or getattr(text, "n_head", 0) or 1)
    return streamed


def _loader(layer: torch.nn.Module, keys: dict[str, str], reader: TensorReader, dtype: torch.dtype, reads, index: int,
            pool: dict[str, torch.Tensor]):
    """Read the layer's tensors into `pool`, buffers shared by every layer (decoder layers have
    the same shapes): one allocation for the whole read, not one per tensor and layer, whose
    freed blocks the C allocator would keep and the activations fragment (measured: 1 GB more
    peak on SmolLM2's 30 layers)."""
    def load(module, args):
        for name, key in keys.items():
            size = reader.nbytes(key)
            if name not in pool or pool[name].numel() < size:
                pool[name] = torch.empty(size, dtype=torch.uint8)
            put_parameter(layer, name, reader.read(key, dtype, into=pool[name]))
        reads[index] += 1
    return load


def _releaser(layer: torch.nn.Module):
    """Set the layer's parameters back on the meta device once it has run, and give the heap's
    free pages back. glibc keeps the freed activations of each layer on its heap, below blocks
    still in use, where they are never returned: SmolLM2's 30 layers over 4,096 tokens in one
    batch left the process 1.7 GB larger, 0.2 GB with a trim after each layer."""
    def release(module, args, output):
        for sub in layer.modules():
            for leaf, p in list(sub._parameters.items()):
                if p is not None and p.device.type != "meta":
                    sub._parameters[leaf] = torch.nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=False)
        trim_heap()
    return release
