"""`transplant eval` shows where the loss is (issue 18): per kind of token (the plan's provenance),
the share of tokens, loss and probability mass, and against `--compare` the tokens that cost most
on the same bytes. All on tiny models: a tied Llama on the byte-level tokenizer moved onto the
SentencePiece-style one with FVT (so its kinds are special, exact and fvt)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import builders as B
from transplant import transplant
from transplant.common.errors import TransplantError
from transplant.core.plan import Plan
from transplant.measure import breakdown as BD
from transplant.measure.breakdown import breakdown_bpb, compare_on_bytes, token_ends
from transplant.measure.evaluate import evaluate_bpb, split_documents

TEXT = B.sample_text("en")[:6000]  # two documents, ~2,000 tokens: several 128-token chunks
SCORE = {"ctx": 128, "batch_size": 2}  # several batches of several chunks


@pytest.fixture(scope="module")
def tied_src(build_model, tmp_path_factory):
    return build_model(tmp_path_factory.mktemp("breakdown") / "src", "llama", tied=True)


@pytest.fixture(scope="module")
def moved(tied_src, tok_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("breakdown") / "moved"
    transplant(tied_src, tok_dirs["sp"], out, method="fvt", calibrate=False)
    return out


@pytest.fixture(scope="module")
def moved_bd(moved):
    return breakdown_bpb(moved, [TEXT], **SCORE)


def invoke(*args):
    return CliRunner().invoke(__import__("transplant.cli", fromlist=["cli"]).cli, [str(a) for a in args],
                              catch_exceptions=False)


# -- the per-kind table -----------------------------------------------------------------------

def test_kind_losses_add_up_to_todays_bits_per_byte(moved, moved_bd):
    today = evaluate_bpb(moved, [TEXT], **SCORE)
    bd = moved_bd
    assert bd.result.bpb == today.bpb and bd.result.tokens == today.tokens  # exactly today's number
    names = [row.kind for row in bd.kinds]
    assert names[0] == "exact" and {"byte", "special", "fvt"} <= set(names)
    assert [row.made for row in bd.kinds] == sorted(row.made for row in bd.kinds)  # copied kinds first
    assert {row.kind: row.rows for row in bd.kinds} == Plan.load(moved).counts()
    assert sum(row.tokens for row in bd.kinds) == today.tokens
    assert sum(row.token_share for row in bd.kinds) == pytest.approx(1.0)
    assert sum(row.loss_share for row in bd.kinds) == pytest.approx(1.0)
    assert sum(row.nats for row in bd.kinds) == pytest.approx(today.nll_bits * math.log(2), rel=1e-6)
    assert sum(row.bpb for row in bd.kinds) == pytest.approx(today.bpb, rel=1e-6)
    for row in bd.kinds:
        if row.tokens:
            assert row.nats_per_token == pytest.approx(row.nats / row.tokens)
            assert row.bits_per_byte == pytest.approx(row.nats / math.log(2) / row.bytes)
    # Every byte of the text belongs to one scored token (the SentencePiece-style tokenizer is lossless).
    assert sum(row.bytes for row in bd.kinds) == today.bytes


def test_masses_add_up_to_one(moved_bd, llama_bl):
    masses = [row.mass for row in moved_bd.kinds]
    assert sum(masses) == pytest.approx(1.0, abs=1e-5) and all(0.0 <= m <= 1.0 for m in masses)
    for row in moved_bd.kinds:
        assert row.gap == pytest.approx(row.mass - row.token_share)
    original = breakdown_bpb(llama_bl, [TEXT], **SCORE)  # no plan: one kind
    assert [(r.kind, r.token_share, r.loss_share) for r in original.kinds] == [("all", 1.0, 1.0)]
    assert original.kinds[0].mass == pytest.approx(1.0, abs=1e-5)


def test_masses_and_losses_match_a_full_softmax(moved):
    """The batch-by-batch reduction equals the softmax over the whole vocabulary, position by position."""
    from transformers import AutoModelForCausalLM

    from transplant.core.vocab import load_tokenizer

    text = "In the beginning was the Word, and the Word was with God.\n"
    bd = breakdown_bpb(moved, [text])
    src = load_tokenizer(moved)
    ids = src.tokenizer.encode(split_documents(text)[0], add_special_tokens=False).ids
    start = src.vocabulary().roles["bos"]
    model = AutoModelForCausalLM.from_pretrained(str(moved)).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[start, *ids]])).logits[0, :-1].double()
    probs = torch.softmax(logits, -1)
    kind_of = torch.from_numpy(bd.kind_of)
    for k, row in enumerate(bd.kinds):
        assert row.mass == pytest.approx(float(probs[:, kind_of == k].sum(1).mean()), abs=1e-6), row.kind
    nll = -torch.log_softmax(logits, -1)[torch.arange(len(ids)), torch.tensor(ids)]
    np.testing.assert_allclose(bd.nll, nll.numpy(), rtol=1e-5, atol=1e-6)


def test_slicing_the_softmax_changes_nothing(moved, moved_bd, monkeypatch):
    # One position at a time (the vocabulary is wider than the slice): the same numbers.
    monkeypatch.setattr(BD, "SLICE_ELEMENTS", 100)
    sliced = breakdown_bpb(moved, [TEXT], **SCORE)
    for a, b in zip(sliced.kinds, moved_bd.kinds):
        assert (a.kind, a.tokens) == (b.kind, b.tokens)
        assert a.mass == pytest.approx(b.mass, rel=1e-6) and a.nats == pytest.approx(b.nats, rel=1e-9)


def test_an_over_predicted_made_row_shows_a_mass_above_its_share(moved, moved_bd, tmp_path):
    """Scale up one made row of the tied model: its logit dominates wherever it points the way
    of the hidden state, and the made kind's mass jumps far above its share of the text."""
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "loud"
    shutil.copytree(moved, folder)
    plan = Plan.load(moved)
    fvt = [i for i, p in enumerate(plan.provenance) if p == "fvt"]
    model = AutoModelForCausalLM.from_pretrained(str(moved))
    with torch.no_grad():
        model.get_input_embeddings().weight[fvt[0]] *= 40.0  # tied: the head row too
    model.save_pretrained(str(folder))
    loud = breakdown_bpb(folder, [TEXT], **SCORE)
    before = {r.kind: r for r in moved_bd.kinds}["fvt"]
    after = {r.kind: r for r in loud.kinds}["fvt"]
    assert after.token_share == before.token_share  # same text, same tokens
    assert after.mass > before.mass + 0.2, (before, after)
    assert after.mass > after.token_share and after.gap > 0.2
    assert sum(r.mass for r in loud.kinds) == pytest.approx(1.0, abs=1e-5)


