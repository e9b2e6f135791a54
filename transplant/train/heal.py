"""Healing: a short training of a transplant's new rows that holds on to what the model knows.

Only the rows the transplant *made* (not exact copies, specials or padding) and that the
training text actually uses are trained, as offsets from their initial values; the rest of the
model is frozen and written back byte for byte. A tied model trains one offset per row (input
and head move together); an untied one trains the two sides separately.

The objective is distillation, not plain next-token loss. The original model (the teacher)
reads the same text through its own tokenizer; wherever both tokenizations end a token at the
same character (a *common cut*: almost every word boundary), the probability each model gives
to the text between two cuts is comparable. The student is pulled toward the teacher's
log-probability of every such chunk (L1, in nats per byte): it recovers the teacher's behaviour
instead of fitting the corpus, which is what made a plain embeddings-only fine-tune worse on
text of other genres (the approximate likelihood matching of Minixhofer et al. 2025, in its
simplest form). Optional extra terms: the student's own next-token loss (`lm_weight`) and an
L2 pull toward the initialization (`anchor_weight`, in units of the matrix's standard
deviation). The two loss terms combine simply: per chunk, the L1 term pulls the student up
where it is below the teacher and *down* where it is above (a chunk the new tokenizer happens
to split better), and the next-token term pulls up everywhere; with `lm_weight=1` the chunks
above the teacher are left alone and those below are pulled up twice as hard, a one-sided
distillation that never pushes the student past the teacher's likelihood of the text. A held-out slice of the text (whole windows, never trained on) is scored every
`eval_every` steps; the best state is the one written, and training stops after `patience`
evaluations without improvement.

Runs under `accelerate` (`accelerate launch --multi_gpu --num_processes 2 -m transplant.cli
heal ...` gives two CPU processes; GPUs unchanged), logs to `<run>/log.jsonl`, checkpoints into
`<run>/checkpoints/` and resumes from the last one with `resume=True` to the same weights an
uninterrupted run reaches. `minutes` and `steps` count the whole run, so a resume may raise
them to train longer; `minutes` counts training time only (`heal_loop`), not the setup.

Everything that can be refused is checked before a folder is made or a model loaded: the
settings, the inputs, where the output and the run folder go, and the text itself (UTF-8, cut
into enough windows, using rows the transplant made). Then the run folder is locked for the
whole run (`heal_config.RunFolder`: a second run on it is refused), and a full disk ends the run
in one line, leaving the earlier checkpoints to resume from and no partial output.

The parts, in the order a run uses them: `heal_config` (settings, inputs, the run folder),
`heal_windows` (the text cut where both tokenizers agree), `heal_model` (the frozen models and
the trained offsets), `heal_loop` (steps, scoring, checkpoints), `heal_writer` (the output).

Example:
    >>> heal(HealConfig(model="smollm2-de", texts=["de/train.txt"], out="smollm2-de-healed",
    ...                 minutes=15))  # doctest: +SKIP
"""

from __future__ import annotations

import gc
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from transplant.common.errors import TransplantError
from transplant.common.memory import check_fits, trim_heap
from transplant.common.progress import stage
from transplant.io.checkpoint import locate_embeddings
from transplant.io.frozen_load import checkpoint_layers
from transplant.io.outdir import check_output_path
from transplant.train.heal_config import (
    HealConfig,
    RunFolder,
    check_inputs,
    check_run_folder,
    check_run_place,
    check_settings,
    documents,
    run_inputs,
    teacher_name,
    write_run_config,
)
from transplant.train.heal_loop import HealLoop
from transplant.train.heal_model import FrozenLM, RowOffsets, expected_peak, load_models, load_tokenizers, rows_to_heal
from transplant.train.heal_windows import aligned_windows, chunk_logprobs, clean_cuts, split_held_out
from transplant.train.heal_writer import write_healed
from transplant.train.resume import checkpoint_tensors
from transplant.train.row_adam import RowAdam
from transplant.train.trainloop import Checkpoints, body_mesh, disk_full_is_one_line, training_accelerator

__all__ = ["HealConfig", "HealResult", "aligned_windows", "chunk_logprobs", "clean_cuts", "heal"]


@dataclass
class HealResult:
    """Where the healed checkpoint went, and how the run went."""

    out: Path
    run: Path
    summary: dict


