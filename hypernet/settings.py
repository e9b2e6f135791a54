"""What a hypernetwork training run depends on, declared once (`TrainConfig`): each field's
default, help, flag and range. `hypernet train`'s options are generated from it, and every value
(command line, recipe or Python) is checked against it (`transplant.common.settings`); torch-free,
so `hypernet --help` stays light.

Example:
    >>> TrainConfig(model="m", texts=["t.txt"], out="hn", width=-4)
    Traceback (most recent call last):
    ...
    transplant.common.errors.TransplantError: --width must be a whole number >= 0, not -4 (see `hypernet train --help`)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from transplant.common.errors import TransplantError
from transplant.common.settings import check_declared, setting

MAX_SEED = 2**32 - 1  # each step's seed is derived from it and must stay a 64-bit integer


@dataclass
class TrainConfig:
    """Everything a training run depends on (saved in the output folder as `train_config.json`)."""

    model: str = setting(help="Base model: a folder, a .gguf file, a cached hub id or a packaged name.",
                         flag="--model")
    texts: list[str] = setting(help="Training text file (repeatable; each file is one source: a language or a "
                               "domain).", flag="--text")
    out: str = setting(help="Output folder (network, log, checkpoints).", flag="--out", path="dir")
    stage1_steps: int = setting(300, "Stage 1 steps (old tokens from their own pieces; no LM forward).",
                                flag="--stage1-steps", ge=0)
    stage1_minutes: float | None = setting(None, "Stage 1 time budget instead of steps.", flag="--stage1-minutes",
                                           ge=0)
    steps: int = setting(0, "Stage 2 steps (LM loss under sampled tokenizers).", flag="--steps", ge=0)
    minutes: float | None = setting(None, "Stage 2 time budget instead of steps.", flag="--minutes", ge=0)
    stage1_batch: int = setting(1024, "Stage 1 tokens per step.", flag="--stage1-batch", ge=1)
    batch_size: int = setting(4, "Stage 2 text chunks per step and process.", flag="--batch-size", ge=1)
    seq_len: int = setting(256, "Stage 2 tokens per chunk.", flag="--seq-len", ge=8)
    negatives: int = setting(1024, "Unused predicted tokens sampled into each stage-2 softmax.", flag="--negatives",
                             ge=0)
    aux_batch: int = setting(256, "Old tokens of the auxiliary stage-1 loss in each stage-2 step.", ge=1)
    aux_weight: float = setting(0.5, "Weight of the auxiliary stage-1 loss in stage 2.", flag="--aux-weight", ge=0)
    lr: float = setting(3e-4, "Stage 1 learning rate.", flag="--lr", gt=0)
    stage2_lr: float = setting(1e-4, "Stage 2 learning rate.", flag="--stage2-lr", gt=0)
    warmup: int = setting(20, "Steps of linear learning-rate warm-up.", ge=0)
    dynamic_share: float = setting(
        0.0, "Share of stage-2 steps that read the base tokenization with the batch's own merges (dynamic "
        "tokenization: only merged tokens predicted, next base token as label) instead of a sampled tokenizer.",
        flag="--dynamic-share", ge=0, le=1)
    init: str = setting("", "Start from this network folder's weights (its width and layers) and fine-tune it; it "
                        "must belong to --model.", flag="--init")
    width: int = setting(0, "Encoder width (0: the model's hidden size, as ZeTT).", flag="--width", ge=0)
    layers: int = setting(3, "Encoder layers.", flag="--layers", ge=1)
    max_pieces: int = setting(8, "Old pieces the encoder reads per token.", ge=1)
    min_vocab_share: float = setting(0.3, "Least share of the seed vocabulary a sampled tokenizer keeps.", gt=0, le=1)
    train_chars: int = setting(1_000_000, "Characters per text for the sampled tokenizers' seed vocabularies.", ge=1)
    checkpoint_every: int = setting(50, "Steps between checkpoints.", flag="--checkpoint-every", ge=1)
    keep_checkpoints: int = setting(2, "Checkpoints kept in the run folder.", ge=1)
    log_every: int = setting(10, "Steps between log lines.", ge=1)
    seed: int = setting(0, "Seed of the initialization and of every drawn batch.", flag="--seed", ge=0, le=MAX_SEED)
    # The two ways of holding a big frozen body share their flags with `transplant heal`
    # (`transplant.cli.spec_options.frozen_body_options`).
    shard_body: bool = setting(False, "Shard the frozen body's layers over the processes (`io.sharded_load`).")
    checkpoint_layers: bool = setting(False, "Recompute the body's layers in stage 2's backward pass.")
    resume: bool = setting(False, "Continue the run in --out from its last checkpoint.", flag="--resume")
    overwrite: bool = setting(False, "Start afresh in --out, replacing an earlier hypernetwork run or network there "
                              "(nothing else).", flag="--overwrite")

    def __post_init__(self) -> None:
        # Paths from Python callers are kept as strings (the settings are saved as JSON).
        self.model, self.out = (str(v) if isinstance(v, Path) else v for v in (self.model, self.out))
        if isinstance(self.texts, (list, tuple)):
            self.texts = [str(t) if isinstance(t, Path) else t for t in self.texts]
        check_settings(self)


def check_settings(cfg: TrainConfig) -> None:
    """Types (the spec-file schema, strict) and ranges (the declarations) of every setting, each
    failure one line naming its flag."""
    from pydantic import ValidationError

    from transplant.common.specfile import dataclass_spec, explain

    spec, values = dataclass_spec(TrainConfig), asdict(cfg)
    try:
        spec.model_validate(values, strict=True)
    except ValidationError as exc:
        raise TransplantError(explain(exc, spec, "hypernet train settings", values)) from None
    check_declared(cfg, "hypernet train")


__all__ = ["MAX_SEED", "TrainConfig", "check_settings"]