# -- against the original model, byte span by byte span ----------------------------------------

def test_a_model_compared_with_itself_has_no_excess(moved, moved_bd):
    again = breakdown_bpb(moved, [TEXT], ctx=64)  # other chunks: other losses, same bytes
    itself = compare_on_bytes(moved_bd, breakdown_bpb(moved, [TEXT], **SCORE), top=5)
    assert abs(itself.nats) < 1e-6 and all(abs(v) < 1e-6 for v in itself.by_kind.values())
    assert len(itself.tokens) == 5 and all(abs(t.nats) < 1e-6 for t in itself.tokens)
    shorter = compare_on_bytes(again, moved_bd)
    assert shorter.nats == pytest.approx(float(again.nll.sum() - moved_bd.nll.sum()), abs=1e-6)


def test_excess_adds_up_to_the_difference_of_the_two_models(moved_bd, tied_src):
    original = breakdown_bpb(tied_src, [TEXT], **SCORE)  # another tokenizer: aligned by bytes
    versus = compare_on_bytes(moved_bd, original, top=3)
    difference = float(moved_bd.nll.sum() - original.nll.sum())
    assert versus.nats == pytest.approx(difference, rel=1e-9)
    assert sum(versus.by_kind.values()) == pytest.approx(difference, rel=1e-9)
    assert [t.nats for t in versus.tokens] == sorted((t.nats for t in versus.tokens), reverse=True)
    for t in versus.tokens:
        assert t.per_occurrence == pytest.approx(t.nats / t.count)
        assert t.kind == moved_bd.kinds[moved_bd.kind_of[t.id]].kind
        assert t.token == moved_bd.vocab.tokens[t.id].text.decode("utf-8", "backslashreplace")
    other_text = breakdown_bpb(tied_src, [TEXT[:3000]], **SCORE)
    with pytest.raises(TransplantError, match="different texts"):
        compare_on_bytes(moved_bd, other_text)


def test_token_boundaries_meet_at_every_document_boundary(tok_dirs):
    """A tokenizer that drops bytes (WordPiece: newlines) is stretched over each document."""
    from transplant.core.vocab import load_tokenizer

    docs = split_documents(TEXT)
    for name in ("bl", "wp"):
        src = load_tokenizer(tok_dirs[name])
        doc_ids = [e.ids for e in src.tokenizer.encode_batch(docs, add_special_tokens=False)]
        ends = token_ends(doc_ids, [len(d.encode()) for d in docs], src.vocabulary())
        last = np.cumsum([len(ids) for ids in doc_ids]) - 1
        assert ends[last].tolist() == pytest.approx(np.cumsum([len(d.encode()) for d in docs]).tolist())
        assert np.all(np.diff(ends) >= 0)


# -- the command line ---------------------------------------------------------------------------

