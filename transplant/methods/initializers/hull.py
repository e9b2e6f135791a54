"""Convex hull: each new token a convex mix of its nearest old tokens, fitted in an auxiliary space.

After "An Empirical Comparison of Vocabulary Expansion and Initialization Approaches for Language
Models" (Mundra et al., 2024): a new row inside the convex hull of old rows is a safe start. Here
the weights (on the simplex: non-negative, summing to one) over the k nearest old tokens are
those that best reconstruct the new token's auxiliary vector, and are then applied to the old
model's rows.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from transplant.methods.auxspace import get_space, nearest, space_option
from transplant.core.plan import Made, RowBlock
from transplant.common.progress import bar
from transplant.methods.initializers.registry import BaseInitializer, InitContext, Option


def project_simplex(v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Euclidean projection of each row of `v` onto the probability simplex (Duchi et al., 2008),
    restricted to the entries where `mask` (the others come out 0).

    Example:
        >>> project_simplex(torch.tensor([[2.0, 0.0]])).tolist()
        [[1.0, 0.0]]
    """
    if mask is not None:
        v = torch.where(mask, v, torch.full_like(v, -1e9))
    u, _ = torch.sort(v, dim=-1, descending=True)
    css = torch.cumsum(u, -1) - 1
    pos = torch.arange(1, v.shape[-1] + 1, dtype=v.dtype, device=v.device)
    rho = ((u - css / pos) > 0).sum(-1, keepdim=True).clamp(min=1)
    theta = css.gather(-1, rho - 1) / rho.to(v.dtype)
    return (v - theta).clamp(min=0)


def simplex_least_squares(gram: torch.Tensor, corr: torch.Tensor, mask: torch.Tensor | None = None,
                          iterations: int = 300, init: torch.Tensor | None = None) -> torch.Tensor:
    """Weights w on the simplex minimising ||sum_j w_j a_j - b||^2 for many problems at once.

    Accelerated projected gradient (FISTA) on the quadratic w'Gw - 2c'w, step 1/L with L the
    largest eigenvalue of each G.

    Args:
        gram: (n, k, k) Gram matrices G = A A' of the candidate vectors a_j.
        corr: (n, k) inner products c = A b with the targets.
        mask: (n, k) bool, candidates allowed (default: all).
        init: (n, k) starting weights (default: uniform over the allowed candidates).

    Example:
        >>> a = torch.eye(3)[None]; b = torch.tensor([[0.2, 0.3, 0.5]])
        >>> [round(x, 3) for x in simplex_least_squares(a @ a.transpose(1, 2), b)[0].tolist()]
        [0.2, 0.3, 0.5]
    """
    gram, corr = gram.to(torch.float64), corr.to(torch.float64)
    if mask is None:
        mask = torch.ones_like(corr, dtype=torch.bool)
    gram = gram * (mask.unsqueeze(1) & mask.unsqueeze(2))
    lip = torch.linalg.eigvalsh(gram)[..., -1].clamp(min=1e-9).unsqueeze(-1)
    w = mask.to(torch.float64) / mask.sum(-1, keepdim=True).clamp(min=1) if init is None else init.to(torch.float64)
    w = project_simplex(w, mask)
    y, t = w.clone(), 1.0
    for _ in range(iterations):
        grad = torch.bmm(gram, y.unsqueeze(-1)).squeeze(-1) - corr
        w_next = project_simplex(y - grad / lip, mask)
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        y = w_next + ((t - 1) / t_next) * (w_next - w)
        w, t = w_next, t_next
    return w.to(torch.float32)


class HullInitializer(BaseInitializer):
    """Each new token = a convex mix of the old rows of its k nearest old tokens, with the simplex
    weights that best reconstruct its vector in an auxiliary space.

    Example:
        >>> transplant("model/", "tok.json", "out/", method="hull", options={"hull.k": 10})  # doctest: +SKIP
    """

    name = "hull"
    description = "convex hull: simplex weights over the k nearest old tokens fitted in an auxiliary space"
    options: ClassVar[dict[str, Option]] = {
        "k": Option("k", int, 10, "nearest old tokens the hull is spanned by", low=1),
        "iterations": Option("iterations", int, 300, "projected-gradient (FISTA) steps", low=1),
        "space": space_option(),
    }

    def assign(self, ctx: InitContext, todo: list[int]) -> Made:
        opts = ctx.options_for(self.name)
        space = get_space(ctx, opts["space"])
        ids = np.asarray(todo, dtype=np.int64)
        queries = space.new(ids)
        placed = np.linalg.norm(queries, axis=1) > 0
        ids, queries = ids[placed], queries[placed]
        if not len(ids):
            return Made(blocks=[RowBlock(ids, np.zeros((0, 1), np.int64), np.zeros((0, 1), np.float32),
                                         source=self.name)])
        _, nbrs = nearest(ctx, space, queries, max(1, opts["k"]))
        mask = nbrs >= 0
        k = nbrs.shape[1]
        gram = torch.zeros(len(ids), k, k)
        corr = torch.zeros(len(ids), k)
        # The candidates' vectors, chunk by chunk: (n, k, d) at once would be gigabytes on 262k tokens.
        step = 4096
        for start in bar(range(0, len(ids), step), desc="hull", unit="batch"):
            a = torch.from_numpy(space.old[np.maximum(nbrs[start:start + step], 0)])
            b = torch.from_numpy(queries[start:start + step])
            gram[start:start + step] = torch.bmm(a, a.transpose(1, 2))
            corr[start:start + step] = torch.bmm(a, b.unsqueeze(-1)).squeeze(-1)
        # Start at the nearest neighbour: a token equal to an old one is already optimal there.
        init = torch.zeros(len(ids), k)
        init[:, 0] = 1.0
        weights = simplex_least_squares(gram, corr, torch.from_numpy(mask), opts["iterations"], init).numpy()
        weights[~mask] = 0.0
        made = mask.any(1)
        return Made(blocks=[RowBlock(ids[made], np.maximum(nbrs[made], 0), weights[made], source=self.name)])
