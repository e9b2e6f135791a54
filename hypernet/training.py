"""Training the hypernetwork, under `accelerate` (one CPU process to many GPUs, unchanged).

Stage 1 (no LM forward): predict each old token's own input and LM-head rows from a
decomposition into *other* old tokens (`hypernet.data.withheld_decompositions`); loss: squared
error in the source matrix's standardized coordinates.

Stage 2 (ZeTT's objective): each step draws a tokenizer (`hypernet.data.TokenizerSampler`),
tokenizes a batch of one training source with it, builds the batch's embedding and LM-head
rows (pieces equal to an old token are copied, as `transplant` copies them; the others are
predicted), runs the frozen LM and minimizes next-token loss, plus `aux_weight` x the stage-1
loss on a batch of old tokens (ZeTT's auxiliary loss, which keeps predictions anchored to the
source space; ZeTT weights it 0.5). The softmax runs over every copied piece of the drawn
vocabulary, every predicted piece the batch uses and a uniform sample of the other predicted
pieces whose logits get log(unused / sampled) added, so the predicted pieces' share of the
probability mass is estimated without predicting the whole vocabulary each step.

Every batch is drawn from generators seeded by (seed, step, process), the optimizer and RNG
states are checkpointed (`accelerator.save_state`) into a folder written beside its final name
and renamed into place, so a run killed at any point and resumed with `resume=True` continues to
the same weights an uninterrupted run reaches (tested).

The output folder is the run's folder. Every input and the output path are checked before any
work; the folder is published like every output (`transplant.io.outdir`: staged, one rename, its
settings inside from the first instant) and never replaces what is not a hypernetwork output. A
resume must find the same run (settings, texts and tokenizer by content, a checkpoint of this
network's shapes for this model's embeddings), else one line and the run folder is untouched.

Example:
    >>> cfg = TrainConfig(model="smollm2-135m-instruct", texts=["de/train.txt"], out="hn",
    ...                   stage1_steps=300, steps=200)  # doctest: +SKIP
    >>> train(cfg)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from hypernet.data import TextPool, TokenizerSampler, withheld_decompositions
from hypernet.export import export_checkpoint
from hypernet.folders import HYPERNET_OUTPUT, RUN_CONFIG, RUN_FORMAT, is_training_run
from hypernet.model import HyperNet, pad_pieces, parameter_count
from hypernet.settings import TrainConfig, check_settings  # noqa: F401  (re-exported)
from hypernet.source import expected_peak, load_source
from transplant.common.errors import TransplantError
from transplant.common.memory import check_fits
from transplant.common.progress import bar, stage
from transplant.core.vocab import Vocabulary
from transplant.io.frozen_load import checkpoint_layers
from transplant.measure.lm import start_token, with_start_token
from transplant.train.heal_config import RunFolder
from transplant.train.heal_model import FrozenLM
from transplant.train.resume import (
    check_run_output,
    check_same_inputs,
    check_same_settings,
    checkpoint_tensors,
    input_fingerprints,
    open_run_output,
    restore_checked,
    write_json,
)
from transplant.train.trainloop import (
    LOG_FILE,
    Checkpoints,
    any_process,
    append_log,
    begin_step,
    body_mesh,
    budget_spent,
    optimizer_step,
    training_accelerator,
    warm_up,
)

# What a resumed run may change (the budget, where it checkpoints); `model` and `texts` are
# compared by content instead of by path (see `check_resumable`).
_MAY_CHANGE = {"stage1_steps", "stage1_minutes", "steps", "minutes", "out", "resume", "overwrite",
               "checkpoint_every", "keep_checkpoints", "log_every", "model", "texts", "format", "inputs", "shard_body",
               "checkpoint_layers"}


@dataclass
class Inputs:
    """What a run reads, checked before any work: the model folder, its tokenizer, the texts."""

    folder: Path
    tokenizer: object  # tokenizers.Tokenizer
    vocab: Vocabulary
    pool: TextPool
    fingerprints: dict  # content fingerprints of the texts and the tokenizer (a resume must match them)

    @property
    def paths(self) -> list[Path]:
        return [self.folder, *map(Path, self.pool.names)]


def check_inputs(cfg: TrainConfig) -> Inputs:
    """Every input, whichever stage reads it: the model folder (weights' headers, no custom code),
    its tokenizer (one token per id) and every training text (found, not empty)."""
    from transplant.core.vocab import load_tokenizer
    from transplant.io.sources import refuse_custom_code, resolve_model

    folder = resolve_model(cfg.model)
    refuse_custom_code(folder)
    source = load_tokenizer(folder)
    vocab = source.vocabulary()
    pool = TextPool.from_files(cfg.texts)
    prints = input_fingerprints({"texts": pool.names, "tokenizer": [source.path]})
    return Inputs(folder, source.tokenizer, vocab, pool, prints)


def check_resumable(cfg: TrainConfig, out: Path, latest: Path, net: HyperNet, prints: dict) -> None:
    """A resume continues the same run: its settings, its texts and tokenizer (by content), and a
    checkpoint of this network's shapes trained for this model's embeddings."""
    saved = json.loads((out / RUN_CONFIG).read_text(encoding="utf-8"))
    check_same_settings(saved, asdict(cfg), _MAY_CHANGE, out, "another --out")
    check_same_inputs(saved.get("inputs"), prints, out)
    checkpoint_tensors(latest, net, "--model, --width or --layers")
    from safetensors import safe_open

    with safe_open(str(latest / "model.safetensors"), "pt") as fh:
        rows = fh.get_tensor("fingerprint_rows")
    if not torch.equal(rows.float(), net.fingerprint_rows):
        raise TransplantError(f"checkpoint {latest} was trained for another model: {cfg.model}'s embeddings are "
                              "not the ones it started from; resume with that model, or start a new run with "
                              "another --out")


def train(cfg: TrainConfig) -> Path:
    """Train (or resume) a hypernetwork; returns the output folder holding the trained network.

    Example:
        >>> out = train(TrainConfig(model=model_dir, texts=[text_file], out="hn", stage1_steps=2,
        ...                         stage1_batch=32, width=16, layers=1))
        >>> HyperNet.load(out).config.layers
        1
    """
    out = Path(cfg.out)
    accelerator = training_accelerator()
    mesh = body_mesh(accelerator, cfg.shard_body, "hypernet train")
    inputs = check_inputs(cfg)
    latest = check_run_output(out, inputs.paths, cfg.resume, cfg.overwrite, HYPERNET_OUTPUT, is_training_run,
                              RUN_CONFIG)
    # One run per run folder: an existing one is locked now (before the model loads), a new one once published.
    with RunFolder.owned(out, accelerator, command="hypernet train", create=False) as owner:
        return _train(cfg, accelerator, mesh, inputs, latest, owner)


def _train(cfg: TrainConfig, accelerator, mesh, inputs: Inputs, latest: Path | None, owner: RunFolder) -> Path:
    """`train` once its inputs are checked and its run folder owned."""
    out = Path(cfg.out)
    device = accelerator.device
    check_fits(expected_peak(cfg, inputs.folder, accelerator.num_processes if mesh is not None else 1),
               "hypernet train",
               "pass a narrower or shallower network (--width/--layers) or smaller batches (--batch-size/--seq-len), "
               "shard the body over several processes with --shard-body (README: Big models), or use a machine "
               "with more memory")
    stage(f"hypernet: loading {cfg.model}")
    # Sharded, every stage-2 step runs the body once on every process (its forward is a collective).
    lm, E_in, E_out, _ = load_source(str(inputs.folder), device, mesh)
    if cfg.checkpoint_layers:
        checkpoint_layers(lm)
    old_tok, old_vocab = inputs.tokenizer, inputs.vocab
    targets, decomps = withheld_decompositions(old_vocab)
    if not targets:
        raise TransplantError(f"{cfg.model}'s vocabulary has no token made of smaller tokens to learn from")
    net = HyperNet.create(E_in.cpu(), None if E_out is None else E_out.cpu(), base_model=cfg.model, seed=cfg.seed,
                          **({"width": cfg.width} if cfg.width else {}), layers=cfg.layers,
                          max_pieces=cfg.max_pieces)
    if latest is not None:
        check_resumable(cfg, out, latest, net, inputs.fingerprints)
    stage(f"hypernet: {parameter_count(net) / 1e6:.1f}M parameters, {len(targets)} stage-1 examples")
    net.to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=0.0)
    net, opt = accelerator.prepare(net, opt)
    core: HyperNet = accelerator.unwrap_model(net)
    ckpts = Checkpoints(out, cfg.keep_checkpoints)

    state = {"step": 0, "stage1_seconds": 0.0, "stage2_seconds": 0.0, "stage1_done": 0, "stage2_done": 0}
    if latest is not None:
        stage(f"hypernet: resuming from {latest.name}")
        state = restore_checked(accelerator, latest, out / LOG_FILE)
    if accelerator.is_main_process:  # every check passed: now the run folder is written
        settings = {"format": RUN_FORMAT, **asdict(cfg), "inputs": inputs.fingerprints}
        open_run_output(out, RUN_CONFIG, settings, cfg.resume, cfg.overwrite, HYPERNET_OUTPUT)
        if not (cfg.resume and owner.locked):  # published just now (a new folder, or swapped in by --overwrite)
            owner.release(failed=False)
            refusal = owner.acquire()
            if refusal is not None:
                raise TransplantError(refusal)
    accelerator.wait_for_everyone()

    # Tokens are split 98 / 2 into training and held-out old tokens (by a fixed permutation).
    perm = torch.randperm(len(targets), generator=torch.Generator().manual_seed(1234)).tolist()
    held = set(perm[:max(1, len(perm) // 50)])
    train_idx = [i for i in perm if i not in held]
    held_idx = sorted(held)[:2048]
    tgt = torch.tensor(targets)

    def withheld_loss(rows: list[int], pred_in, pred_out) -> torch.Tensor:
        ids = tgt[rows].to(device)
        E_head = E_in if E_out is None else E_out  # a tied model: the head is the input matrix
        l_in = ((pred_in - E_in[ids]) / core.std_in).pow(2).mean()
        l_out = ((pred_out - E_head[ids]) / core.std_out).pow(2).mean()
        return (l_in + l_out) / 2

    def forward(decs: list[list[int]], module=None):
        pieces, mask = pad_pieces(decs)
        return (module or net)(pieces.to(device), mask.to(device), E_in, E_out)

    def held_out_loss() -> float:
        # The unwrapped network: a wrapped (DDP) forward is a collective, and this runs on one process.
        with torch.no_grad():
            a, b = forward([decomps[i] for i in held_idx], core)
            return float(withheld_loss(held_idx, a, b))

    def log(record: dict) -> None:
        if accelerator.is_main_process:
            append_log(out / LOG_FILE, record)

    def take_step(loss: torch.Tensor, key: str, started: float, pbar) -> int:
        """One optimizer step and its bookkeeping (`key`: "stage1" or "stage2"); returns the step."""
        optimizer_step(accelerator, opt, loss)
        state["step"] += 1
        state[f"{key}_done"] += 1
        state[f"{key}_seconds"] += time.perf_counter() - started
        pbar.update()
        return state["step"]

    def warm(base_lr: float, done: int) -> None:
        warm_up(opt, base_lr, done + 1, cfg.warmup)

    def should_stop(done: int, steps: int, seconds: float, minutes: float | None) -> bool:
        return any_process(accelerator, budget_spent(done, steps, seconds, minutes))

    if state["stage1_done"] == 0 and state["step"] == 0 and accelerator.is_main_process:
        log({"stage": 1, "step": 0, "held_out": held_out_loss()})

    # ---- stage 1 -----------------------------------------------------------------------
    s1_total = cfg.stage1_steps if cfg.stage1_minutes is None else None
    pbar = bar(total=s1_total, desc="hypernet stage 1", unit="step", initial=state["stage1_done"])
    while not should_stop(state["stage1_done"], cfg.stage1_steps, state["stage1_seconds"], cfg.stage1_minutes):
        opened = begin_step(state["step"], cfg.seed, accelerator.process_index)
        step, g = opened.number, opened.generator
        rows = [train_idx[i] for i in torch.randint(len(train_idx), (cfg.stage1_batch,), generator=g).tolist()]
        warm(cfg.lr, state["stage1_done"])
        a, b = forward([decomps[i] for i in rows])
        loss = withheld_loss(rows, a, b)
        take_step(loss, "stage1", opened.started, pbar)
        record = {"stage": 1, "step": step, "loss": round(float(loss.detach()), 6), "seconds": round(state["stage1_seconds"], 2)}
        if state["stage1_done"] % cfg.log_every == 0 and accelerator.is_main_process:
            record["held_out"] = held_out_loss()
        log(record)
        if step % cfg.checkpoint_every == 0:
            ckpts.save(accelerator, state)
    pbar.close()

    # ---- stage 2 -----------------------------------------------------------------------
    s2_wanted = cfg.steps > 0 or cfg.minutes is not None
    if s2_wanted:
        pool = inputs.pool
        stage("hypernet: seed vocabularies for sampled tokenizers")
        sampler = TokenizerSampler(old_tok, pool, min_share=cfg.min_vocab_share, train_chars=cfg.train_chars)
        ctx = Stage2(cfg, pool, sampler, forward, withheld_loss, decomps, E_in, E_out,
                     FrozenLM(lm),  # the body's forward and the logit rule, as heal reads them
                     start_token(old_vocab.roles), device)
        s2_total = cfg.steps if cfg.minutes is None else None
        pbar = bar(total=s2_total, desc="hypernet stage 2", unit="step", initial=state["stage2_done"])
        while not should_stop(state["stage2_done"], cfg.steps, state["stage2_seconds"], cfg.minutes):
            opened = begin_step(state["step"], cfg.seed, accelerator.process_index)
            step, g = opened.number, opened.generator
            rng = random.Random(opened.seed)
            warm(cfg.stage2_lr, state["stage2_done"])
            aux_rows = [train_idx[i] for i in torch.randint(len(train_idx), (cfg.aux_batch,), generator=g).tolist()]
            lm_loss, n_tok, made_share = _stage2_loss(ctx, rng, aux_rows)
            loss = lm_loss["total"]
            take_step(loss, "stage2", opened.started, pbar)
            log({"stage": 2, "step": step, "loss": round(float(loss.detach()), 6), "lm_loss": round(float(lm_loss["lm"]), 6),
                 "aux_loss": round(float(lm_loss["aux"]), 6), "tokens": n_tok, "made_share": round(made_share, 4),
                 "predicted": lm_loss["predicted"], "pieces": lm_loss["pieces"],
                 "seconds": round(state["stage2_seconds"], 2)})
            if step % cfg.checkpoint_every == 0:
                ckpts.save(accelerator, state)
        pbar.close()

    if state["step"] % cfg.checkpoint_every:
        ckpts.save(accelerator, state)
    if accelerator.is_main_process:
        summary = {**state, "base_model": cfg.model, "texts": cfg.texts, "parameters": parameter_count(core),
                   "held_out_stage1_loss": held_out_loss(), "processes": accelerator.num_processes,
                   "body_shards": accelerator.num_processes if mesh is not None else 1}
        write_json(out / "training.json", summary)
        core.save(out)  # config.json last: the folder is a network once it is there
    accelerator.wait_for_everyone()
    return out


@dataclass
class Stage2:
    """What every stage-2 step reads: the settings, the texts and the tokenizer sampler, the
    network's forward and stage 1's loss, the frozen model (matrices, body, logit rule, start token)."""

    cfg: TrainConfig
    pool: TextPool
    sampler: TokenizerSampler
    forward: object  # pieces -> (input rows, output rows)
    withheld_loss: object  # (rows, predicted in, predicted out) -> stage 1's loss
    decomps: list
    E_in: torch.Tensor
    E_out: torch.Tensor | None
    frozen: FrozenLM
    bos: int | None
    device: torch.device


def _stage2_loss(ctx: Stage2, rng: random.Random, aux_rows: list[int]):
    """One stage-2 batch: LM loss over a drawn tokenizer, plus the auxiliary stage-1 loss."""
    cfg, pool, sampler, forward, decomps, withheld_loss = (ctx.cfg, ctx.pool, ctx.sampler, ctx.forward, ctx.decomps,
                                                           ctx.withheld_loss)
    E_in, E_out, frozen, bos, device = ctx.E_in, ctx.E_out, ctx.frozen, ctx.bos, ctx.device
    source = rng.randrange(len(pool.texts))
    st = sampler.sample(rng, source)
    texts = pool.chunks(rng, source, cfg.batch_size, cfg.seq_len * 8)
    seqs = [enc.ids[:cfg.seq_len - 1] for enc in st.tokenizer.encode_batch(texts)]
    used = sorted({t for s in seqs for t in s})
    made = [i for i in range(len(st.exact)) if st.exact[i] < 0]
    made_with_pieces = [i for i in made if st.pieces[i]]
    used_set = set(used)
    unused = [i for i in made_with_pieces if i not in used_set]
    n_neg = min(cfg.negatives, len(unused))
    negatives = rng.sample(unused, n_neg) if n_neg else []
    exact_ids = [i for i in range(len(st.exact)) if st.exact[i] >= 0]
    predicted = [i for i in used if st.exact[i] < 0 and st.pieces[i]] + negatives
    # One network call for everything predicted this step (DDP wants one forward per backward).
    a, b = forward([st.pieces[i] for i in predicted] + [decomps[r] for r in aux_rows])
    n_pred = len(predicted)
    aux = withheld_loss(aux_rows, a[n_pred:], b[n_pred:])
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
    if bos is not None:
        x = torch.where((ids == -2).unsqueeze(2), E_in[bos].expand_as(x), x)
    hidden = frozen.hidden(x, mask)  # the body in its own dtype; the logits and the loss in float32
    # The negative-sampling correction is added after the model's multiplier, before its soft cap.
    logits = frozen.rule(hidden[:, :-1].float() @ rows_out.float().T, offset=bias)
    labels = torch.where(mask[:, 1:], ids[:, 1:], torch.full_like(ids[:, 1:], -100))
    lm = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
    n_tok = int((labels >= 0).sum())
    made_share = float(((labels >= n_exact) & (labels >= 0)).sum()) / max(1, n_tok)
    # The network's work this step (for the cost per step): rows predicted and pieces read.
    pieces = sum(len(st.pieces[i]) for i in predicted) + sum(len(decomps[r]) for r in aux_rows)
    return {"total": lm + cfg.aux_weight * aux, "lm": lm.detach(), "aux": aux.detach(),
            "predicted": n_pred + len(aux_rows), "pieces": pieces}, n_tok, made_share


__all__ = ["TrainConfig", "export_checkpoint", "load_source", "train"]  # export_checkpoint: from .registry
