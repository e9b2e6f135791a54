"""Mean of all old embeddings (the usual `resize_token_embeddings` default)."""

from __future__ import annotations

from transplant.core.plan import MEAN, Made, Row
from transplant.methods.initializers.registry import BaseInitializer, InitContext


class MeanInitializer(BaseInitializer):
    """Every asked-for token gets the mean old row, recomputed from the matrix a plan is applied to.

    Example:
        >>> rows = MeanInitializer().assign(ctx, todo)  # doctest: +SKIP
    """

    name = "mean"
    description = "mean of all old rows (what resize_token_embeddings does)"
    complete = True  # makes every token it is asked for: may serve as --fallback

    def assign(self, ctx: InitContext, todo: list[int]) -> Made:
        return Made(rows={i: Row("mean", kind=MEAN) for i in todo})
