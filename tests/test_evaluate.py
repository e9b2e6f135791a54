"""Bits per byte on the tiny models: protocol invariants and the evaluation written into the card."""

from __future__ import annotations

import math

import pytest
import torch

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


def test_bpb_is_in_bits_on_a_model_whose_next_token_is_uniform(toks, tmp_path):
    """The scale of BPB, pinned in closed form: a head of zeros gives every one of the V output
    rows the same logit, so every scored token costs log2(V) bits whatever came before, and
    BPB = scored tokens * log2(V) / bytes (nats instead of bits would be ln 2 times this)."""
    from transformers import AutoTokenizer

    from conftest import ROLES, _ids

    tok = toks["bl"]
    vocab_rows = tok.get_vocab_size(with_added_tokens=True)
    model = B.tiny_model("llama", vocab_rows, False, *_ids(tok, "bl"))
    with torch.no_grad():
        model.get_output_embeddings().weight.zero_()
    folder = B.save_model(model, tok, tmp_path / "uniform", **ROLES["bl"])
    result = evaluate_bpb(folder, [LONG], ctx=128)  # several chunks: each chunk's first token counts too

    docs = _docs(LONG)
    hf = AutoTokenizer.from_pretrained(str(folder))
    tokens = sum(len(hf(d, add_special_tokens=False).input_ids) for d in docs)
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    assert (result.tokens, result.bytes) == (tokens, n_bytes) and tokens > 3 * 128
    assert result.nll_bits == pytest.approx(tokens * math.log2(vocab_rows), rel=1e-5)
    assert result.bpb == pytest.approx(tokens * math.log2(vocab_rows) / n_bytes, rel=1e-5)
    assert result.bytes_per_token == pytest.approx(n_bytes / tokens)
