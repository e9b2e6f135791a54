"""Writing the healed checkpoint: the transplant folder with the best offsets added to its
embedding rows, everything else byte for byte, and a "Healing" section on its model card.

The weight shards are written by the checkpoint writer (`transplant.io.checkpoint.write_shards`):
the shards holding the embedding tensors are streamed with the healed matrices swapped in, the
others copied. The output is staged and renamed into place (`transplant.io.outdir`).

Example:
    >>> write_healed(folder, out, run, rows, summary, overwrite=False)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from transplant.io.checkpoint import locate_embeddings, read_embedding, write_shards
from transplant.io.outdir import staged_output
from transplant.io.shardio import DTYPE_NAMES, INDEX_NAME, NewTensor
from transplant.train.heal_config import BEST_FILE, SUMMARY_FILE
from transplant.train.trainloop import LOG_FILE


def write_healed(folder: Path, out: Path, run: Path, rows: torch.Tensor, summary: dict, overwrite: bool) -> None:
    """The transplant folder with the best rows written into its embedding tensors, staged and renamed.

    Args:
        folder: the transplant output that was healed.
        out: where the healed checkpoint goes.
        run: the run folder (its `best.safetensors` holds the best offsets; none: the rows as they were).
        rows: the healed rows, in the order of the offsets.
        summary: the run's summary, written as `heal.json` and shown on the model card.
        overwrite: replace an earlier output at `out`.
    """
    layout = locate_embeddings(folder)
    best = load_file(str(run / BEST_FILE)) if (run / BEST_FILE).is_file() else None
    idx = rows.long()

    def healed(key: str, delta: torch.Tensor) -> NewTensor:
        def chunks():
            matrix = read_embedding(layout, key)
            if best is not None:
                matrix = matrix.clone()
                matrix[idx] = (matrix[idx].float() + delta).to(matrix.dtype)
            yield matrix
        return NewTensor(DTYPE_NAMES[layout.dtype], [layout.rows, layout.dim], chunks)

    replace = {}
    for key in layout.keys:
        side = "d_in" if key == layout.input_key or layout.tied else "d_out"
        replace[key] = healed(key, best[side] if best is not None else torch.zeros(len(idx), layout.dim))
    shards = set(layout.shard_of.values())
    with staged_output(out, overwrite) as st:
        write_shards(layout, st.path, replace)
        for path in folder.iterdir():  # the other files as they are (the card gets a section below)
            if path.is_file() and path.name not in shards and path.name not in (INDEX_NAME, "README.md"):
                shutil.copyfile(path, st.path / path.name)
        if (folder / INDEX_NAME).is_file():
            shutil.copyfile(folder / INDEX_NAME, st.path / INDEX_NAME)
        (st.path / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        if (run / LOG_FILE).is_file():
            shutil.copyfile(run / LOG_FILE, st.path / "heal_log.jsonl")
        card = (folder / "README.md").read_text(encoding="utf-8") if (folder / "README.md").is_file() else ""
        (st.path / "README.md").write_text(card.rstrip("\n") + "\n\n" + card_section(summary), encoding="utf-8")


def card_section(s: dict) -> str:
    """The model card's "Healing" section, from a run's summary.

    Example:
        >>> s = dict(rows_trained=900, rows_made=1200, step=150, seconds=300.0, processes=1, best_step=125,
        ...          teacher_bpb=1.1, start_bpb=1.4, best_bpb=1.25)
        >>> print(card_section(s).splitlines()[-3])
        | after healing | 1.2500 |
    """
    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}"

    return (
        "## Healing\n\n"
        f"After the transplant, {s['rows_trained']:,} of the {s['rows_made']:,} rows it made (those the healing "
        f"text uses) were trained for {s['step']:,} steps ({s['seconds'] / 60:.1f} min, {s['processes']} "
        "process(es)) with `transplant heal`, distilling the original model's likelihood of the same text "
        "(the rest of the model frozen). The best held-out state was kept "
        f"(step {s['best_step']}).\n\n"
        "| held-out text | bits per byte |\n|---|---|\n"
        f"| original model | {fmt(s['teacher_bpb'])} |\n"
        f"| transplant, before healing | {fmt(s['start_bpb'])} |\n"
        f"| after healing | {fmt(s['best_bpb'])} |\n\n"
        "The plan file describes the rows before healing: re-applying it (`transplant apply`) gives the "
        "unhealed rows.\n")
