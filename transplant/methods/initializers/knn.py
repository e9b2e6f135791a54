"""k nearest neighbours: each new token a softmax-weighted mix of its most similar old tokens."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from transplant.methods.auxspace import get_space, nearest, space_option
from transplant.core.plan import Made, RowBlock
from transplant.methods.initializers.registry import BaseInitializer, InitContext, Option


def softmax_rows(sims: np.ndarray, temperature: float, keep: np.ndarray) -> np.ndarray:
    """Row-wise softmax of `sims / temperature` over the entries where `keep`; 0 elsewhere (and on
    rows with nothing kept).

    Example:
        >>> softmax_rows(np.array([[1.0, 1.0, 0.0]]), 1.0, np.array([[True, True, False]])).tolist()
        [[0.5, 0.5, 0.0]]
    """
    logits = np.where(keep, sims / max(temperature, 1e-6), -np.inf)
    top = logits.max(1, keepdims=True)
    e = np.where(keep, np.exp(logits - np.where(np.isfinite(top), top, 0.0)), 0.0)
    total = e.sum(1, keepdims=True)
    return np.divide(e, total, out=np.zeros_like(e), where=total > 0).astype(np.float32)


class KNNInitializer(BaseInitializer):
    """Each new token = softmax(similarity / temperature)-weighted mix of the old rows of its k
    most similar old tokens in an auxiliary space (see `transplant.methods.auxspace`).

    Tokens the space cannot place, or with no neighbour above `min_similarity`, are left to the
    next step of the chain.

    Example:
        >>> transplant("model/", "tok.json", "out/", method="knn", options={"knn.k": 10})  # doctest: +SKIP
    """

    name = "knn"
    description = "k nearest old tokens in an auxiliary space, softmax over similarity"
    options: ClassVar[dict[str, Option]] = {
        "k": Option("k", int, 10, "neighbours per new token", low=1),
        "temperature": Option("temperature", float, 0.1, "softmax temperature over cosine similarities", low=0,
                              low_open=True),
        "space": space_option(),
        "min_similarity": Option("min_similarity", float, -1.0, "neighbours below this cosine are ignored",
                                 low=-1, high=1),
    }

    def assign(self, ctx: InitContext, todo: list[int]) -> Made:
        opts = ctx.options_for(self.name)
        space = get_space(ctx, opts["space"])
        ids = np.asarray(todo, dtype=np.int64)
        queries = space.new(ids)
        placed = np.linalg.norm(queries, axis=1) > 0
        ids, queries = ids[placed], queries[placed]
        sims, nbrs = nearest(ctx, space, queries, max(1, opts["k"]))
        keep = (nbrs >= 0) & (sims >= opts["min_similarity"])
        weights = softmax_rows(sims, opts["temperature"], keep)
        made = keep.any(1)
        return Made(blocks=[RowBlock(ids[made], np.maximum(nbrs[made], 0), weights[made], source=self.name)])
