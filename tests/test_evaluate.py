"""Bits per byte on the tiny models: protocol invariants and the evaluation written into the card."""

from __future__ import annotations

import math

import builders as B
from transplant import evaluate_bpb, transplant

LONG = B.sample_text("en")[:6000]  # ~2500 byte-level tokens: more than the tiny models' 512 positions


def test_context_longer_than_the_model_is_clamped(build_model, tmp_path):
    # GPT-2 has learned positions only: a chunk of ctx tokens plus the start token must fit.
    src = build_model(tmp_path / "gpt2", "gpt2")
    default = evaluate_bpb(src, [LONG])  # ctx 1024 > 512 positions
    fitted = evaluate_bpb(src, [LONG], ctx=511)
    assert math.isfinite(default.bpb) and default.bpb > 0
    assert default.bpb == fitted.bpb and default.tokens == fitted.tokens


def test_identity_transplant_scores_the_same(build_model, tok_dirs, tmp_path):
    src = build_model(tmp_path / "src", "llama", tied=False)
    result = transplant(src, tok_dirs["bl"], tmp_path / "out", eval_texts=[LONG], eval_name="genesis", eval_ctx=256)
    original, transplanted = result.evaluation["original"], result.evaluation["transplanted"]
    assert original.bytes == transplanted.bytes == sum(len(d.encode()) for d in _docs(LONG))
    assert original.tokens == transplanted.tokens
    assert math.isclose(original.bpb, transplanted.bpb, rel_tol=1e-6)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "## Evaluation" in card and "genesis" in card and f"{original.bpb:.4f}" in card


def test_bpb_charges_the_same_bytes_across_tokenizers(build_model, tok_dirs, tmp_path):
    src = build_model(tmp_path / "src", "llama", tied=True)
    result = transplant(src, tok_dirs["sp"], tmp_path / "out", eval_texts=[LONG], eval_ctx=256)
    original, transplanted = result.evaluation["original"], result.evaluation["transplanted"]
    assert original.bytes == transplanted.bytes == sum(len(d.encode()) for d in _docs(LONG))
    assert original.tokens != transplanted.tokens
    assert math.isfinite(transplanted.bpb) and transplanted.bpb > 0


def _docs(text):
    from transplant.measure.evaluate import split_documents

    return split_documents(text)
