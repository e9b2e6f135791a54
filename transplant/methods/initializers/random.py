"""Baseline: isotropic normal rows with the old embeddings' scale (what training from scratch sees)."""

from __future__ import annotations

from transplant.core.plan import RANDOM, Made, Row
from transplant.methods.initializers.registry import BaseInitializer, InitContext


class RandomInitializer(BaseInitializer):
    """New rows ~ N(0, std^2 I), std the old embeddings' overall standard deviation.

    Example:
        >>> rows = RandomInitializer().assign(ctx, todo)  # doctest: +SKIP
    """

    name = "random"
    description = "baseline: isotropic normal noise at the old rows' scale"
    complete = True  # makes every token it is asked for: may serve as --fallback

    def assign(self, ctx: InitContext, todo: list[int]) -> Made:
        return Made(rows={i: Row("random", kind=RANDOM) for i in todo})
