"""A healing run's settings, its inputs and its run folder: what `transplant.train.heal` checks
before it loads a model.

The run folder (default `<out>.heal-run` beside the output) holds `heal_config.json` (the
settings and the inputs' fingerprints), `log.jsonl`, `best.safetensors` (the best offsets so
far) and `checkpoints/`. A resume continues the same run: only its budget, where the result goes
and when to stop may change; its inputs must be the same by content (`transplant.train.resume`).
An existing run folder is continued with `resume`, started afresh with `overwrite`, refused
otherwise. One process owns a run folder at a time (`RunFolder`: a lock held for the whole run).

Example:
    >>> cfg = HealConfig(model="smollm2-de", texts=["de.txt"], out="smollm2-de-healed", steps=100)
    >>> cfg.run_dir
    PosixPath('smollm2-de-healed.heal-run')
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from transplant.common.errors import TransplantError
from transplant.common.settings import check_declared
from transplant.common.texts import read_texts, split_documents
from transplant.core.plan import PLAN_JSON, Plan
from transplant.io.outdir import OutputKind, check_output_path
from transplant.io.sources import resolve_model
from transplant.train.heal_settings import HealConfig
from transplant.train.resume import check_same_inputs, check_same_settings, input_fingerprints, write_json
from transplant.train.trainloop import any_process

BEST_FILE = "best.safetensors"
SUMMARY_FILE = "heal.json"
CONFIG_FILE = "heal_config.json"
# Locked by the process that owns the run folder (`RunFolder`); the file itself stays behind.
LOCK_FILE = ".heal.lock"


def _contents(folder: Path) -> list[Path]:
    """What a run folder holds besides its lock file (a run killed early leaves just that)."""
    return [p for p in folder.iterdir() if p.name != LOCK_FILE] if folder.is_dir() else []


# The run folder, as `transplant.io.outdir` sees it: it holds its settings (or nothing but its lock).
HEAL_RUN = OutputKind("a healing run folder", f"no {CONFIG_FILE}",
                      lambda folder: (folder / CONFIG_FILE).is_file() or not _contents(folder))


# The settings themselves are declared in `heal_settings` (torch-free: the CLI generates its flags
# from them); re-exported here, where the run's other rules live.
def check_settings(cfg: HealConfig) -> None:
    """Every number in its range, before anything is read or loaded: one line naming the flag.

    The command line's types refuse most of these already; a recipe or the Python API reach here
    (and `nan` passes every range test, since it compares false with everything).

    Example:
        >>> check_settings(HealConfig(model="m", texts=["t"], out="o", steps=10, lr=float("nan")))
        Traceback (most recent call last):
        ...
        transplant.common.errors.TransplantError: --lr must be a finite number above 0, not nan (see `transplant heal --help`)
    """
    check_declared(cfg, "transplant heal")
    if cfg.distill_weight == 0 and cfg.lm_weight == 0:
        raise TransplantError("--distill-weight and --lm-weight are both 0: nothing pulls the rows anywhere "
                              "(keep distillation, the default, or a next-token weight above 0)")


def teacher_name(cfg: HealConfig, plan: Plan) -> str | None:
    """The teacher as the user named it: --teacher, else the plan's base model (a packaged name
    stays a name, never its cache folder); None when neither says."""
    return cfg.teacher or plan.meta.get("base_model")


def check_inputs(cfg: HealConfig) -> tuple[Path, Path, Plan]:
    """(model folder, teacher folder, plan) with one-line errors for what is missing.

    Example:
        >>> check_inputs(HealConfig(model=model_dir, texts=[text_file], out="o", steps=1))
        Traceback (most recent call last):
        ...
        transplant.common.errors.TransplantError: tiny-model is not a transplant output ...
    """
    if cfg.steps <= 0 and cfg.minutes is None:
        raise TransplantError("no training budget (pass --steps N or --minutes M)")
    if not cfg.texts:
        raise TransplantError("no healing text (pass --text FILE, text in the new tokenizer's language or domain)")
    for t in cfg.texts:
        if not Path(t).is_file():
            raise TransplantError(f"text file not found: {t}")
    folder = resolve_model(cfg.model)
    if not (folder / PLAN_JSON).is_file():
        raise TransplantError(f"{folder} is not a transplant output (no {PLAN_JSON}); heal trains the rows a "
                              "transplant made: run `transplant run` or `transplant extend` first")
    plan = Plan.load(folder)
    teacher = teacher_name(cfg, plan)
    if not teacher:
        raise TransplantError(f"{folder}'s plan does not name its base model (pass --teacher MODEL)")
    try:
        teacher_folder = resolve_model(teacher)
    except TransplantError as exc:
        raise TransplantError(f"the teacher (the model before the transplant) is not available: {exc} "
                              "(pass --teacher MODEL)") from None
    _check_positions(cfg.seq_len, folder, teacher_folder)
    return folder, teacher_folder, plan


def _max_positions(folder: Path) -> int | None:
    """The model's `max_position_embeddings` from its config.json (None: not stated)."""
    try:
        value = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("max_position_embeddings")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _check_positions(seq_len: int, folder: Path, teacher: Path) -> None:
    """A window must fit both models' positions: `seq_len` student tokens, up to twice as many
    teacher tokens (`heal.aligned_windows`), the start token included."""
    limits = {where: (most, most // per) for where, per in ((folder, 1), (teacher, 2))
              if (most := _max_positions(where)) is not None}
    for where, (most, fits) in limits.items():
        if seq_len > fits:
            need = seq_len if where == folder else 2 * seq_len
            largest = min(f for _, f in limits.values())
            raise TransplantError(f"--seq-len {seq_len} needs {need} positions of {where.name}, which has "
                                  f"{most} (pass --seq-len {largest} or less)")


def check_run_place(cfg: HealConfig, out: Path, paths: list[Path]) -> Path:
    """Where the run folder may be, checked before anything is read or written: never the output
    folder, inside it or around it (replacing the output would delete the run, or the reverse),
    never inside an input (`paths`: model, teacher, texts); an existing one must be a run folder.
    Returns it with its parent resolved."""
    run = Path(os.path.abspath(cfg.run_dir))
    run = run.parent.resolve() / run.name
    if run == out:
        raise TransplantError(f"--run and --out are the same folder {out}: the run folder (log, checkpoints) "
                              "and the healed checkpoint need folders of their own (pass another --run, or leave "
                              "it out for OUT.heal-run)")
    if out in run.parents:
        raise TransplantError(f"the run folder {run} is inside the output folder {out}; replacing the output "
                              "would delete it (pass a --run outside --out)")
    if run in out.parents:
        raise TransplantError(f"the output folder {out} is inside the run folder {run} (pass an --out outside "
                              "--run)")
    if _contents(run) and not (run / CONFIG_FILE).is_file():
        raise TransplantError(f"{run} exists and is not a healing run folder (no {CONFIG_FILE}; choose another "
                              "--run)")
    check_output_path(run, paths, True, HEAL_RUN)  # never inside an input
    return run


def run_inputs(cfg: HealConfig, folder: Path, teacher: Path) -> dict:
    """Content fingerprints of what fixes the rows a run trains: the texts, the transplant's plan
    and tokenizer, the teacher's tokenizer (a resume must find them unchanged, wherever they are)."""
    files = [folder / PLAN_JSON, *sorted(folder.glob("transplant_plan*.safetensors")), folder / "tokenizer.json"]
    return input_fingerprints({"texts": list(cfg.texts), "model files": [f for f in files if f.is_file()],
                               "teacher tokenizer": [f for f in [teacher / "tokenizer.json"] if f.is_file()]})


def check_run_folder(cfg: HealConfig, latest: Path | None, inputs: dict) -> bool:
    """Check the run folder (owned by now: `RunFolder`) before any work, writing nothing; returns
    whether an earlier run there is to be started afresh (`overwrite` without `resume`).

    An earlier run (its settings, or a checkpoint) is continued with `resume` (the same run:
    settings, and inputs by content), started afresh with `overwrite`, and refused otherwise; with
    both, the run is continued and the output replaced. `check_run_place` ran before.
    """
    run = cfg.run_dir
    earlier = latest is not None or (run / CONFIG_FILE).is_file()
    if earlier and not cfg.resume and not cfg.overwrite:
        held = f"checkpoint {latest.name}" if latest is not None else "no checkpoint yet"
        raise TransplantError(f"{run} holds an earlier healing run ({held}); pass --resume to continue it or "
                              "--overwrite to start it afresh (or choose another --run/--out)")
    if latest is not None and cfg.resume:
        saved = json.loads((run / CONFIG_FILE).read_text())
        check_same_run(cfg, saved, run)
        check_same_inputs(saved.get("inputs"), inputs, run)
    return earlier and not cfg.resume


def write_run_config(cfg: HealConfig, inputs: dict) -> None:
    """Write the settings and input fingerprints into the run folder (main process, once every check passed)."""
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    write_json(cfg.run_dir / CONFIG_FILE, {**asdict(cfg), "inputs": inputs})


class RunFolder:
    """The run folder, owned by one run: an exclusive `flock` on its lock file, held until the run
    ends (the kernel releases it when the process dies, however it dies).

    A second run on the same folder is refused before it loads anything: two runs would write one
    log, one `best.safetensors` and the same checkpoint names. A run that fails leaves no folder
    it made (or started afresh) while that holds no checkpoint: nothing there could be resumed.
    Under `accelerate` the main process takes the lock and the others learn the answer from it.

    Example:
        >>> with RunFolder.owned(Path("r.heal-run")) as folder:
        ...     with RunFolder.owned(Path("r.heal-run")):
        ...         pass
        Traceback (most recent call last):
        ...
        transplant.common.errors.TransplantError: .../r.heal-run is in use by another heal run (pid ...); ...
    """

    def __init__(self, path: Path, command: str = "heal", create: bool = True) -> None:
        self.path = path
        self.command = command
        # False: a folder that is not there yet is not made here (its command publishes it by a
        # rename, then calls `acquire` again); only an existing one is locked at once.
        self.create = create
        self.made = False  # this run created the folder or started it afresh
        self._fd: int | None = None

    @property
    def locked(self) -> bool:
        return self._fd is not None

    def acquire(self) -> str | None:
        """Create the folder if need be and lock it; the refusal's message when another run holds it."""
        if not self.create and not self.path.is_dir():
            return None
        self.made = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)  # the umask applies
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            self.made = False  # the other run's folder: never removed from here
            return (f"{self.path.resolve()} is in use by another {self.command} run (pid {holder}); a run folder "
                    "belongs to one run at a time (wait for it to finish, or pass another --out or --run)")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # names the owner in a refusal
        self._fd = fd
        return None

    def start_afresh(self) -> None:
        """Delete the earlier run's files (the lock stays held): checkpoints first, by one rename,
        so a kill meanwhile leaves the old checkpoints whole or none of them."""
        checkpoints = self.path / "checkpoints"
        if checkpoints.is_dir():
            aside = self.path / f".discarded-{os.getpid()}"
            os.replace(checkpoints, aside)
        for item in _contents(self.path):
            if item.is_dir() and not item.is_symlink():
                shutil.rmtree(item)
            else:
                item.unlink()
        self.made = True

    def release(self, failed: bool) -> None:
        """Unlock; after a failure, remove the folder if this run made it and it holds no checkpoint."""
        if self._fd is None:
            return
        try:
            if failed and self.made and not any((self.path / "checkpoints").glob("step-*")):
                shutil.rmtree(self.path, ignore_errors=True)
        finally:
            os.close(self._fd)
            self._fd = None

    @classmethod
    @contextlib.contextmanager
    def owned(cls, path: Path, accelerator=None, command: str = "heal", create: bool = True) -> Iterator[RunFolder]:
        """Own `path` for the block (see the class); with an `accelerator`, every process stops alike."""
        folder = cls(path, command, create)
        main = accelerator is None or accelerator.is_main_process
        refusal = folder.acquire() if main else None
        # A collective: every process asks, so all of them stop (or go on) together.
        busy = accelerator is not None and any_process(accelerator, refusal is not None)
        if busy and refusal is None:
            refusal = f"{path} is in use by another {command} run (see the main process's message)"
        if refusal is not None:
            raise TransplantError(refusal)
        failed = True
        try:
            yield folder
            failed = False
        finally:
            folder.release(failed)


