"""Transplants that must not change the model's function: same, permuted and superset vocabularies."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import builders as B
from conftest import ROLES, TEXT
from transplant import transplant
from transplant.core.vocab import Vocabulary


def _tensors(folder):
    out = {}
    for shard in sorted(folder.glob("*.safetensors")):
        if not shard.name.startswith("transplant_plan"):
            out.update(load_file(str(shard)))
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_identity_is_bit_exact(kind, tied, dtype, build_model, tok_dirs, tmp_path):
    src = build_model(tmp_path / "src", kind, tied=tied, dtype=dtype)
    out = tmp_path / "out"
    result = transplant(src, tok_dirs["bl"], out, method="fvt")

    assert set(result.plan.counts()) <= {"exact", "special"}
    assert result.plan.new_size == json.loads((src / "config.json").read_text())["vocab_size"]
    # Every tensor, embeddings included, is bit-for-bit the source's.
    old, new = _tensors(src), _tensors(out)
    assert old.keys() == new.keys()
    for key in old:
        assert old[key].dtype == new[key].dtype == dtype
        assert torch.equal(old[key], new[key]), key
    old_cfg, new_cfg = json.loads((src / "config.json").read_text()), json.loads((out / "config.json").read_text())
    for key in ("vocab_size", "bos_token_id", "eos_token_id", "tie_word_embeddings"):
        assert new_cfg.get(key) == old_cfg.get(key), key

    ids_old, logits_old = B.logits_for(src, TEXT, dtype=dtype)
    ids_new, logits_new = B.logits_for(out, TEXT, dtype=dtype)
    assert len(ids_old) > 50
    assert torch.equal(ids_old, ids_new)
    assert logits_new.dtype == dtype
    assert torch.equal(logits_old, logits_new)


def _column_map(old_tok, new_tok) -> torch.Tensor:
    """new id -> old id of the same piece."""
    old_vocab = old_tok.get_vocab(with_added_tokens=True)
    perm = torch.full((new_tok.get_vocab_size(with_added_tokens=True),), -1, dtype=torch.long)
    for piece, idx in new_tok.get_vocab(with_added_tokens=True).items():
        perm[idx] = old_vocab[piece]
    assert (perm >= 0).all()
    return perm


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_permuted_vocabulary_gives_identical_logits(kind, tied, bl_tok, build_model, tmp_path):
    shuffled = B.shuffled_copy(bl_tok, seed=3)
    perm = _column_map(bl_tok, shuffled)
    assert not torch.equal(perm, torch.arange(len(perm)))  # really shuffled, specials included
    assert perm[shuffled.token_to_id("<|endoftext|>")] == bl_tok.token_to_id("<|endoftext|>")
    assert shuffled.token_to_id("<|endoftext|>") != bl_tok.token_to_id("<|endoftext|>")

    src = build_model(tmp_path / "src", kind, tied=tied)
    tok_dir = B.save_tokenizer(shuffled, tmp_path / "shuffled", **ROLES["bl"])
    out = tmp_path / "out"
    result = transplant(src, tok_dir, out)
    assert set(result.plan.counts()) <= {"exact", "special"}

    ids_old, logits_old = B.logits_for(src, TEXT)
    ids_new, logits_new = B.logits_for(out, TEXT)
    assert not torch.equal(ids_old, ids_new)
    assert torch.equal(perm[ids_new], ids_old)
    # Full logits: column j of the new model is column perm[j] of the old one, bit for bit.
    assert torch.equal(logits_new, logits_old[:, perm])
    # Log-probabilities of the text's own next tokens. log_softmax sums over the columns in id
    # order, so a permuted vocabulary may change the last bits of the normalizer (and only those).
    lp_old = torch.log_softmax(logits_old, -1)[:-1].gather(1, ids_old[1:, None])
    lp_new = torch.log_softmax(logits_new, -1)[:-1].gather(1, ids_new[1:, None])
    torch.testing.assert_close(lp_new, lp_old, rtol=0, atol=1e-5)
    # Special ids in the config follow their tokens, not their numbers.
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["eos_token_id"] == shuffled.token_to_id("<|endoftext|>")
    assert cfg["bos_token_id"] == shuffled.token_to_id("<|im_start|>")


EXTRA = [" kingdom of heaven", "Jerusalem", "zqx", " café", "😀", "\n\n"]


def test_with_extra_tokens_builder(toks):
    """The superset builder spells new words in each family's alphabet and leaves old ids alone."""
    for name, tok in toks.items():
        sup = B.with_extra_tokens(tok, EXTRA)
        old_vocab, new_vocab = tok.get_vocab(with_added_tokens=True), sup.get_vocab(with_added_tokens=True)
        assert all(new_vocab[p] == i for p, i in old_vocab.items())
        extra_ids = sorted(set(new_vocab.values()) - set(old_vocab.values()))
        assert extra_ids == list(range(len(old_vocab), len(new_vocab)))
        canon = Vocabulary.from_tokenizer(sup)
        texts = {canon.tokens[i].text for i in extra_ids}
        # Words already in the vocabulary (e.g. "\n\n" as a byte-level merge) are skipped.
        assert {w.encode() for w in EXTRA if canon.lookup(w.encode()) in extra_ids} == texts
        assert {b" kingdom of heaven", b"Jerusalem", b"zqx", " caf\u00e9".encode(), "\U0001F600".encode()} <= texts
        if name != "wp":  # BPE: merges-free entries never change how text encodes
            assert sup.encode(TEXT).ids == tok.encode(TEXT).ids


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_superset_keeps_old_columns(kind, tied, bl_tok, build_model, tmp_path):
    sup = B.with_extra_tokens(bl_tok, EXTRA)
    n_old, n_new = bl_tok.get_vocab_size(), sup.get_vocab_size()
    assert n_new > n_old
    src = build_model(tmp_path / "src", kind, tied=tied)
    out = tmp_path / "out"
    result = transplant(src, B.save_tokenizer(sup, tmp_path / "sup", **ROLES["bl"]), out, method="fvt")
    counts = result.plan.counts()
    assert counts.get("exact", 0) + counts.get("special", 0) == n_old
    assert all(result.plan.provenance[i] == "fvt" for i in range(n_old, n_new))

    ids_old, logits_old = B.logits_for(src, TEXT)
    ids_new, logits_new = B.logits_for(out, TEXT)
    assert torch.equal(ids_old, ids_new)
    assert logits_new.shape == (logits_old.shape[0], n_new)
    assert torch.equal(logits_new[:, :n_old], logits_old)
    assert torch.isfinite(logits_new[:, n_old:]).all()
