"""Calibration's fit: the likelihood-optimal scale(s) of the made rows' logits, given the text's
final hidden states and the LM head (`fit_scale`), and what it reports (`CalibrationFit`).

Without a logit transform the NLL is convex in the scales and Newton's method finds them on the
compact form of the logits (`transplant.methods.calibrate_compact`); with Gemma 2's soft cap a
grid search fits one shared scale. The NLL reported before and after is exact.

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> h, head = torch.randn(2000, 8, generator=g), torch.randn(60, 8, generator=g)
    >>> made = torch.arange(60) >= 40
    >>> true = h @ head.T
    >>> true[:, made] *= 0.7  # the text comes from a model that gives made rows 0.7 of these logits
    >>> y = torch.multinomial(torch.softmax(true, 1), 1, generator=g).squeeze(1)
    >>> fit = fit_scale(h, y, head, made)
    >>> round(fit.scale, 1), fit.nll_after < fit.nll_before
    (0.7, True)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from transplant.methods.calibrate_compact import BINS, Compact, compact_score, head_pass

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


def _newton_scales(c: Compact, alpha: np.ndarray, free: np.ndarray, iters: int = 20) -> np.ndarray:
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
        nll, _, grad, hess = compact_score(c, a, derivs=True)
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


def _grid_scale(c: Compact, transform) -> float:
    """The shared scale by grid search on the compact form (a coarse grid, then a fine one around
    its best point): with a soft cap the NLL need not be convex in the scale."""
    def best_of(grid: np.ndarray) -> float:
        return float(grid[int(np.argmin([compact_score(c, np.array([a]), transform)[0] for a in grid]))])

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
    `transform`: what the model does to a logit after the head (a soft cap), None: nothing.

    One shared scale first; then, with `buckets` (see `row_buckets`), one scale per bucket that
    has at least `min_support` tokens of the text (the others keep the shared one). Without a
    logit transform the NLL is convex in the scales and Newton's method finds them in a few
    steps; with a soft cap (Gemma 2) a grid search fits the shared scale only. Both run on a
    compact form of the logits made in one pass over the head (`bins` histogram bins per position
    and group, see `calibrate_compact.quantize`); the NLL and made mass reported before and after
    are exact (the same pass, and one more at the fitted scales). Never worse than no scale at all.

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
    nll, mass, compact = head_pass(h, y, head, group, start, transform, bins)
    if transform is not None:
        scales = np.array([_grid_scale(compact, transform)])
    else:
        scales = _newton_scales(compact, start[0], np.ones(len(own), bool))
    del compact
    after = (nll, mass) if np.all(scales == 1) else head_pass(h, y, head, group, scales[None], transform)[:2]
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
