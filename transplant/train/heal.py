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
them to train longer.

Example:
    >>> heal(HealConfig(model="smollm2-de", texts=["de/train.txt"], out="smollm2-de-healed",
    ...                 minutes=15))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from transplant.common.errors import TransplantError
from transplant.common.texts import read_texts, split_documents
from transplant.common.progress import bar, stage
from transplant.train.trainloop import LOG_FILE, Checkpoints, any_process, append_log, restore, step_seed

BEST_FILE = "best.safetensors"
SUMMARY_FILE = "heal.json"
# Held-out windows: this share of the text, at most this many windows (each scored every eval).
MAX_HELD_OUT_WINDOWS = 48


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


# ---- aligned windows --------------------------------------------------------------------


def clean_cuts(offsets: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(character position, tokens consumed) after every token that ends cleanly: the next token
    starts at or after its end. Tokens that share a character (byte pieces of one character,
    byte-fallback pieces) end no cut until the last of them.

    Example:
        >>> clean_cuts([(0, 3), (3, 4), (3, 4), (4, 8)])
        [(3, 1), (4, 3), (8, 4)]
    """
    cuts = []
    last = -1
    for i, (_, end) in enumerate(offsets):
        nxt = offsets[i + 1][0] if i + 1 < len(offsets) else None
        if (nxt is None or nxt >= end) and end > last:
            cuts.append((end, i + 1))
            last = end
    return cuts


@dataclass
class Window:
    """A span of one document, tokenized by both models, cut where both tokenizations agree.

    `student`, `teacher`: the token ids of the span (as in the whole document's encoding).
    `cuts`: for each common cut inside the span, (student tokens, teacher tokens) consumed from
    the span's start; the chunk between two cuts is one unit of the distillation loss.
    `chunk_bytes`: UTF-8 bytes of each chunk.
    """

    student: list[int]
    teacher: list[int]
    cuts: list[tuple[int, int]]
    chunk_bytes: list[int]


def aligned_windows(docs: list[str], student_tok, teacher_tok, seq_len: int, teacher_len: int) -> list[Window]:
    """Cut every document into windows of at most `seq_len` student and `teacher_len` teacher tokens.

    Windows begin and end at common cuts, so both models read exactly the same characters, and
    they take their tokens from the whole document's encoding: what the model sees in use, not a
    window encoded on its own (which would change the first word's tokens).
    """
    windows: list[Window] = []
    s_enc = student_tok.encode_batch(docs, add_special_tokens=False)
    t_enc = teacher_tok.encode_batch(docs, add_special_tokens=False)
    for doc, se, te in zip(docs, s_enc, t_enc):
        t_at = {pos: n for pos, n in clean_cuts(te.offsets)}
        common = [(pos, n, t_at[pos]) for pos, n in clean_cuts(se.offsets) if pos in t_at]
        if not common:
            continue
        byte_at = _byte_positions(doc)
        start = (0, 0, 0)
        inside: list[tuple[int, int, int]] = []
        for cut in common:
            fits = cut[1] - start[1] <= seq_len and cut[2] - start[2] <= teacher_len
            if not fits and inside:
                windows.append(_window(se.ids, te.ids, start, inside, byte_at))
                start, inside = inside[-1], []
                fits = cut[1] - start[1] <= seq_len and cut[2] - start[2] <= teacher_len
            if fits:
                inside.append(cut)
            else:  # one chunk longer than a window (a very long token run): skip past it
                start, inside = cut, []
        if inside:
            windows.append(_window(se.ids, te.ids, start, inside, byte_at))
    return windows


def _byte_positions(text: str) -> np.ndarray:
    """UTF-8 byte offset of every character position (length len(text) + 1)."""
    sizes = np.fromiter((len(c.encode("utf-8")) for c in text), dtype=np.int64, count=len(text))
    return np.concatenate([[0], np.cumsum(sizes)])


def _window(s_ids, t_ids, start, inside, byte_at) -> Window:
    pos0, s0, t0 = start
    cuts = [(s - s0, t - t0) for _, s, t in inside]
    positions = [pos0] + [p for p, _, _ in inside]
    chunk_bytes = [int(byte_at[b] - byte_at[a]) for a, b in zip(positions, positions[1:])]
    return Window(list(s_ids[s0:inside[-1][1]]), list(t_ids[t0:inside[-1][2]]), cuts, chunk_bytes)


def chunk_logprobs(token_logprobs: torch.Tensor, cut_index: torch.Tensor) -> torch.Tensor:
    """Log-probability of each chunk: differences of the running sum at the cuts.

    `token_logprobs`: (n,) log-probabilities of a window's tokens; `cut_index`: (k,) tokens consumed
    at each cut (increasing). Returns (k,).

    Example:
        >>> chunk_logprobs(torch.tensor([-1., -2., -3.]), torch.tensor([1, 3]))
        tensor([-1., -5.])
    """
    total = torch.cat([token_logprobs.new_zeros(1), token_logprobs.cumsum(0)])
    at = total[cut_index]
    return at - torch.cat([at.new_zeros(1), at[:-1]])


# ---- the model side -----------------------------------------------------------------------


class _Frozen:
    """A frozen causal LM seen as: rows in -> hidden states -> logits (Gemma's scale and softcap)."""

    def __init__(self, lm) -> None:
        self.lm = lm
        self.decoder = getattr(lm, lm.base_model_prefix)
        emb = lm.get_input_embeddings()
        scale = getattr(emb, "embed_scale", None)
        self.embed_scale = 1.0 if scale is None else float(scale.item() if torch.is_tensor(scale) else scale)
        self.softcap = getattr(lm.config, "final_logit_softcapping", None)
        self.E_in = emb.weight.detach()
        head = lm.get_output_embeddings()
        self.W_out = head.weight.detach()
        self.bias = head.bias.detach() if getattr(head, "bias", None) is not None else None
        self.tied = self.W_out.data_ptr() == self.E_in.data_ptr()

    def hidden(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.decoder(inputs_embeds=x * self.embed_scale, attention_mask=mask.long()).last_hidden_state

    def logits(self, hidden: torch.Tensor, extra: torch.Tensor | None = None, rows: torch.Tensor | None = None):
        out = F.linear(hidden, self.W_out, self.bias)
        if extra is not None:
            out = out.index_add(-1, rows, hidden @ extra.T)
        if self.softcap:
            out = self.softcap * torch.tanh(out / self.softcap)
        return out


def _token_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log p(ids[:, t+1] | ids[:, :t+1]) for every position: (B, T-1)."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return logp.gather(-1, ids[:, 1:].clamp_min(0).unsqueeze(-1)).squeeze(-1)


def _batch(seqs: list[list[int]], start: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) with the start token first and -1 padding."""
    T = max(len(s) for s in seqs) + 1
    ids = torch.full((len(seqs), T), -1, dtype=torch.int64)
    for r, s in enumerate(seqs):
        ids[r, 0] = start
        ids[r, 1:len(s) + 1] = torch.tensor(s, dtype=torch.int64)
    return ids.to(device), (ids != -1).to(device)


class RowOffsets(torch.nn.Module):
    """The trained offsets of the healed rows (in units of `std`), and the student's loss.

    The frozen LM is held outside the module's parameters, so `accelerate`/DDP only ever sees
    (and synchronizes) the offsets.
    """

    def __init__(self, student: _Frozen, rows: torch.Tensor, std_in: float, std_out: float, untied: bool) -> None:
        super().__init__()
        n, dim = len(rows), student.E_in.shape[1]
        self.d_in = torch.nn.Parameter(torch.zeros(n, dim))
        self.d_out = torch.nn.Parameter(torch.zeros(n, dim)) if untied else None
        self.register_buffer("rows", rows.clone(), persistent=False)
        slot = torch.zeros(student.E_in.shape[0], dtype=torch.int64)
        slot[rows] = torch.arange(1, n + 1)
        self.register_buffer("slot", slot, persistent=False)
        self.std_in, self.std_out = std_in, std_out
        self._student = [student]  # a list: not a submodule

    def deltas(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(input offsets, head offsets) in the matrices' own units."""
        d_in = self.d_in * self.std_in
        d_out = d_in if self.d_out is None else self.d_out * self.std_out
        return d_in, d_out

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Student log-probabilities of every next token, (B, T-1)."""
        st = self._student[0]
        d_in, d_out = self.deltas()
        padded = torch.cat([d_in.new_zeros(1, d_in.shape[1]), d_in])
        safe = ids.clamp_min(0)
        x = st.E_in[safe] + padded[self.slot[safe]]
        hidden = st.hidden(x, mask)
        return _token_logprobs(st.logits(hidden, d_out, self.rows), ids)


# ---- the run --------------------------------------------------------------------------------


@dataclass
class HealResult:
    """Where the healed checkpoint went, and how the run went."""

    out: Path
    run: Path
    summary: dict


def heal(cfg: HealConfig, *, die_at_step: int | None = None) -> HealResult:
    """Heal a transplant (or resume a run) and write the healed checkpoint to `cfg.out`.

    `die_at_step` ends the process abruptly (os._exit) before that step, for resume tests.
    """
    from accelerate import Accelerator

    from transplant.io.outdir import check_output_path

    run = cfg.run_dir
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    if not accelerator.is_main_process:
        from transplant.common.progress import set_quiet

        set_quiet(True)
    device = accelerator.device
    ckpts = Checkpoints(run, cfg.keep_checkpoints)
    latest = ckpts.latest()
    folder, teacher_folder, plan = _inputs(cfg)
    out = check_output_path(Path(cfg.out), [folder, teacher_folder, *map(Path, cfg.texts)], cfg.overwrite)
    if accelerator.is_main_process:
        if latest is not None and not cfg.resume:
            raise TransplantError(f"{run} holds a healing run (checkpoint {latest.name}); pass --resume to continue "
                                  "it, or choose another --run/--out")
        if run.exists() and any(run.iterdir()) and latest is None and not (run / "heal_config.json").is_file():
            raise TransplantError(f"{run} exists and is not a healing run folder (choose another --run)")
        if latest is not None:
            _check_same_run(cfg, json.loads((run / "heal_config.json").read_text()), run)
        run.mkdir(parents=True, exist_ok=True)
        (run / "heal_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    accelerator.wait_for_everyone()

    stage(f"heal: loading {folder.name} and its teacher {teacher_folder.name}")
    student_lm, teacher_lm, s_tok, t_tok, s_start, t_start = _load_models(folder, teacher_folder, device)
    student, teacher = _Frozen(student_lm), _Frozen(teacher_lm)
    docs = _documents(cfg.texts)
    stage(f"heal: aligning {sum(len(d) for d in docs):,} characters under both tokenizers")
    windows = aligned_windows(docs, s_tok, t_tok, cfg.seq_len - 1, 2 * cfg.seq_len - 1)
    if len(windows) < 2:
        raise TransplantError("the healing text gives fewer than 2 windows (pass more text with --text)")
    perm = torch.randperm(len(windows), generator=torch.Generator().manual_seed(1234)).tolist()
    n_held = min(MAX_HELD_OUT_WINDOWS, max(1, round(cfg.held_out * len(windows))))
    held_idx, train_idx = sorted(perm[:n_held]), perm[n_held:]

    counts = np.bincount(np.concatenate([np.asarray(windows[i].student, dtype=np.int64) for i in train_idx]),
                         minlength=student.E_in.shape[0])[:student.E_in.shape[0]]
    made = plan.made_rows()
    made = np.pad(made, (0, max(0, len(counts) - len(made))))[:len(counts)]
    rows = torch.from_numpy(np.nonzero(made & (counts >= cfg.min_count))[0])
    if len(rows) == 0:
        raise TransplantError("the healing text uses none of the rows the transplant made (pass text in the new "
                              "tokenizer's language or domain)")
    untied = not student.tied
    std_in = float(student.E_in.float().std())
    std_out = float(student.W_out.float().std())
    offsets = RowOffsets(student, rows, std_in, std_out, untied).to(device)
    opt = torch.optim.Adam(offsets.parameters(), lr=cfg.lr)
    net, opt = accelerator.prepare(offsets, opt)
    core: RowOffsets = accelerator.unwrap_model(net)
    stage(f"heal: training {len(rows):,} of {int(made.sum()):,} made rows ({'untied' if untied else 'tied'}), "
          f"{len(train_idx):,} windows, {n_held} held out")

    state = {"step": 0, "seconds": 0.0, "best_bpb": None, "best_step": 0, "evals_since_best": 0,
             "start_bpb": None, "teacher_bpb": None}
    if latest is not None:
        stage(f"heal: resuming from {latest.name}")
        state = restore(accelerator, latest, run / LOG_FILE)
        if accelerator.is_main_process:
            # The best state as of that checkpoint (a later one may have been saved before the kill).
            shutil.copyfile(latest / BEST_FILE, run / BEST_FILE)
    accelerator.wait_for_everyone()

    teacher_cache: dict[int, torch.Tensor] = {}

    def teacher_chunks(idx: list[int]) -> list[torch.Tensor]:
        todo = [i for i in idx if i not in teacher_cache]
        if todo:
            with torch.no_grad():
                ids, mask = _batch([windows[i].teacher for i in todo], t_start, device)
                lp = _token_logprobs(teacher.logits(teacher.hidden(teacher.E_in[ids.clamp_min(0)], mask)), ids)
                for r, i in enumerate(todo):
                    cut = torch.tensor([c[1] for c in windows[i].cuts], device=device)
                    teacher_cache[i] = chunk_logprobs(lp[r], cut).cpu()
        return [teacher_cache[i].to(device) for i in idx]

    def losses(module, idx: list[int]) -> dict[str, torch.Tensor]:
        """Distillation and LM terms (nats per byte) over windows `idx`."""
        ids, mask = _batch([windows[i].student for i in idx], s_start, device)
        lp = module(ids, mask)
        targets = teacher_chunks(idx)
        dist, nll, n_bytes = lp.new_zeros(()), lp.new_zeros(()), 0
        for r, i in enumerate(idx):
            w = windows[i]
            cut = torch.tensor([c[0] for c in w.cuts], device=device)
            s_chunks = chunk_logprobs(lp[r], cut)
            dist = dist + (s_chunks - targets[r]).abs().sum()
            nll = nll - lp[r, :len(w.student)].sum()
            n_bytes += sum(w.chunk_bytes)
        return {"distill": dist / n_bytes, "lm": nll / n_bytes,
                "teacher_lm": -sum(float(t.sum()) for t in targets) / n_bytes}

    def held_out() -> tuple[float, float]:
        """(student, teacher) bits per byte on the held-out windows."""
        nll = t_nll = total = 0.0
        with torch.no_grad():
            for b in range(0, len(held_idx), 8):
                part = held_idx[b:b + 8]
                r = losses(core, part)
                n_bytes = sum(sum(windows[i].chunk_bytes) for i in part)
                nll += float(r["lm"]) * n_bytes
                t_nll += r["teacher_lm"] * n_bytes
                total += n_bytes
        return nll / total / math.log(2), t_nll / total / math.log(2)

    def save_best() -> None:
        from safetensors.torch import save_file

        d_in, d_out = (t.detach().cpu().clone() for t in core.deltas())  # clone: tied offsets share memory
        tmp = run / f".{BEST_FILE}.partial"
        save_file({"d_in": d_in, "d_out": d_out}, str(tmp))
        os.replace(tmp, run / BEST_FILE)

    def checkpoint() -> None:
        ckpts.save(accelerator, state, extra=lambda tmp: shutil.copyfile(run / BEST_FILE, tmp / BEST_FILE))

    def log(record: dict) -> None:
        if accelerator.is_main_process:
            append_log(run / LOG_FILE, record)

    def evaluate() -> None:
        """Score the held-out slice (main process) and update the best state."""
        if not accelerator.is_main_process:
            return
        started = time.perf_counter()
        bpb, t_bpb = held_out()
        state["seconds"] += time.perf_counter() - started  # the budget is wall time, scoring included
        if state["start_bpb"] is None:
            state["start_bpb"], state["teacher_bpb"] = bpb, t_bpb
        if state["best_bpb"] is None or bpb < state["best_bpb"] - 1e-6:
            state.update(best_bpb=bpb, best_step=state["step"], evals_since_best=0)
            save_best()
        else:
            state["evals_since_best"] += 1
        log({"step": state["step"], "held_out_bpb": round(bpb, 6), "teacher_bpb": round(t_bpb, 6),
             "seconds": round(state["seconds"], 2)})

    def should_stop() -> bool:
        budget = cfg.minutes * 60 if cfg.minutes is not None else None
        stop = (budget is not None and state["seconds"] >= budget) or (budget is None and state["step"] >= cfg.steps)
        if accelerator.is_main_process and cfg.patience and state["evals_since_best"] >= cfg.patience:
            stop = True
        return any_process(accelerator, stop)

    if state["step"] == 0 and state["best_bpb"] is None:
        evaluate()
    pbar = bar(total=cfg.steps if cfg.minutes is None else None, desc="healing", unit="step", initial=state["step"])
    while not should_stop():
        started = time.perf_counter()
        step = state["step"] + 1
        if die_at_step is not None and step >= die_at_step:
            os._exit(137)
        g = torch.Generator().manual_seed(step_seed(cfg.seed, step, accelerator.process_index))
        idx = [train_idx[i] for i in torch.randint(len(train_idx), (cfg.batch_size,), generator=g).tolist()]
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min(1.0, step / max(1, cfg.warmup))
        parts = losses(net, idx)
        loss = cfg.distill_weight * parts["distill"] + cfg.lm_weight * parts["lm"]
        if cfg.anchor_weight:
            anchor = core.d_in.pow(2).mean() + (core.d_out.pow(2).mean() if core.d_out is not None else 0.0)
            loss = loss + cfg.anchor_weight * anchor
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        opt.step()
        state["step"] = step
        state["seconds"] += time.perf_counter() - started
        pbar.update()
        log({"step": step, "loss": round(float(loss.detach()), 6), "distill": round(float(parts["distill"].detach()), 6),
             "lm_bpb": round(float(parts["lm"].detach()) / math.log(2), 6), "seconds": round(state["seconds"], 2)})
        if step % cfg.eval_every == 0:
            evaluate()
        if step % cfg.checkpoint_every == 0:
            checkpoint()
    pbar.close()
    if state["step"] % cfg.eval_every:
        evaluate()
    checkpoint()

    summary = {**state, "model": str(cfg.model), "teacher": str(teacher_folder), "texts": [str(t) for t in cfg.texts],
               "rows_trained": len(rows), "rows_made": int(made.sum()), "untied": untied,
               "windows": len(train_idx), "held_out_windows": n_held, "processes": accelerator.num_processes,
               "settings": {k: v for k, v in asdict(cfg).items() if k not in ("model", "texts", "out", "run", "resume",
                                                                              "overwrite")}}
    if accelerator.is_main_process:
        _write_healed(folder, out, run, rows, summary, cfg.overwrite)
    accelerator.wait_for_everyone()
    return HealResult(out, run, summary)


# ---- inputs and output ----------------------------------------------------------------------


def _inputs(cfg: HealConfig):
    """(model folder, teacher folder, plan) with one-line errors for what is missing."""
    from transplant.core.plan import PLAN_JSON, Plan
    from transplant.io.sources import resolve_model

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


# What a resumed run may change: its budget, where the result goes, when to stop early.
_MAY_CHANGE = {"steps", "minutes", "out", "run", "resume", "overwrite", "patience", "checkpoint_every",
               "keep_checkpoints"}


def _check_same_run(cfg: HealConfig, saved: dict, run: Path) -> None:
    """A resume continues the same run: the same model, text, windows and optimizer settings."""
    for key, value in asdict(cfg).items():
        if key not in _MAY_CHANGE and key in saved and saved[key] != value:
            raise TransplantError(f"{run} was started with {key}={saved[key]!r}, not {value!r}; a resume continues "
                                  "the same run (pass the same setting, or start a new run with another --run)")


def _documents(texts: list[str]) -> list[str]:
    docs = [doc for text in read_texts(texts) for doc in split_documents(text)]
    if not docs:
        raise TransplantError("the healing text is empty")
    return docs


def _start_token(vocab, where: Path) -> int:
    start = vocab.roles.get("bos", vocab.roles.get("eos"))
    if start is None:
        raise TransplantError(f"{where}'s tokenizer has neither bos nor eos to start a window with")
    return start


def _load_models(folder: Path, teacher_folder: Path, device):
    """Student and teacher LMs (one shared body when the transplant kept the teacher's), tokenizers, start ids."""
    from transformers import AutoModelForCausalLM

    from transplant.core.vocab import load_tokenizer

    def load(path: Path):
        lm = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        return lm.eval().requires_grad_(False).to(device)

    s_src, t_src = load_tokenizer(folder), load_tokenizer(teacher_folder)
    student = load(folder)
    if _same_body(folder, teacher_folder):
        # The teacher differs only in its embedding rows: read those, share the rest (half the memory).
        from transplant.io.checkpoint import locate_embeddings, read_embedding

        layout = locate_embeddings(teacher_folder)
        emb = torch.nn.Embedding.from_pretrained(read_embedding(layout, layout.input_key).float().to(device))
        scale = getattr(student.get_input_embeddings(), "embed_scale", None)
        if scale is not None:
            emb.embed_scale = scale
        head = torch.nn.Linear(emb.weight.shape[1], emb.weight.shape[0], bias=False)
        head.weight = emb.weight if layout.output_key is None else torch.nn.Parameter(
            read_embedding(layout, layout.output_key).float().to(device), requires_grad=False)
        teacher = _TeacherView(student, emb, head)
    else:
        teacher = load(teacher_folder)
    return (student, teacher, s_src.tokenizer, t_src.tokenizer,
            _start_token(s_src.vocabulary(), folder), _start_token(t_src.vocabulary(), teacher_folder))


class _TeacherView:
    """The student's body with the teacher's own embedding rows (what `_Frozen` needs of an LM)."""

    def __init__(self, lm, embedding, head) -> None:
        self.base_model_prefix = lm.base_model_prefix
        setattr(self, lm.base_model_prefix, getattr(lm, lm.base_model_prefix))
        self.config = lm.config
        self._emb, self._head = embedding, head

    def get_input_embeddings(self):
        return self._emb

    def get_output_embeddings(self):
        return self._head


def _same_body(a: Path, b: Path) -> bool:
    """True when two checkpoints hold the same non-embedding weights (three sampled tensors compared)."""
    from safetensors import safe_open

    from transplant.io.checkpoint import locate_embeddings, shard_map

    try:
        la, lb = locate_embeddings(a), locate_embeddings(b)
        ma, mb = shard_map(a), shard_map(b)
    except TransplantError:
        return False
    skip = set(la.row_keys) | set(lb.row_keys) | {la.head_key, lb.head_key}
    names = sorted(k for k in set(ma) & set(mb) if k not in skip)
    # (The transplant's own plan arrays may be listed on its side; every teacher tensor must be on both.)
    if not names or len(names) != len([k for k in mb if k not in skip]):
        return False
    for name in {names[0], names[len(names) // 2], names[-1]}:
        with safe_open(str(a / ma[name]), "pt") as fa, safe_open(str(b / mb[name]), "pt") as fb:
            if not torch.equal(fa.get_tensor(name), fb.get_tensor(name)):
                return False
    return True


def _write_healed(folder: Path, out: Path, run: Path, rows: torch.Tensor, summary: dict, overwrite: bool) -> None:
    """The transplant folder with the best rows written into its embedding tensors, staged and renamed."""
    from safetensors.torch import load_file

    from transplant.io.checkpoint import INDEX_NAME, locate_embeddings, read_embedding
    from transplant.io.outdir import staged_output
    from transplant.io.shardio import DTYPE_NAMES, NewTensor, copy_or_link, rewrite_shard

    layout = locate_embeddings(folder)
    best = load_file(str(run / BEST_FILE)) if (run / BEST_FILE).is_file() else None
    idx = rows.long()

    def healed(key: str, delta: torch.Tensor):
        def chunks():
            matrix = read_embedding(layout, key)
            if best is not None:
                matrix = matrix.clone()
                matrix[idx] = (matrix[idx].float() + delta).to(matrix.dtype)
            yield matrix
        return NewTensor(DTYPE_NAMES[layout.dtype], [layout.rows, layout.dim], chunks)

    with staged_output(out, overwrite) as st:
        by_shard: dict[str, dict[str, NewTensor]] = {}
        for key in layout.keys:
            side = "d_in" if key == layout.input_key or layout.tied else "d_out"
            delta = best[side] if best is not None else torch.zeros(len(idx), layout.dim)
            by_shard.setdefault(layout.shard_of[key], {})[key] = healed(key, delta)
        for path in folder.iterdir():
            if not path.is_file() or path.name == INDEX_NAME:
                continue
            if path.name in by_shard:
                rewrite_shard(path, st.path / path.name, by_shard[path.name])
            elif path.name != "README.md":
                copy_or_link(path, st.path / path.name, link=False)
        if (folder / INDEX_NAME).is_file():
            shutil.copyfile(folder / INDEX_NAME, st.path / INDEX_NAME)
        (st.path / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        if (run / LOG_FILE).is_file():
            shutil.copyfile(run / LOG_FILE, st.path / "heal_log.jsonl")
        card = (folder / "README.md").read_text(encoding="utf-8") if (folder / "README.md").is_file() else ""
        (st.path / "README.md").write_text(card.rstrip("\n") + "\n\n" + _card_section(summary), encoding="utf-8")


def _card_section(s: dict) -> str:
    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}"

    return (
        "## Healing\n\n"
        f"After the transplant, {s['rows_trained']:,} of the {s['rows_made']:,} rows it made (those the healing "
        f"text uses) were trained for {s['step']:,} steps ({s['seconds'] / 60:.1f} min, {s['processes']} "
        "process(es)) with `transplant heal`, distilling the original model's likelihood of the same text "
        "(the rest of the model frozen). The best held-out state was kept "
        f"(step {s['best_step']}).\n\n"
        "| held-out text | bits per byte |\n|---|---|\n"
        f"| original model | {fmt(s['teacher_bpb'])} |\n"
        f"| transplant, before healing | {fmt(s['start_bpb'])} |\n"
        f"| after healing | {fmt(s['best_bpb'])} |\n\n"
        "The plan file describes the rows before healing: re-applying it (`transplant apply`) gives the "
        "unhealed rows.\n")


__all__ = ["HealConfig", "HealResult", "heal", "aligned_windows", "clean_cuts", "chunk_logprobs"]
