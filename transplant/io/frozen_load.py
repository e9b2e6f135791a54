"""A model for the training commands to hold frozen: every tensor read into a model built on the
meta device, in the checkpoint's own dtype, with plain reads (`tensor_reader`).

`from_pretrained` reads through safetensors' memory map, whose pages stay in the process's
resident set while the model loads: a bf16 7B-width body costs its size twice at that moment,
which was the peak of a whole healing run (6.2 GB for the 2.55 GB synthetic checkpoint). Here
each tensor is read once into its own memory. Where the model cannot be assembled this way (a
checkpoint tensor transformers converts on load, a parameter no tensor fills), `from_pretrained`
loads it as before.

Example:
    >>> lm = load_frozen(Path(model_dir))
    >>> next(lm.parameters()).dtype, any(p.requires_grad for p in lm.parameters()), lm.training
    (torch.float32, False, False)
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from transplant.io.checkpoint import _converted_names, _match_key, locate_embeddings
from transplant.io.tensor_reader import TensorReader, put_parameter

log = logging.getLogger(__name__)


def load_frozen(folder: Path, trust_remote_code: bool = False):
    """The causal LM of checkpoint `folder` in its stored dtype, in eval mode, nothing trainable."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    layout = locate_embeddings(Path(folder), trust_remote_code)
    config = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=layout.dtype, trust_remote_code=trust_remote_code)
    why = _fill(model, layout)
    if why is not None:
        log.info("%s: loading with from_pretrained (%s)", folder, why)
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=layout.dtype,
                                                     trust_remote_code=trust_remote_code)
    return model.eval().requires_grad_(False)


def _fill(model: torch.nn.Module, layout) -> str | None:
    """Read every parameter of the meta-built `model` from the checkpoint; None when it worked,
    else why not (the model is then left half-filled, for the caller to drop)."""
    why = fill_parameters(model, layout, TensorReader(layout), [n for n, _ in model.named_parameters()])
    if why is not None:
        return why
    if layout.tied:
        model.tie_weights()
    left = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    return f"no checkpoint tensor for {left[0]}" if left else None


def fill_parameters(model: torch.nn.Module, layout, reader: TensorReader, names: list[str],
                    device: torch.device | str | None = None) -> str | None:
    """Read parameters `names` of the meta-built `model` (on `device`: default, the CPU); None when
    it worked, else why not. A tied head (no tensor of its own) is skipped: the caller ties it."""
    converted = _converted_names(model, layout.shard_of)
    prefix = getattr(model, "base_model_prefix", "") or ""
    params = dict(model.named_parameters())
    for name in names:
        key = _match_key([name], layout.shard_of, prefix, converted)
        if key is None:
            continue
        if reader.shape(key) != tuple(params[name].shape):
            return f"{key} is stored as {reader.shape(key)}, {name} is {tuple(params[name].shape)}"
        value = reader.read(key, layout.dtype)
        put_parameter(model, name, value if device is None else value.to(device))
    return None


def layer_stack(base: torch.nn.Module) -> tuple[str, torch.nn.ModuleList] | None:
    """The decoder layers: the `ModuleList` of the base model holding the most parameters, with
    its name under `base`."""
    best, best_n = None, 0
    for name, module in base.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module):
            n = sum(p.numel() for p in module.parameters())
            if n > best_n:
                best, best_n = (name, module), n
    return best


def checkpoint_layers(model: torch.nn.Module) -> int:
    """Recompute each decoder layer of `model` in the backward pass instead of keeping its
    activations (torch's non-reentrant activation checkpointing): a frozen body trained through
    (gradients to its inputs) then keeps one tensor per layer. The same numbers: a layer's
    forward is deterministic. Returns the number of layers wrapped.

    Not transformers' `gradient_checkpointing_enable`: that needs the model in training mode,
    which turns on the dropout of models that have it; a frozen body stays in eval mode.

    Example:
        >>> checkpoint_layers(lm)  # doctest: +SKIP
        30
    """
    from functools import partial

    from torch.utils.checkpoint import checkpoint

    stack = layer_stack(model.base_model if hasattr(model, "base_model") else model)
    if stack is None:
        return 0
    for layer in stack[1]:
        inner = layer.forward

        def forward(*args, _inner=inner, **kwargs):
            # A cache being filled would be filled twice by the recompute: such a call (and one
            # without gradients) runs as it is. The training commands call with use_cache=False.
            if not torch.is_grad_enabled() or kwargs.get("past_key_values") is not None:
                return _inner(*args, **kwargs)
            return checkpoint(partial(_inner, **kwargs), *args, use_reentrant=False)

        layer.forward = forward  # the instance's: hooks (FSDP's gathers) still run around it
    return len(stack[1])
