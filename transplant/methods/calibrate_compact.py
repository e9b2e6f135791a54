"""The passes of calibration's hidden states against the LM head, and the compact form of the
logits that the fit runs on.

A pass computes the logits a few positions at a time (never all of them at once: 4096
positions x Gemma's 262k rows is 4 GB) and sums, at given scales of the made rows' logits, the
exact NLL of the next tokens and the probability the model gives made tokens. The first pass
also condenses each position's made logits into a few hundred weighted points per group of rows
(`quantize`: a histogram whose bins keep their members' count, mean and spread); `compact_score`
then scores any scales on those points alone, with the gradient and Hessian Newton's method
needs (`transplant.methods.calibrate_fit`).

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> h, head = torch.randn(50, 8, generator=g), torch.randn(30, 8, generator=g)
    >>> y = torch.randint(30, (50,), generator=g)
    >>> group = torch.where(torch.arange(30) >= 20, 0, -1)  # rows 20..29 made, in one group
    >>> nll, mass, compact = head_pass(h, y, head, group, np.array([[1.0], [0.5]]), bins=BINS)
    >>> approx, _, _, _ = compact_score(compact, np.array([0.5]))  # the NLL at scale 0.5, from the compact form
    >>> bool(abs(approx - nll[1]) < 1e-5 * nll[1])
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from transplant.common.progress import bar

BINS = 64  # histogram bins per position and group of made rows (see `quantize`)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


@dataclass
class Compact:
    """What the fit needs of every position's logits, a few hundred numbers per position: the made
    logits as weighted points per group (see `quantize`), and what no scale changes (the kept
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
    def of(cls, rows: int, cols: int) -> _Work:
        return cls(*(torch.empty(rows, cols) for _ in range(3)), torch.empty(rows, cols, dtype=torch.long))


def quantize(x: torch.Tensor, column_group: torch.Tensor, n_groups: int, bins: int,
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


def head_pass(h: torch.Tensor, y: torch.Tensor, head: torch.Tensor, group: torch.Tensor, scales: np.ndarray,
              transform=None, bins: int | None = None) -> tuple[np.ndarray, np.ndarray, Compact | None]:
    """One pass of the hidden states against the head, a few positions at a time: the exact summed
    NLL and made mass at every row of `scales` (K, G) and, with `bins`, the compact form of the
    logits (`Compact`) that the fit then runs on.

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
        compact = Compact(torch.empty(shape), torch.empty(shape), torch.empty(len(y)), torch.empty(len(y)), y_group)
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
            compact.values[s:e], compact.logw[s:e] = quantize(logits, column_group, n_groups, bins, work)
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


def nll_grid(h: torch.Tensor, y: torch.Tensor, head: torch.Tensor, made: torch.Tensor, scales: np.ndarray,
             transform=None) -> tuple[np.ndarray, np.ndarray]:
    """Exact summed NLL and summed made-token probability mass for every scale in `scales` (one
    pass over the head for all of them; `fit_scale` itself needs no grid over the full logits)."""
    nll, mass, _ = head_pass(h, y, head.to(torch.float32), torch.where(made, 0, -1),
                             np.asarray(scales, dtype=np.float64)[:, None], transform)
    return nll, mass


def compact_score(c: Compact, a: np.ndarray, transform=None, derivs: bool = False
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
