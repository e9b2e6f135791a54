"""The contract every registered initializer keeps, checked without writing any checkpoint.

For each method of the registry, on real (tiny) vocabularies and the old matrices of a tiny model,
with its default options (plus the fixture-built resources a method cannot run without):
returned ids are a subset of the ids asked for, each made once; old indices are in range;
weights and dense values are finite and of the hidden size; every row has a provenance label;
an output side (when a method makes one) obeys the same rules for the same ids.
"""

from __future__ import annotations

import math

import builders as B
import numpy as np
import pytest

from transplant.core.align import Alignment
from transplant.core.plan import OVERRIDE, Made, Row, RowBlock
from transplant.core.vocab import load_tokenizer
from transplant.methods.initializers import InitContext, available, get_initializer, resolve_options
from transplant.methods.resources import Resources

METHODS = [m for m in available() if m not in ("special", "exact")]


@pytest.fixture(scope="module")
def resource_options(tok_dirs, tmp_path_factory, hypernet_dir):
    """Options pointing at fixture-built resources, for methods that need some to run at all."""
    options = {"hypernet": {"hypernet.path": str(hypernet_dir)},
               "cw2v": {"cw2v.text": str(B.DATA / "bible_en.txt"), "cw2v.steps": 30}}
    try:
        from vector_fixtures import crosslingual_options
    except ImportError:  # no fastText fixtures (methods without them need none)
        return options
    built = crosslingual_options(tmp_path_factory.mktemp("vectors"), tok_dirs)
    return {**options, **{method: per_tok["sp"] for method, per_tok in built.items()}}


def _check_row(row: Row, old_size: int, dim: int, where: str) -> None:
    assert isinstance(row.source, str) and row.source, where
    if row.kind == OVERRIDE:
        assert row.value is not None and np.asarray(row.value).shape == (dim,), where
        assert np.all(np.isfinite(row.value)), where
        return
    assert len(row.indices) == len(row.weights), where
    assert all(isinstance(j, (int, np.integer)) and 0 <= j < old_size for j in row.indices), where
    assert all(math.isfinite(w) for w in row.weights), where


def _check_block(block: RowBlock, old_size: int, dim: int, where: str) -> None:
    assert isinstance(block.source, str) and block.source, where
    n = block.n
    if block.values is not None:
        values = np.asarray(block.values)
        assert values.shape == (n, dim) and np.all(np.isfinite(values)), where
    else:
        idx, w = np.asarray(block.indices), np.asarray(block.weights)
        assert idx.shape == w.shape and idx.shape[0] == n, where
        assert idx.size == 0 or (idx.min() >= 0 and idx.max() < old_size), where
        assert np.all(np.isfinite(w)), where


@pytest.mark.parametrize("method", METHODS)
def test_initializer_contract(method, llama_bl, tok_dirs, resource_options):
    from transplant.io.checkpoint import locate_embeddings

    old_vocab = load_tokenizer(llama_bl).vocabulary()
    new_vocab = load_tokenizer(tok_dirs["sp"]).vocabulary()
    alignment = Alignment.build(old_vocab, new_vocab)
    layout = locate_embeddings(llama_bl)
    resources = Resources.from_checkpoint(layout, len(old_vocab))
    chain = ["special", "exact", method, "mean"]
    options = resolve_options(chain, resource_options.get(method))
    ctx = InitContext(alignment, options, resources, seed=0)
    todo = [i for i, t in enumerate(new_vocab.tokens) if t.kind != "unused" and i not in alignment.exact
            and i not in alignment.special_rows]
    asked = set(todo)
    made = get_initializer(method).assign(ctx, list(todo))
    old_size, dim = len(old_vocab), layout.dim
    assert isinstance(made, Made), type(made)
    ids = made.ids()
    assert len(np.unique(ids)) == len(ids) and set(ids.tolist()) <= asked
    for i, row in made.rows.items():
        _check_row(row, old_size, dim, f"{method} row {i}")
        if row.output is not None:
            _check_row(row.output, old_size, dim, f"{method} output row {i}")
    for b in made.blocks:
        assert isinstance(b, RowBlock), type(b)
        _check_block(b, old_size, dim, method)
        if b.output is not None:
            assert np.array_equal(np.asarray(b.output.ids), np.asarray(b.ids))
            _check_block(b.output, old_size, dim, f"{method} output")
    # Every method must make something on a vocabulary this different (else it is a no-op).
    assert len(ids) > 0, f"{method} made no rows"
    # The method records what it read (fingerprints) only for resources it actually used.
    assert all(isinstance(v, str) and v for v in resources.fingerprints().values())
