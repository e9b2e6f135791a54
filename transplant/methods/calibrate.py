"""Output-side calibration: one scale for the LM-head rows of made tokens, fitted by likelihood.

Why: a made row (FVT, kNN, OMP, ...) is a mix of old rows, and the transplanted model gives made
tokens far more probability than they get in text (measured on SmolLM2 onto a German BPE: 0.79 of
the mass against 0.28 of the next tokens), taking it from the tokens copied exactly. A fit on the
source vocabulary cannot see this (it has no made tokens); text in the target language or domain
that the user already has (e.g. the new tokenizer's training text) can. So: read that text with
the new tokenizer, take the model's final hidden states once, and choose the scale `a` of the made
rows' logits that minimises the negative log-likelihood of the text. Only the LM head matters
(scaling the input side moved BPB by < 1%); a tied model keeps its head tied and the scale is
applied to the shared rows, an untied one (or `--untie`) scales the head's rows only.

Cost: one forward pass over `max_tokens` tokens without the LM head (the model keeps its own
embedding matrix and reads the text through the new rows of the ids it uses, no new_vocab x dim
copy), then two passes of the hidden states against the head, a few positions at a time. The
first scores the start point exactly and condenses each position's made logits into a few
hundred weighted points per group of rows (a histogram whose bins keep their members' count,
mean and spread: right to ~1e-6 of the made mass, no sampling); Newton's method (or the soft-cap
grid) then runs on those points alone, and the second pass scores the fitted scales exactly.
SmolLM2 onto Gemma's 262k vocabulary on 2 CPU cores: see benchmarks/calibration_speed.py (757 s
and 6 GB when every Newton step recomputed the logits).

Example:
    >>> fit = fit_output_scale(model, head, made, encode, start_id, [open("de/train.txt").read()])  # doctest: +SKIP
    >>> round(fit.scale, 3), fit.nll_after < fit.nll_before  # doctest: +SKIP
    (0.875, True)
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from transplant.common.errors import TransplantError
from transplant.measure.evaluate import pack, split_documents
from transplant.common.progress import bar

COARSE = np.round(np.arange(0.40, 1.3001, 0.05), 4)
BINS = 64  # histogram bins per position and group of made rows (see `_quantize`)
RowsOf = Callable[[np.ndarray], torch.Tensor]  # sorted ids -> their new input rows (len(ids) x dim)


@dataclass
class CalibrationFit:
    """The fitted scale and what it changed on the calibration text (nats per token)."""

    scale: float
    tokens: int
    nll_before: float
    nll_after: float
    made_share: float  # share of the text's tokens that are made tokens
    made_mass_before: float  # mean probability the model gives made tokens, before calibration
    made_mass_after: float
    text_fingerprint: str
    bucket_scales: list[float] | None = None  # one scale per `row_buckets` bucket, when fitted
    bucket_support: list[int] | None = None  # text tokens per bucket

    def as_meta(self) -> dict:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _logit_transform(config):
    """(constant logit multiplier, soft cap or None) that transformers applies to `lm_head(h)`."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    cap = getattr(cfg, "final_logit_softcapping", None)
    mult = float(getattr(cfg, "logit_scale", None) or 1.0)
    div = float(getattr(cfg, "logits_scaling", None) or 1.0)  # Granite divides
    return mult / div, cap


