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

Cost: one forward pass over `max_tokens` tokens without the LM head, then two matrix products of
the hidden states with the made rows (a coarse grid, then a fine one around its best point; the
logits of all grid points come from one product, so a 262k vocabulary stays cheap).

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


def _nll_grid(h: torch.Tensor, y: torch.Tensor, head: torch.Tensor, made: torch.Tensor, scales: np.ndarray,
              transform, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Summed NLL and summed made-token probability mass for every scale in `scales`."""
    made_ids = torch.nonzero(made).squeeze(1)
    kept_ids = torch.nonzero(~made).squeeze(1)
    w_made, w_kept = head[made_ids], head[kept_ids]
    is_made = made[y]
    # Position of each target among the made / kept rows.
    pos = torch.full((head.shape[0],), -1, dtype=torch.long)
    pos[made_ids] = torch.arange(len(made_ids))
    pos[kept_ids] = torch.arange(len(kept_ids))
    a = torch.tensor(scales, dtype=torch.float32)
    nll = torch.zeros(len(scales), dtype=torch.float64)
    mass = torch.zeros(len(scales), dtype=torch.float64)
    for s in range(0, len(y), chunk):
        hc, yc, mc = h[s:s + chunk], y[s:s + chunk], is_made[s:s + chunk]
        kept = transform(hc @ w_kept.T)  # (t, kept)
        lse_kept = torch.logsumexp(kept, dim=1)  # (t,)
        raw = hc @ w_made.T  # (t, made)
        p = pos[yc]
        tgt_kept = kept.gather(1, torch.where(mc, 0, p).unsqueeze(1)).squeeze(1)
        tgt_raw = raw.gather(1, torch.where(mc, p, 0).unsqueeze(1)).squeeze(1)
        del kept
        for k, alpha in enumerate(a):
            lse_made = torch.logsumexp(transform(raw * alpha), dim=1)
            lse = torch.logaddexp(lse_kept, lse_made)
            tgt = torch.where(mc, transform(tgt_raw * alpha), tgt_kept)
            nll[k] += float((lse - tgt).sum())
            mass[k] += float(torch.exp(lse_made - lse).sum())
    return nll.numpy(), mass.numpy()


def fit_output_scale(model, head: torch.Tensor, made: np.ndarray, encode, start_id: int, texts: list[str],
                     max_tokens: int = 4096, ctx: int = 512, buckets: np.ndarray | None = None) -> CalibrationFit:
    """Fit the scale of the made rows' logits by likelihood on `texts` (see the module docstring).

    Args:
        model: the transplanted model (new input embeddings in place), any causal LM.
        head: the new LM-head matrix (new_size x dim) before calibration.
        made: boolean mask of the rows to scale (`Plan.made_rows()` of the head's side).
        encode: `list[str] -> list[list[int]]` with the new tokenizer, no special tokens.
        start_id: the token put before each chunk (bos, else eos), as in the BPB protocol.
        texts: calibration text in the target language or domain (never the evaluation text).
        max_tokens: how many text tokens to read (the leading whole documents).
        buckets: per-row bucket ids (`row_buckets`) to fit one scale per bucket; None: one scale.
    """
    docs = [d for t in texts for d in split_documents(t)]
    if not docs:
        raise TransplantError("the calibration text is empty (pass a UTF-8 text file in the target language)")
    ids = encode(docs)
    taken, used = [], 0
    for doc in ids:
        if used >= max_tokens:
            break
        taken.append(doc[: max_tokens - used])
        used += len(taken[-1])
    chunks = [c for c in pack(taken, ctx) if c]
    made_t = torch.from_numpy(np.asarray(made[: head.shape[0]], dtype=bool))
    if not made_t.any():
        raise TransplantError("nothing to calibrate: every row of the new vocabulary was copied")
    h, y = final_hidden_states(model, chunks, start_id)
    digest = hashlib.sha256("\x00".join(texts).encode("utf-8")).hexdigest()[:16]
    mult, cap = _logit_transform(model.config)
    transform = (lambda x: cap * torch.tanh(x * mult / cap)) if cap else None
    return fit_scale(h, y, head.to(torch.float32) * (1.0 if cap else mult), made_t, transform, digest, buckets)


def row_buckets(side, made: np.ndarray) -> np.ndarray:
    """Bucket of every row for per-bucket scales: -1 for rows kept as they are; made linear rows by
    how many old rows they mix (1, 2, 3, 4+ -> 0..3: more pieces, a flatter mean), statistical and
    dense rows 4."""
    nnz = np.diff(side.indptr)
    buckets = np.where(side.kinds == 0, np.clip(nnz, 1, 4) - 1, 4).astype(np.int64)
    return np.where(made[: len(buckets)], buckets, -1)


def _newton_scales(h: torch.Tensor, y: torch.Tensor, head: torch.Tensor, bucket: torch.Tensor, alpha: np.ndarray,
                   free: np.ndarray, iters: int = 8, chunk: int = 512
                   ) -> tuple[np.ndarray, float, float, float, float]:
    """Per-bucket scales of made rows' logits minimising the NLL (convex in the scales: a
    log-sum-exp of functions linear in them), by Newton's method on the `free` buckets.

    Returns (scales, summed NLL, summed made mass) at the best point visited, then the summed NLL
    and made mass at the starting point.
    """
    made_ids = torch.nonzero(bucket >= 0).squeeze(1)
    kept_ids = torch.nonzero(bucket < 0).squeeze(1)
    n_b = len(alpha)
    onehot = torch.nn.functional.one_hot(bucket[made_ids], n_b).to(torch.float32)  # (M, B)
    w_made, w_kept = head[made_ids], head[kept_ids]
    pos = torch.full((head.shape[0],), -1, dtype=torch.long)
    pos[made_ids] = torch.arange(len(made_ids))
    pos[kept_ids] = torch.arange(len(kept_ids))
    is_made = bucket[y] >= 0
    fixed = [(s, torch.logsumexp(h[s:s + chunk] @ w_kept.T, 1)) for s in range(0, len(y), chunk)]
    tgt_kept = torch.cat([(h[s:s + chunk] * head[y[s:s + chunk]]).sum(1) for s in range(0, len(y), chunk)])
    best = (np.inf, alpha.copy(), 0.0)
    start = None
    step = 1.0
    a = alpha.astype(np.float64).copy()
    for _ in range(iters):
        at = torch.tensor(a, dtype=torch.float32)
        grad = torch.zeros(n_b, dtype=torch.float64)
        hess = torch.zeros(n_b, n_b, dtype=torch.float64)
        nll = mass = 0.0
        for s, lse_kept in fixed:
            hc, yc, mc = h[s:s + chunk], y[s:s + chunk], is_made[s:s + chunk]
            raw = hc @ w_made.T
            z = raw * (onehot @ at)
            lse_made = torch.logsumexp(z, 1)
            lse = torch.logaddexp(lse_kept, lse_made)
            p = torch.exp(z - lse[:, None])
            pr = p * raw
            e = pr @ onehot  # (t, B): expected feature per bucket
            second = (pr * raw) @ onehot
            raw_y = tgt_kept[s:s + chunk]
            b_y = torch.where(mc, bucket[yc], 0)
            f_y = torch.zeros_like(e)
            f_y[mc, b_y[mc]] = raw_y[mc]
            tgt = torch.where(mc, raw_y * at[b_y], raw_y)
            nll += float((lse - tgt).sum())
            mass += float(torch.exp(lse_made - lse).sum())
            grad += (e - f_y).sum(0).double()
            hess += torch.diag(second.sum(0)).double() - (e.T @ e).double()
            del raw, z, p, pr
        if start is None:
            start = (nll, mass)
        if nll < best[0] - 1e-9:
            best = (nll, a.copy(), mass)
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
        g, hm = grad.numpy()[idx], hess.numpy()[np.ix_(idx, idx)]
        delta = np.linalg.solve(hm + 1e-6 * np.eye(len(idx)) * max(1.0, np.trace(hm)), g)
        if np.max(np.abs(delta)) < 1e-4:
            break
        a = best[1].copy()
        a[idx] = np.clip(a[idx] - step * delta, 0.2, 1.6)
    return best[1], best[0], best[2], start[0], start[1]


def fit_scale(h: torch.Tensor, y: torch.Tensor, head: torch.Tensor, made: torch.Tensor, transform=None,
              text_fingerprint: str = "", buckets: np.ndarray | None = None,
              min_support: int = 200) -> CalibrationFit:
    """The likelihood-optimal scale(s) of the made rows' logits, given final hidden states `h`
    (N, dim), next tokens `y` (N,), the head (V, dim) and the made-row mask (V,).

    One shared scale first; then, with `buckets` (see `row_buckets`), one scale per bucket that
    has at least `min_support` tokens of the text (the others keep the shared one). Without a
    logit transform the NLL is convex in the scales and Newton's method finds them in a few
    passes; with a soft cap (Gemma 2) a grid search fits the shared scale only. Never worse than
    no scale at all.

    Example:
        >>> fit = fit_scale(h, y, head, made)  # doctest: +SKIP
    """
    head = head.to(torch.float32)
    n = len(y)
    if transform is not None:
        coarse_nll, coarse_mass = _nll_grid(h, y, head, made, COARSE, transform)
        best = float(COARSE[int(np.argmin(coarse_nll))])
        fine = np.round(np.arange(best - 0.05, best + 0.0501, 0.01), 4)
        fine_nll, fine_mass = _nll_grid(h, y, head, made, fine, transform)
        k = int(np.argmin(fine_nll))
        one = int(np.argmin(np.abs(COARSE - 1.0)))
        fit = CalibrationFit(float(fine[k]), n, float(coarse_nll[one]) / n, float(fine_nll[k]) / n,
                             float(made[y].float().mean()), float(coarse_mass[one]) / n, float(fine_mass[k]) / n,
                             text_fingerprint)
    else:
        # One Newton run over groups of rows: each bucket with enough tokens in the text is a
        # group of its own, thin buckets share the scale of the best-supported one.
        b = (torch.from_numpy(np.asarray(buckets[: head.shape[0]], dtype=np.int64)) if buckets is not None
             else torch.where(made, 0, -1))
        b = torch.where(made, b.clamp(min=0), -1)
        n_b = int(b.max()) + 1
        support = np.bincount(b[y][b[y] >= 0].numpy(), minlength=n_b)
        top = int(np.argmax(support))
        own = [k for k in range(n_b) if support[k] >= min_support or k == top]
        group_of = np.array([own.index(k) if k in own else own.index(top) for k in range(n_b)])
        groups = torch.where(b >= 0, torch.from_numpy(group_of)[b.clamp(min=0)], -1)
        scales, nll, mass, nll1, mass1 = _newton_scales(h, y, head, groups, np.ones(len(own)),
                                                        np.ones(len(own), bool))
        fit = CalibrationFit(float(scales[own.index(top)]), n, nll1 / n, nll / n, float(made[y].float().mean()),
                             mass1 / n, mass / n, text_fingerprint)
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
