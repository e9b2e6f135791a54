"""What every training loop here shares (`hypernet train`, `transplant heal`): per-step seeds,
checkpoint folders renamed into place, and a JSON-lines log trimmed on resume.

A checkpoint is `accelerator.save_state` (weights, optimizer, RNG states) plus a small state
file, written into a hidden folder beside its final name and renamed into place: a run killed at
any moment leaves only complete checkpoints, and `latest()` never returns a partial one.

Example:
    >>> ckpts = Checkpoints(Path("run"), keep=2)  # doctest: +SKIP
    >>> ckpts.save(accelerator, {"step": 50})  # doctest: +SKIP
    >>> ckpts.latest().name  # doctest: +SKIP
    'step-000050'
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

STATE_FILE = "trainer_state.json"
LOG_FILE = "log.jsonl"


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of one step's batch on one process: a resumed run draws the same batches."""
    return (seed * 1_000_003 + step) * 64 + rank


class Checkpoints:
    """`<root>/checkpoints/step-NNNNNN` folders, complete ones only (renamed into place when written)."""

    def __init__(self, root: Path, keep: int) -> None:
        self.root = root / "checkpoints"
        self.keep = keep

    def latest(self) -> Path | None:
        done = sorted(p for p in self.root.glob("step-*") if (p / STATE_FILE).is_file()) if self.root.is_dir() else []
        return done[-1] if done else None

    def save(self, accelerator, state: dict, extra: Callable[[Path], None] | None = None) -> None:
        """Save the accelerator's state and `state`; `extra(folder)` (main process) adds files before the rename."""
        final = self.root / f"step-{state['step']:06d}"
        tmp = self.root / f".step-{state['step']:06d}.partial"
        if accelerator.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        if accelerator.is_main_process:
            if extra is not None:
                extra(tmp)
            (tmp / STATE_FILE).write_text(json.dumps(state) + "\n")
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in sorted(p for p in self.root.glob("step-*"))[:-self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()


def restore(accelerator, checkpoint: Path, log_path: Path) -> dict:
    """Load a checkpoint's weights, optimizer and RNG states; return its saved state dict.

    The main process also drops log lines written after it (the resumed run writes them again).
    """
    accelerator.load_state(str(checkpoint))
    state = json.loads((checkpoint / STATE_FILE).read_text())
    if accelerator.is_main_process:
        trim_log(log_path, state["step"])
    return state


def any_process(accelerator, flag: bool) -> bool:
    """True on every process when `flag` is true on any one (so all of them stop at the same step)."""
    import torch

    value = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(value, "max").item() > 0)


def trim_log(path: Path, step: int) -> None:
    """Drop log lines after `step` (a resumed run writes them again)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
    tmp = path.with_suffix(".partial")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def append_log(path: Path, record: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