# What a resumed run may change: its budget, where the result goes, when to stop early.
_MAY_CHANGE = {"steps", "minutes", "out", "run", "resume", "overwrite", "patience", "checkpoint_every",
               "keep_checkpoints", "shard_body", "checkpoint_layers"}  # how the body is held, not what trains


def check_same_run(cfg: HealConfig, saved: dict, run: Path) -> None:
    """A resume continues the same run: the same model, text, windows and optimizer settings.

    Example:
        >>> cfg = HealConfig(model="m", texts=["t"], out="o", steps=10)
        >>> check_same_run(cfg, {**asdict(cfg), "steps": 5}, Path("o.heal-run"))  # a longer budget is fine
        >>> check_same_run(cfg, {**asdict(cfg), "lr": 1.0}, Path("o.heal-run"))
        Traceback (most recent call last):
        ...
        transplant.common.errors.TransplantError: o.heal-run was started with lr=1.0, not 0.01; ...
    """
    check_same_settings(saved, asdict(cfg), _MAY_CHANGE, run, "another --run")


def documents(texts: list[str]) -> list[str]:
    """The documents of the healing text files (split on blank lines), read before anything is
    loaded or written: a file that is not UTF-8 or holds NUL bytes (a binary file) and an empty
    text are one-line errors.

    Example:
        >>> _ = Path("blob.txt").write_bytes(b"ab\\x00cd")
        >>> documents(["blob.txt"])
        Traceback (most recent call last):
        ...
        transplant.common.errors.TransplantError: blob.txt holds NUL bytes: a binary file, not text (pass UTF-8 text files with --text)
    """
    fix = " (pass UTF-8 text files with --text)"
    read = read_texts(texts, what="healing text", fix=fix)  # refuses a binary file (NUL bytes) too
    docs = [doc for text in read for doc in split_documents(text)]
    if not docs:
        raise TransplantError(f"the healing text is empty{fix}")
    return docs
