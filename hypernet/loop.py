"""The hypernetwork's training loop: stage 1's and stage 2's steps, held-out scoring, logging,
checkpoints and stopping, built as heal's `HealLoop` is.

`HyperNetLoop` holds everything a run works with (the network as prepared and unwrapped, its
optimizer, the source matrices, stage 1's examples) and its progress, `TrainState`: the part a
checkpoint saves and a resume restores (with `accelerator.save_state`'s weights, optimizer and
RNG states), so a resumed run goes on to the weights an uninterrupted run reaches. `Stage2`
holds what only stage 2 reads (the texts, the tokenizer sampler, the frozen model) and computes
one step's loss. The pieces every loop shares (opening a step, the warm-up, the optimizer step,
the budget, checkpoint folders, the log) come from `transplant.train.trainloop`.

Example:
    >>> loop = HyperNetLoop(cfg=cfg, accelerator=accelerator, net=net, core=core, opt=opt,
    ...                     ckpts=Checkpoints(Path(cfg.out), cfg.keep_checkpoints), E_in=E_in, E_out=E_out,
    ...                     examples=Examples.split(targets, decomps))  # doctest: +SKIP
    >>> loop.resume_from(latest)  # doctest: +SKIP
    >>> loop.run_stage1(); loop.run_stage2(stage2)  # doctest: +SKIP
    >>> loop.finish({"base_model": cfg.model})  # doctest: +SKIP
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from hypernet.data import TextPool, TokenizerSampler
from hypernet.model import HyperNet, pad_pieces
from hypernet.settings import TrainConfig
from transplant.common.progress import bar, stage
from transplant.measure.lm import with_start_token
from transplant.train.heal_model import FrozenLM
from transplant.train.resume import restore_checked, write_json
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
class TrainState:
    """A run's progress: what a checkpoint saves (as JSON) and `training.json` reports.

    Example:
        >>> TrainState(step=3, stage1_done=3).as_dict()["stage1_done"]
        3
    """

    step: int = 0
    stage1_seconds: float = 0.0  # training wall time of each stage (their `minutes` budgets)
    stage2_seconds: float = 0.0
    stage1_done: int = 0
    stage2_done: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Examples:
    """Stage 1's examples: old tokens made of other old tokens (`targets`, one decomposition each),
    split 98 / 2 into training and held-out examples by a fixed permutation.

    Example:
        >>> ex = Examples.split(list(range(100)), [[0, 1]] * 100)
        >>> len(ex.train_idx), len(ex.held_idx)
        (98, 2)
    """

    targets: torch.Tensor
    decomps: list[list[int]]
    train_idx: list[int]
    held_idx: list[int]

    @classmethod
    def split(cls, targets: list[int], decomps: list[list[int]]) -> Examples:
        perm = torch.randperm(len(targets), generator=torch.Generator().manual_seed(1234)).tolist()
        held = set(perm[:max(1, len(perm) // 50)])
        return cls(torch.tensor(targets), decomps, [i for i in perm if i not in held], sorted(held)[:2048])

    def draw(self, n: int, generator: torch.Generator) -> list[int]:
        """`n` training examples drawn with `generator` (a step's seeded generator)."""
        return [self.train_idx[i] for i in torch.randint(len(self.train_idx), (n,), generator=generator).tolist()]


@dataclass
class HyperNetLoop:
    """One hypernetwork run's training: see the module docstring.

    `net` is the network as `accelerator.prepare` returned it (DDP-wrapped across processes: its
    forward is a collective), `core` the same network unwrapped (held-out scoring on the main
    process alone, saving).
    """

    cfg: TrainConfig
    accelerator: object
    net: torch.nn.Module
    core: HyperNet
    opt: torch.optim.Optimizer
    ckpts: Checkpoints
    E_in: torch.Tensor
    E_out: torch.Tensor | None  # None: a tied model, whose head is E_in
    examples: Examples
    state: TrainState = field(default_factory=TrainState)

    @property
    def run(self) -> Path:
        return Path(self.cfg.out)

    @property
    def device(self):
        return self.accelerator.device

    def resume_from(self, latest: Path | None) -> None:
        """Restore the state of checkpoint `latest` (none: start afresh)."""
        if latest is not None:
            stage(f"hypernet: resuming from {latest.name}")
            self.state = TrainState(**restore_checked(self.accelerator, latest, self.run / LOG_FILE))

    def forward(self, decs: list[list[int]], module: torch.nn.Module | None = None):
        """Predicted (input rows, output rows) for pieces `decs`, by the prepared network or `module`."""
        pieces, mask = pad_pieces(decs)
        return (module or self.net)(pieces.to(self.device), mask.to(self.device), self.E_in, self.E_out)

    def withheld_loss(self, rows: list[int], pred_in: torch.Tensor, pred_out: torch.Tensor) -> torch.Tensor:
        """Stage 1's loss on examples `rows`: squared error in each matrix's standardized coordinates."""
        ids = self.examples.targets[rows].to(self.device)
        E_head = self.E_in if self.E_out is None else self.E_out
        l_in = ((pred_in - self.E_in[ids]) / self.core.std_in).pow(2).mean()
        l_out = ((pred_out - E_head[ids]) / self.core.std_out).pow(2).mean()
        return (l_in + l_out) / 2

    def held_out_loss(self) -> float:
        """Stage 1's loss on the held-out examples."""
        # The unwrapped network: a wrapped (DDP) forward is a collective, and this runs on one process.
        held = self.examples.held_idx
        with torch.no_grad():
            a, b = self.forward([self.examples.decomps[i] for i in held], self.core)
            return float(self.withheld_loss(held, a, b))

    def log(self, record: dict) -> None:
        if self.accelerator.is_main_process:
            append_log(self.run / LOG_FILE, record)

    def should_stop(self, done: int, steps: int, seconds: float, minutes: float | None) -> bool:
        """The stage's budget is spent (the same answer on every process)."""
        return any_process(self.accelerator, budget_spent(done, steps, seconds, minutes))

    def take_step(self, loss: torch.Tensor, key: str, started: float, pbar) -> int:
        """One optimizer step and its bookkeeping (`key`: "stage1" or "stage2"); returns the step."""
        optimizer_step(self.accelerator, self.opt, loss)
        st = self.state
        st.step += 1
        setattr(st, f"{key}_done", getattr(st, f"{key}_done") + 1)
        setattr(st, f"{key}_seconds", getattr(st, f"{key}_seconds") + time.perf_counter() - started)
        pbar.update()
        return st.step

    def checkpoint(self) -> None:
        self.ckpts.save(self.accelerator, self.state.as_dict())

    def run_stage1(self) -> None:
        """Stage 1 until its budget is spent; a fresh run first logs the untrained held-out loss."""
        cfg, st = self.cfg, self.state
        if st.stage1_done == 0 and st.step == 0 and self.accelerator.is_main_process:
            self.log({"stage": 1, "step": 0, "held_out": self.held_out_loss()})
        total = cfg.stage1_steps if cfg.stage1_minutes is None else None
        pbar = bar(total=total, desc="hypernet stage 1", unit="step", initial=st.stage1_done)
        while not self.should_stop(st.stage1_done, cfg.stage1_steps, st.stage1_seconds, cfg.stage1_minutes):
            opened = begin_step(st.step, cfg.seed, self.accelerator.process_index)
            rows = self.examples.draw(cfg.stage1_batch, opened.generator)
            warm_up(self.opt, cfg.lr, st.stage1_done + 1, cfg.warmup)
            a, b = self.forward([self.examples.decomps[i] for i in rows])
            loss = self.withheld_loss(rows, a, b)
            step = self.take_step(loss, "stage1", opened.started, pbar)
            record = {"stage": 1, "step": step, "loss": round(float(loss.detach()), 6),
                      "seconds": round(st.stage1_seconds, 2)}
            if st.stage1_done % cfg.log_every == 0 and self.accelerator.is_main_process:
                record["held_out"] = self.held_out_loss()
            self.log(record)
            if step % cfg.checkpoint_every == 0:
                self.checkpoint()
        pbar.close()

    def run_stage2(self, stage2: Stage2) -> None:
        """Stage 2 until its budget is spent."""
        cfg, st = self.cfg, self.state
        total = cfg.steps if cfg.minutes is None else None
        pbar = bar(total=total, desc="hypernet stage 2", unit="step", initial=st.stage2_done)
        while not self.should_stop(st.stage2_done, cfg.steps, st.stage2_seconds, cfg.minutes):
            opened = begin_step(st.step, cfg.seed, self.accelerator.process_index)
            rng = random.Random(opened.seed)
            warm_up(self.opt, cfg.stage2_lr, st.stage2_done + 1, cfg.warmup)
            aux_rows = self.examples.draw(cfg.aux_batch, opened.generator)
            parts = stage2.loss(rng, aux_rows)
            step = self.take_step(parts["total"], "stage2", opened.started, pbar)
            self.log({"stage": 2, "step": step, "loss": round(float(parts["total"].detach()), 6),
                      "lm_loss": round(float(parts["lm"]), 6), "aux_loss": round(float(parts["aux"]), 6),
                      "tokens": parts["tokens"], "made_share": round(parts["made_share"], 4),
                      "predicted": parts["predicted"], "pieces": parts["pieces"],
                      "seconds": round(st.stage2_seconds, 2)})
            if step % cfg.checkpoint_every == 0:
                self.checkpoint()
        pbar.close()

    def finish(self, summary: dict) -> None:
        """The last checkpoint, then (main process) `training.json` (the state, `summary`, the
        held-out loss) and the network, its config last: the folder is a network once it is there."""
        if self.state.step % self.cfg.checkpoint_every:
            self.checkpoint()
        if self.accelerator.is_main_process:
            write_json(self.run / "training.json", {**self.state.as_dict(), **summary,
                                                     "held_out_stage1_loss": self.held_out_loss()})
            self.core.save(self.run)
        self.accelerator.wait_for_everyone()


@dataclass
class Stage2:
    """What only stage 2 reads: the loop (network, matrices, stage 1's loss), the texts and the
    tokenizer sampler, the frozen model (body and logit rule) and its start token."""

    loop: HyperNetLoop
    pool: TextPool
    sampler: TokenizerSampler | None  # None: every step dynamically merged (--dynamic-share 1)
    frozen: FrozenLM
    bos: int | None
    base_tokenizer: object = None  # tokenizers.Tokenizer of the model: dynamically merged batches

    def loss(self, rng: random.Random, aux_rows: list[int]) -> dict:
        """One stage-2 batch: LM loss over a drawn tokenizer (or, a `dynamic_share` of the steps,
        over the base tokenization with the batch's merges), plus the auxiliary stage-1 loss."""
        if self.loop.cfg.dynamic_share and rng.random() < self.loop.cfg.dynamic_share:
            return self.dynamic_loss(rng, aux_rows)
        loop, cfg = self.loop, self.loop.cfg
        E_in, E_out, decomps, device = loop.E_in, loop.E_out, loop.examples.decomps, loop.device
        source = rng.randrange(len(self.pool.texts))
        st = self.sampler.sample(rng, source)
        texts = self.pool.chunks(rng, source, cfg.batch_size, cfg.seq_len * 8)
        seqs = [enc.ids[:cfg.seq_len - 1] for enc in st.tokenizer.encode_batch(texts)]
        used = sorted({t for s in seqs for t in s})
        made_with_pieces = [i for i in range(len(st.exact)) if st.exact[i] < 0 and st.pieces[i]]
        used_set = set(used)
        unused = [i for i in made_with_pieces if i not in used_set]
        n_neg = min(cfg.negatives, len(unused))
        negatives = rng.sample(unused, n_neg) if n_neg else []
        exact_ids = [i for i in range(len(st.exact)) if st.exact[i] >= 0]
        predicted = [i for i in used if st.exact[i] < 0 and st.pieces[i]] + negatives
        # One network call for everything predicted this step (DDP wants one forward per backward).
        a, b = loop.forward([st.pieces[i] for i in predicted] + [decomps[r] for r in aux_rows])
        n_pred = len(predicted)
        aux = loop.withheld_loss(aux_rows, a[n_pred:], b[n_pred:])
        E_head = E_in if E_out is None else E_out
        fallback_in, fallback_out = E_in.mean(0, dtype=torch.float32), E_head.mean(0, dtype=torch.float32)
        vocab_ids = exact_ids + predicted + [i for i in used if st.exact[i] < 0 and not st.pieces[i]]
        local = {v: k for k, v in enumerate(vocab_ids)}
        n_exact, n_fb = len(exact_ids), len(vocab_ids) - len(exact_ids) - n_pred
        ex = torch.tensor([st.exact[i] for i in exact_ids], dtype=torch.int64, device=device)
        rows_in = torch.cat([E_in[ex], a[:n_pred], fallback_in.expand(n_fb, -1)])
        rows_out = torch.cat([E_head[ex], b[:n_pred], fallback_out.expand(n_fb, -1)])
        bias = torch.zeros(len(vocab_ids), device=device)
        if n_neg:
            bias[n_exact + n_pred - n_neg:n_exact + n_pred] = math.log(len(unused) / n_neg)
        # -2 marks the start token (its row is the old model's bos row, not one of the drawn vocabulary).
        ids, mask = with_start_token([[local[t] for t in s] for s in seqs], -2, pad=-1)
        ids, mask = ids.to(device), mask.bool().to(device)
        x = rows_in[ids.clamp_min(0)]
        if self.bos is not None:
            x = torch.where((ids == -2).unsqueeze(2), E_in[self.bos].expand_as(x), x)
        hidden = self.frozen.hidden(x, mask)  # the body in its own dtype; the logits and the loss in float32
        # The negative-sampling correction is added after the model's multiplier, before its soft cap.
        logits = self.frozen.rule(hidden[:, :-1].float() @ rows_out.float().T, offset=bias)
        labels = torch.where(mask[:, 1:], ids[:, 1:], torch.full_like(ids[:, 1:], -100))
        lm = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        n_tok = int((labels >= 0).sum())
        made_share = float(((labels >= n_exact) & (labels >= 0)).sum()) / max(1, n_tok)
        # The network's work this step (for the cost per step): rows predicted and pieces read.
        pieces = sum(len(st.pieces[i]) for i in predicted) + sum(len(decomps[r]) for r in aux_rows)
        return {"total": lm + cfg.aux_weight * aux, "lm": lm.detach(), "aux": aux.detach(), "tokens": n_tok,
                "made_share": made_share, "predicted": n_pred + len(aux_rows), "pieces": pieces}

    def dynamic_loss(self, rng: random.Random, aux_rows: list[int]) -> dict:
        """The base tokenization of a batch, merged inside words until a random 10-40% fewer tokens
        (`transplant.core.batch_merges`, as `transplant.dynamic` merges at run time); merged tokens
        read predicted input rows, every position is labelled with the next unit's first base token
        over the whole base vocabulary (the output side stays the model's own)."""
        from transplant.core.batch_merges import merge_batch, word_units

        loop, cfg = self.loop, self.loop.cfg
        E_in, E_out, decomps, device = loop.E_in, loop.E_out, loop.examples.decomps, loop.device
        source = rng.randrange(len(self.pool.texts))
        texts = self.pool.chunks(rng, source, cfg.batch_size, cfg.seq_len * 8)
        encodings = self.base_tokenizer.encode_batch(texts, add_special_tokens=False)
        words = [word_units(e, t, set()) for e, t in zip(encodings, texts)]
        merge_batch(words, reduction=rng.uniform(0.1, 0.4))
        seqs = [[u for w in ws for u in w][:cfg.seq_len - 1] for ws in words]
        made = sorted({u for s in seqs for u in s if len(u) > 1})
        slot = {u: k for k, u in enumerate(made)}
        a, b = loop.forward([list(u) for u in made] + [decomps[r] for r in aux_rows])
        aux = loop.withheld_loss(aux_rows, a[len(made):], b[len(made):])
        n_old = E_in.shape[0]
        # Ids: a base token its own id, a merged one n_old + its slot; -2 the start token, -1 padding.
        ids, mask = with_start_token([[u[0] if len(u) == 1 else n_old + slot[u] for u in s] for s in seqs], -2,
                                     pad=-1)
        first = with_start_token([[u[0] for u in s] for s in seqs], -2, pad=-1)[0]
        ids, mask, first = ids.to(device), mask.bool().to(device), first.to(device)
        base = E_in[ids.clamp(0, n_old - 1)].float()
        x = torch.where((ids >= n_old).unsqueeze(2), a[(ids - n_old).clamp(0, max(0, len(made) - 1))], base) \
            if made else base
        if self.bos is not None:
            x = torch.where((ids == -2).unsqueeze(2), E_in[self.bos].float().expand_as(x), x)
        hidden = self.frozen.hidden(x, mask)
        E_head = E_in if E_out is None else E_out
        logits = self.frozen.rule(hidden[:, :-1].float() @ E_head.float().T)
        labels = torch.where(mask[:, 1:], first[:, 1:], torch.full_like(first[:, 1:], -100))
        lm = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        n_tok = int((labels >= 0).sum())
        made_share = float(((ids[:, 1:] >= n_old) & mask[:, 1:]).sum()) / max(1, n_tok)
        pieces = sum(len(u) for u in made) + sum(len(decomps[r]) for r in aux_rows)
        return {"total": lm + cfg.aux_weight * aux, "lm": lm.detach(), "aux": aux.detach(), "tokens": n_tok,
                "made_share": made_share, "predicted": len(made) + len(aux_rows), "pieces": pieces}
