"""A healing run's settings, its inputs and its run folder: what `transplant.train.heal` checks
before it loads a model.

The run folder (default `<out>.heal-run` beside the output) holds `heal_config.json` (the
settings and the inputs' fingerprints), `log.jsonl`, `best.safetensors` (the best offsets so
far) and `checkpoints/`. A resume continues the same run: only its budget, where the result goes
and when to stop may change; its inputs must be the same by content (`transplant.train.resume`).

Example:
    >>> cfg = HealConfig(model="smollm2-de", texts=["de.txt"], out="smollm2-de-healed", steps=100)
    >>> cfg.run_dir
    PosixPath('smollm2-de-healed.heal-run')
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from transplant.common.errors import TransplantError
from transplant.common.texts import read_texts, split_documents
from transplant.core.plan import PLAN_JSON, Plan
from transplant.io.outdir import OutputKind, check_output_path
from transplant.io.sources import resolve_model
from transplant.train.resume import check_same_inputs, check_same_settings, input_fingerprints, write_json

BEST_FILE = "best.safetensors"
SUMMARY_FILE = "heal.json"
CONFIG_FILE = "heal_config.json"
# The run folder, as `transplant.io.outdir` sees it: it holds its settings.
HEAL_RUN = OutputKind("a healing run folder", f"no {CONFIG_FILE}", lambda folder: (folder / CONFIG_FILE).is_file())


@dataclass
class HealConfig:
    """Everything a healing run depends on (saved in the run folder as `heal_config.json`)."""

    model: str  # a transplant output folder (it has transplant_plan.json)
    texts: list[str]
    out: str
    run: str | None = None  # training folder; default: `<out>.heal-run` beside `out`
    teacher: str | None = None  # default: the plan's base model
    steps: int = 0
    minutes: float | None = None
    batch_size: int = 4  # windows per step and process
    seq_len: int = 256  # student tokens per window
    lr: float = 1e-2  # Adam, on offsets in units of the embedding matrix's std
    warmup: int = 10
    distill_weight: float = 1.0
    lm_weight: float = 1.0  # 1: one-sided distillation (module docstring); 0: symmetric
    anchor_weight: float = 0.0
    min_count: int = 1  # a made row is trained when the training text uses it this often
    held_out: float = 0.05
    eval_every: int = 25
    patience: int = 4  # evaluations without a better held-out score before stopping (0: never stop early)
    checkpoint_every: int = 25
    keep_checkpoints: int = 2
    seed: int = 0
    resume: bool = False
    overwrite: bool = False

    @property
    def run_dir(self) -> Path:
        out = Path(self.out)
        return Path(self.run) if self.run else out.with_name(out.name + ".heal-run")


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
    teacher = cfg.teacher or plan.meta.get("base_model")
    if not teacher:
        raise TransplantError(f"{folder}'s plan does not name its base model (pass --teacher MODEL)")
    try:
        teacher_folder = resolve_model(teacher)
    except TransplantError as exc:
        raise TransplantError(f"the teacher (the model before the transplant) is not available: {exc} "
                              "(pass --teacher MODEL)") from None
    return folder, teacher_folder, plan


def run_inputs(cfg: HealConfig, folder: Path, teacher: Path) -> dict:
    """Content fingerprints of what fixes the rows a run trains: the texts, the transplant's plan
    and tokenizer, the teacher's tokenizer (a resume must find them unchanged, wherever they are)."""
    files = [folder / PLAN_JSON, *sorted(folder.glob("transplant_plan*.safetensors")), folder / "tokenizer.json"]
    return input_fingerprints({"texts": list(cfg.texts), "model files": [f for f in files if f.is_file()],
                               "teacher tokenizer": [f for f in [teacher / "tokenizer.json"] if f.is_file()]})


def check_run_folder(cfg: HealConfig, latest: Path | None, inputs: dict, paths: list[Path]) -> None:
    """Check the run folder before any work, writing nothing: a resume needs `resume` and continues
    the same run (settings, and inputs by content); another run's folder is refused, and so is a
    run folder inside one of the input `paths` (model, teacher, texts)."""
    run = cfg.run_dir
    if latest is not None and not cfg.resume:
        raise TransplantError(f"{run} holds a healing run (checkpoint {latest.name}); pass --resume to continue "
                              "it, or choose another --run/--out")
    if run.exists() and any(run.iterdir()) and latest is None and not (run / CONFIG_FILE).is_file():
        raise TransplantError(f"{run} exists and is not a healing run folder (choose another --run)")
    check_output_path(run, paths, True, HEAL_RUN)  # never inside an input (an existing one is a run: see above)
    if latest is not None:
        saved = json.loads((run / CONFIG_FILE).read_text())
        check_same_run(cfg, saved, run)
        check_same_inputs(saved.get("inputs"), inputs, run)


def write_run_config(cfg: HealConfig, inputs: dict) -> None:
    """Write the settings and input fingerprints into the run folder (main process, once every check passed)."""
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    write_json(cfg.run_dir / CONFIG_FILE, {**asdict(cfg), "inputs": inputs})


# What a resumed run may change: its budget, where the result goes, when to stop early.
_MAY_CHANGE = {"steps", "minutes", "out", "run", "resume", "overwrite", "patience", "checkpoint_every",
               "keep_checkpoints"}


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
    """The documents of the healing text files (split on blank lines); an empty text is an error."""
    docs = [doc for text in read_texts(texts) for doc in split_documents(text)]
    if not docs:
        raise TransplantError("the healing text is empty")
    return docs
