"""What lands in the output folder besides weights: model card, configs, tokenizer; the in-memory API."""

from __future__ import annotations

import json

import pytest
import yaml

import builders as B
from conftest import ROLES
from transplant import transplant
from transplant.core.plan import PLAN_JSON, PLAN_WEIGHTS


HUB_ID = "tiny-org/tiny-llama"


@pytest.fixture(scope="module")
def transplanted(build_model, tok_dirs, tmp_path_factory):
    """A model whose config names its hub id (as checkpoints downloaded from the hub do)."""
    root = tmp_path_factory.mktemp("card")
    src = build_model(root / "src", "llama", tied=False)
    cfg = json.loads((src / "config.json").read_text())
    cfg["_name_or_path"] = HUB_ID
    (src / "config.json").write_text(json.dumps(cfg))
    out = root / "out"
    result = transplant(src, tok_dirs["sp"], out, method="fvt")
    return out, result


def _card(folder):
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    front, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(front), body


def test_model_card(transplanted):
    out, result = transplanted
    meta, body = _card(out)
    assert meta["base_model"] == HUB_ID
    assert meta["library_name"] == "transformers"
    assert "tokenizer-transplant" in meta["tags"]
    assert "init-fvt" in meta["tags"]
    assert meta.get("pipeline_tag") == "text-generation"
    assert PLAN_WEIGHTS in body and PLAN_JSON in body
    assert "transplant apply --plan" in body
    for name, count in result.plan.counts().items():
        assert f"| {name} | {count} |" in body


def test_model_card_for_a_local_model(llama_bl, tok_dirs, tmp_path):
    """A folder with no known hub id: no (invalid) base_model metadata, the rest as usual."""
    transplant(llama_bl, tok_dirs["wp"], tmp_path / "out")
    meta, body = _card(tmp_path / "out")
    assert "base_model" not in meta
    assert meta["library_name"] == "transformers" and "tokenizer-transplant" in meta["tags"]
    # The card names the local folder, never its absolute path.
    assert f"`{llama_bl.name}`" in body and str(llama_bl) not in body
    assert PLAN_WEIGHTS in body and PLAN_JSON in body


def test_output_configs_and_tokenizer(transplanted, sp_tok):
    out, result = transplanted
    cfg = json.loads((out / "config.json").read_text())
    vocab = sp_tok.get_vocab()
    assert cfg["vocab_size"] == result.plan.new_size == len(vocab)
    assert cfg["eos_token_id"] == vocab["</s>"]
    assert cfg["bos_token_id"] == vocab["<s>"]
    gen = json.loads((out / "generation_config.json").read_text())
    # <s> carries the row of the source's first token, its document separator <|endoftext|>, which is
    # also its eos: it stops generation too (the rule for every new token holding an old eos row)
    assert gen["eos_token_id"] == [vocab["</s>"], vocab["<s>"]]

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.eos_token == "</s>" and tok.bos_token == "<s>"
    assert tok("In the beginning", add_special_tokens=False).input_ids == \
        sp_tok.encode("In the beginning", add_special_tokens=False).ids
    assert not list(out.parent.glob(".out.partial-*"))


def test_pad_to_multiple_of(llama_bl, tok_dirs):
    result = transplant(llama_bl, tok_dirs["wp"], None, pad_to_multiple_of=64)
    assert result.plan.new_size % 64 == 0 and result.plan.new_size >= 500
    assert result.embeddings["input"].shape[0] == result.plan.new_size
    assert all(p == "pad" for p in result.plan.provenance[500:])


def test_chat_template_carried_only_when_its_tokens_exist(build_model, toks, tok_dirs, tmp_path):
    template = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"
    src = build_model(tmp_path / "src", "llama")
    B.save_tokenizer(toks["bl"], src, chat_template=template, **ROLES["bl"])
    shuffled = B.save_tokenizer(B.shuffled_copy(toks["bl"]), tmp_path / "shuf", **ROLES["bl"])
    transplant(src, shuffled, tmp_path / "a")
    transplant(src, tok_dirs["sp"], tmp_path / "b")

    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(tmp_path / "a")).chat_template == template
    assert not AutoTokenizer.from_pretrained(str(tmp_path / "b")).chat_template
    assert "NOT carried over" in (tmp_path / "b" / "README.md").read_text()


def test_failure_while_writing_leaves_nothing(llama_bl, tok_dirs, tmp_path, monkeypatch):
    import transplant.output as api

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(api, "write_tokenizer", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        transplant(llama_bl, tok_dirs["sp"], tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_every_output_file_follows_the_umask(transplanted):
    """No file of an output is private to its writer (safetensors writes 0600): a model shared on
    a cluster must load for everyone the umask lets read it."""
    import os

    from transplant.common.permissions import umask

    folder, _ = transplanted
    modes = {p.name: oct(os.stat(p).st_mode & 0o777) for p in folder.iterdir() if p.is_file()}
    assert "transplant_plan.safetensors" in modes
    assert set(modes.values()) == {oct(0o666 & ~umask())}, modes
