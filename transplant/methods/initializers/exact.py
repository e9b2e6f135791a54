"""Exact overlap: a new token standing for the same bytes as an old one gets its row."""

from __future__ import annotations

from transplant.core.plan import Made, Row
from transplant.core.vocab import BYTE
from transplant.methods.initializers.registry import BaseInitializer, InitContext


class ExactInitializer(BaseInitializer):
    """Copy the old row of the token with identical canonical bytes (word-initial space included).

    Example:
        >>> rows = ExactInitializer().assign(ctx, list(range(len(new_vocab))))  # doctest: +SKIP
    """

    name = "exact"
    description = "tokens with the same bytes in both vocabularies keep their old row"

    def assign(self, ctx: InitContext, todo: list[int]) -> Made:
        exact, old, new = ctx.alignment.exact, ctx.alignment.old, ctx.alignment.new
        out = {}
        for i in todo:
            j = exact.get(i)
            if j is not None:
                label = "byte" if BYTE in (new.tokens[i].kind, old.tokens[j].kind) else "exact"
                out[i] = Row(label, (j,), (1.0,))
        return Made(rows=out)