@torch.inference_mode()
def final_hidden_states(model, chunks: list[list[int]], start_id: int, batch_tokens: int = 2048
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden states (N, dim) float32, next-token targets (N,)) for every text token of `chunks`."""
    base = model.base_model
    device = next(model.parameters()).device
    hs, ys = [], []
    per_batch = max(1, batch_tokens // max(len(c) + 1 for c in chunks))
    pbar = bar(total=sum(len(c) for c in chunks), desc="calibrating: reading", unit="tok", unit_scale=True)
    for b in range(0, len(chunks), per_batch):
        batch = chunks[b:b + per_batch]
        width = max(len(c) for c in batch) + 1
        ids = torch.full((len(batch), width), start_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, c in enumerate(batch):
            ids[r, 1:len(c) + 1] = torch.tensor(c, dtype=torch.long)
            mask[r, :len(c) + 1] = 1
        out = base(input_ids=ids.to(device), attention_mask=mask.to(device),
                   use_cache=False).last_hidden_state[:, :-1]  # no key/value cache to build: one pass
        keep = mask[:, 1:].bool()
        hs.append(out[keep.to(out.device)].float().cpu())
        ys.append(ids[:, 1:][keep])
        pbar.update(sum(len(c) for c in batch))
    pbar.close()
    return torch.cat(hs), torch.cat(ys)


def _hidden_states_through_rows(model: torch.nn.Module, input_rows: RowsOf, chunks: list[list[int]],
                                start_id: int, new_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`final_hidden_states` with the new input rows of only the ids the text uses.

    The model keeps its own embedding matrix; for the read, its embedding module gets a small
    one of those rows and the ids are renumbered into it (the module still runs, so a scale it
    applies, e.g. Gemma's sqrt(hidden), still applies). No new_vocab x dim copy: on Gemma's 262k
    vocabulary that is 600 MB at SmolLM2's width.
    """
    emb = model.get_input_embeddings()
    if not isinstance(emb, torch.nn.Embedding):  # a custom module: the whole new matrix, as before
        model.resize_token_embeddings(new_size, mean_resizing=False)
        with torch.no_grad():
            model.get_input_embeddings().weight.copy_(input_rows(np.arange(new_size)))
        return final_hidden_states(model, chunks, start_id)
    used = np.unique(np.concatenate([np.asarray(c, dtype=np.int64) for c in chunks] + [[start_id]]))
    saved = emb.weight, emb.num_embeddings, emb.padding_idx
    emb.weight = torch.nn.Parameter(input_rows(used).to(saved[0].dtype).to(saved[0].device), requires_grad=False)
    emb.num_embeddings, emb.padding_idx = len(used), None
    try:
        local = [np.searchsorted(used, c).tolist() for c in chunks]
        h, y = final_hidden_states(model, local, int(np.searchsorted(used, start_id)))
    finally:
        emb.weight, emb.num_embeddings, emb.padding_idx = saved  # a tied head shares the old matrix again
    return h, torch.from_numpy(used)[y]


def _calibration_chunks(encode, texts: list[str], max_tokens: int, ctx: int) -> list[list[int]]:
    """The leading `max_tokens` tokens of the texts' documents, packed into chunks of `ctx`."""
    docs = [d for t in texts for d in split_documents(t)]
    if not docs:
        raise TransplantError("the calibration text is empty (pass a UTF-8 text file in the target language)")
    taken, used = [], 0
    for doc in encode(docs):
        if used >= max_tokens:
            break
        taken.append(doc[: max_tokens - used])
        used += len(taken[-1])
    return [c for c in pack(taken, ctx) if c]


def _read(model: torch.nn.Module | Callable[[], tuple[torch.nn.Module, RowsOf]], chunks: list[list[int]],
          start_id: int, new_size: int) -> tuple[torch.Tensor, torch.Tensor, float, float | None]:
    """(hidden states, next tokens, logit multiplier, soft cap) of the text; a model given as a
    loader is let go here, once it has read the text."""
    input_rows = None
    if not isinstance(model, torch.nn.Module):
        model, input_rows = model()
    mult, cap = _logit_transform(model.config)
    if input_rows is None:
        h, y = final_hidden_states(model, chunks, start_id)
    else:
        h, y = _hidden_states_through_rows(model, input_rows, chunks, start_id, new_size)
    return h, y, mult, cap


