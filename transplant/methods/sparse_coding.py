"""Batched orthogonal matching pursuit (OMP): k-sparse codes of many targets at once, in torch.

`omp(Y, D, k)` writes every row of `Y` (n, d) as a combination of at most `k` rows ("atoms") of
the dictionary `D` (m, d): greedily pick the atom that best explains what is left, refit the
coefficients of all atoms picked so far by least squares, repeat.

How it stays fast on 10^5 targets and 10^4-10^5 atoms (e.g. SmolLM2 onto Gemma's 262k
vocabulary: 210k targets, 46k atoms, k = 64):

- **Gram space.** The pursuit never touches d-dimensional vectors: it needs each target's
  inner products with its candidate atoms (`alpha0`), and a row of the atoms' Gram matrix per
  step (Batch-OMP, Rubinstein, Zibulevsky & Elad 2008). The picked atoms are orthonormalised
  incrementally (Gram-Schmidt carried out on inner products), so one step costs O(M * s) per
  target for M candidates and s atoms picked so far, with no per-step linear solve. The final
  coefficients are one batched least-squares refit in float64.
- **Candidates.** With `candidates=M`, each target is pursued among M candidate atoms only.
  Targets are grouped by spherical k-means; each group shares a pool of atoms (the 4 M closest
  to its centroid by |cosine|, optionally plus a random sample, see `explore`) whose Gram matrix
  is one matrix product; each target takes its M atoms of highest |cosine| from the pool.
  Nothing of size targets x atoms is ever formed, and groups are pursued together in waves.
- **What candidates cost in fit.** Exact OMP over m atoms needs m inner products per target and
  step (2-4.6 hours for Gemma's vocabulary on two cores, the issue's measurement of mergekit);
  no preselection keeps its residual: on Gemma's embeddings exact OMP's atoms after the first
  are spread over the whole dictionary (median rank 25k of 46k by cosine with the target), so
  its residual (0.36 relative, k = 64) needs every atom in play; the fast path fits to 0.64.
  Transferred, the nearest candidates did *better* than exact OMP (Gemma-3-270M onto SmolLM2's
  tokenizer, bits per byte ratio 1.098 vs 1.101; see benchmarks/omp_speed.py).
- **Selection rule.** `rule="omp"` picks the atom of highest |cosine| with the residual (classic
  OMP); `rule="ormp"` the one whose addition lowers the residual most (order-recursive matching
  pursuit, a.k.a. optimised OMP): same cost, never a worse step.

Example:
    >>> gen = torch.Generator().manual_seed(0)
    >>> D = torch.randn(50, 16, generator=gen)
    >>> Y = 2 * D[3] - D[17] + 0.5 * D[40]
    >>> idx, coef = omp(Y[None], D, 3)
    >>> sorted(idx[0].tolist()), [round(c, 3) for c in coef[0][idx[0].argsort()].tolist()]
    ([3, 17, 40], [2.0, -1.0, 0.5])
"""

from __future__ import annotations

from typing import Callable

import torch

from transplant.common.progress import bar
from transplant.methods.kmeans import normalise, spherical_kmeans

RULES = ("omp", "ormp")

# A target is finished once its residual is this small relative to its norm: further atoms would
# only fit noise, so its remaining slots get weight 0. (The running residual norm is |y|^2 minus a
# float32 sum, exact to about 1e-7 |y|^2, so a smaller tolerance could never be seen.)
DEFAULT_TOL = 1e-3
# The fast path makes at least this many groups of targets (see `_grouped`).
MIN_GROUPS = 256
# Above this many Gram entries a pool of the whole dictionary is left to the exact path.
_WHOLE_GRAM = 1 << 26
# An atom whose component outside the span of the atoms already picked is this small (relative to
# its norm) counts as dependent on them and is never picked: that component is computed in float32
# as a difference of squares, so below ~1e-3 it is round-off, and an atom chosen for it (ORMP
# divides by it; embedding matrices hold near-duplicate rows) would wreck the fit.
_DEPENDENT = 3e-3


