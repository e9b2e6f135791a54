"""TokenAdapt's hybrid heuristic (Sharthak et al., 2025, github.com/Tinycompany-AI/tokenadapt).

Local estimate: the new token's old-tokenizer pieces, weighted by a softmax over
((cosine of piece to whole token in an auxiliary space + piece length / token length) / 2) /
local_temperature. Global estimate: the whole token's `global_k` nearest old tokens with cosine
>= `min_similarity`, softmax(cosine / global_temperature). The row is local_weight x local +
(1 - local_weight) x global, or whichever of the two exists. Published defaults: local
temperature 0.3, global k = 3 with similarity >= 0.6, blend 0.7 / 0.3, an external text encoder.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from transplant.methods.auxspace import get_space, nearest, pieces_of, space_option
from transplant.core.plan import Made, RowBlock
from transplant.methods.initializers.knn import softmax_rows
from transplant.methods.initializers.registry import BaseInitializer, InitContext, Option


def group_softmax(scores: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """Softmax of `scores` within each group (`owner[i]` in 0..n-1 names entry i's group).

    Example:
        >>> group_softmax(np.array([0.0, 0.0, 5.0]), np.array([0, 0, 1]), 2).tolist()
        [0.5, 0.5, 1.0]
    """
    top = np.full(n, -np.inf)
    np.maximum.at(top, owner, scores)
    e = np.exp(scores - top[owner])
    return e / np.bincount(owner, weights=e, minlength=n)[owner]


def blend(local_idx: np.ndarray, local_w: np.ndarray, global_idx: np.ndarray, global_w: np.ndarray,
          local_weight: float) -> tuple[np.ndarray, np.ndarray]:
    """Rows `local_weight * local + (1 - local_weight) * global`; a row missing one estimate (all
    its weights 0) takes the other whole.

    Example:
        >>> idx, w = blend(np.array([[1, 2]]), np.array([[.5, .5]]), np.array([[7]]), np.array([[1.]]), 0.7)
        >>> idx.tolist(), np.round(w.astype(np.float64), 3).tolist()
        ([[1, 2, 7]], [[0.35, 0.35, 0.3]])
    """
    has_local = local_w.sum(1, keepdims=True) > 0
    has_global = global_w.sum(1, keepdims=True) > 0
    lw = np.where(has_global, local_weight, 1.0)
    gw = np.where(has_local, 1.0 - local_weight, 1.0)
    return (np.concatenate([local_idx, global_idx], 1),
            np.concatenate([local_w * lw, global_w * gw], 1).astype(np.float32))


class TokenAdaptInitializer(BaseInitializer):
    """TokenAdapt's hybrid: similarity- and length-weighted pieces blended with global neighbours.

    Both estimates are mixes of old rows, so the result is linear rows over the union of the
    token's pieces and its neighbours. A token the auxiliary space cannot place keeps its local
    estimate, weighted by length alone.

    Example:
        >>> transplant("model/", "tok.json", "out/", method="tokenadapt",
        ...            options={"tokenadapt.space": "model"})  # doctest: +SKIP
    """

    name = "tokenadapt"
    description = "TokenAdapt hybrid: pieces weighted by similarity and length, blended with global neighbours"
    options: ClassVar[dict[str, Option]] = {
        "space": space_option(),
        "local_temperature": Option("local_temperature", float, 0.3, "softmax temperature over piece scores",
                                    low=0, low_open=True),
        "global_k": Option("global_k", int, 3, "neighbours of the global estimate", low=1),
        "min_similarity": Option("min_similarity", float, 0.6, "neighbours below this cosine are ignored",
                                 low=-1, high=1),
        "global_temperature": Option("global_temperature", float, 0.3, "softmax temperature over neighbours",
                                     low=0, low_open=True),
        "local_weight": Option("local_weight", float, 0.7, "share of the local estimate when both exist",
                               low=0, high=1),
    }

    def assign(self, ctx: InitContext, todo: list[int]) -> Made:
        opts = ctx.options_for(self.name)
        space = get_space(ctx, opts["space"])
        align = ctx.alignment
        ids = np.asarray(todo, dtype=np.int64)
        n = len(ids)
        queries = space.new(ids)

        # Local: every piece of every token, scored against its whole token.
        flat, owner = pieces_of(align, ids)
        sims = (space.old[flat] * queries[owner]).sum(1)
        chars = {j: _chars(align.old, j) for j in set(flat.tolist())}
        whole = np.array([max(1, _chars(align.new, int(i))) for i in ids], np.float64)
        ratio = np.array([chars[j] for j in flat.tolist()], np.float64) / whole[owner]
        local = group_softmax((sims + ratio) / 2 / max(opts["local_temperature"], 1e-6), owner, n) if len(flat) \
            else np.zeros(0)
        counts = np.bincount(owner, minlength=n)
        width = max(1, int(counts.max(initial=0)))
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        col = np.arange(len(flat)) - starts[owner]
        local_idx = np.zeros((n, width), np.int64)
        local_w = np.zeros((n, width), np.float64)
        local_idx[owner, col], local_w[owner, col] = flat, local

        # Global: the nearest old tokens above the similarity threshold.
        placed = np.linalg.norm(queries, axis=1) > 0
        k = max(1, opts["global_k"])
        global_idx = np.zeros((n, k), np.int64)
        global_w = np.zeros((n, k), np.float64)
        if placed.any():
            s, nb = nearest(ctx, space, queries[placed], k)
            keep = (nb >= 0) & (s >= opts["min_similarity"])
            global_idx[placed, :nb.shape[1]] = np.maximum(nb, 0)
            global_w[placed, :nb.shape[1]] = softmax_rows(s, opts["global_temperature"], keep)

        indices, weights = blend(local_idx, local_w, global_idx, global_w, opts["local_weight"])
        made = weights.sum(1) > 0
        return Made(blocks=[RowBlock(ids[made], indices[made], weights[made], source=self.name)])


def _chars(vocab, idx: int) -> int:
    """Length in characters of a token's decoded text (what TokenAdapt's length ratio counts)."""
    return len(vocab.tokens[idx].text.decode("utf-8", "replace"))
