"""CW2V: every row a convex mix of old rows (by construction), the mix moved from FVT's by the
skip-gram objective on the target text, trained once per content (cached), and the tokenizer's
recorded text used when no text is given."""

from __future__ import annotations

import builders as B
import numpy as np
import pytest

from transplant.common.errors import TransplantError
from transplant.core.align import Alignment
from transplant.core.vocab import load_tokenizer
from transplant.methods.initializers import InitContext, get_initializer, resolve_options
from transplant.methods.resources import Resources

TEXT = str(B.DATA / "bible_es.txt")


def _ctx(model_dir, new_tok, options, seed=0):
    old, new = load_tokenizer(model_dir).vocabulary(), load_tokenizer(new_tok).vocabulary()
    from safetensors.torch import load_file

    E = load_file(str(model_dir / "model.safetensors"))["model.embed_tokens.weight"]
    res = Resources(lambda: E, None, old_rows=len(old))
    return InitContext(Alignment.build(old, new), resolve_options(["cw2v"], options, required=False), res, seed), res


@pytest.fixture
def spanish_tok(tmp_path):
    return B.save_tokenizer(B.byte_level_bpe(700, lang="es"), tmp_path / "es-tok")


def _made(model_dir, tok, options):
    ctx, _ = _ctx(model_dir, tok, options)
    todo = [i for i in range(len(ctx.alignment.new)) if i not in ctx.alignment.exact]
    made = get_initializer("cw2v").assign(ctx, todo)
    (block,) = made.blocks
    return ctx, block


def test_rows_are_convex_mixes_moved_from_fvts_by_training(llama_bl, spanish_tok):
    ctx, trained = _made(llama_bl, spanish_tok, {"cw2v.text": TEXT, "cw2v.steps": 150})
    _, start = _made(llama_bl, spanish_tok, {"cw2v.text": TEXT, "cw2v.steps": 1, "cw2v.lr": 1e-9})
    w = np.asarray(trained.weights)
    assert (w >= 0).all() and np.allclose(w.sum(1), 1.0, atol=1e-5)  # inside the hull of the old rows
    # It starts at FVT's mix (the pieces equal, neighbours near zero) ...
    for r, new_id in enumerate(start.ids[:50]):
        pieces = ctx.alignment.decomposition(int(new_id))
        own = np.asarray(start.weights)[r, :len(set(pieces))]
        assert own.sum() > 0.95
    # ... and the text moves it: the tokens the text uses most change most.
    moved = np.abs(w - np.asarray(start.weights)).sum(1)
    assert moved.max() > 0.05 and np.median(moved) < moved.max()


def test_the_same_content_trains_once(llama_bl, spanish_tok, monkeypatch):
    import transplant.methods.initializers.cw2v as cw2v

    opts = {"cw2v.text": TEXT, "cw2v.steps": 20}
    _, first = _made(llama_bl, spanish_tok, opts)
    monkeypatch.setattr(cw2v, "_train", lambda *a, **k: pytest.fail("trained again"))
    _, again = _made(llama_bl, spanish_tok, opts)
    np.testing.assert_array_equal(np.asarray(first.weights), np.asarray(again.weights))


def test_without_text_it_says_which_option_to_set(llama_bl, spanish_tok):
    ctx, _ = _ctx(llama_bl, spanish_tok, {})
    with pytest.raises(TransplantError, match="cw2v.text"):
        get_initializer("cw2v").assign(ctx, [i for i in range(len(ctx.alignment.new)) if i not in ctx.alignment.exact])


def test_the_tokenizers_recorded_text_is_read_up_to_its_held_out_tail(llama_bl, tmp_path):
    from transplant.train.tokenizer_train import train_tokenizer

    train_tokenizer([TEXT], 600, tmp_path / "rec-tok", like=str(llama_bl))
    ctx, res = _ctx(llama_bl, tmp_path / "rec-tok", {"cw2v.steps": 5})
    res.new_source = load_tokenizer(tmp_path / "rec-tok")
    head = res.recorded_head(10**9)
    full = open(TEXT, encoding="utf-8").read()
    assert head and full.startswith(head) and len(head) < len(full)  # the tail is never read
    todo = [i for i in range(len(ctx.alignment.new)) if i not in ctx.alignment.exact]
    assert get_initializer("cw2v").assign(ctx, todo).blocks[0].n > 0
