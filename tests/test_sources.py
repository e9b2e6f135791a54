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
