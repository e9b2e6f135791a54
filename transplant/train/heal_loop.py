"""Healing's training loop: steps on random training windows, held-out scoring, the best state
kept, checkpoints, stopping.

`HealLoop` holds everything a run works with (the windows, both models, the offsets and their
optimizer) and its progress, `HealState`: the part a checkpoint saves and a resume restores
(with `accelerator.save_state`'s weights, optimizer and RNG states), so a resumed run goes on to
the weights an uninterrupted run reaches.

The `minutes` budget counts training time only: the steps and the held-out scores between them.
The setup (loading the models, cutting the text, the held-out score before the first step) and
writing checkpoints do not count, so a short budget still trains; a run that ends without a
single step is an error, never a "healed" output equal to its input.

Example:
    >>> loop = HealLoop(cfg=cfg, accelerator=accelerator, windows=windows, train_idx=train_idx,
    ...                 held_idx=held_idx, teacher=teacher, s_start=s_start, t_start=t_start, net=net,
    ...                 core=core, opt=opt, ckpts=Checkpoints(cfg.run_dir, cfg.keep_checkpoints))  # doctest: +SKIP
    >>> loop.resume_from(ckpts.latest())  # doctest: +SKIP
    >>> loop.train()  # doctest: +SKIP
    >>> loop.state.best_bpb < loop.state.start_bpb  # doctest: +SKIP
    True
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from transplant.common.errors import TransplantError
from transplant.common.permissions import follow_umask
from transplant.common.progress import bar, stage
from transplant.train.heal_config import BEST_FILE, HealConfig
from transplant.train.heal_model import FrozenLM, RowOffsets, window_batch
from transplant.train.heal_windows import Window, chunk_logprobs
from transplant.train.resume import restore_checked
from transplant.train.trainloop import (
    LOG_FILE,
    Checkpoints,
    any_process,
    append_log,
    begin_step,
    budget_spent,
    optimizer_step,
    warm_up,
)


@dataclass
class HealState:
    """A run's progress: what a checkpoint saves (as JSON) and the summary reports.

    Example:
        >>> HealState(step=3, seconds=1.5).as_dict()["step"]
        3
    """

    step: int = 0
    seconds: float = 0.0  # training wall time: steps and the scores between them (the `minutes` budget)
    best_bpb: float | None = None  # the best held-out bits per byte so far
    best_step: int = 0
    evals_since_best: int = 0
    start_bpb: float | None = None  # held out, before any step
    teacher_bpb: float | None = None  # held out, the original model

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class HealLoop:
    """One healing run's training: see the module docstring.

    `net` is the offsets module as `accelerator.prepare` returned it (DDP-wrapped across
    processes: its forward is a collective), `core` the same module unwrapped (for scoring on the
    main process alone and for reading the offsets).
    """

    cfg: HealConfig
    accelerator: object
    windows: list[Window]
    train_idx: list[int]
    held_idx: list[int]
    teacher: FrozenLM
    s_start: int
    t_start: int
    net: torch.nn.Module
    core: RowOffsets
    opt: torch.optim.Optimizer
    ckpts: Checkpoints
    state: HealState = field(default_factory=HealState)
    # The teacher's chunk log-probabilities of each window: the teacher is frozen, so once is enough.
    teacher_cache: dict[int, torch.Tensor] = field(default_factory=dict)
    # The frozen body is sharded over the processes (`io.sharded_load`): every forward is a
    # collective, so every process runs the same forwards (the teacher's whole batch each step,
    # the held-out score on every process).
    sharded: bool = False

    @property
    def run(self) -> Path:
        return self.cfg.run_dir

    @property
    def device(self):
        return self.accelerator.device

    def resume_from(self, latest: Path | None) -> None:
        """Restore the state of checkpoint `latest` (none: start afresh) and its best offsets."""
        if latest is not None:
            stage(f"heal: resuming from {latest.name}")
            self.state = HealState(**restore_checked(self.accelerator, latest, self.run / LOG_FILE))
            if self.accelerator.is_main_process:
                # The best state as of that checkpoint (a later one may have been saved before the kill).
                shutil.copyfile(latest / BEST_FILE, self.run / BEST_FILE)
        self.accelerator.wait_for_everyone()

    def teacher_chunks(self, idx: list[int]) -> list[torch.Tensor]:
        """The teacher's log-probability of every chunk of windows `idx` (computed once per window)."""
        # Sharded: the other processes' batches may miss their cache where this one hits it.
        todo = list(idx) if self.sharded else [i for i in idx if i not in self.teacher_cache]
        if todo:
            with torch.no_grad():
                ids, mask = window_batch([self.windows[i].teacher for i in todo], self.t_start, self.device)
                lp = self.teacher.token_logprobs(ids, mask)
                for r, i in enumerate(todo):
                    cut = torch.tensor([c[1] for c in self.windows[i].cuts], device=self.device)
                    self.teacher_cache[i] = chunk_logprobs(lp[r], cut).cpu()
        return [self.teacher_cache[i].to(self.device) for i in idx]

    def losses(self, module: torch.nn.Module, idx: list[int]) -> dict[str, torch.Tensor]:
        """Distillation and LM terms (nats per byte) over windows `idx`."""
        ids, mask = window_batch([self.windows[i].student for i in idx], self.s_start, self.device)
        lp = module(ids, mask)
        targets = self.teacher_chunks(idx)
        dist, nll, n_bytes = lp.new_zeros(()), lp.new_zeros(()), 0
        for r, i in enumerate(idx):
            w = self.windows[i]
            cut = torch.tensor([c[0] for c in w.cuts], device=self.device)
            s_chunks = chunk_logprobs(lp[r], cut)
            dist = dist + (s_chunks - targets[r]).abs().sum()
            nll = nll - lp[r, :len(w.student)].sum()
            n_bytes += sum(w.chunk_bytes)
        return {"distill": dist / n_bytes, "lm": nll / n_bytes,
                "teacher_lm": -sum(float(t.sum()) for t in targets) / n_bytes}

    def held_out(self) -> tuple[float, float]:
        """(student, teacher) bits per byte on the held-out windows."""
        nll = t_nll = total = 0.0
        # As many windows at a time as a training step reads: the teacher's float32 logits over its
        # vocabulary are most of a step's memory (8 windows of 256 tokens over 49k ids: 0.4 GB, twice).
        per = self.cfg.batch_size
        with torch.no_grad():
            for b in range(0, len(self.held_idx), per):
                part = self.held_idx[b:b + per]
                r = self.losses(self.core, part)  # unwrapped: the main process alone, unless sharded
                n_bytes = sum(sum(self.windows[i].chunk_bytes) for i in part)
                nll += float(r["lm"]) * n_bytes
                t_nll += r["teacher_lm"] * n_bytes
                total += n_bytes
        return nll / total / math.log(2), t_nll / total / math.log(2)

    def save_best(self) -> None:
        """Write the current offsets as the run's best (renamed into place; a failed write, a full
        disk, leaves the earlier best and no partial file)."""
        d_in, d_out = (t.detach().cpu().clone() for t in self.core.deltas())  # clone: tied offsets share memory
        tmp = self.run / f".{BEST_FILE}.partial"
        try:
            save_file({"d_in": d_in, "d_out": d_out}, str(tmp))
            follow_umask(tmp)  # safetensors writes 0600
            os.replace(tmp, self.run / BEST_FILE)
        finally:
            tmp.unlink(missing_ok=True)

    def checkpoint(self) -> None:
        """Save a checkpoint of the run, with the best offsets as of now."""
        self.ckpts.save(self.accelerator, self.state.as_dict(),
                        extra=lambda tmp: shutil.copyfile(self.run / BEST_FILE, tmp / BEST_FILE))

    def log(self, record: dict) -> None:
        if self.accelerator.is_main_process:
            append_log(self.run / LOG_FILE, record)

    def evaluate(self, counted: bool = True) -> None:
        """Score the held-out slice (main process; every process when the body is sharded) and
        update the best state (main process); `counted`: its time is training time (the score
        before the first step is setup, not counted)."""
        if not (self.accelerator.is_main_process or self.sharded):
            return
        st = self.state
        started = time.perf_counter()
        bpb, t_bpb = self.held_out()
        if not self.accelerator.is_main_process:
            return
        if counted:  # scores between steps choose the state written: part of training
            st.seconds += time.perf_counter() - started
        if st.start_bpb is None:
            st.start_bpb, st.teacher_bpb = bpb, t_bpb
        if st.best_bpb is None or bpb < st.best_bpb - 1e-6:
            st.best_bpb, st.best_step, st.evals_since_best = bpb, st.step, 0
            self.save_best()
        else:
            st.evals_since_best += 1
        self.log({"step": st.step, "held_out_bpb": round(bpb, 6), "teacher_bpb": round(t_bpb, 6),
                  "seconds": round(st.seconds, 2)})

    def should_stop(self) -> bool:
        """The budget is spent, or (main process) `patience` evaluations brought nothing better;
        the same answer on every process."""
        cfg, st = self.cfg, self.state
        stop = budget_spent(st.step, cfg.steps, st.seconds, cfg.minutes)
        if self.accelerator.is_main_process and cfg.patience and st.evals_since_best >= cfg.patience:
            stop = True
        return any_process(self.accelerator, stop)

    def train_step(self) -> None:
        """One optimizer step on a random batch of training windows, logged."""
        cfg = self.cfg
        step = begin_step(self.state.step, cfg.seed, self.accelerator.process_index)
        draw = torch.randint(len(self.train_idx), (cfg.batch_size,), generator=step.generator).tolist()
        idx = [self.train_idx[i] for i in draw]
        warm_up(self.opt, cfg.lr, step.number, cfg.warmup)
        parts = self.losses(self.net, idx)
        loss = cfg.distill_weight * parts["distill"] + cfg.lm_weight * parts["lm"]
        if cfg.anchor_weight:
            core = self.core
            anchor = core.d_in.pow(2).mean() + (core.d_out.pow(2).mean() if core.d_out is not None else 0.0)
            loss = loss + cfg.anchor_weight * anchor
        optimizer_step(self.accelerator, self.opt, loss)
        self.state.step = step.number
        self.state.seconds += time.perf_counter() - step.started
        self.log({"step": step.number, "loss": round(float(loss.detach()), 6),
                  "distill": round(float(parts["distill"].detach()), 6),
                  "lm_bpb": round(float(parts["lm"].detach()) / math.log(2), 6),
                  "seconds": round(self.state.seconds, 2)})

    def train(self) -> None:
        """Train until the budget is spent or patience runs out: scored before the first step (a
        fresh run: setup, not counted), every `eval_every` steps and at the end; checkpointed every
        `checkpoint_every` steps and at the end. No step at all is an error (nothing is saved)."""
        cfg, st = self.cfg, self.state
        if st.step == 0 and st.best_bpb is None:
            stage(f"heal: scoring {len(self.held_idx)} held-out windows before training (setup: not counted in "
                  "the budget)")
            self.evaluate(counted=False)
        pbar = self.progress_bar()
        while not self.should_stop():
            self.train_step()
            if st.step % cfg.eval_every == 0:
                self.evaluate()
            if st.step % cfg.checkpoint_every == 0:
                self.checkpoint()
            self.show_progress(pbar)
        pbar.close()
        if st.step == 0:
            raise TransplantError("the training budget was used up before the first step: nothing was trained and "
                                  "no output written (pass a larger --minutes or --steps)")
        if st.step % cfg.eval_every:
            self.evaluate()
        self.checkpoint()

    def progress_bar(self):
        """The `healing` bar, its total the budget: steps, or seconds of training with the step
        count and the time left beside it."""
        cfg, st = self.cfg, self.state
        if cfg.minutes is None:  # tqdm shows n/total and the time left ("<00:42")
            return bar(total=cfg.steps, desc="healing", unit="step", initial=min(st.step, cfg.steps))
        total = cfg.minutes * 60
        pbar = bar(total=total, desc="healing", unit="s", initial=min(st.seconds, total),
                   bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s of training{postfix}")  # tqdm puts ", " before a postfix
        self.show_progress(pbar, update=False)
        return pbar

    def show_progress(self, pbar, update: bool = True) -> None:
        """Move the bar to the run's progress (a step, or the seconds trained) and say what is left."""
        cfg, st = self.cfg, self.state
        if cfg.minutes is None:
            if update:
                pbar.update(1)
            return
        total = cfg.minutes * 60
        if update:
            pbar.update(min(st.seconds, total) - pbar.n)
        left = max(0.0, total - st.seconds)
        pbar.set_postfix_str(f"step {st.step}, {int(left // 60)}:{int(left % 60):02d} left", refresh=False)
