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
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .errors import TransplantError
from .evaluate import pack, split_documents
from .progress import bar

COARSE = np.round(np.arange(0.40, 1.3001, 0.05), 4)
BINS = 256  # histogram bins per position and group of made rows (see `_quantize`)


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
        out = base(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state[:, :-1]
        keep = mask[:, 1:].bool()
        hs.append(out[keep.to(out.device)].float().cpu())
        ys.append(ids[:, 1:][keep])
        pbar.update(sum(len(c) for c in batch))
    pbar.close()
    return torch.cat(hs), torch.cat(ys)


def _hidden_states_through_rows(model, input_rows, chunks: list[list[int]], start_id: int
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """`final_hidden_states` with the new input rows of only the ids the text uses.

    The model keeps its own embedding matrix; for the read, its embedding module gets a small
    one of those rows and the ids are renumbered into it (the module still runs, so a scale it
    applies, e.g. Gemma's sqrt(hidden), still applies). No new_vocab x dim copy: on Gemma's 262k
    vocabulary that is 600 MB at SmolLM2's width.
    """
    emb = model.get_input_embeddings()
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


def fit_output_scale(model, head: torch.Tensor, made: np.ndarray, encode, start_id: int, texts: list[str],
                     max_tokens: int = 4096, ctx: int = 512, buckets: np.ndarray | None = None,
                     input_rows=None) -> CalibrationFit:
    """Fit the scale of the made rows' logits by likelihood on `texts` (see the module docstring).

    Args:
        model: any causal LM: the transplanted model (new input embeddings in place) or, with
            `input_rows`, the source model as loaded.
        head: the new LM-head matrix (new_size x dim) before calibration.
        made: boolean mask of the rows to scale (`Plan.made_rows()` of the head's side).
        encode: `list[str] -> list[list[int]]` with the new tokenizer, no special tokens.
        start_id: the token put before each chunk (bos, else eos), as in the BPB protocol.
        texts: calibration text in the target language or domain (never the evaluation text).
        max_tokens: how many text tokens to read (the leading whole documents).
        buckets: per-row bucket ids (`row_buckets`) to fit one scale per bucket; None: one scale.
        input_rows: `ids (sorted np.ndarray) -> their new input rows (len(ids) x dim)`; the model
            then reads the text through those rows alone (its embedding matrix is left as it is).
    """
    chunks = _calibration_chunks(encode, texts, max_tokens, ctx)
    made_t = torch.from_numpy(np.asarray(made[: head.shape[0]], dtype=bool))
    if not made_t.any():
        raise TransplantError("nothing to calibrate: every row of the new vocabulary was copied")
    if input_rows is None:
        h, y = final_hidden_states(model, chunks, start_id)
    else:
        h, y = _hidden_states_through_rows(model, input_rows, chunks, start_id)
    digest = hashlib.sha256("\x00".join(texts).encode("utf-8")).hexdigest()[:16]
    mult, cap = _logit_transform(model.config)
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
class _Columns:
    """The head's rows as columns of the logits: made rows sorted by group (so a group is one
    slice of `logits[:, made]`) and kept rows."""

    made: torch.Tensor  # (M,) row ids, sorted by group
    counts: torch.Tensor  # (G,) made rows per group
    kept: torch.Tensor  # (V - M,) row ids

    @classmethod
    def of(cls, group: torch.Tensor, n_groups: int) -> "_Columns":
        made = torch.nonzero(group >= 0).squeeze(1)
        made = made[torch.argsort(group[made], stable=True)]
        return cls(made, torch.bincount(group[made], minlength=n_groups), torch.nonzero(group < 0).squeeze(1))

    def slices(self) -> list[slice]:
        ends = torch.cumsum(self.counts, 0).tolist()
        return [slice(e - int(c), e) for e, c in zip(ends, self.counts.tolist())]

    def scale_per_column(self, scales: np.ndarray) -> torch.Tensor:
        return torch.repeat_interleave(torch.as_tensor(scales, dtype=torch.float32), self.counts)


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


def _quantize(x: torch.Tensor, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row of `x` (t, m) as 2 * `bins` weighted points: two per bin of equal width between
    the row's min and max, at the mean -/+ the standard deviation of the bin's members, with half
    their count each.

    The pair keeps the members' count, sum and sum of squares, so a sum of exp(a * x) over them
    (and its derivatives in a) is right up to terms of third order in a * bin width (~1e-6 of
    the sum with 256 bins over SmolLM2's logits), and a bin with one or two members is exact. An
    unbiased deterministic summary: no sampling noise, and no weight to get wrong in the tail.

    Returns:
        (values, log-weights), each (t, 2 * bins); an empty bin has log-weight -inf.
    """
    t, m = x.shape
    if m == 0:
        return torch.zeros(t, 2 * bins), torch.full((t, 2 * bins), -math.inf)
    lo = x.amin(1, keepdim=True)
    width = (x.amax(1, keepdim=True) - lo).clamp_min(1e-6) / bins
    pos = (x - lo).div_(width)
    idx = pos.floor().clamp_(max=bins - 1)
    frac = pos.sub_(idx)  # where in its bin (0..1): small numbers, so the spread is not lost to rounding
    idx = idx.long()
    count = torch.zeros(t, bins).scatter_add_(1, idx, torch.ones(1, 1).expand_as(frac))
    s1 = torch.zeros(t, bins).scatter_add_(1, idx, frac)
    s2 = torch.zeros(t, bins).scatter_add_(1, idx, frac.mul_(frac))
    per = count.clamp_min(1)
    mean = s1 / per
    sd = (s2 / per - mean * mean).clamp_min(0).sqrt()
    centre = lo + (torch.arange(bins) + mean) * width
    return torch.cat([centre - sd * width, centre + sd * width], 1), torch.log(count / 2).repeat(1, 2)


def _positions_per_step(vocab: int) -> int:
    """Positions per step of a pass: about 2**23 logits (32 MB a temporary) whatever the vocabulary."""
    return max(8, (1 << 23) // max(vocab, 1))


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
    cols = _Columns.of(group, n_groups)
    y_group = group[y]
    nll = torch.zeros(len(scales), dtype=torch.float64)
    mass = torch.zeros(len(scales), dtype=torch.float64)
    compact = None
    if bins:
        shape = (len(y), n_groups, 2 * bins)
        compact = _Compact(torch.empty(shape), torch.empty(shape), torch.empty(len(y)), torch.empty(len(y)), y_group)
    step = _positions_per_step(head.shape[0])
    for s in bar(range(0, len(y), step), desc="calibrating: scoring", unit="step"):
        logits = h[s:s + step] @ head.T
        e = s + len(logits)
        target = logits.gather(1, y[s:e, None]).squeeze(1)
        lse_kept = torch.logsumexp(tf(logits[:, cols.kept]), 1)
        made = logits[:, cols.made]
        del logits
        if compact is not None:
            compact.target[s:e], compact.lse_kept[s:e] = target, lse_kept
            for g, cut in enumerate(cols.slices()):
                compact.values[s:e, g], compact.logw[s:e, g] = _quantize(made[:, cut], bins)
        g_y, is_made = y_group[s:e].clamp(min=0), y_group[s:e] >= 0
        for k, a in enumerate(scales):
            lse_made = torch.logsumexp(tf(made * cols.scale_per_column(a)), 1)
            at = torch.as_tensor(a, dtype=torch.float32)
            tgt = tf(torch.where(is_made, target * at[g_y], target))
            chunk_nll, chunk_mass = _nll_and_mass(lse_kept, lse_made, tgt)
            nll[k] += chunk_nll
            mass[k] += chunk_mass
    return nll.numpy(), mass.numpy(), compact


def _nll_and_mass(lse_kept: torch.Tensor, lse_made: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """Summed NLL of the targets and summed probability of the made rows, from the log-sum-exps."""
    lse = torch.logaddexp(lse_kept, lse_made)
    return float((lse - target).sum(dtype=torch.float64)), float(torch.exp(lse_made - lse).sum(dtype=torch.float64))


def _nll_grid(h: torch.Tensor, y: torch.Tensor, head: torch.Tensor, made: torch.Tensor, scales: np.ndarray,
              transform=None) -> tuple[np.ndarray, np.ndarray]:
    """Exact summed NLL and summed made-token probability mass for every scale in `scales` (one
    pass over the head for all of them)."""
    nll, mass, _ = _pass(h, y, head.to(torch.float32), torch.where(made, 0, -1),
                         np.asarray(scales, dtype=np.float64)[:, None], transform)
    return nll, mass


def _compact_score(c: _Compact, a: np.ndarray, transform=None, derivs: bool = False, step: int = 256
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


def _newton_scales(c: _Compact, alpha: np.ndarray, free: np.ndarray, iters: int = 8) -> np.ndarray:
    """Per-group scales of made rows' logits minimising the NLL on the compact form (convex in
    the scales), by Newton's method on the `free` groups; the best point visited."""
    best = (np.inf, alpha.copy())
    step = 1.0
    a = alpha.astype(np.float64).copy()
    for _ in range(iters):
        nll, _, grad, hess = _compact_score(c, a, derivs=True)
        if nll < best[0] - 1e-9:
            best = (nll, a.copy())
            step = 1.0
        else:  # overshot (convex, so a shorter step from the best point is safe)
            step /= 4
            a = best[1].copy()
            if step < 1e-3:
                break
            continue
        idx = np.nonzero(free)[0]
        if not len(idx):
            break
        g, hm = grad[idx], hess[np.ix_(idx, idx)]
        delta = np.linalg.solve(hm + 1e-6 * np.eye(len(idx)) * max(1.0, np.trace(hm)), g)
        if np.max(np.abs(delta)) < 1e-4:
            break
        a = best[1].copy()
        a[idx] = np.clip(a[idx] - step * delta, 0.2, 1.6)
    return best[1]


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
