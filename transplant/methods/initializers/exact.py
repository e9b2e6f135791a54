"""Exact overlap: a new token standing for the same bytes as an old one gets its row."""

from __future__ import annotations

from transplant.core.plan import Made, Row
from transplant.core.vocab import BYTE
from transplant.methods.initializers.registry import BaseInitializer, InitContext


class ExactInitializer(BaseInitializer):
    """Copy the old row of the token with identical canonical bytes (word-initial space included).

    Example:
        >>> from transplant.core.align import Alignment
        >>> from transplant.core.vocab import load_tokenizer
        >>> old = load_tokenizer(model_dir).vocabulary()  # byte-level BPE: `Ġthe`
        >>> new = load_tokenizer(new_tok_dir).vocabulary()  # SentencePiece style: `▁the`, `<0x0A>`
        >>> made = ExactInitializer().assign(InitContext(Alignment.build(old, new)), list(range(len(new))))
        >>> row = made.rows[new.lookup(b" the")]
        >>> row.source, [old.tokens[j].text for j in row.indices], row.weights
        ('exact', [b' the'], (1.0,))
        >>> made.rows[new.lookup(b"\\n")].source  # a byte-fallback piece
        'byte'
        >>> len(made.rows), len(new)  # the rest goes down the chain
        (549, 759)
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
