"""Mean of all old embeddings (the usual `resize_token_embeddings` default)."""

from __future__ import annotations

from transplant.core.plan import MEAN, Made, Row
from transplant.methods.initializers.registry import BaseInitializer, InitContext


class MeanInitializer(BaseInitializer):
    """Every asked-for token gets the mean old row, recomputed from the matrix a plan is applied to.

    Example:
        >>> import torch
        >>> from transplant.core.vocab import load_tokenizer
        >>> from transplant.methods.planner import build_plan
        >>> old, new = load_tokenizer(model_dir).vocabulary(), load_tokenizer(new_tok_dir).vocabulary()
        >>> plan = build_plan(old, new, method="mean")  # after special tokens and exact matches
        >>> plan.counts()
        {'mean': 208, 'special': 2, 'byte': 256, 'exact': 293}
        >>> E = torch.randn(500, 8, generator=torch.Generator().manual_seed(0))  # any old matrix
        >>> torch.allclose(plan.apply(E)[new.lookup(b" thing")], E.mean(0))
        True
    """

    name = "mean"
    description = "mean of all old rows (what resize_token_embeddings does)"
    complete = True  # makes every token it is asked for: may serve as --fallback

    def assign(self, ctx: InitContext, todo: list[int]) -> Made:
        return Made(rows={i: Row("mean", kind=MEAN) for i in todo})
