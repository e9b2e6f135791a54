"""Cross-lingual methods: Procrustes, sparsemax, dictionaries, fastText vectors, wechsel and focus."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from vector_fixtures import TEXT, TINY, crosslingual_options

from transplant import TransplantError, transplant
from transplant.methods.crosslingual import fit_alignment, procrustes, read_dictionary, sparsemax
from transplant.methods.vectors import token_word, train_vectors
from transplant.core.vocab import load_tokenizer

fasttext = pytest.importorskip("fasttext")


# -- the math ------------------------------------------------------------------------------------
def test_procrustes_recovers_a_known_rotation():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))
    x = torch.randn(200, 8, generator=g, dtype=torch.float64)
    w = procrustes(x, x @ q)
    assert torch.allclose(w, q, atol=1e-10)
    assert torch.allclose(w @ w.T, torch.eye(8, dtype=torch.float64), atol=1e-10)
    # With noise it is still the best orthogonal map, close to the planted one.
    noisy = x @ q + 0.01 * torch.randn(200, 8, generator=g, dtype=torch.float64)
    assert (procrustes(x, noisy) - q).abs().max() < 0.01


def test_sparsemax_is_a_sparse_distribution_in_softmax_order():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(64, 50, generator=g) * 2
    p = sparsemax(z)
    assert torch.allclose(p.sum(-1), torch.ones(64), atol=1e-5)
    assert (p >= 0).all()
    assert ((p == 0).sum(-1) > 25).all()  # most entries exactly zero
    # Same order as softmax: a larger score never gets less weight.
    order = z.argsort(-1, descending=True)
    ranked = p.gather(-1, order)
    assert (ranked[:, :-1] >= ranked[:, 1:]).all()
    assert torch.equal(p.argmax(-1), torch.softmax(z, -1).argmax(-1))
    # The Euclidean projection onto the simplex: on the support, z - p is one constant (tau).
    for row_z, row_p in zip(z, p):
        gap = (row_z - row_p)[row_p > 0]
        assert torch.allclose(gap, gap[0].expand_as(gap), atol=1e-5)
        assert (row_z[row_p == 0] <= gap[0] + 1e-5).all()


def test_sparsemax_known_values_and_dim():
    assert sparsemax(torch.tensor([1.0, 0.5, -1.0])).tolist() == [0.75, 0.25, 0.0]
    assert sparsemax(torch.tensor([5.0, 0.0, 0.0])).tolist() == [1.0, 0.0, 0.0]
    assert torch.allclose(sparsemax(torch.zeros(4)), torch.full((4,), 0.25))
    z = torch.randn(5, 3, 7)
    assert torch.allclose(sparsemax(z, dim=1), sparsemax(z.transpose(1, 2)).transpose(1, 2))


def test_focus_rows_one_hot_on_an_equal_anchor_and_exact_past_the_candidates():
    from transplant.methods.initializers.focus import sparse_anchor_rows

    anchors = torch.eye(8)
    old_ids = np.arange(100, 108)
    (block,) = sparse_anchor_rows(np.array([5]), anchors[3:4], old_ids, anchors, 1.0, "focus")
    assert block.indices.tolist() == [[103]] and block.weights.tolist() == [[1.0]]
    # 300 equally similar anchors: the support is all of them, more than the 256 candidates.
    many = torch.nn.functional.normalize(torch.ones(300, 4), dim=1)
    blocks = sparse_anchor_rows(np.array([1, 2]), many[:2], np.arange(300), many, 1.0, "focus")
    assert sum(b.n for b in blocks) == 2
    for b in blocks:
        assert b.weights.shape[1] == 300 and np.allclose(b.weights, 1 / 300)
        assert sorted(b.indices[0].tolist()) == list(range(300))


def test_wechsel_rows_favour_an_equal_old_vector():
    from transplant.methods.initializers.wechsel import neighbour_rows

    old = torch.eye(6)
    (block,) = neighbour_rows(np.array([9]), old[2:3], np.arange(10, 16), old, k=3, temperature=0.1, label="wechsel")
    assert block.indices.shape == (1, 3) and block.indices[0, 0] == 12
    assert block.weights[0, 0] > 0.99 and abs(block.weights.sum() - 1) < 1e-6


# -- dictionaries --------------------------------------------------------------------------------
def test_read_dictionary_skips_comments_and_blank_lines(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text("# en-de\n\nhouse\tHaus\na bad egg\tein übler kerl\ncat  Katze\n", encoding="utf-8")
    assert read_dictionary(path) == [("house", "Haus"), ("a bad egg", "ein übler kerl"), ("cat", "Katze")]


@pytest.mark.parametrize("content, message", [
    ("house\tHaus\nthree\tfields\there\n", r"d\.tsv:2: expected 'source<TAB>target'"),
    ("house\n", r"d\.tsv:1: expected"),
    ("house\t\n", r"d\.tsv:1: expected"),
    ("# only a comment\n\n", "holds no word pairs"),
])
def test_read_dictionary_errors_are_one_line(tmp_path, content, message):
    path = tmp_path / "d.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(TransplantError, match=message) as info:
        read_dictionary(path)
    assert "\n" not in str(info.value)


def test_read_dictionary_missing_or_not_utf8(tmp_path):
    with pytest.raises(TransplantError, match="dictionary file not found"):
        read_dictionary(tmp_path / "nope.tsv")
    (tmp_path / "latin1.tsv").write_bytes("Haus\tmaison\ncafé\tcafé\n".encode("latin-1"))
    with pytest.raises(TransplantError, match="not UTF-8"):
        read_dictionary(tmp_path / "latin1.tsv")


# -- fastText vectors ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def options(tok_dirs, tmp_path_factory):
    return crosslingual_options(tmp_path_factory.mktemp("vectors"), tok_dirs)


def test_alignment_of_a_space_onto_itself_is_the_identity(options, tmp_path):
    from transplant.methods.crosslingual import dictionary_vectors

    opts = options["wechsel"]["sp"]
    model = fasttext.load_model(opts["wechsel.source_vectors"])
    pairs = read_dictionary(opts["wechsel.dictionary"])
    assert ("god", "god") in pairs and "god" not in model.words and "God" in model.words
    xs, _ = dictionary_vectors(model, model, [("god", "god")])
    assert len(xs) == 1  # found through the title-case fallback
    w = fit_alignment(model, model, pairs)
    assert torch.allclose(w, torch.eye(w.shape[0]), atol=1e-4)
    with pytest.raises(TransplantError, match="no word pair"):
        fit_alignment(model, model, [("zzzqx", "qqqzz")])
    # Words spelled alike in both vocabularies are pairs of their own.
    w = fit_alignment(model, model, [("zzzqx", "qqqzz")], identical=True)
    assert torch.allclose(w, torch.eye(w.shape[0]), atol=1e-4)


def test_token_vectors_hold_one_word_per_token(options, tok_dirs):
    vocab = load_tokenizer(tok_dirs["sp"]).vocabulary()
    model = fasttext.load_model(options["focus"]["sp"]["focus.vectors"])
    words = set(model.words)
    known = [t for t in vocab.tokens if t.kind == "normal" and token_word(t.text) in words]
    assert len(known) > 100
    assert any(t.text.startswith(b" ") for t in known)  # word-initial tokens keep their space (as Ġ)
    assert all(not any(c.isspace() for c in w) for w in words)


def test_train_vectors_caches_by_content(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENTRANSPLANT_CACHE", str(tmp_path / "cache"))
    text = tmp_path / "t.txt"
    text.write_text(TEXT.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    first = train_vectors([text], tmp_path / "a.bin", **TINY)
    import transplant.methods.vectors as vectors

    def no_training(*args, **kwargs):
        raise AssertionError("trained again on the same text: the cache was not used")

    with monkeypatch.context() as patched:  # the cached file, not a second training (was a wall-time bound)
        patched.setattr(vectors, "_run_fasttext", no_training)
        second = train_vectors([text], tmp_path / "b.bin", **TINY)
    assert first.read_bytes() == second.read_bytes()
    assert len(list((tmp_path / "cache" / "vectors").glob("*.bin"))) == 1
    text.write_text(text.read_text(encoding="utf-8") + "\nmore words here\n", encoding="utf-8")
    train_vectors([text], None, **TINY)  # new content: a new cache entry
    assert len(list((tmp_path / "cache" / "vectors").glob("*.bin"))) == 2


def test_cli_vectors_train_and_cache_hit(tmp_path):
    env = dict(os.environ, TOKENTRANSPLANT_CACHE=str(tmp_path / "cache"), HF_HUB_DISABLE_PROGRESS_BARS="1")
    text = tmp_path / "t.txt"
    text.write_text(TEXT.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    cmd = [sys.executable, "-m", "transplant.cli", "vectors", "train", "--text", str(text), "--out",
           str(tmp_path / "v.bin"), "--dim", "8", "--epochs", "1", "--min-count", "1", "--threads", "1"]
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert first.returncode == 0, first.stderr
    assert "vectors:" in first.stdout and (tmp_path / "v.bin").is_file()
    assert fasttext.load_model(str(tmp_path / "v.bin")).get_dimension() == 8
    entry = next((tmp_path / "cache" / "vectors").glob("*.bin"))
    stamp = entry.stat().st_mtime_ns
    # The same --out again: refused without --overwrite (nothing written), replaced with it.
    refused = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert refused.returncode == 2 and "--overwrite" in refused.stderr, refused.stderr
    second = subprocess.run(cmd + ["--overwrite"], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert second.returncode == 0, second.stderr
    assert entry.stat().st_mtime_ns == stamp  # not trained again
    missing = subprocess.run(cmd[:6] + [str(tmp_path / "nope.txt")] + cmd[7:], capture_output=True, text=True,
                             env=env, timeout=300, check=False)
    assert missing.returncode != 0
    assert missing.stderr.strip().splitlines() == [f"error: text file not found: {tmp_path / 'nope.txt'}"]


# -- the methods, end to end ---------------------------------------------------------------------
def _rows(plan, label):
    return [(i, *plan.row(i)[1:]) for i, src in enumerate(plan.provenance) if src == label]


def test_wechsel_end_to_end(llama_bl, tok_dirs, options):
    opts = dict(options["wechsel"]["sp"], **{"wechsel.k": 5})
    result = transplant(llama_bl, tok_dirs["sp"], None, method="wechsel", options=opts)
    plan = result.plan
    rows = _rows(plan, "wechsel")
    assert len(rows) > 20, plan.counts()
    for _, idx, w in rows:
        assert 1 <= len(idx) <= 5 and abs(sum(w) - 1) < 1e-5 and min(w) >= 0
    printed = plan.meta["resources"]
    assert any(k.startswith("vectors:") for k in printed) and any(k.startswith("dictionary:") for k in printed)
    assert plan.meta["options"]["wechsel"]["k"] == 5
    # English onto English: a new token spelling the same word as an old one (up to the leading
    # space) puts its largest weight on an old token spelling that word.
    old = load_tokenizer(llama_bl).vocabulary()
    new = load_tokenizer(tok_dirs["sp"]).vocabulary()
    by_word = {}
    for j, t in enumerate(old.tokens):
        by_word.setdefault(t.text.strip(), set()).add(j)
    checked = 0
    for i, idx, w in rows:
        word = new.tokens[i].text.strip()
        if len(word) > 2 and word in by_word:
            assert idx[int(np.argmax(w))] in by_word[word], (new.tokens[i], idx, w)
            checked += 1
    assert checked > 0


def test_wechsel_needs_its_files(llama_bl, tok_dirs, options):
    with pytest.raises(TransplantError, match=r"wechsel\.source_vectors=PATH") as info:
        transplant(llama_bl, tok_dirs["sp"], None, method="wechsel")
    assert "transplant vectors train" in str(info.value)
    opts = dict(options["wechsel"]["sp"], **{"wechsel.dictionary": "/nonexistent/d.tsv"})
    with pytest.raises(TransplantError, match="dictionary file not found"):
        transplant(llama_bl, tok_dirs["sp"], None, method="wechsel", options=opts)


def test_focus_end_to_end(llama_bl, tok_dirs, options):
    opts = options["focus"]["wp"]
    result = transplant(llama_bl, tok_dirs["wp"], None, method="focus", options=opts)
    plan = result.plan
    rows = _rows(plan, "focus")
    assert len(rows) > 20, plan.counts()
    from transplant.core.align import Alignment

    alignment = Alignment.build(load_tokenizer(llama_bl).vocabulary(), load_tokenizer(tok_dirs["wp"]).vocabulary())
    anchors_old = set(alignment.exact.values())
    widths = []
    for _, idx, w in rows:
        assert set(idx) <= anchors_old  # only overlapping tokens' old rows
        assert abs(sum(w) - 1) < 1e-4 and min(w) > 0
        widths.append(len(idx))
    # (Vectors this tiny put all tokens at nearly one cosine, so the support is wide here; the
    # sparsity itself is tested on known inputs above.)
    assert max(widths) <= len(anchors_old)
    assert any(k.startswith("vectors:") for k in plan.meta["resources"])


def test_focus_trains_on_text_once(llama_bl, tok_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENTRANSPLANT_CACHE", str(tmp_path / "cache"))
    text = tmp_path / "t.txt"
    text.write_text(TEXT.read_text(encoding="utf-8")[:30_000], encoding="utf-8")
    a = transplant(llama_bl, tok_dirs["sp"], None, method="focus", options={"focus.text": str(text)}).plan
    assert a.counts().get("focus", 0) > 0
    entries = list((tmp_path / "cache" / "vectors").glob("*.bin"))
    assert len(entries) == 1
    b = transplant(llama_bl, tok_dirs["sp"], None, method="focus", options={"focus.text": str(text)}).plan
    assert list((tmp_path / "cache" / "vectors").glob("*.bin")) == entries
    assert a.provenance == b.provenance and np.array_equal(a.weights, b.weights)


def test_focus_option_errors(llama_bl, tok_dirs, options):
    with pytest.raises(TransplantError, match=r"focus\.vectors=VEC\.bin.*--tokenizer NEW_TOK"):
        transplant(llama_bl, tok_dirs["sp"], None, method="focus")
    both = {"focus.vectors": options["focus"]["sp"]["focus.vectors"], "focus.text": str(TEXT)}
    with pytest.raises(TransplantError, match="only one of"):
        transplant(llama_bl, tok_dirs["sp"], None, method="focus", options=both)
    with pytest.raises(TransplantError, match="focus.temperature must be above 0"):
        transplant(llama_bl, tok_dirs["sp"], None, method="focus",
                   options={**options["focus"]["sp"], "focus.temperature": "0"})
