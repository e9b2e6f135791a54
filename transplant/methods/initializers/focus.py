"""FOCUS (Dobler & de Melo, 2023): new tokens as sparse mixes of the overlapping tokens.

fastText is trained on target-language text tokenized with the NEW tokenizer, so every new token
has a vector in one token-level space. The anchors are the new tokens with an exact old match
(copied earlier in the chain). Every other new token with a vector gets weights on the anchors:
sparsemax over its cosine similarities to them divided by a temperature, applied to the anchors'
old rows. Sparsemax puts exactly zero weight on all but the few most similar anchors. New tokens
without a vector (seen fewer than min_count times in the text) go down the chain: chain FVT after
it (`--method focus+fvt`).

The paper's plain sparsemax is temperature 1. Vectors trained on little text put tokens at close
cosines, so that spreads each row over ~24 anchors; measured (SmolLM2-135M onto a 25k German
BPE, 12.7 kB of de/dev.txt, vectors trained on de/train.txt, focus+fvt): T=1 2.852 bits per
byte, T=0.1 2.408 (~3 anchors per row), T=0.03 2.438; FVT alone 2.369, original 1.678.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from transplant.methods.crosslingual import normalize, sparsemax
from transplant.common.errors import TransplantError
from transplant.core.plan import Made, RowBlock
from transplant.common.progress import bar
from transplant.methods.vectors import token_word
from transplant.core.vocab import SPECIAL
from transplant.methods.initializers.registry import BaseInitializer, InitContext, Option

_CHUNK = 1024
# Sparsemax is computed over each token's most similar anchors first: its support is a prefix of
# the sorted similarities (cosines within about T / support of the top), usually a handful of
# anchors. Rows whose support fills all candidates are recomputed over every anchor (exact).
_CANDIDATES = 256


def token_vectors(model, vocab, ids) -> tuple[np.ndarray, torch.Tensor]:
    """Unit token-level vectors of the tokens `ids` that are in the fastText vocabulary."""
    keep, vecs = [], []
    for i in ids:
        tok = vocab.tokens[i]
        if tok.kind == SPECIAL or not tok.text:
            continue
        word = token_word(tok.text)
        if model.get_word_id(word) >= 0:
            keep.append(i)
            vecs.append(model.get_word_vector(word))
    if not keep:
        return np.zeros(0, dtype=np.int64), torch.zeros(0, model.get_dimension())
    return np.asarray(keep, dtype=np.int64), normalize(torch.from_numpy(np.stack(vecs)))


def _trimmed(ids: np.ndarray, weights: torch.Tensor, cols: torch.Tensor, anchor_old: np.ndarray,
             label: str) -> RowBlock:
    """A block of rows keeping only as many columns as the widest support (the rest are zeros)."""
    width = max(1, int((weights > 0).sum(1).max()))
    weights, cols = weights[:, :width], cols[:, :width]
    return RowBlock(ids, anchor_old[cols.numpy()], weights.numpy().astype(np.float32), source=label)


def sparse_anchor_rows(new_ids: np.ndarray, new_vecs: torch.Tensor, anchor_old: np.ndarray,
                       anchor_vecs: torch.Tensor, temperature: float, label: str) -> list[RowBlock]:
    """Sparsemax(similarity / T) over the anchors for every new vector; rows on the anchors' old ids."""
    k = min(_CANDIDATES, len(anchor_old))
    blocks = []
    for start in bar(range(0, len(new_ids), _CHUNK), desc=f"{label} anchors", unit="block"):
        ids = new_ids[start:start + _CHUNK]
        scores = (new_vecs[start:start + _CHUNK] @ anchor_vecs.T) / temperature
        top = scores.topk(k, dim=1)
        weights = sparsemax(top.values.double(), dim=1)  # float64: sums of hundreds of weights stay 1
        wide = (weights[:, -1] > 0) if k < len(anchor_old) else torch.zeros(len(ids), dtype=torch.bool)
        if not wide.all():
            blocks.append(_trimmed(ids[~wide.numpy()], weights[~wide], top.indices[~wide], anchor_old, label))
        rows = np.nonzero(wide.numpy())[0]
        for at in range(0, len(rows), 64):  # 64 rows x all anchors in float64 at a time
            few = torch.from_numpy(rows[at:at + 64])
            full = sparsemax(scores[few].double(), dim=1)
            order = full.topk(int((full > 0).sum(1).max()), dim=1)
            blocks.append(_trimmed(ids[few.numpy()], order.values, order.indices, anchor_old, label))
    return blocks


