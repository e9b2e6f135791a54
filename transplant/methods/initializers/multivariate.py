"""Hewitt (2021): sample each new row from a normal with the old rows' mean and covariance."""

from __future__ import annotations

from transplant.core.plan import MULTIVARIATE, Made, Row
from transplant.methods.initializers.registry import BaseInitializer, InitContext


class MultivariateInitializer(BaseInitializer):
    """New rows ~ N(mean, cov) of the old embeddings; seeded per row, so plans are reproducible.

    Example:
        >>> rows = MultivariateInitializer().assign(ctx, todo)  # doctest: +SKIP
    """

    name = "multivariate"
    description = "sampled from a normal with the old rows' mean and covariance (Hewitt 2021)"
    complete = True  # makes every token it is asked for: may serve as --fallback

    def assign(self, ctx: InitContext, todo: list[int]) -> Made:
        return Made(rows={i: Row("multivariate", kind=MULTIVARIATE) for i in todo})
