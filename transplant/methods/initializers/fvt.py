"""Fast Vocabulary Transfer (Gee et al., 2022): the mean of the old decomposition's rows."""

from __future__ import annotations

from transplant.core.plan import Made, Row
from transplant.methods.initializers.registry import BaseInitializer, InitContext


class FVTInitializer(BaseInitializer):
    """Each new token = mean of the old embeddings of its old-tokenizer pieces.

    Example:
        >>> from transplant.core.align import Alignment
        >>> from transplant.core.vocab import load_tokenizer
        >>> old, new = load_tokenizer(model_dir).vocabulary(), load_tokenizer(new_tok_dir).vocabulary()
        >>> ctx = InitContext(Alignment.build(old, new))
        >>> thing = new.lookup(b" thing")  # `▁thing`: no old token spells it
        >>> row = FVTInitializer().assign(ctx, [thing]).rows[thing]
        >>> [old.tokens[j].text for j in row.indices], row.weights
        ([b' th', b'ing'], (0.5, 0.5))
    """

    name = "fvt"
    description = "Fast Vocabulary Transfer: mean of the old rows of the token's old-tokenizer pieces"

    def assign(self, ctx: InitContext, todo: list[int]) -> Made:
        out = {}
        for i in todo:
            pieces = ctx.alignment.decomposition(i)
            if pieces:
                w = 1.0 / len(pieces)
                # A piece repeated in the decomposition counts once per occurrence.
                merged: dict[int, float] = {}
                for j in pieces:
                    merged[j] = merged.get(j, 0.0) + w
                out[i] = Row("fvt", tuple(merged), tuple(merged.values()))
        return Made(rows=out)
