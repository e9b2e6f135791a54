"""Baseline: isotropic normal rows with the old embeddings' scale (what training from scratch sees)."""

from __future__ import annotations

from transplant.core.plan import RANDOM, Made, Row
from transplant.methods.initializers.registry import BaseInitializer, InitContext


class RandomInitializer(BaseInitializer):
    """New rows ~ N(0, std^2 I), std the old embeddings' overall standard deviation.

    Example:
        >>> import torch
        >>> from transplant.core.vocab import load_tokenizer
        >>> from transplant.methods.planner import build_plan
        >>> old, new = load_tokenizer(model_dir).vocabulary(), load_tokenizer(new_tok_dir).vocabulary()
        >>> plan = build_plan(old, new, method="random")
        >>> E = 1 + 3 * torch.randn(500, 8, generator=torch.Generator().manual_seed(0))  # mean 1, std 3
        >>> rows = plan.apply(E)[torch.from_numpy(plan.made_rows())]  # not copied: the 208 random rows
        >>> len(rows), round(rows.mean().item()), round(rows.std().item())  # centred at 0, not at the mean
        (208, 0, 3)
    """

    name = "random"
    description = "baseline: isotropic normal noise at the old rows' scale"
    complete = True  # makes every token it is asked for: may serve as --fallback

    def assign(self, ctx: InitContext, todo: list[int]) -> Made:
        return Made(rows={i: Row("random", kind=RANDOM) for i in todo})
