"""Writing the healed checkpoint: the transplant folder with the best offsets added to its
embedding rows, everything else byte for byte, and its model card rebuilt with a "Healing" section.

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

from transplant.core.plan import PLAN_JSON
from transplant.io.card import build_card, heal_section
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
        (st.path / "README.md").write_text(healed_card(folder, out, summary), encoding="utf-8")


def healed_card(folder: Path, out: Path, summary: dict) -> str:
    """The healed model's card: the transplant's card rebuilt from the facts kept with its plan,
    with a "Healing" section (an older output without them: its card with the section appended)."""
    facts = json.loads((folder / PLAN_JSON).read_text(encoding="utf-8")).get("meta", {}).get("card")
    # The teacher as the user named it (`--teacher`, else the plan's base model), not its folder.
    teacher = (summary.get("settings") or {}).get("teacher") or (facts or {}).get("base_model")
    section = dict(summary, teacher=teacher or summary.get("teacher"))
    if facts:
        return str(build_card({**facts, "heal": section, "plan_ref": str(out)}))
    card = (folder / "README.md").read_text(encoding="utf-8") if (folder / "README.md").is_file() else ""
    return card.rstrip("\n") + "\n\n" + heal_section(section)