def heal(cfg: HealConfig) -> HealResult:
    """Heal a transplant (or resume a run) and write the healed checkpoint to `cfg.out`.

    Example:
        >>> from transplant import transplant
        >>> _ = transplant(model_dir, new_tok_dir, "moved", method="fvt")
        >>> res = heal(HealConfig(model="moved", texts=[text_file], out="healed", steps=2, seq_len=32))
        >>> res.summary["step"], res.summary["rows_trained"] > 0, (res.out / "heal.json").is_file()
        (2, True, True)
    """
    started = time.perf_counter()
    check_settings(cfg)
    accelerator = training_accelerator()
    device = accelerator.device
    mesh = body_mesh(accelerator, cfg.shard_body, "heal")
    shards = accelerator.num_processes if mesh is not None else 1
    folder, teacher_folder, plan = check_inputs(cfg)
    teacher_named = str(teacher_name(cfg, plan))  # check_inputs refused a plan without one
    paths = [folder, teacher_folder, *map(Path, cfg.texts)]
    out = check_output_path(Path(cfg.out), paths, cfg.overwrite)
    run = check_run_place(cfg, out, paths)

    # The text, before any folder is made or model loaded: a bad one fails in a second, leaving nothing.
    text = HealText.read(cfg, folder, teacher_folder)
    rows, made = rows_to_heal(plan, text.windows, text.train_idx, locate_embeddings(folder).rows, cfg.min_count)
    inputs = run_inputs(cfg, folder, teacher_folder)
    check_fits(expected_peak(cfg, folder, teacher_folder, len(rows), shards), "heal",
               "pass shorter windows or smaller batches with --seq-len/--batch-size or --optimizer row-adam, "
               "shard the body over several processes with --shard-body (README: Big models), or use a machine "
               "with more memory")

    with RunFolder.owned(run, accelerator) as owner:  # one run per run folder, until this one ends
        ckpts = Checkpoints(run, cfg.keep_checkpoints)
        latest = ckpts.latest()
        afresh = check_run_folder(cfg, latest, inputs)  # on every process (it writes nothing): all stop alike
        if afresh:  # --overwrite: a new run, its files deleted once the models have loaded
            latest = None
        stage(f"heal: loading {folder.name} and its teacher {teacher_named}")
        student_lm, teacher_lm = load_models(folder, teacher_folder, device, mesh)
        if cfg.checkpoint_layers:  # the teacher reads without gradients: nothing of it is kept
            checkpoint_layers(student_lm)
        student, teacher = FrozenLM(student_lm), FrozenLM(teacher_lm)
        untied = not student.tied
        std_in = float(student.E_in.float().std())
        std_out = float(student.W_out.float().std())
        offsets = RowOffsets(student, rows, std_in, std_out, untied).to(device)
        opt = (RowAdam if cfg.optimizer == "row-adam" else torch.optim.Adam)(offsets.parameters(), lr=cfg.lr)
        net, opt = accelerator.prepare(offsets, opt)
        core: RowOffsets = accelerator.unwrap_model(net)
        stage(f"heal: training {len(rows):,} of {int(made.sum()):,} made rows ({'untied' if untied else 'tied'}), "
              f"{len(text.train_idx):,} windows, {len(text.held_idx)} held out")

        if latest is not None:
            checkpoint_tensors(latest, core, "model or text")
        loop = HealLoop(cfg=cfg, accelerator=accelerator, windows=text.windows, train_idx=text.train_idx,
                        held_idx=text.held_idx, teacher=teacher, s_start=text.s_start, t_start=text.t_start,
                        net=net, core=core, opt=opt, ckpts=ckpts, sharded=mesh is not None)
        loop.resume_from(latest)

        with disk_full_is_one_line(run, lambda: _resume_fix(ckpts)):
            if accelerator.is_main_process:  # every check passed and the checkpoint loaded: the run folder is written
                if afresh:
                    owner.start_afresh()
                write_run_config(cfg, inputs)
            accelerator.wait_for_everyone()
            setup_seconds = time.perf_counter() - started
            loop.train()

        summary = {**loop.state.as_dict(), "setup_seconds": round(setup_seconds, 2), "model": str(cfg.model),
                   "teacher": teacher_named, "teacher_folder": str(teacher_folder),
                   "texts": [str(t) for t in cfg.texts], "rows_trained": len(rows),
                   "rows_made": int(made.sum()), "untied": untied, "windows": len(text.train_idx),
                   "held_out_windows": len(text.held_idx), "processes": accelerator.num_processes,
                   "body_shards": shards, "settings": _settings(cfg)}
        # The models and the optimizer go before the healed matrices are made (the best offsets and
        # a copy of each matrix): at 7B widths the write was the run's peak, 0.8 GB above training's.
        del loop, net, opt, core, offsets, student, teacher, student_lm, teacher_lm
        gc.collect()
        trim_heap()
        if accelerator.is_main_process:
            with disk_full_is_one_line(out.parent, lambda: "free space there, or pass --out on another disk, then "
                                       "rerun the command with --resume: the run's checkpoints are complete"):
                write_healed(folder, out, run, rows, summary, cfg.overwrite)
        accelerator.wait_for_everyone()
    return HealResult(out, run, summary)


@dataclass
class HealText:
    """The healing text as windows both tokenizers cut alike, split into training and held-out
    windows, and each tokenizer's start token."""

    windows: list
    train_idx: list[int]
    held_idx: list[int]
    s_start: int | None
    t_start: int | None

    @classmethod
    def read(cls, cfg: HealConfig, folder: Path, teacher_folder: Path) -> HealText:
        docs = documents(cfg.texts)
        stage(f"heal: aligning {sum(len(d) for d in docs):,} characters under both tokenizers")
        s_tok, t_tok, s_start, t_start = load_tokenizers(folder, teacher_folder)
        windows = aligned_windows(docs, s_tok, t_tok, cfg.seq_len - 1, 2 * cfg.seq_len - 1)
        if len(windows) < 2:
            raise TransplantError(f"the healing text gives {len(windows)} window(s) of --seq-len {cfg.seq_len}, "
                                  "fewer than the 2 a run needs (one held out; pass more text with --text)")
        held_idx, train_idx = split_held_out(len(windows), cfg.held_out)
        return cls(windows, train_idx, held_idx, s_start, t_start)


def _resume_fix(ckpts: Checkpoints) -> str:
    """How to go on after a full disk: from the run's last checkpoint."""
    now = ckpts.latest()
    since = f"its last checkpoint, {now.name}" if now is not None else "the start"
    return f"free space there, or pass --run on another disk, then rerun with --resume to continue from {since}"


def _settings(cfg: HealConfig) -> dict:
    """The settings a summary records (what the run was, not where it read and wrote)."""
    return {k: v for k, v in asdict(cfg).items() if k not in ("model", "texts", "out", "run", "resume", "overwrite")}
