"""Special tokens: copy the old row of the token with the same content or the same role."""

from __future__ import annotations

from transplant.core.plan import MEAN, Made, Row
from transplant.methods.initializers.registry import BaseInitializer, InitContext


class SpecialInitializer(BaseInitializer):
    """`<|im_end|>` -> `<|im_end|>`, or `<end_of_turn>` -> `<|im_end|>` by role; never by raw id.

    Example:
        >>> from transplant.core.align import Alignment
        >>> from transplant.core.vocab import load_tokenizer
        >>> old, new = load_tokenizer(model_dir).vocabulary(), load_tokenizer(new_tok_dir).vocabulary()
        >>> made = SpecialInitializer().assign(InitContext(Alignment.build(old, new)), [0, 1, 2])
        >>> {new.tokens[i].text: old.tokens[row.indices[0]].text for i, row in made.rows.items()}  # by role
        {b'<s>': b'<|im_start|>', b'</s>': b'<|endoftext|>'}
        >>> 0 in made.rows  # `<unk>`: the old tokenizer has none; left to the chain
        False
    """

    name = "special"
    description = "special tokens: the old row of the same token, else of the token with the same role (bos, eos, chat turns)"

    def assign(self, ctx: InitContext, todo: list[int]) -> Made:
        rows = ctx.alignment.special_rows
        made = {i: Row("special", (rows[i],), (1.0,)) for i in todo if i in rows}
        # A pad without a pad of its own in the old model: the mean row, which never wins the argmax.
        made.update({i: Row("special-mean", kind=MEAN) for i in todo if i in ctx.alignment.never_win})
        return Made(rows=made)
