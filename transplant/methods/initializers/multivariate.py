"""Hewitt (2021): sample each new row from a normal with the old rows' mean and covariance."""

from __future__ import annotations

from transplant.core.plan import MULTIVARIATE, Made, Row
from transplant.methods.initializers.registry import BaseInitializer, InitContext


class MultivariateInitializer(BaseInitializer):
    """New rows ~ N(mean, cov) of the old embeddings; seeded per row, so plans are reproducible.

    Example:
        >>> import torch
        >>> from transplant.core.vocab import load_tokenizer
        >>> from transplant.methods.planner import build_plan
        >>> old, new = load_tokenizer(model_dir).vocabulary(), load_tokenizer(new_tok_dir).vocabulary()
        >>> plan = build_plan(old, new, method="multivariate", seed=0)
        >>> plan.counts()["multivariate"]
        208
        >>> E = 1 + 3 * torch.randn(500, 8, generator=torch.Generator().manual_seed(0))  # mean 1, std 3
        >>> torch.equal(plan.apply(E), plan.apply(E))  # the same rows every time
        True
        >>> rows = plan.apply(E)[torch.from_numpy(plan.made_rows())]  # the 208 sampled rows
        >>> round(rows.mean().item()), round(rows.std().item())
        (1, 3)
        >>> torch.equal(build_plan(old, new, method="multivariate", seed=1).apply(E), plan.apply(E))
        False
    """

    name = "multivariate"
    description = "sampled from a normal with the old rows' mean and covariance (Hewitt 2021)"
    complete = True  # makes every token it is asked for: may serve as --fallback

    def assign(self, ctx: InitContext, todo: list[int]) -> Made:
        return Made(rows={i: Row("multivariate", kind=MULTIVARIATE) for i in todo})