def omp(Y: torch.Tensor, D: torch.Tensor, k: int, candidates: int | torch.Tensor | None = None, *,
        pool: int | None = None, explore: float = 0.0, group_size: int = 256, rule: str = "omp",
        tol: float = DEFAULT_TOL,
        ridge: float = 0.0, affine: bool = False, seed: int = 0,
        progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """k-sparse codes of the rows of `Y` over the rows of `D`: `Y[i] ~ sum_t coefs[i, t] * D[indices[i, t]]`.

    Args:
        Y: targets, shape (n, d).
        D: dictionary, shape (m, d) (atoms need not be normalised; zero atoms are never picked).
        k: atoms per target (capped at min(m, d)); a target fitted exactly earlier gets zero
            weights in its remaining slots (their indices are valid but meaningless).
        candidates: None = exact OMP over the whole dictionary; an int M = pursue each target
            among its M best candidate atoms (the fast path, see the module docstring); a long
            tensor (n, M) = those candidate atom indices per target.
        pool: atoms shared by a group of targets on the fast path (default 4 * M); a pool of m or
            more atoms makes every target's candidates its M best atoms of all.
        explore: on the fast path, the share of each target's candidates that are a random
            sample of the dictionary (shared by its group) rather than its nearest atoms: exact
            OMP's atoms after the first few are spread over the whole dictionary, not near the
            target (on Gemma's embeddings their median cosine rank is 25k of 46k).
        group_size: targets per k-means group on the fast path.
        rule: "omp" (highest |cosine| with the residual) or "ormp" (largest residual decrease).
        tol: stop a target once |residual| <= tol * |target|.
        ridge: least-squares refit with this Tikhonov term, relative to the mean squared norm
            of the atoms picked (0 = plain least squares, as OMP).
        affine: refit with coefficients summing to one (an affine combination of the atoms: what
            transfers from a space whose vectors are centred and normalised).
        seed: seed of the k-means grouping (the fast path is deterministic given it).
        progress: show a progress bar.

    Returns:
        (indices (n, k) int64 into D, coefs (n, k) float32).

    Example:
        >>> idx, coef = omp(torch.randn(1000, 64), torch.randn(5000, 64), 8, candidates=64)  # doctest: +SKIP
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, not {rule!r}")
    Y = Y.to(torch.float32)
    D = D.to(torch.float32)
    n, d = Y.shape
    m = D.shape[0]
    if D.shape[1] != d:
        raise ValueError(f"targets have dimension {d} but atoms {D.shape[1]}")
    if n == 0 or m == 0 or k <= 0:
        return torch.zeros(n, 0, dtype=torch.int64), torch.zeros(n, 0, dtype=torch.float32)
    k = min(k, m, d)
    if candidates is None:
        return _exact(Y, D, k, rule, tol, (ridge, affine), progress)
    if isinstance(candidates, torch.Tensor):
        return _given(Y, D, k, candidates.to(torch.int64), rule, tol, (ridge, affine), progress)
    M = max(1, min(int(candidates), m))
    P = max(M, min(pool or 4 * M, m))
    if P >= m and m * m > _WHOLE_GRAM:  # every atom in every pool: that is exact OMP
        return _exact(Y, D, k, rule, tol, (ridge, affine), progress)
    return _grouped(Y, D, min(k, M), M, P, explore, group_size, rule, tol,
                    (ridge, affine), seed, progress)


def residuals(Y: torch.Tensor, D: torch.Tensor, indices: torch.Tensor, coefs: torch.Tensor) -> torch.Tensor:
    """|Y[i] - sum_t coefs[i, t] D[indices[i, t]]| / |Y[i]| per target (the quality of a code)."""
    approx = torch.einsum("nk,nkd->nd", coefs.to(torch.float32), D.to(torch.float32)[indices])
    return torch.linalg.vector_norm(Y - approx, dim=1) / torch.linalg.vector_norm(Y, dim=1).clamp_min(1e-30)


# -- the three ways to get candidates ---------------------------------------------------------------

def _exact(Y, D, k, rule, tol, fit, progress):
    """Every atom is a candidate of every target: classic OMP in the d-dimensional space, where
    each step's correlations with all atoms are one matrix product for the whole batch."""
    n, m = Y.shape[0], D.shape[0]
    diag = (D * D).sum(1)
    usable = diag > 0
    inv_norm = torch.where(usable, diag.clamp_min(1e-30).rsqrt(), torch.zeros_like(diag))
    batch = max(1, min(n, 256, (64 << 20) // (4 * m)))  # (batch, m) correlations near 64 MB
    idx_out, coef_out = [], []
    for start in _steps(range(0, n, batch), progress, "omp (exact)"):
        y = Y[start:start + batch]
        b = len(y)
        basis = y.new_zeros(b, k, y.shape[1])  # orthonormalised picked atoms
        resid = y.clone()
        outside = diag.expand(b, m).clone() if rule == "ormp" else None
        allowed = usable.expand(b, m).clone()
        y_sq = (y * y).sum(1)
        r_sq = y_sq.clone()
        active = r_sq > (tol * tol) * y_sq
        pos = torch.zeros(b, k, dtype=torch.int64)
        valid = torch.zeros(b, k, dtype=torch.bool)
        for s in range(k):
            if not bool(active.any()):
                break
            corr = resid @ D.T
            if rule == "omp":
                score = corr.abs_().mul_(inv_norm)
            else:
                floor = diag * (_DEPENDENT * _DEPENDENT)
                score = corr.square_().div_(torch.maximum(outside, floor)).mul_(outside > floor)
            score.masked_fill_(~allowed, -1.0)
            j = score.argmax(1)
            atom = D[j]
            q = atom.clone()
            if s:
                for _ in range(2):  # Gram-Schmidt twice: orthogonal to float32 precision
                    proj = torch.bmm(basis[:, :s], q.unsqueeze(2)).transpose(1, 2)
                    q = q - torch.bmm(proj, basis[:, :s]).squeeze(1)
            rho_sq = (q * q).sum(1)
            ok = active & allowed.gather(1, j.unsqueeze(1)).squeeze(1) & (rho_sq > (_DEPENDENT * _DEPENDENT) * diag[j])
            q = q * torch.where(ok, rho_sq.clamp_min(1e-30).rsqrt(), torch.zeros_like(rho_sq)).unsqueeze(1)
            basis[:, s] = q
            z_s = (q * resid).sum(1)
            resid -= z_s.unsqueeze(1) * q
            if outside is not None:
                outside -= (q @ D.T).square_()
            r_sq = r_sq - z_s * z_s
            pos[:, s] = j
            valid[:, s] = ok
            allowed.scatter_(1, j.unsqueeze(1), False)
            active = active & (r_sq > (tol * tol) * y_sq)
        sel = D[pos]
        coef = _refit(torch.bmm(sel, sel.transpose(1, 2)), torch.bmm(sel, y.unsqueeze(2)).squeeze(2), valid, *fit)
        idx_out.append(pos)
        coef_out.append(coef)
    return torch.cat(idx_out), torch.cat(coef_out)


def _given(Y, D, k, cand, rule, tol, fit, progress):
    """Per-target candidate lists (n, M): Gram rows of each target's own atoms, one batched product per step."""
    n, M = cand.shape
    k = min(k, M)
    batch = max(1, min(n, (8 << 20) // max(1, M * Y.shape[1])))
    idx_out, coef_out = [], []
    for start in _steps(range(0, n, batch), progress, "omp"):
        y, c = Y[start:start + batch], cand[start:start + batch]
        Dc = D[c]  # (b, M, d)
        alpha0 = torch.bmm(Dc, y.unsqueeze(2)).squeeze(2)
        diag = (Dc * Dc).sum(2)
        rows = torch.arange(len(y))
        pos, valid = _pursue(alpha0, diag, lambda j: torch.bmm(Dc, Dc[rows, j].unsqueeze(2)).squeeze(2),
                             k, rule, tol, (y * y).sum(1))
        sel = Dc[rows[:, None], pos]
        coef = _refit(torch.bmm(sel, sel.transpose(1, 2)), alpha0.gather(1, pos), valid, *fit)
        idx_out.append(c.gather(1, pos))
        coef_out.append(coef)
    return torch.cat(idx_out), torch.cat(coef_out)


def _grouped(Y, D, k, M, P, explore, group_size, rule, tol, fit, seed, progress):
    """The fast path: k-means groups of targets; per group a pool of atoms (the P nearest to the
    group's centroid plus a random sample) and its Gram matrix; per target M candidates (its
    nearest in the pool plus the random sample). Small groups are pursued together in waves."""
    n, m = Y.shape[0], D.shape[0]
    alive = (D * D).sum(1) > 0
    # At least MIN_GROUPS groups, so a few thousand targets still get tight groups (a group of
    # one target pools that target's own nearest atoms).
    whole = P >= m
    groups = 1 if whole else max(1, min(n, max(round(n / group_size), MIN_GROUPS)))
    if whole:  # one pool of every atom: no grouping needed
        centroids, assign = None, torch.zeros(n, dtype=torch.int64)
    else:
        centroids, assign = spherical_kmeans(Y, groups, seed=seed)
    order = torch.argsort(assign, stable=True)
    bounds = torch.searchsorted(assign[order], torch.arange(groups + 1)).tolist()
    R = 0 if whole else max(0, min(int(round(M * explore)), M - 1, int(alive.sum()) - P))
    waves = _Waves(Y, D, k, near=m if whole else P, explore=R, nearest=M - R, rule=rule, tol=tol, fit=fit,
                   whole_gram=(D @ D.T).unsqueeze(0) if whole else None,
                   pbar=bar(total=n, desc="omp", unit="tok", unit_scale=True) if progress else None)
    pools = _GroupPools(D, alive, centroids, P, R, torch.Generator().manual_seed(seed + 1))
    for g in range(groups):
        lo, hi = bounds[g], bounds[g + 1]
        if hi > lo:
            waves.add(torch.arange(m) if whole else pools.pool(g), order[lo:hi])
    return waves.finish()


class _GroupPools:
    """Each group's pool of atoms: the P nearest to its centroid (found for a chunk of groups at a
    time) and a random sample of the others (`explore` of them)."""

    def __init__(self, D, alive, centroids, P, explore, gen) -> None:
        self.Dn, self.alive, self.centroids, self.P, self.R, self.gen = normalise(D), alive, centroids, P, explore, gen
        self.chunk = max(1, (64 << 20) // (4 * D.shape[0]))
        self.nearest: dict[int, torch.Tensor] = {}

    def pool(self, g: int) -> torch.Tensor:
        if g not in self.nearest:
            sims = (self.centroids[g:g + self.chunk] @ self.Dn.T).abs_()
            sims[:, ~self.alive] = -1
            top = sims.topk(self.P, dim=1).indices
            self.nearest = {g + i: top[i] for i in range(len(top))}
        pool = self.nearest.pop(g)
        if self.R:
            # Exact OMP's later atoms are spread over the whole dictionary, not near the
            # target: a random sample shared by the group stands in for them.
            weights = self.alive.to(torch.float32)
            weights[pool] = 0
            pool = torch.cat([pool, torch.multinomial(weights, self.R, generator=self.gen)])
        return pool


class _Waves:
    """Groups pursued together: each added group (its pool of atoms, its targets) waits in a wave
    until the wave holds `wave_targets` targets or its Grams ~64 MB, then the wave is pursued in
    one batch (`flush`) and its codes written into the outputs."""

    def __init__(self, Y, D, k, *, near, explore, nearest, rule, tol, fit, whole_gram, pbar) -> None:
        self.Y, self.D, self.k, self.rule, self.tol, self.fit = Y, D, k, rule, tol, fit
        self.near, self.R, self.T = near, explore, nearest
        self.size = near + explore  # every pool has this many atoms
        self.whole_gram, self.pbar = whole_gram, pbar
        M = nearest + explore
        self.wave_targets = max(1, (16 << 20) // (k * M))
        self.wave_groups = max(1, (64 << 20) // (4 * self.size * self.size))
        self.idx_out = torch.zeros(Y.shape[0], k, dtype=torch.int64)
        self.coef_out = torch.zeros(Y.shape[0], k, dtype=torch.float32)
        self.wave: list[tuple[torch.Tensor, torch.Tensor]] = []  # (pool, members) per group
        self.queued = 0

    def add(self, pool: torch.Tensor, members: torch.Tensor) -> None:
        for s0 in range(0, len(members), self.wave_targets):  # a large group in slices
            part = members[s0:s0 + self.wave_targets]
            if self.wave and (self.queued + len(part) > self.wave_targets or len(self.wave) >= self.wave_groups):
                self.flush()
            self.wave.append((pool, part))
            self.queued += len(part)

    def finish(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.wave:
            self.flush()
        if self.pbar is not None:
            self.pbar.close()
        return self.idx_out, self.coef_out

    def flush(self) -> None:
        Y, D, wave, whole = self.Y, self.D, self.wave, self.whole_gram is not None
        near, size, T, R = self.near, self.size, self.T, self.R
        pools = torch.stack([pool for pool, _ in wave])  # (W, size)
        Dp = D[pools]  # (W, size, d)
        grams = self.whole_gram if whole else torch.bmm(Dp, Dp.transpose(1, 2))  # (W, size, size)
        flat = grams.reshape(-1)
        diag_p = grams.diagonal(dim1=1, dim2=2)  # (W, size)
        inv_norm = torch.where(diag_p > 0, diag_p.clamp_min(1e-30).rsqrt(), torch.zeros_like(diag_p))
        which = torch.cat([torch.full((len(mem),), 0 if whole else w, dtype=torch.int64)
                           for w, (_, mem) in enumerate(wave)])
        ids = torch.cat([mem for _, mem in wave])
        y = Y[ids]
        b = len(ids)
        A = torch.cat([Y[mem] @ Dp[w].T for w, (_, mem) in enumerate(wave)])  # (b, size)
        if T < near:
            score = A[:, :near].abs() * inv_norm[which, :near]
            cand = score.topk(T, dim=1).indices  # (b, T) positions in the pool
        else:
            cand = torch.arange(near).expand(b, near)
        if R:
            cand = torch.cat([cand, torch.arange(near, size).expand(b, R)], 1)
        alpha0 = A.gather(1, cand)
        diag = diag_p[which.unsqueeze(1), cand]
        offset = (which * size * size).unsqueeze(1)
        base = offset + cand * size
        pos, valid = _pursue(alpha0, diag, lambda j: flat[base.gather(1, j.unsqueeze(1)) + cand],
                             self.k, self.rule, self.tol, (y * y).sum(1))
        sel = cand.gather(1, pos)  # pool positions of the picked atoms
        gsel = flat[(offset + sel * size).unsqueeze(2) + sel.unsqueeze(1)]
        self.coef_out[ids] = _refit(gsel, alpha0.gather(1, pos), valid, *self.fit)
        self.idx_out[ids] = pools[which.unsqueeze(1), sel]
        if self.pbar is not None:
            self.pbar.update(b)
        wave.clear()
        self.queued = 0


def _steps(steps: range, progress: bool, desc: str):
    return bar(steps, desc=desc, unit="batch") if progress else steps


# -- the pursuit itself ---------------------------------------------------------------------------

def _pursue(alpha0: torch.Tensor, diag: torch.Tensor, gram_row: Callable[[torch.Tensor], torch.Tensor], k: int,
            rule: str, tol: float, y_sq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy selection in Gram space for a batch of targets.

    Args:
        alpha0: (b, M) inner products of each target with its M candidate atoms.
        diag: (b, M) squared norms of those atoms.
        gram_row: j (b,) candidate positions -> (b, M) inner products of atom j with every candidate.
        y_sq: (b,) squared norms of the targets.

    Returns:
        (positions (b, k) into the candidates, valid (b, k): False for slots left empty because
        the target was already fitted).

    The picked atoms are orthonormalised as q_1..q_s; `basis[:, t]` holds <q_t, atom> for every
    candidate, so each step is one batched vector-matrix product, and the residual's inner
    products with the candidates are updated in place (`corr -= z_s * basis[:, s]`).
    """
    b, M = alpha0.shape
    basis = alpha0.new_zeros(b, k, M)
    corr = alpha0.clone()
    z = alpha0.new_zeros(b, k)
    # allowed: 1 for atoms that may still be picked (non-zero, not picked yet), else 0.
    allowed = (diag > 0).to(alpha0.dtype)
    inv_norm = diag.clamp_min(1e-30).rsqrt().mul_(allowed)  # omp: |corr| / |atom|, 0 where not allowed
    outside = diag.clone()  # ormp: squared norm of each atom outside the span picked so far
    floor = diag * (_DEPENDENT * _DEPENDENT)
    r_sq = y_sq.clone()
    tol_sq = (tol * tol) * y_sq
    active = r_sq > tol_sq
    pos = torch.zeros(b, k, dtype=torch.int64)
    valid = torch.zeros(b, k, dtype=torch.bool)
    for s in range(k):
        if not bool(active.any()):
            break
        if rule == "omp":
            score = corr.abs().mul_(inv_norm)
        else:
            score = corr.square().div_(torch.maximum(outside, floor)).mul_(allowed).mul_(outside > floor)
        j = score.argmax(1, keepdim=True)  # (b, 1)
        h = basis[:, :s].gather(2, j.view(b, 1, 1).expand(b, s, 1)).squeeze(2)  # <q_t, atom j>, (b, s)
        d_j = diag.gather(1, j).squeeze(1)
        rho_sq = d_j - (h * h).sum(1)
        ok = active & (allowed.gather(1, j).squeeze(1) > 0) & (rho_sq > floor.gather(1, j).squeeze(1))
        # 1/rho for a real step; 0 makes the new basis vector and coefficient vanish (slot left empty).
        inv_rho = torch.where(ok, rho_sq.clamp_min(1e-30).rsqrt(), torch.zeros_like(rho_sq))
        g = gram_row(j.squeeze(1)).unsqueeze(1)
        if s:
            g = torch.baddbmm(g, h.unsqueeze(1), basis[:, :s], alpha=-1.0)
        new = basis[:, s]
        torch.mul(g.squeeze(1), inv_rho.unsqueeze(1), out=new)
        z_s = (alpha0.gather(1, j).squeeze(1) - (h * z[:, :s]).sum(1)) * inv_rho
        z[:, s] = z_s
        corr.addcmul_(new, z_s.unsqueeze(1), value=-1.0)
        if rule == "ormp":
            outside.addcmul_(new, new, value=-1.0)
        r_sq = r_sq - z_s * z_s
        pos[:, s] = j.squeeze(1)
        valid[:, s] = ok
        allowed.scatter_(1, j, 0.0)
        inv_norm.scatter_(1, j, 0.0)
        active = active & (r_sq > tol_sq)  # a dependent pick leaves its slot empty; go on
    return pos, valid


def _refit(gram: torch.Tensor, rhs: torch.Tensor, valid: torch.Tensor, ridge: float,
           affine: bool = False) -> torch.Tensor:
    """Least-squares coefficients on each target's picked atoms (float64); empty slots get 0.

    Args:
        gram: (b, k, k) Gram matrix of the picked atoms; rhs: (b, k) their inner products with the target.
        affine: constrain the coefficients to sum to one (the Lagrange solution of the normal equations).
    """
    G = gram.to(torch.float64)
    v = valid.to(torch.float64)
    # Empty slots become identity rows/columns with a zero right-hand side: their coefficient is 0.
    G = G * v.unsqueeze(1) * v.unsqueeze(2) + torch.diag_embed(1.0 - v)
    scale = (G.diagonal(dim1=1, dim2=2) * v).sum(1) / v.sum(1).clamp_min(1.0)
    # A relative jitter keeps the factorisation defined for (nearly) dependent atoms.
    G = G + torch.diag_embed(v * (ridge + 1e-10) * scale.unsqueeze(1))
    b = torch.stack([rhs.to(torch.float64) * v, v], 2)  # (b, k, 2): the target's column and the ones
    L, info = torch.linalg.cholesky_ex(G)
    x = torch.cholesky_solve(b, L)
    bad = info != 0
    if bool(bad.any()):  # not positive definite even with jitter: least squares by lstsq
        x[bad] = torch.linalg.lstsq(G[bad], b[bad]).solution
    u, w = x[..., 0], x[..., 1]
    if affine:  # x = u - lam * w with sum(x) = 1
        denom = (w * v).sum(1)
        lam = torch.where(denom.abs() > 1e-30, ((u * v).sum(1) - 1.0) / denom, torch.zeros_like(denom))
        u = u - lam.unsqueeze(1) * w
    return (u * v).to(torch.float32)


def default_candidates(k: int) -> int:
    """Candidate atoms per target when none are given: 4 k (the speed/quality point measured best)."""
    return 4 * k


__all__ = ["omp", "residuals", "default_candidates", "RULES", "DEFAULT_TOL"]
