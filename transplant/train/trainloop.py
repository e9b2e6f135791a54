"""What every training loop here shares (`hypernet train`, `transplant heal`): the accelerator,
the opening of a step (its number, seed and batch generator), the warm-up and the optimizer
step, the budget, checkpoint folders renamed into place, a JSON-lines log trimmed on resume, and
a full disk told as one line.

A checkpoint is `accelerator.save_state` (weights, optimizer, RNG states) plus a small state
file, written into a hidden folder beside its final name and renamed into place: a run killed at
any moment leaves only complete checkpoints, and `latest()` never returns a partial one; a save
that fails (a full disk) deletes its hidden folder, so the earlier checkpoints stay the latest.

Example:
    >>> accelerator = training_accelerator()  # doctest: +SKIP
    >>> ckpts = Checkpoints(Path("run"), keep=2)  # doctest: +SKIP
    >>> step = begin_step(done=49, seed=0, rank=accelerator.process_index)  # doctest: +SKIP
    >>> ckpts.save(accelerator, {"step": step.number})  # doctest: +SKIP
    >>> ckpts.latest().name  # doctest: +SKIP
    'step-000050'
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from transplant.common.errors import TransplantError, is_disk_full

STATE_FILE = "trainer_state.json"
LOG_FILE = "log.jsonl"

# A test hook, never set in use: the resume tests set it (in a child process) to end the run
# abruptly, as a kill would, when it reaches this step (`begin_step`).
_DIE_AT_STEP: int | None = None


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of one step's batch on one process: a resumed run draws the same batches.

    Example:
        >>> step_seed(0, 1, 0), step_seed(0, 1, 1)
        (64, 65)
    """
    return (seed * 1_000_003 + step) * 64 + rank


def training_accelerator():
    """An `accelerate.Accelerator` on the GPUs when there are any, else the CPU; only the main
    process prints stage lines and bars (the others are set quiet).

    Example:
        >>> accelerator = training_accelerator()  # doctest: +SKIP
    """
    from accelerate import Accelerator  # a heavy import, only for the training commands

    from transplant.common.progress import set_quiet

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    if not accelerator.is_main_process:  # one process speaks
        set_quiet(True)
    return accelerator


def body_mesh(accelerator, shard: bool, command: str):
    """The device mesh to shard the frozen body over (`io.sharded_load`), or None: not asked for,
    or one process. accelerate's own FSDP and DeepSpeed plugins are refused in one line: they
    shard the module they prepare, which here is only the few trained rows.

    Example:
        >>> body_mesh(training_accelerator(), shard=True, command="heal") is None  # one process  # doctest: +SKIP
        True
    """
    from accelerate import DistributedType

    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        raise TransplantError(
            f"{command} shards the frozen model itself: launch with a plain multi-process accelerate config "
            f"(recipes/accelerate/) and pass --shard-body, not accelerate's {accelerator.distributed_type.value} "
            "plugin")
    if shard and accelerator.num_processes == 1:
        from transplant.common.progress import stage

        stage(f"{command}: --shard-body with one process shards nothing (start several with `accelerate launch "
              "--config_file recipes/accelerate/...`)")
    if not shard or accelerator.num_processes == 1:
        return None
    from transplant.io.sharded_load import process_mesh

    return process_mesh(accelerator.device.type)


@dataclass
class Step:
    """The opening of one optimizer step: its number (from 1), its seed on this process, a batch
    generator seeded with it, and when it started (for the wall-time budget)."""

    number: int
    seed: int
    generator: torch.Generator
    started: float


def begin_step(done: int, seed: int, rank: int) -> Step:
    """Open the step after `done` steps: its seed comes from (seed, step, process) alone, so a
    resumed run draws the batches an uninterrupted one draws.

    Example:
        >>> step = begin_step(done=0, seed=0, rank=0)
        >>> step.number, step.seed
        (1, 64)
    """
    started = time.perf_counter()
    number = done + 1
    if _DIE_AT_STEP is not None and number >= _DIE_AT_STEP:
        os._exit(137)  # as SIGKILL would: no cleanup, no last checkpoint
    step_s = step_seed(seed, number, rank)
    return Step(number, step_s, torch.Generator().manual_seed(step_s), started)


def warm_up(opt: torch.optim.Optimizer, base_lr: float, n: int, warmup: int) -> None:
    """Set the learning rate of step `n` (from 1) of a linear warm-up over `warmup` steps.

    Example:
        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        >>> warm_up(opt, 0.1, 5, 10); opt.param_groups[0]["lr"]
        0.05
    """
    for group in opt.param_groups:
        group["lr"] = base_lr * min(1.0, n / max(1, warmup))


def optimizer_step(accelerator, opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """One optimizer step on `loss` (gradients synchronized across processes by `accelerator`)."""
    opt.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    opt.step()


def budget_spent(done: int, steps: int, seconds: float, minutes: float | None) -> bool:
    """True when the run's budget is spent: `minutes` of training when given, else `steps` steps.

    Example:
        >>> budget_spent(10, 10, 0.0, None), budget_spent(10, 10, 59.0, 1.0)
        (True, False)
    """
    return (minutes is not None and seconds >= minutes * 60) or (minutes is None and done >= steps)


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
        try:
            accelerator.save_state(str(tmp))
            # Every process has written its part (each saves its own RNG state) before the main process
            # renames the folder: without this barrier a slower process wrote into a folder already
            # renamed away ("Parent directory ... .partial does not exist", seen in CI).
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                if extra is not None:
                    extra(tmp)
                (tmp / STATE_FILE).write_text(json.dumps(state) + "\n")
        except BaseException:
            # A full disk mid-save: drop the half-written folder (it would only take space), the
            # earlier checkpoints stay the ones a resume starts from.
            if accelerator.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        if accelerator.is_main_process:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in sorted(p for p in self.root.glob("step-*"))[:-self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()


def mount_point(path: Path) -> Path:
    """The mount point of the file system holding `path` (or of its nearest existing parent)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


@contextlib.contextmanager
def disk_full_is_one_line(folder: Path, fix: Callable[[], str]) -> Iterator[None]:
    """Turn a full disk while writing into `folder` into one `TransplantError` line naming the
    disk and `fix()` (called then: it may name the latest checkpoint); other errors pass."""
    try:
        yield
    except TransplantError:
        raise
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].strip()
        raise TransplantError(f"the disk holding {folder} (mounted at {mount_point(folder)}) is full "
                              f"({first[:160]}); {fix()}") from None


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
    value = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(value, "max").item() > 0)


def trim_log(path: Path, step: int) -> None:
    """Drop log lines after `step` (a resumed run writes them again), and a torn line: a crash or a
    full disk during `append_log` leaves the last record half written, which must not make the
    run impossible to resume.

    Example:
        >>> _ = Path("log.jsonl").write_text('{"step": 1}\\n{"step": 2}\\n{"step": 3}\\n{"ste')
        >>> trim_log(Path("log.jsonl"), 2)
        >>> Path("log.jsonl").read_text().splitlines()
        ['{"step": 1}', '{"step": 2}']
    """
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # torn (or damaged): the resumed run logs its steps again
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line)
    tmp = path.with_suffix(".partial")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def append_log(path: Path, record: dict) -> None:
    """Append one JSON line to the run's log."""
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