def fit_output_scale(model: torch.nn.Module | Callable[[], tuple[torch.nn.Module, RowsOf]],
                     head: torch.Tensor | Callable[[], torch.Tensor], made: np.ndarray, encode, start_id: int,
                     texts: list[str], max_tokens: int = 4096, ctx: int = 512,
                     buckets: np.ndarray | None = None) -> CalibrationFit:
    """Fit the scale of the made rows' logits by likelihood on `texts` (see the module docstring).

    Args:
        model: the transplanted model (new input embeddings in place), any causal LM; or a
            function that loads the source model and returns `(model, input_rows)`, where
            `input_rows(ids)` gives the new input rows of the sorted `ids`: the model then reads
            the text through those rows alone (`_hidden_states_through_rows`) and is let go
            before `head` is built.
        head: the new LM-head matrix (new_size x dim) before calibration, or a function that
            builds it (called once the text is read: model and head are never held together).
        made: boolean mask of the rows to scale (`Plan.made_rows()` of the head's side).
        encode: `list[str] -> list[list[int]]` with the new tokenizer, no special tokens.
        start_id: the token put before each chunk (bos, else eos), as in the BPB protocol.
        texts: calibration text in the target language or domain (never the evaluation text).
        max_tokens: how many text tokens to read (the leading whole documents).
        buckets: per-row bucket ids (`row_buckets`) to fit one scale per bucket; None: one scale.
    """
    chunks = _calibration_chunks(encode, texts, max_tokens, ctx)
    if not np.asarray(made, dtype=bool).any():
        raise TransplantError("nothing to calibrate: every row of the new vocabulary was copied")
    h, y, mult, cap = _read(model, chunks, start_id, len(made))
    head = head() if callable(head) else head
    made_t = torch.from_numpy(np.asarray(made[: head.shape[0]], dtype=bool))
    digest = hashlib.sha256("\x00".join(texts).encode("utf-8")).hexdigest()[:16]
    transform = (lambda x: cap * torch.tanh(x * mult / cap)) if cap else None
    # The constant multiplier goes on the hidden states (4096 x dim), not on a copy of the head.
    return fit_scale(h if cap or mult == 1.0 else h * mult, y, head, made_t, transform, digest, buckets)


def row_buckets(side, made: np.ndarray) -> np.ndarray:
    """Bucket of every row for per-bucket scales: -1 for rows kept as they are; made linear rows by
    how many old rows they mix (1, 2, 3, 4+ -> 0..3: more pieces, a flatter mean), statistical and
    dense rows 4."""
    nnz = np.diff(side.indptr)
    buckets = np.where(side.kinds == 0, np.clip(nnz, 1, 4) - 1, 4).astype(np.int64)
    return np.where(made[: len(buckets)], buckets, -1)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


@dataclass
class _Compact:
    """What the fit needs of every position's logits, a few hundred numbers per position: the made
    logits as weighted points per group (see `_quantize`), and what no scale changes (the kept
    rows' log-sum-exp, the next token's raw logit and group)."""

    values: torch.Tensor  # (N, G, P) raw logits of the points
    logw: torch.Tensor  # (N, G, P) log of how many rows each point stands for (-inf: none)
    lse_kept: torch.Tensor  # (N,) log-sum-exp of the kept rows' (transformed) logits
    target: torch.Tensor  # (N,) raw logit of the next token
    target_group: torch.Tensor  # (N,) its group, -1 for a kept row


@dataclass
class _Work:
    """Buffers for one step of a pass, made once: a fresh 64 MB temporary per operation and step
    cost more in page faults (zeroing new memory) than the operation itself."""

    logits: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    key: torch.Tensor

    @classmethod
    def of(cls, rows: int, cols: int) -> "_Work":
        return cls(*(torch.empty(rows, cols) for _ in range(3)), torch.empty(rows, cols, dtype=torch.long))


