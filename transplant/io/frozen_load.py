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
    converted = _converted_names(model, layout.shard_of)
    prefix = getattr(model, "base_model_prefix", "") or ""
    reader = TensorReader(layout)
    for name, p in list(model.named_parameters()):
        key = _match_key([name], layout.shard_of, prefix, converted)
        if key is None:
            continue  # a tied head: tied below
        if reader.shape(key) != tuple(p.shape):
            return f"{key} is stored as {reader.shape(key)}, {name} is {tuple(p.shape)}"
        put_parameter(model, name, reader.read(key, layout.dtype))
    if layout.tied:
        model.tie_weights()
    left = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    return f"no checkpoint tensor for {left[0]}" if left else None
