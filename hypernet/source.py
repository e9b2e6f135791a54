"""The frozen base model a hypernetwork trains against: loaded in its checkpoint's own dtype,
and what a run will hold in memory, said before it loads.

Example:
    >>> lm, E_in, E_out, folder = load_source(model_dir)
    >>> E_in.dtype, E_out is None or E_out.shape == E_in.shape
    (torch.float32, True)
"""

from __future__ import annotations

from pathlib import Path

import torch


def expected_peak(cfg, folder: Path, shards: int = 1) -> int:
    """Bytes a run adds to this process: the frozen model in its dtype (sharded over `shards`
    processes: the embedding rows, 1/`shards` of the layers and one whole layer), the float32
    network with its gradients and two AdamW moments (a pre-norm transformer of `layers` blocks
    at `width`, with projections from and to the model's width), and one stage-2 batch's
    activations over the model's vocabulary (an upper bound for a drawn one)."""
    from transplant.common.memory import checkpoint_bytes, sharded_body_bytes, training_activation_bytes
    from transplant.io.checkpoint import locate_embeddings

    layout = locate_embeddings(folder)
    width = cfg.width or layout.dim
    params = cfg.layers * 12 * width * width + 4 * layout.dim * width
    stored = torch.finfo(layout.dtype).bits // 8
    body = checkpoint_bytes(folder)
    if shards > 1:
        rows = layout.rows * layout.dim * stored * (1 if layout.output_key is None else 2)
        body = sharded_body_bytes(body, rows, layout.config, shards)
    return (body + 16 * params
            + training_activation_bytes(layout.config, cfg.batch_size * cfg.seq_len, layout.rows, stored,
                                        cfg.checkpoint_layers))


def load_source(spec: str, device: torch.device | str = "cpu", mesh=None):
    """(model, input rows, head rows or None when tied, folder) of a base model, frozen in its
    checkpoint's own dtype (bf16 stays bf16; the network that trains is float32, and so is its
    loss); with a device `mesh`, its decoder layers sharded over the mesh's processes."""
    from transplant.io.frozen_linear import route_frozen_linears
    from transplant.io.frozen_load import load_frozen
    from transplant.io.sharded_load import load_sharded
    from transplant.io.sources import resolve_model

    folder = resolve_model(spec)
    lm = load_frozen(folder).to(device) if mesh is None else load_sharded(folder, mesh, device)
    route_frozen_linears(lm)  # a bf16 body's backward on the CPU: as fast as its forward
    E_in = lm.get_input_embeddings().weight.detach()
    head = lm.get_output_embeddings()
    tied = head is None or head.weight.data_ptr() == E_in.data_ptr()
    E_out = None if tied else head.weight.detach()
    return lm, E_in, E_out, folder
