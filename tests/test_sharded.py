"""Sharded checkpoints: same tensors as a single file, untouched shards copied (or linked) verbatim."""

from __future__ import annotations

import filecmp
import json
import os

import builders as B
import pytest
import torch
from conftest import TEXT
from safetensors.torch import load_file

from transplant import transplant
from transplant.io.checkpoint import INDEX_NAME


def _weights(folder):
    out = {}
    for shard in sorted(folder.glob("model*.safetensors")):
        out.update(load_file(str(shard)))
    return out


@pytest.fixture(scope="module")
def sources(build_model, tmp_path_factory):
    """The same untied tiny Llama saved as one file and as 3+ shards."""
    root = tmp_path_factory.mktemp("sharded")
    single = build_model(root / "single", "llama", tied=False, seed=7)
    sharded = build_model(root / "sharded", "llama", tied=False, seed=7, shard_size="40KB")
    shards = sorted(p.name for p in sharded.glob("model-*.safetensors"))
    assert len(shards) >= 3 and (sharded / INDEX_NAME).exists()
    assert not (single / INDEX_NAME).exists()
    return single, sharded


@pytest.mark.parametrize("link", [False, True], ids=["copy", "link"])
def test_sharded_matches_single_file(sources, tok_dirs, tmp_path, link):
    single, sharded = sources
    out_single, out_sharded = tmp_path / "single", tmp_path / "sharded"
    transplant(single, tok_dirs["sp"], out_single, method="fvt")
    transplant(sharded, tok_dirs["sp"], out_sharded, method="fvt", link=link)

    a, b = _weights(out_single), _weights(out_sharded)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows = a["model.embed_tokens.weight"].shape[0]
    assert rows == len(B.sentencepiece_bpe().get_vocab()) == a["lm_head.weight"].shape[0]

    src_index = json.loads((sharded / INDEX_NAME).read_text())
    out_index = json.loads((out_sharded / INDEX_NAME).read_text())
    assert out_index["weight_map"] == src_index["weight_map"]
    shards = sorted(set(src_index["weight_map"].values()))
    assert sorted(p.name for p in out_sharded.glob("model-*.safetensors")) == shards
    touched = {src_index["weight_map"][k] for k in ("model.embed_tokens.weight", "lm_head.weight")}
    untouched = [s for s in shards if s not in touched]
    assert untouched, "the test model should have shards without embeddings"
    for shard in untouched:
        assert filecmp.cmp(sharded / shard, out_sharded / shard, shallow=False), shard
        same_inode = os.stat(sharded / shard).st_ino == os.stat(out_sharded / shard).st_ino
        assert same_inode == link, shard
    for shard in touched:
        assert not filecmp.cmp(sharded / shard, out_sharded / shard, shallow=False)
        assert os.stat(sharded / shard).st_ino != os.stat(out_sharded / shard).st_ino

    total = sum(t.numel() * t.element_size() for t in b.values())
    assert out_index["metadata"]["total_size"] == total
    if "total_parameters" in src_index.get("metadata", {}):
        assert out_index["metadata"]["total_parameters"] == sum(t.numel() for t in b.values())

    # Both outputs load and compute the same logits.
    ids_a, logits_a = B.logits_for(out_single, TEXT)
    ids_b, logits_b = B.logits_for(out_sharded, TEXT)
    assert torch.equal(ids_a, ids_b) and torch.equal(logits_a, logits_b)