def _quantize(x: torch.Tensor, column_group: torch.Tensor, n_groups: int, bins: int,
              work: _Work | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row of `x` (t, V) as 2 * `bins` weighted points per group of columns: two per bin of
    equal width between the row's min and max, at the mean -/+ the standard deviation of the
    bin's members, with half their count each.

    The pair keeps the members' count, sum and sum of squares, so a sum of exp(a * x) over them
    (and its derivatives in a) is right up to terms of third order in a * bin width (~1e-6 of
    the sum with 64 bins over SmolLM2's logits), and a bin with one or two members is exact. A
    deterministic summary: no sampling noise, and no weight to get wrong in the tail.

    Args:
        column_group: (V,) each column's group, 0..n_groups-1; `n_groups` for columns left out.
        work: buffers of at least x's shape, overwritten (None: new ones).

    Returns:
        (values, log-weights), each (t, n_groups, 2 * bins); an empty bin has log-weight -inf.
    """
    t = x.shape[0]
    lo, hi = torch.aminmax(x, dim=1, keepdim=True)
    # Bins a hair wider than the range on both sides, so that rounding never puts the min or the
    # max outside them (no clamp pass).
    lo = lo - (hi - lo).clamp_min(1e-6) * (1e-3 / bins)
    width = (hi - lo).clamp_min(1e-6) * ((1 + 1e-5) / bins)
    # Position in bins, shifted by bins * group: floor() is then the key of the (group, bin)
    # table, and what it leaves is where in its bin the logit lies (0..1; small numbers, so
    # the spread within a bin is not lost to rounding).
    work = work or _Work.of(*x.shape)
    pos, floor, key = work.a[:t], work.b[:t], work.key[:t]
    torch.addcmul(-lo / width, x, 1 / width, out=pos).add_(column_group * float(bins))
    torch.floor(pos, out=floor)
    frac = pos.sub_(floor)
    key.copy_(floor)

    def per_bin(src: torch.Tensor) -> torch.Tensor:
        return torch.zeros(t, (n_groups + 1) * bins).scatter_add_(1, key, src)[:, :n_groups * bins].view(
            t, n_groups, bins)

    count, s1 = per_bin(torch.ones(1, 1).expand_as(frac)), per_bin(frac)
    s2 = per_bin(frac.mul_(frac))
    per = count.clamp_min(1)
    mean = s1 / per
    spread = (s2 / per - mean * mean).clamp_min(0).sqrt() * width[:, :, None]
    centre = lo[:, :, None] + (torch.arange(bins) + mean) * width[:, :, None]
    return torch.cat([centre - spread, centre + spread], 2), torch.log(count / 2).repeat(1, 1, 2)


def _logsumexp(x: torch.Tensor, work: torch.Tensor) -> torch.Tensor:
    """Row-wise log-sum-exp of `x` (t, V) with `work` (same shape, may be `x`) as its temporary."""
    top = x.amax(1, keepdim=True)
    torch.sub(x, top, out=work).exp_()
    return top.squeeze(1) + work.sum(1).log()


def _per_column(a: np.ndarray, group: torch.Tensor) -> torch.Tensor | None:
    """The per-group scales `a` as one scale per column (1 for kept rows); None when all are 1."""
    if np.all(a == 1):
        return None
    return torch.where(group >= 0, torch.as_tensor(a, dtype=torch.float32)[group.clamp(min=0)], 1.0)


def _positions_per_step(vocab: int) -> int:
    """Positions per step of a pass: about 2**24 logits (64 MB a buffer) whatever the vocabulary
    (fewer than ~64 rows make the product with the head markedly slower per row)."""
    return max(8, (1 << 24) // max(vocab, 1))


def _pass(h: torch.Tensor, y: torch.Tensor, head: torch.Tensor, group: torch.Tensor, scales: np.ndarray,
          transform=None, bins: int | None = None) -> tuple[np.ndarray, np.ndarray, _Compact | None]:
    """One pass of the hidden states against the head, a few positions at a time: the exact summed
    NLL and made mass at every row of `scales` (K, G) and, with `bins`, the compact form of the
    logits (`_Compact`) that the fit then runs on.

    Args:
        group: (V,) the group of every made row (0..G-1), -1 for rows kept as they are.
        transform: what the model does to a logit after the head (Gemma 2's soft cap); None: nothing.
    """
    tf = transform or _identity
    n_groups = scales.shape[1]
    kept = torch.nonzero(group < 0).squeeze(1)
    # Whole rows of logits, never gathered by made rows or by group (a copy as large as the
    # logits): exact sums run over every row (the kept rows' part is subtracted from the
    # total as a share), and the compact form bins kept rows into a group of its own, dropped.
    column_group = torch.where(group >= 0, group, n_groups)
    y_group = group[y]
    nll = torch.zeros(len(scales), dtype=torch.float64)
    mass = torch.zeros(len(scales), dtype=torch.float64)
    compact = None
    if bins:
        shape = (len(y), n_groups, 2 * bins)
        compact = _Compact(torch.empty(shape), torch.empty(shape), torch.empty(len(y)), torch.empty(len(y)), y_group)
    per_column = [_per_column(a, group) for a in scales]
    step = _positions_per_step(head.shape[0])
    work = _Work.of(min(step, len(y)), head.shape[0])
    for s in bar(range(0, len(y), step), desc="calibrating: scoring", unit="step"):
        e = min(s + step, len(y))
        logits, tmp = work.logits[:e - s], work.a[:e - s]
        torch.mm(h[s:e], head.T, out=logits)
        target = logits.gather(1, y[s:e, None]).squeeze(1)
        lse_kept = torch.logsumexp(tf(logits.index_select(1, kept)), 1)
        if compact is not None:
            compact.target[s:e], compact.lse_kept[s:e] = target, lse_kept
            compact.values[s:e], compact.logw[s:e] = _quantize(logits, column_group, n_groups, bins, work)
        g_y, is_made = y_group[s:e].clamp(min=0), y_group[s:e] >= 0
        for k, a in enumerate(scales):
            at = torch.as_tensor(a, dtype=torch.float32)
            z = logits if per_column[k] is None else torch.mul(logits, per_column[k], out=tmp)
            # Every row at once: no pass to mask the kept ones.
            lse = _logsumexp(tf(z) if transform else z, tmp).double()
            nll[k] += float((lse - tf(torch.where(is_made, target * at[g_y], target))).sum())
            mass[k] += float(-torch.expm1(lse_kept.double() - lse).sum())  # the made rows' share
    return nll.numpy(), mass.numpy(), compact


def _nll_and_mass(lse_kept: torch.Tensor, lse_made: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """Summed NLL of the targets and summed probability of the made rows, from the log-sum-exps."""
    lse = torch.logaddexp(lse_kept, lse_made)
    return float((lse - target).sum(dtype=torch.float64)), float(torch.exp(lse_made - lse).sum(dtype=torch.float64))


def _nll_grid(h: torch.Tensor, y: torch.Tensor, head: torch.Tensor, made: torch.Tensor, scales: np.ndarray,
              transform=None) -> tuple[np.ndarray, np.ndarray]:
    """Exact summed NLL and summed made-token probability mass for every scale in `scales` (one
    pass over the head for all of them; `fit_scale` itself needs no grid over the full logits)."""
    nll, mass, _ = _pass(h, y, head.to(torch.float32), torch.where(made, 0, -1),
                         np.asarray(scales, dtype=np.float64)[:, None], transform)
    return nll, mass


def _compact_score(c: _Compact, a: np.ndarray, transform=None, derivs: bool = False
                   ) -> tuple[float, float, np.ndarray | None, np.ndarray | None]:
    """Summed NLL and made mass at the per-group scales `a` on the compact form; with `derivs`
    (no transform) also the gradient and Hessian in `a`: the NLL is a log-sum-exp of functions
    linear in the scales, so the gradient is E[logit of the group] - (the target's, if in the
    group) and the Hessian the covariance of those features."""
    tf = transform or _identity
    at = torch.as_tensor(a, dtype=torch.float32)
    n_g = len(a)
    nll = mass = 0.0
    grad = torch.zeros(n_g, dtype=torch.float64)
    hess = torch.zeros(n_g, n_g, dtype=torch.float64)
    step = max(1, (1 << 22) // max(1, c.values[0].numel()))  # 16 MB temporaries: the whole text, mostly
    for s in range(0, len(c.target), step):
        v, tg, raw_y = c.values[s:s + step], c.target_group[s:s + step], c.target[s:s + step]
        z = tf(v * at[:, None]) + c.logw[s:s + step]
        lse_made = torch.logsumexp(z.flatten(1), 1)
        is_made = tg >= 0
        g_y = tg.clamp(min=0)
        chunk_nll, chunk_mass = _nll_and_mass(c.lse_kept[s:s + step], lse_made,
                                              tf(torch.where(is_made, raw_y * at[g_y], raw_y)))
        nll, mass = nll + chunk_nll, mass + chunk_mass
        if derivs:
            lse = torch.logaddexp(c.lse_kept[s:s + step], lse_made)
            pv = torch.exp(z - lse[:, None, None]) * v
            e = pv.sum(2)  # (t, G): expected logit of each group's rows
            second = (pv * v).sum(2)
            f_y = torch.zeros_like(e)
            f_y[is_made, g_y[is_made]] = raw_y[is_made]
            grad += (e - f_y).sum(0).double()
            hess += torch.diag(second.sum(0)).double() - (e.T @ e).double()
    return nll, mass, grad.numpy() if derivs else None, hess.numpy() if derivs else None


def _newton_scales(c: _Compact, alpha: np.ndarray, free: np.ndarray, iters: int = 20) -> np.ndarray:
    """Per-group scales of made rows' logits minimising the NLL on the compact form (convex in
    the scales), by Newton's method on the `free` groups; the best point visited.

    A step that makes the NLL worse is retried a quarter as long from the best point (the NLL is
    convex, so a short enough step along a Newton direction improves it). Each step costs
    milliseconds on the compact form, so there are more of them than the passes over the full
    logits once allowed (8, and an overshoot ended the fit).
    """
    idx = np.nonzero(free)[0]
    best_nll, best = np.inf, alpha.astype(np.float64).copy()
    a, delta, step = best.copy(), None, 1.0
    for _ in range(iters):
        nll, _, grad, hess = _compact_score(c, a, derivs=True)
        if nll < best_nll - 1e-9:
            best_nll, best, step = nll, a.copy(), 1.0
            if not len(idx):
                break
            hm = hess[np.ix_(idx, idx)]
            delta = np.linalg.solve(hm + 1e-6 * np.eye(len(idx)) * max(1.0, np.trace(hm)), grad[idx])
            if np.max(np.abs(delta)) < 1e-4:
                break
        else:  # overshot
            step /= 4
            if step < 1e-3:
                break
        a = best.copy()
        a[idx] = np.clip(best[idx] - step * delta, 0.2, 1.6)
    return best


def _grid_scale(c: _Compact, transform) -> float:
    """The shared scale by grid search on the compact form (a coarse grid, then a fine one around
    its best point): with a soft cap the NLL need not be convex in the scale."""
    def best_of(grid: np.ndarray) -> float:
        return float(grid[int(np.argmin([_compact_score(c, np.array([a]), transform)[0] for a in grid]))])

    coarse = best_of(COARSE)
    return best_of(np.round(np.arange(coarse - 0.05, coarse + 0.0501, 0.01), 4))


def _groups(made: torch.Tensor, y: torch.Tensor, buckets: np.ndarray | None, min_support: int
            ) -> tuple[torch.Tensor, list[int], np.ndarray, np.ndarray, int]:
    """Groups of made rows that get a scale each: every bucket with at least `min_support` tokens
    of the text is a group of its own, thin buckets share the best-supported one's.

    Returns:
        (group of every row (-1: kept), the buckets with a group of their own, group of every
        bucket, text tokens per bucket, the best-supported bucket)
    """
    b = (torch.from_numpy(np.asarray(buckets[: len(made)], dtype=np.int64)) if buckets is not None
         else torch.where(made, 0, -1))
    b = torch.where(made, b.clamp(min=0), -1)
    n_b = int(b.max()) + 1
    support = np.bincount(b[y][b[y] >= 0].numpy(), minlength=n_b)
    top = int(np.argmax(support))
    own = [k for k in range(n_b) if support[k] >= min_support or k == top]
    group_of = np.array([own.index(k) if k in own else own.index(top) for k in range(n_b)])
    group = torch.where(b >= 0, torch.from_numpy(group_of)[b.clamp(min=0)], -1)
    return group, own, group_of, support, top


def fit_scale(h: torch.Tensor, y: torch.Tensor, head: torch.Tensor, made: torch.Tensor, transform=None,
              text_fingerprint: str = "", buckets: np.ndarray | None = None,
              min_support: int = 200, bins: int = BINS) -> CalibrationFit:
    """The likelihood-optimal scale(s) of the made rows' logits, given final hidden states `h`
    (N, dim), next tokens `y` (N,), the head (V, dim) and the made-row mask (V,).

    One shared scale first; then, with `buckets` (see `row_buckets`), one scale per bucket that
    has at least `min_support` tokens of the text (the others keep the shared one). Without a
    logit transform the NLL is convex in the scales and Newton's method finds them in a few
    steps; with a soft cap (Gemma 2) a grid search fits the shared scale only. Both run on a
    compact form of the logits made in one pass over the head (`bins` histogram bins per position
    and group, see `_quantize`); the NLL and made mass reported before and after are exact (the
    same pass, and one more at the fitted scales). Never worse than no scale at all.

    Example:
        >>> fit = fit_scale(h, y, head, made)  # doctest: +SKIP
    """
    head = head.to(torch.float32)
    n = len(y)
    if transform is not None:
        group, own, group_of, support, top = torch.where(made, 0, -1), [0], np.zeros(1, int), None, 0
    else:
        group, own, group_of, support, top = _groups(made, y, buckets, min_support)
    start = np.ones((1, len(own)))
    bins = max(1, min(bins, int(torch.bincount(group[group >= 0]).max())))  # no more bins than rows
    nll, mass, compact = _pass(h, y, head, group, start, transform, bins)
    if transform is not None:
        scales = np.array([_grid_scale(compact, transform)])
    else:
        scales = _newton_scales(compact, start[0], np.ones(len(own), bool))
    del compact
    after = (nll, mass) if np.all(scales == 1) else _pass(h, y, head, group, scales[None], transform)[:2]
    fit = CalibrationFit(float(scales[own.index(top)]), n, float(nll[0]) / n, float(after[0][0]) / n,
                         float(made[y].float().mean()), float(mass[0]) / n, float(after[1][0]) / n,
                         text_fingerprint)
    if len(own) > 1:
        fit.bucket_scales = [round(float(scales[g]), 4) for g in group_of]
        fit.bucket_support = support.tolist()
    if not math.isfinite(fit.nll_after) or fit.nll_after > fit.nll_before:
        # Never make the text less likely than no calibration at all.
        fit.scale, fit.nll_after, fit.made_mass_after, fit.bucket_scales = 1.0, fit.nll_before, \
            fit.made_mass_before, None
    return fit


def apply_scale(plan, fit: "CalibrationFit | float", output_only: bool, buckets: np.ndarray | None = None) -> str:
    """Record the fitted scale(s) on the made rows of the LM-head side; returns "output" or "both".

    With `output_only` (an untied model, or `--untie`) or a plan whose head already has rows of its
    own, the head's side gets the scales alone; otherwise the shared rows of a tied model do.
    `fit` may be a bare number (one scale for every made row).
    """
    from copy import deepcopy

    if output_only and plan.output is None:
        plan.output = deepcopy(plan)
        plan.output.output, plan.output.meta = None, {}
    side = plan.output if plan.output is not None else plan
    made = side.made_rows()
    scales = np.ones(side.new_size, dtype=np.float32) if side.scales is None else side.scales.copy()
    per_bucket = getattr(fit, "bucket_scales", None)
    if per_bucket and buckets is not None:
        table = np.asarray(per_bucket, dtype=np.float32)
        b = np.asarray(buckets[: side.new_size])
        scales[made] *= table[b[made]]
    else:
        scales[made] *= np.float32(getattr(fit, "scale", fit))
    side.scales = scales
    return "output" if plan.output is not None else "both"
