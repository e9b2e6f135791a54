"""A method that makes none of the rows it is asked for adds nothing to the plan, whatever the shape
of its empty result: no rows, an empty block of any width, an empty dense block, an empty block
with an output side.

`transplant run --method fvt+knn` on the tiny fixtures crashed in plan assembly ("cannot reshape
array of size 0 into shape (0,newaxis)"): knn could place none of the tokens fvt left and
returned a (0, k) block.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transplant.core.plan import Made, RowBlock
from transplant.core.vocab import load_tokenizer
from transplant.methods.initializers import registry
from transplant.methods.planner import build_plan

NONE = np.zeros(0, np.int64)


def _linear(width: int, **kw) -> RowBlock:
    return RowBlock(NONE, np.zeros((0, width), np.int64), np.zeros((0, width), np.float32), source="empty", **kw)


EMPTY = {
    "nothing": lambda: Made(),
    "no rows": lambda: Made(rows={}),
    "linear block (0, k)": lambda: Made(blocks=[_linear(10)]),
    "linear block (0, 0)": lambda: Made(blocks=[_linear(0)]),
    "linear block, flat arrays": lambda: Made(blocks=[RowBlock(NONE, NONE, np.zeros(0, np.float32))]),
    "dense block": lambda: Made(blocks=[RowBlock(NONE, values=np.zeros((0, 4), np.float32), source="empty")]),
    "block with an output side": lambda: Made(blocks=[_linear(3, output=_linear(5))]),
    "dense block with a dense output side": lambda: Made(blocks=[RowBlock(
        NONE, values=np.zeros((0, 4), np.float32), output=RowBlock(NONE, values=np.zeros((0, 4), np.float32)))]),
    "several empty blocks": lambda: Made(blocks=[_linear(10), _linear(64), RowBlock(NONE, NONE, NONE)]),
}


@pytest.fixture(scope="module")
def vocabs(llama_bl, tok_dirs):
    return load_tokenizer(llama_bl).vocabulary(), load_tokenizer(tok_dirs["sp"]).vocabulary()


@pytest.mark.parametrize("kind", EMPTY)
def test_a_method_that_makes_nothing_adds_nothing(kind, vocabs, monkeypatch):
    asked: list[int] = []

    class Empty(registry.BaseInitializer):
        name = "empty"

        def assign(self, ctx, todo):
            asked.append(len(todo))
            return EMPTY[kind]()

    monkeypatch.setitem(registry._REGISTRY, "empty", Empty)
    old, new = vocabs
    plan = build_plan(old, new, method="empty", fallback="mean")
    assert asked and asked[0] > 0  # it was asked for rows (the chain did not end before it)
    same = build_plan(old, new, method="mean", fallback="mean")  # the chain without it
    for name in ("indptr", "indices", "weights", "kinds", "override_rows"):
        assert np.array_equal(getattr(plan, name), getattr(same, name)), name
    assert plan.provenance == same.provenance and plan.override_values is None
    assert plan.output is None  # an empty output side is no output side
    old_matrix = torch.randn(len(old), 4)
    assert torch.equal(plan.apply(old_matrix), same.apply(old_matrix))


def test_a_method_after_fvt_that_places_nothing(llama_bl, tok_dirs):
    """The reported case, in the model's own space: fvt leaves the tokens it cannot decompose,
    and knn cannot place them either (a new token's vector there is its decomposition's mean)."""
    from transplant import transplant

    chained = transplant(llama_bl, tok_dirs["sp"], None, method=["fvt", "knn"], options={"knn.space": "model"})
    alone = transplant(llama_bl, tok_dirs["sp"], None, method="fvt")
    assert "knn" not in chained.plan.counts()
    assert chained.plan.provenance == alone.plan.provenance
    assert np.array_equal(chained.plan.weights, alone.plan.weights)