def test_sharded_tied_rewrites_only_embedding_shard(build_model, tok_dirs, tmp_path):
    src = build_model(tmp_path / "src", "llama", tied=True, shard_size="40KB")
    index = json.loads((src / INDEX_NAME).read_text())
    assert "lm_head.weight" not in index["weight_map"]
    out = tmp_path / "out"
    transplant(src, tok_dirs["wp"], out, link=True)
    emb_shard = index["weight_map"]["model.embed_tokens.weight"]
    for shard in sorted(set(index["weight_map"].values())):
        linked = os.stat(src / shard).st_ino == os.stat(out / shard).st_ino
        assert linked == (shard != emb_shard), shard
    new_index = json.loads((out / INDEX_NAME).read_text())
    weights = _weights(out)
    assert new_index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in weights.values())
    if "total_parameters" in index.get("metadata", {}):
        assert new_index["metadata"]["total_parameters"] == sum(t.numel() for t in weights.values())


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_tied_checkpoint_that_also_stores_the_head(kind, build_model, tok_dirs, tmp_path):
    """Older saves keep `lm_head.weight` next to the tied input matrix: both must be resized."""
    from safetensors.torch import save_file

    src = build_model(tmp_path / "src", kind, tied=True)
    weights = load_file(str(src / "model.safetensors"))
    emb_key = "model.embed_tokens.weight" if kind == "llama" else "transformer.wte.weight"
    assert "lm_head.weight" not in weights
    weights["lm_head.weight"] = weights[emb_key].clone()
    save_file(weights, str(src / "model.safetensors"), metadata={"format": "pt"})

    out = tmp_path / "out"
    transplant(src, tok_dirs["sp"], out)
    new = load_file(str(out / "model.safetensors"))
    assert new[emb_key].shape[0] == new["lm_head.weight"].shape[0] == B.sentencepiece_bpe().get_vocab_size()
    assert torch.equal(new[emb_key], new["lm_head.weight"])
    ids, logits = B.logits_for(out, TEXT)
    assert logits.shape[1] == new[emb_key].shape[0] and torch.isfinite(logits).all()


def test_padded_embedding_rows(toks, tok_dirs, tmp_path):
    """A model with more rows than its tokenizer has ids (padded for speed): ids keep their rows."""
    tok = toks["bl"]
    model = B.tiny_model("llama", tok.get_vocab_size() + 12, False, 1, 0)
    src = B.save_model(model, tok, tmp_path / "src", bos="<|im_start|>", eos="<|endoftext|>")
    out = tmp_path / "out"
    result = transplant(src, tok_dirs["bl"], out, pad_to_multiple_of=64)
    n = tok.get_vocab_size()
    assert result.plan.new_size == 512 and set(result.plan.provenance[n:]) == {"pad"}
    ids_old, logits_old = B.logits_for(src, TEXT)
    ids_new, logits_new = B.logits_for(out, TEXT)
    assert torch.equal(ids_old, ids_new)
    assert torch.equal(logits_new[:, :n], logits_old[:, :n])
    # Pad rows are the mean of the real rows only (the source's padding rows are ignored).
    old = load_file(str(src / "model.safetensors"))["model.embed_tokens.weight"]
    new = load_file(str(out / "model.safetensors"))["model.embed_tokens.weight"]
    torch.testing.assert_close(new[n], old[:n].double().mean(0).float())


def test_tied_head_is_named_by_its_own_module_first():
    # In a materialized tied model the head's parameter *is* the embedding's; a checkpoint that
    # stores the head stores it as `lm_head.weight`, so that name must be tried first.
    from transplant.io.checkpoint import _weight_names

    model = B.tiny_model("llama", 50, tied=True, bos=1, eos=0)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert _weight_names(model, model.get_output_embeddings())[0] == "lm_head.weight"
    assert _weight_names(model, model.get_input_embeddings())[0] == "model.embed_tokens.weight"


@pytest.mark.parametrize("kernel_copy", [True, False], ids=["copy_file_range", "read-write"])
def test_rewrite_shard_copies_untouched_runs_byte_for_byte(tmp_path, monkeypatch, kernel_copy):
    """Untouched tensors around, between and after replaced ones keep their exact bytes, whether
    the kernel copies the runs or Python does (copy_file_range refused, as across filesystems)."""
    from safetensors.torch import save_file

    from transplant.io.shardio import NewTensor, rewrite_shard

    if not kernel_copy:
        def refuse(*args, **kwargs):
            raise OSError(18, "Invalid cross-device link")
        monkeypatch.setattr(os, "copy_file_range", refuse, raising=False)
    g = torch.Generator().manual_seed(0)
    tensors = {f"t{i}": torch.randn(37 + i, 11, generator=g).to(torch.bfloat16 if i % 2 else torch.float32)
               for i in range(7)}
    src, dst = tmp_path / "src.safetensors", tmp_path / "dst.safetensors"
    save_file(tensors, str(src))
    swap = {name: torch.full((5, 3), float(i)) for i, name in ((1, "t1"), (4, "t4"))}
    sizes = rewrite_shard(src, dst, {k: NewTensor("F32", [5, 3], lambda v=v: [v]) for k, v in swap.items()},
                          drop=["t6"])
    new = load_file(str(dst))
    assert sorted(new) == ["t0", "t1", "t2", "t3", "t4", "t5"] and sorted(sizes) == sorted(new)
    for name, value in new.items():
        assert torch.equal(value, swap.get(name, tensors[name])), name
