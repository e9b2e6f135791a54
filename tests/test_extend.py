"""`transplant extend`: new tokens on top of a model's tokenizer; old ids, rows and logits unchanged."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

from transplant.common.errors import TransplantError
from transplant.extend import extend

import builders as B

TEXT_ES = B.DATA / "bible_es.txt"


def _weights(folder):
    out = {}
    for f in folder.glob("*.safetensors"):
        if f.name.startswith("transplant_plan"):
            continue
        out.update(load_file(str(f)))
    return out


@pytest.mark.parametrize("tied", [True, False])
def test_old_rows_ids_and_logits_unchanged(build_model, tmp_path, tied):
    model = build_model(tmp_path / "m", tied=tied)
    res = extend(model, [TEXT_ES], 200, tmp_path / "ext", pad_to_multiple_of=64)
    assert 150 <= len(res.new_tokens) <= 200
    old_tok = Tokenizer.from_file(str(model / "tokenizer.json"))
    new_tok = Tokenizer.from_file(str(tmp_path / "ext" / "tokenizer.json"))
    old_vocab, new_vocab = old_tok.get_vocab(), new_tok.get_vocab()
    assert all(new_vocab[t] == i for t, i in old_vocab.items())  # every old id kept
    n_old = len(old_vocab)
    assert sorted(new_vocab[t] for t in res.new_tokens) == list(range(n_old, n_old + len(res.new_tokens)))
    cfg = json.loads((tmp_path / "ext" / "config.json").read_text())
    rows = n_old + len(res.new_tokens)
    assert cfg["vocab_size"] == -(-rows // 64) * 64
    before, after = _weights(model), _weights(tmp_path / "ext")
    for key in [k for k in before if k.endswith("embed_tokens.weight") or k == "lm_head.weight"]:
        assert torch.equal(after[key][:n_old], before[key][:n_old]), key  # bit-identical old rows
        assert after[key].shape[0] == cfg["vocab_size"]
    # A text no new merge touches encodes the same and gets bit-identical logits on the old ids.
    plain = "The LORD is my shepherd"
    assert new_tok.encode(plain).ids == old_tok.encode(plain).ids
    # The rule behind it, line by line: wherever no new token is used, the encoding is the old one.
    unchanged = 0
    for line in B.lines("en")[:300]:
        ids = new_tok.encode(line).ids
        if max(ids, default=0) < n_old:
            assert ids == old_tok.encode(line).ids, line
            unchanged += 1
    assert unchanged > 50
    a = B.logits_for(model, plain)[0]
    b = B.logits_for(tmp_path / "ext", plain)[0]
    assert torch.equal(b[..., :n_old], a[..., :n_old])
    # Spanish text uses the new tokens: fewer tokens, same bytes back.
    es = TEXT_ES.read_text()[:3000]
    assert len(new_tok.encode(es).ids) < 0.9 * len(old_tok.encode(es).ids)
    assert new_tok.decode(new_tok.encode(es).ids) == es


def test_extend_errors_are_one_line(build_model, tmp_path):
    model = build_model(tmp_path / "m")
    with pytest.raises(TransplantError, match="training text not found"):
        extend(model, [tmp_path / "nope.txt"], 10, tmp_path / "o")
    sp = build_model(tmp_path / "wp", tok="wp")
    with pytest.raises(TransplantError, match="needs a BPE tokenizer"):
        extend(sp, [TEXT_ES], 10, tmp_path / "o2")


def test_extend_cli(build_model, tmp_path):
    from click.testing import CliRunner

    from transplant.cli import cli

    model = build_model(tmp_path / "m")
    res = CliRunner().invoke(cli, ["extend", "--model", str(model), "--text", str(TEXT_ES), "--add", "50",
                                   "--out", str(tmp_path / "ext")])
    assert res.exit_code == 0, res.output
    assert "new tokens" in res.output and (tmp_path / "ext" / "config.json").is_file()
