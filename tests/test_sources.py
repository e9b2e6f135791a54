"""Model sources: a hub id already in the local Hugging Face cache resolves offline."""

from __future__ import annotations

import shutil

import pytest

from transplant.common.errors import TransplantError
from transplant.io.sources import base_model_id, resolve_model


def _fake_hub_cache(root, repo_id: str, model_dir):
    """Lay out `model_dir` the way huggingface_hub caches a snapshot."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = repo / "snapshots" / commit
    shutil.copytree(model_dir, snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return snap


def test_cached_hub_id_resolves_offline(build_model, tok_dirs, tmp_path, monkeypatch):
    src = build_model(tmp_path / "src", tok="bl")
    cache = tmp_path / "hub"
    snap = _fake_hub_cache(cache, "tiny-org/tiny-llama", src)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    assert resolve_model("tiny-org/tiny-llama").resolve() == snap.resolve()
    assert base_model_id("tiny-org/tiny-llama", snap) == "tiny-org/tiny-llama"

    from transplant import transplant

    result = transplant("tiny-org/tiny-llama", str(tok_dirs["sp"]), str(tmp_path / "out"))
    card = (result.output_dir / "README.md").read_text()
    assert "base_model: tiny-org/tiny-llama" in card


def test_uncached_hub_id_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(TransplantError, match="not in the local Hugging Face cache"):
        resolve_model("nobody/nothing-here")


def test_every_model_form_is_a_tokenizer_argument(build_model, tok_dirs, tmp_path, monkeypatch):
    """Wherever a tokenizer is asked for (run's --new-tok/--old-tok, `transplant_model`), a model
    argument stands for its tokenizer: here a cached hub id, as a packaged name or a .gguf would."""
    from transformers import AutoModelForCausalLM

    from transplant import transplant
    from transplant.inmemory import transplant_model
    from transplant.io.sources import open_tokenizer

    target = build_model(tmp_path / "target-model", tok="sp")
    cache = tmp_path / "hub"
    _fake_hub_cache(cache, "tiny-org/target", target)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    expect = open_tokenizer(tok_dirs["sp"]).vocabulary()
    assert open_tokenizer("tiny-org/target").vocabulary().tokens == expect.tokens
    src = build_model(tmp_path / "src", tok="bl")
    written = transplant(src, "tiny-org/target", tmp_path / "out", method="fvt").plan
    assert written.new_size == len(expect)
    model = AutoModelForCausalLM.from_pretrained(src)
    result = transplant_model(model, src, "tiny-org/target", method="fvt", inplace=False)
    assert result.embeddings["input"].shape[0] == len(expect)
    with pytest.raises(TransplantError, match="tokenizer not found: nobody/none .*a cached hub id"):
        open_tokenizer("nobody/none")
