"""What a healing run depends on, declared once (`HealConfig`): each field's default, help, flag
and range; `transplant heal`'s options are generated from it and every value is checked against
it (`transplant.common.settings`). Torch-free, so `transplant --help` stays light.

Example:
    >>> cfg = HealConfig(model="smollm2-de", texts=["de.txt"], out="smollm2-de-healed", minutes=15)
    >>> cfg.run_dir.name
    'smollm2-de-healed.heal-run'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transplant.common.settings import setting

OPTIMIZERS = ("adam", "row-adam")
MAX_SEED = 2**32 - 1  # a step's seed (`trainloop.step_seed`) must fit torch's 64-bit generator seed


@dataclass
class HealConfig:
    """Everything a healing run depends on (saved in the run folder as `heal_config.json`)."""

    model: str = setting(help="A transplant output folder (from `transplant run` or `transplant extend`).",
                         flag="--model")
    texts: list[str] = setting(help="Text in the new tokenizer's language or domain (repeatable; 2-5% of it is held "
                               "out).", flag="--text")
    out: str = setting(help="Output folder for the healed checkpoint.", flag="--out", path="dir")
    run: str | None = setting(None, "Training folder: log, checkpoints (default: OUT.heal-run beside OUT).",
                              flag="--run", path="dir")
    teacher: str | None = setting(None, "The model before the transplant (default: the plan's base model).",
                                  flag="--teacher")
    steps: int = setting(0, "Training budget in steps (instead of --minutes; 0: none).", flag="--steps", ge=0)
    minutes: float | None = setting(
        None, "Training budget in minutes of training time only: the steps and their held-out scores, not the "
        "setup (loading the models, the first score) nor writing checkpoints.", flag="--minutes", gt=0)
    batch_size: int = setting(4, "Windows per step and process.", flag="--batch-size", ge=1)
    seq_len: int = setting(256, "Tokens per window.", flag="--seq-len", ge=8)
    lr: float = setting(1e-2, "Adam learning rate (offsets in units of the matrix's std).", flag="--lr", gt=0)
    optimizer: str = setting(
        "adam", "adam: torch's Adam (16 bytes per trained element); row-adam: a bfloat16 first moment and a second "
        "moment factored into rows and columns (10 bytes), for large models.", flag="--optimizer", choices=OPTIMIZERS)
    warmup: int = setting(10, "Steps of linear learning-rate warm-up.", ge=0)
    distill_weight: float = setting(1.0, "Weight of distillation from the original model.", ge=0)
    lm_weight: float = setting(
        1.0, "Weight of the next-token loss beside distillation: 1 pulls the student up to the original model's "
        "likelihood and never past it; 0 is symmetric distillation; above 1 fits the corpus (risks other genres).",
        flag="--lm-weight", ge=0)
    anchor_weight: float = setting(0.0, "Weight of the L2 pull toward the initial rows.", flag="--anchor-weight", ge=0)
    min_count: int = setting(1, "A made row is trained when the training text uses it this often.", ge=1)
    held_out: float = setting(0.05, "Share of the text's windows held out for scoring.", gt=0, lt=1)
    eval_every: int = setting(25, "Steps between held-out scores.", flag="--eval-every", ge=1)
    patience: int = setting(4, "Held-out evaluations without improvement before stopping (0: never stop early).",
                            flag="--patience", ge=0)
    checkpoint_every: int = setting(25, "Steps between checkpoints.", flag="--checkpoint-every", ge=1)
    keep_checkpoints: int = setting(2, "Checkpoints kept in the run folder.", ge=1)
    seed: int = setting(0, "Seed of the batch order (one per step and process).", flag="--seed", ge=0, le=MAX_SEED)
    # The two ways of holding a big frozen body share their flags with `hypernet train`
    # (`cli.spec_options.frozen_body_options`).
    shard_body: bool = setting(False, "Shard the frozen body's decoder layers over the processes (FSDP2).")
    checkpoint_layers: bool = setting(False, "Recompute the frozen body's layers in the backward pass.")
    resume: bool = setting(False, "Continue the run from its last checkpoint (a larger budget trains longer).",
                           flag="--resume")
    overwrite: bool = setting(False, "Replace an earlier output folder and start an earlier run folder afresh (with "
                              "--resume: continue the run, replace the output).", flag="--overwrite")

    @property
    def run_dir(self) -> Path:
        out = Path(self.out)
        return Path(self.run) if self.run else out.with_name(out.name + ".heal-run")


__all__ = ["HealConfig", "MAX_SEED", "OPTIMIZERS"]