class FOCUSInitializer(BaseInitializer):
    """Each new token = sparsemax-weighted mix of the overlapping tokens most similar in token-level fastText.

    Example:
        Token-level vectors of the new tokenizer, trained (tiny settings, seconds) on some English
        text, then FOCUS with FVT after it for the tokens the text never shows:

        >>> from unittest import mock
        >>> from transplant import transplant
        >>> from transplant.methods.vectors import train_vectors
        >>> with mock.patch.dict("os.environ", TOKENTRANSPLANT_CACHE="cache"):  # keep the vectors' cache here
        ...     vectors = train_vectors([text_file], "new-tok.bin", tokenizer=new_tok_dir, dim=16, epochs=2,
        ...                             min_count=1, bucket=20_000, threads=1)
        >>> result = transplant(model_dir, new_tok_dir, None, method=["focus", "fvt"],
        ...                     options={"focus.vectors": str(vectors)})
        >>> result.plan.counts()
        {'mean': 1, 'special': 2, 'byte': 256, 'exact': 293, 'focus': 196, 'fvt': 11}

        SmolLM2 onto a German tokenizer, the vectors trained on German text now (cached):

        >>> transplant("smollm2-135m-instruct", "de-bpe/", "out", method="focus",
        ...            options={"focus.text": "de/train.txt"})  # doctest: +SKIP
    """

    name = "focus"
    description = ("FOCUS: sparsemax mix of overlapping tokens, by similarity in fastText trained on text "
                   "tokenized with the new tokenizer")
    options: ClassVar[dict[str, Option]] = {
        "vectors": Option("vectors", str, "", "fastText .bin trained with `transplant vectors train --tokenizer NEW_TOK`"),
        "text": Option("text", str, "", "target-language text: train those vectors now (cached)"),
        "temperature": Option("temperature", float, 0.1, "similarities are divided by it before sparsemax "
                                                         "(1 = the paper; smaller: fewer anchors per token)",
                              low=0, low_open=True),
    }

    def assign(self, ctx: InitContext, todo: list[int]) -> Made:
        opts = ctx.options_for(self.name)
        if opts["vectors"] and opts["text"]:
            raise TransplantError("set only one of focus.vectors and focus.text (vectors already trained, "
                                  "or text to train them on)")
        if not opts["vectors"] and not opts["text"]:
            raise TransplantError(
                "method focus needs token-level fastText vectors of the new tokenizer: set --set focus.vectors=VEC.bin "
                "(train with `transplant vectors train --text TARGET.txt --tokenizer NEW_TOK --out VEC.bin`) "
                "or --set focus.text=TARGET.txt (trained now, cached)")
        res = ctx.need_resources(self.name)
        new = ctx.alignment.new
        if opts["vectors"]:
            model, where = res.vectors(opts["vectors"]), opts["vectors"]
        else:
            model, where = res.text_vectors([opts["text"]], tokenizer=new), f"vectors trained on {opts['text']}"

        exact = ctx.alignment.exact
        anchor_ids, anchor_vecs = token_vectors(model, new, sorted(exact))
        new_ids, new_vecs = token_vectors(model, new, todo)
        if not len(anchor_ids) and not len(new_ids):
            raise TransplantError(f"no token of the new tokenizer is in {where} (were they trained on text "
                                  "tokenized with it? `transplant vectors train --tokenizer NEW_TOK`)")
        if not len(anchor_ids) or not len(new_ids):
            return Made()
        anchor_old = np.asarray([exact[int(i)] for i in anchor_ids], dtype=np.int64)
        return Made(blocks=sparse_anchor_rows(new_ids, new_vecs, anchor_old, anchor_vecs, opts["temperature"],
                                              self.name))