@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "dev.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def test_cli_json_carries_the_breakdown_and_the_top_tokens(moved, tied_src, text_file):
    doc = json.loads(invoke("-q", "eval", "--model", moved, "--compare", tied_src, "--text", text_file,
                            "--ctx", 128, "--top", 4, "--json").stdout)
    assert set(doc) == {"model", "compare", "ratio", "excess"}
    assert doc["model"]["name"] == "moved" and doc["compare"]["name"] == "src"
    kinds = doc["model"]["breakdown"]
    assert kinds[0]["kind"] == "exact" and "fvt" in [k["kind"] for k in kinds]
    assert set(kinds[0]) == {"kind", "made", "rows", "tokens", "token_share", "nats", "loss_share", "nats_per_token",
                             "bytes", "bits_per_byte", "bpb", "mass", "gap"}
    assert {k["kind"]: k["made"] for k in kinds}["fvt"] and not kinds[0]["made"]
    assert sum(k["bpb"] for k in kinds) == pytest.approx(doc["model"]["bpb"], rel=1e-6)
    assert [k["kind"] for k in doc["compare"]["breakdown"]] == ["all"]
    excess = doc["excess"]
    assert set(excess) == {"nats", "by_kind", "top_tokens"} and len(excess["top_tokens"]) == 4
    assert set(excess["top_tokens"][0]) == {"token", "id", "kind", "count", "nats", "per_occurrence"}
    difference = (doc["model"]["nll_bits"] - doc["compare"]["nll_bits"]) * math.log(2)
    assert excess["nats"] == pytest.approx(difference, rel=1e-5)
    assert set(excess["by_kind"]) == {k["kind"] for k in kinds}


def test_cli_text_shows_the_kinds_after_the_bits_per_byte(moved, tied_src, llama_bl, text_file):
    out = invoke("-q", "eval", "--model", moved, "--compare", tied_src, "--text", text_file, "--ctx", 128).stdout
    lines = out.splitlines()
    assert lines[0].split() == ["model", "bits/byte", "bytes/token", "ratio"]
    assert lines[1].startswith("src ") and lines[2].startswith("moved ")
    assert "where moved's loss is" in out and "excess: bits/byte above src on the same bytes" in out
    rows = {line.split()[0] for line in lines if line.split()[:1] in (["exact"], ["byte"], ["fvt"], ["special"])}
    assert rows == {"exact", "byte", "fvt", "special"}
    assert "tokens that cost most against src on the same bytes" in out
    # The original alone: its one kind is not worth a table.
    plain = invoke("-q", "eval", "--model", llama_bl, "--text", text_file, "--ctx", 128).stdout
    assert len(plain.splitlines()) == 2 and "where" not in plain


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib not installed")
def test_cli_plot_writes_a_png(moved, text_file, tmp_path):
    target = tmp_path / "where.png"
    result = invoke("-q", "eval", "--model", moved, "--text", text_file, "--ctx", 128, "--plot", target)
    assert result.exit_code == 0
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_plot_without_matplotlib_names_the_extra(moved, text_file, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    with pytest.raises(TransplantError, match=r"^--plot needs .*matplotlib.*pip install 'tokentransplant\[plot\]'"):
        invoke("-q", "eval", "--model", moved, "--text", text_file, "--plot", tmp_path / "where.png")
    assert not (tmp_path / "where.png").exists()


def test_cli_plot_into_a_missing_folder_fails_before_scoring(moved, text_file, tmp_path, monkeypatch):
    monkeypatch.setattr(BD, "breakdown_bpb", None)  # scoring would fail differently
    with pytest.raises(TransplantError, match=r"^no folder .*missing for --plot .*\(create it first\)$"):
        invoke("-q", "eval", "--model", moved, "--text", text_file, "--plot", tmp_path / "missing" / "where.png")


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib not installed")
def test_cli_plot_never_writes_over_what_is_not_its_own_png(moved, text_file, tmp_path, monkeypatch):
    """--plot aimed at the model's weights, at the text being read, at any existing file that is
    not a PNG, or into a folder where nothing can be written: refused in one line before any
    scoring, every file byte-identical."""

    monkeypatch.setattr(BD, "breakdown_bpb", None)  # scoring would fail differently
    model = tmp_path / "model"
    shutil.copytree(moved, model)
    text = tmp_path / "read.txt"
    shutil.copyfile(text_file, text)
    other = tmp_path / "notes.txt"
    other.write_text("mine\n")
    fake = tmp_path / "fake.png"
    fake.write_text("not an image\n")
    weights = next(model.glob("*.safetensors"))
    before = {p: p.read_bytes() for p in (weights, text, other, fake)}
    cases = [(weights, "PNG file"), (text, "PNG file"), (other, "PNG file"), (fake, "not a PNG"),
             (model / "where.png", "inside the command's input")]
    for target, why in cases:
        with pytest.raises(TransplantError, match=why):
            invoke("-q", "eval", "--model", model, "--text", text, "--plot", target)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not os.access(locked, os.W_OK):  # (root writes anywhere)
            with pytest.raises(TransplantError, match="cannot write the plot into"):
                invoke("-q", "eval", "--model", model, "--text", text, "--plot", locked / "where.png")
    finally:
        locked.chmod(0o700)
    with pytest.raises(TransplantError, match="cannot write the plot into /proc"):
        invoke("-q", "eval", "--model", model, "--text", text, "--plot", "/proc/where.png")
    assert all(p.read_bytes() == b for p, b in before.items())
    assert not list(tmp_path.rglob("*.probe")) and not list(tmp_path.rglob("*.partial"))


def test_eval_help_does_not_import_matplotlib():
    probe = ("import sys\nfrom click.testing import CliRunner\nfrom transplant.cli import cli\n"
             "assert CliRunner().invoke(cli, ['eval', '--help']).exit_code == 0\n"
             "print(sorted(m for m in ('matplotlib', 'torch') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
