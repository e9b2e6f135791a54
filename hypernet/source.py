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


def expected_peak(cfg, folder: Path) -> int:
    """Bytes a run adds to this process: the frozen model in its dtype, the float32 network with
    its gradients and two AdamW moments (a pre-norm transformer of `layers` blocks at `width`,
    with projections from and to the model's width), and one stage-2 batch's activations over the
    model's vocabulary (an upper bound for a drawn one)."""
    from transplant.common.memory import checkpoint_bytes, training_activation_bytes
    from transplant.io.checkpoint import locate_embeddings

    layout = locate_embeddings(folder)
    width = cfg.width or layout.dim
    params = cfg.layers * 12 * width * width + 4 * layout.dim * width
    return (checkpoint_bytes(folder) + 16 * params
            + training_activation_bytes(layout.config, cfg.batch_size * cfg.seq_len, layout.rows,
                                        torch.finfo(layout.dtype).bits // 8))


def load_source(spec: str, device: torch.device | str = "cpu"):
    """(model, input rows, head rows or None when tied, folder) of a base model, frozen in its
    checkpoint's own dtype (bf16 stays bf16; the network that trains is float32, and so is its loss)."""
    from transplant.io.frozen_load import load_frozen
    from transplant.io.sources import resolve_model

    folder = resolve_model(spec)
    lm = load_frozen(folder).to(device)
    E_in = lm.get_input_embeddings().weight.detach()
    head = lm.get_output_embeddings()
    tied = head is None or head.weight.data_ptr() == E_in.data_ptr()
    E_out = None if tied else head.weight.detach()
    return lm, E_in, E_out, folder
