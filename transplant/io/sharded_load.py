"""A frozen model whose decoder layers are sharded over the processes of a multi-process run
(torch's FSDP2, `fully_shard`, one unit per decoder layer): each process holds 1/N of every
layer and gathers one whole layer at a time while it runs, so a body larger than one device
(or one process's memory) is trained against.

Only the decoder layers are sharded. The embedding rows and the head stay whole on every
process: the training commands gather rows from them and add trained offsets outside the
body's forward, and they are small beside the layers (7B: 0.26 GB of 14.5 GB). The layers
are read one at a time from the checkpoint into a model built on the meta device, then
sharded, so no process ever holds more than one whole layer; a process's share is
`(layers / N) + embeddings + one layer`.

Every forward and backward through a sharded layer is a collective: all processes must run
the same sequence of layer calls (the training loops make it so: `heal_loop` scores its
held-out windows on every process when the body is sharded).

Example:
    >>> mesh = process_mesh("cpu")  # inside `accelerate launch --num_processes 2` (gloo)  # doctest: +SKIP
    >>> lm = load_sharded(Path(model_dir), mesh, "cpu")  # doctest: +SKIP
    >>> type(lm.model.layers[0].mlp.up_proj.weight).__name__  # doctest: +SKIP
    'DTensor'
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from transplant.io.checkpoint import locate_embeddings
from transplant.io.frozen_load import fill_parameters, layer_stack, load_frozen
from transplant.io.tensor_reader import TensorReader

log = logging.getLogger(__name__)


def process_mesh(device_type: str):
    """A one-dimensional device mesh over every process of the run (torch.distributed is up)."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device_type, (torch.distributed.get_world_size(),))


def load_sharded(folder: Path, mesh, device, trust_remote_code: bool = False):
    """The causal LM of checkpoint `folder`, frozen in its stored dtype, its decoder layers
    sharded over `mesh` (each read whole, moved to `device`, then sharded: one layer at a time)."""
    from accelerate import init_empty_weights
    from torch.distributed.fsdp import fully_shard
    from transformers import AutoConfig, AutoModelForCausalLM

    layout = locate_embeddings(Path(folder), trust_remote_code)
    config = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=layout.dtype, trust_remote_code=trust_remote_code)
    model.eval().requires_grad_(False)
    stack = layer_stack(model.base_model)
    why = "no stack of decoder layers found" if stack is None else None
    if why is None:
        stack_name, layers = stack
        base = f"{model.base_model_prefix}." if model.base_model is not model else ""
        inside = f"{base}{stack_name}."
        names = [n for n, _ in model.named_parameters()]
        reader = TensorReader(layout)
        why = fill_parameters(model, layout, reader, [n for n in names if not n.startswith(inside)], device)
        for i, layer in enumerate(layers if why is None else []):
            why = fill_parameters(model, layout, reader, [n for n in names if n.startswith(f"{inside}{i}.")], device)
            if why is not None:
                break
            layer.to(device)  # its buffers (the reads are on `device` already)
            # keeps 1/N of each tensor (the whole layer read is freed here); resharded after every
            # forward: left to itself FSDP keeps a root unit gathered after its forward, and every
            # layer here is a root (the embeddings stay whole), so the whole body was gathered again
            fully_shard(layer, mesh=mesh, reshard_after_forward=True)
    if why is None:
        if layout.tied:
            model.tie_weights()
        left = [n for n, p in model.named_parameters() if p.device.type == "meta"]
        why = f"no checkpoint tensor for {left[0]}" if left else None
    if why is not None:
        # Read whole, then sharded: each process holds the whole model for a moment.
        log.info("%s: read whole before sharding (%s)", folder, why)
        model = load_frozen(Path(folder), trust_remote_code).to(device)
        stack = layer_stack(model.base_model)
        for layer in (stack[1] if stack is not None else []):
            fully_shard(layer, mesh=mesh, reshard_after_forward=True)
        return model
    for module in model.modules():  # buffers outside the layers (rotary tables) on the device too
        for key, buf in module._buffers.items():
            if buf is not None and buf.device != torch.device(device):
                module._buffers[key] = buf.to(device)
    return model


__all__ = ["load_sharded", "process_mesh"]
