"""Dynamic tokenization (`transplant.dynamic`, `transplant eval --dynamic`): the batch's merges stay
inside words, a prefill without merges is the model's own forward, generation continues in base
tokens, the evaluation's JSON has its promised fields, and every bad input is one line."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from cli_helpers import TEXT, run_tt
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

from hypernet import HyperNet
from hypernet.registry import register
from transplant.dynamic import DynamicTokenizer, merge_batch, word_units

GERMANISH = ("Die Bundesregierung und die Landesregierungen beraten heute. " * 3 + "\n") * 40


@pytest.fixture
def dyn(llama_bl, hypernet_dir):
    model = AutoModelForCausalLM.from_pretrained(str(llama_bl)).eval()
    return DynamicTokenizer(model, Tokenizer.from_file(str(llama_bl / "tokenizer.json")), HyperNet.load(hypernet_dir))


def test_merges_take_the_most_frequent_pair_and_stop_at_the_budget_or_at_pairs_seen_once():
    words = [[[(1,), (2,), (3,)], [(1,), (2,)]], [[(1,), (2,), (3,)], [(4,), (5,)]]]
    m = merge_batch(words, merges=10)
    assert m.pairs == [((1,), (2,)), ((1, 2), (3,))]  # (4, 5) occurs once: never merged
    assert words == [[[(1, 2, 3)], [(1, 2)]], [[(1, 2, 3)], [(4,), (5,)]]]
    assert (m.tokens_before, m.tokens_after) == (10, 5)
    words = [[[(1,), (2,), (3,)]] * 4]
    assert merge_batch(words, reduction=0.3).pairs == [((1,), (2,))]  # 12 -> 8 tokens: a third fewer, enough


def test_no_merge_crosses_a_word_or_touches_a_special_token(dyn):
    text = "<|im_start|>user\n" + GERMANISH[:600] + "<|im_end|>"
    units = dyn.tokenize([text, text], merges=200, static_tail=0)[0]
    assert len(units) < len(dyn.tokenizer.encode(text).ids)  # it did merge
    specials = {dyn.tokenizer.token_to_id(t) for t in ("<|im_start|>", "<|im_end|>")}
    for unit in units:
        if len(unit) > 1:
            assert not specials & set(unit)
            piece = dyn.tokenizer.decode(list(unit))
            assert not any(c.isspace() for c in piece.lstrip()), piece  # whitespace only where a word starts


def test_word_boundaries_follow_whitespace_and_the_pre_tokenizer(dyn):
    text = "ab cd\n\nef, gh"
    enc = dyn.tokenizer.encode(text, add_special_tokens=False)
    words = [dyn.tokenizer.decode([u[0] for u in w]) for w in word_units(enc, text, dyn.specials)]
    assert "".join(words) == text
    for w in words:  # whitespace never inside a word, only as a word of its own or where one starts
        assert w.isspace() or not any(c.isspace() for c in w.lstrip(" ")), words
    assert any(w.endswith(",") for w in words) and not any("," in w and "gh" in w for w in words)


def test_without_merges_the_prefill_is_the_models_own_forward(dyn):
    texts = [GERMANISH[:300], GERMANISH[:120]]
    units = dyn.tokenize(texts, merges=0)
    x, mask = dyn.embed(units)
    ids = [[u[0] for u in seq] for seq in units]
    with torch.no_grad():
        for r, seq in enumerate(ids):
            own = dyn.model(input_ids=torch.tensor([seq])).logits[0, -1]
            mine = dyn.model(inputs_embeds=x[r:r + 1, x.shape[1] - len(seq):]).logits[0, -1]
            torch.testing.assert_close(mine, own)
    assert mask.sum(1).tolist() == [len(s) for s in ids]


def test_merged_rows_are_the_networks_and_a_merged_base_token_reads_its_own_row(dyn):
    units = dyn.tokenize([GERMANISH[:400]] * 2, merges=30, static_tail=0)
    made = sorted({u for u in units[0] if len(u) > 1})
    assert made
    x, _ = dyn.embed([made])
    for k, u in enumerate(made):
        text = "".join(dyn.tokenizer.id_to_token(i) for i in u)
        if text in dyn.vocab:
            torch.testing.assert_close(x[0, k], dyn.E_in[dyn.vocab[text]])
        else:
            torch.testing.assert_close(x[0, k], dyn.network.predict([list(u)], dyn.E_in, dyn.E_out)[0][0])
    assert dyn.predicted > 0
    before = dyn.predicted
    dyn.embed([made])
    assert dyn.predicted == before  # cached


def test_generate_after_a_dynamic_prefill_continues_in_base_tokens(dyn):
    prompts = [GERMANISH[:500], GERMANISH[:300]]
    out = dyn.generate(prompts, merges=50, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert out.shape[0] == 2 and out.shape[1] <= 6
    assert int(out.max()) < dyn.E_in.shape[0]


def test_eval_dynamic_prints_the_table_and_json_fields(llama_bl, hypernet_dir, tmp_path, monkeypatch, capsys):
    register(hypernet_dir)
    text = tmp_path / "t.txt"
    text.write_text(TEXT.read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    plot = tmp_path / "curve.png"
    args = ["eval", "--model", llama_bl, "--text", text, "--dynamic", "--merges", "20,40", "--prefix-tokens", "160",
            "--continuation-tokens", "16", "--samples", "4"]
    proc = run_tt([*args, "--json", "--plot", plot], monkeypatch, capsys)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert [r["budget"] for r in doc["rows"]] == [None, 20, 40]
    for row in doc["rows"]:
        assert set(row) == {"budget", "prefix_tokens", "tokens_saved", "continuation_bits_per_byte",
                            "prefill_seconds"}
    static, *merged = doc["rows"]
    assert static["tokens_saved"] == 0 and all(r["prefix_tokens"] < static["prefix_tokens"] for r in merged)
    assert doc["samples"] == 4 and plot.read_bytes()[:4] == b"\x89PNG"
    table = run_tt(args, monkeypatch, capsys)
    assert table.returncode == 0 and "static" in table.stdout and "prefill s" in table.stdout


@pytest.mark.parametrize("extra, phrase", [
    (["--merges", "0"], "--merges"),
    (["--merges", "ten"], "--merges"),
    (["--compare", "x"], "takes no --compare"),
    (["--prefix-tokens", "100000"], "gives no sample"),
])
def test_eval_dynamic_bad_input_is_one_line(llama_bl, hypernet_dir, tmp_path, monkeypatch, capsys, extra, phrase):
    register(hypernet_dir)
    text = tmp_path / "t.txt"
    text.write_text(TEXT.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    plot = tmp_path / "p.png"
    proc = run_tt(["eval", "--model", llama_bl, "--text", text, "--dynamic", "--plot", plot, *extra], monkeypatch,
                  capsys)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and phrase in proc.stderr, proc.stderr
    assert not plot.exists()


def test_eval_dynamic_without_a_network_or_text_is_one_line(llama_bl, tmp_path, monkeypatch, capsys):
    text = tmp_path / "t.txt"
    text.write_text(TEXT.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    proc = run_tt(["eval", "--model", llama_bl, "--text", text, "--dynamic"], monkeypatch, capsys)
    assert proc.returncode == 2 and "no hypernetwork is known" in proc.stderr and proc.stderr.count("\n") == 1
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    proc = run_tt(["eval", "--model", llama_bl, "--text", empty, "--dynamic"], monkeypatch, capsys)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    proc = run_tt(["eval", "--model", llama_bl, "--text", text, "--merges", "50"], monkeypatch, capsys)
    assert proc.returncode == 2 and "only with --dynamic" in proc.stderr


def test_a_budget_out_of_range_is_refused(dyn):
    from transplant.common.errors import TransplantError

    for bad in ({"merges": -1}, {"reduction": 1.0}, {"merges": 2.5}):
        with pytest.raises(TransplantError):
            dyn.tokenize(["a b"], **bad)


def test_a_network_trained_on_dynamic_batches_is_preferred_for_dynamic_tokens(llama_bl, hypernet_dir, tmp_path):
    """`auto` keeps the first network (static transplants); dynamic tokenization prefers one whose
    training read dynamically merged batches (`training.json`'s `dynamic_share`)."""
    from hypernet.registry import find_network
    from transplant.dynamic import known_network
    from transplant.io.checkpoint import locate_embeddings, read_embedding

    static = register(hypernet_dir, "a-static")
    tuned = shutil.copytree(hypernet_dir, tmp_path / "b-dynamic")
    (tuned / "training.json").write_text(json.dumps({"stage2_done": 3, "dynamic_share": 1.0}))
    dynamic = register(tuned, "b-dynamic")
    layout = locate_embeddings(llama_bl)
    E_in = read_embedding(layout, layout.input_key)
    assert find_network(E_in, E_in)[0].name == static.name
    assert known_network(llama_bl, str(llama_bl)) == dynamic.path


def test_whitespace_ends_a_word_where_the_tokenizer_has_no_pre_tokenizer_words():
    """A SentencePiece-style tokenizer (Gemma) gives every token one word id: the boundary must come
    from the text itself, whitespace on either side of a token."""
    from types import SimpleNamespace

    text = "ab cd\nef"
    enc = SimpleNamespace(ids=[1, 2, 3, 4, 5, 6], offsets=[(0, 2), (2, 3), (3, 5), (5, 6), (6, 7), (7, 8)],
                          word_ids=[0] * 6)
    assert word_units(enc, text, set()) == [[(1,)], [(2,)], [(3,)], [(4,)], [(5,), (6,)]]
