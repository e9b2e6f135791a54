"""Orthogonal matching pursuit: the batched solver on known answers, and the `omp` method with a donor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from transplant import TransplantError, transplant
from transplant.core.align import Alignment
from transplant.methods.kmeans import spherical_kmeans
from transplant.methods.sparse_coding import omp, residuals
from transplant.core.vocab import SPECIAL, load_tokenizer


def _dictionary(m: int = 200, d: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(m, d, generator=torch.Generator().manual_seed(seed))


def _planted(D: torch.Tensor, n: int, nnz: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    support = torch.stack([torch.randperm(D.shape[0], generator=gen)[:nnz] for _ in range(n)])
    weights = torch.randn(n, nnz, generator=gen).sign() * (0.5 + torch.rand(n, nnz, generator=gen))
    return torch.einsum("nk,nkd->nd", weights, D[support]), support, weights


def _as_dict(idx: torch.Tensor, coef: torch.Tensor) -> dict[int, float]:
    return {int(i): float(c) for i, c in zip(idx, coef) if c != 0}


# -- the solver --------------------------------------------------------------------------------

@pytest.mark.parametrize("rule", ["omp", "ormp"])
@pytest.mark.parametrize("candidates", [None, 200, 1000])  # M >= m atoms: exact
def test_planted_three_sparse_code_is_recovered(rule, candidates):
    D = _dictionary()
    Y, support, weights = _planted(D, 20, 3)
    idx, coef = omp(Y, D, 3, candidates, rule=rule)
    for t in range(len(Y)):
        assert set(idx[t].tolist()) == set(support[t].tolist()), t
        got = _as_dict(idx[t], coef[t])
        for j, w in zip(support[t].tolist(), weights[t].tolist()):
            assert got[j] == pytest.approx(w, abs=1e-4)
    assert residuals(Y, D, idx, coef).max() < 1e-5


def test_a_fitted_target_stops_with_zero_weights():
    D = _dictionary()
    Y, support, weights = _planted(D, 5, 3)
    idx, coef = omp(torch.cat([Y, 2 * D[7:8]]), D, 10)
    assert ((coef != 0).sum(1) == torch.tensor([3, 3, 3, 3, 3, 1])).all()
    assert _as_dict(idx[5], coef[5]) == {7: pytest.approx(2.0, abs=1e-5)}


@pytest.mark.parametrize("rule", ["omp", "ormp"])
def test_batched_equals_one_at_a_time(rule):
    D = _dictionary(300, 40)
    Y = torch.randn(30, 40, generator=torch.Generator().manual_seed(5))
    idx, coef = omp(Y, D, 12, rule=rule)
    for t in range(len(Y)):
        one_idx, one_coef = omp(Y[t:t + 1], D, 12, rule=rule)
        assert torch.equal(one_idx[0], idx[t])
        torch.testing.assert_close(one_coef[0], coef[t], atol=1e-5, rtol=1e-4)
    # Per-target candidate lists are batched the same way.
    cand = torch.stack([torch.randperm(300, generator=torch.Generator().manual_seed(t))[:60] for t in range(30)])
    idx, coef = omp(Y, D, 12, cand, rule=rule)
    for t in (0, 17, 29):
        one_idx, one_coef = omp(Y[t:t + 1], D, 12, cand[t:t + 1], rule=rule)
        assert torch.equal(one_idx[0], idx[t])
        torch.testing.assert_close(one_coef[0], coef[t], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("rule", ["omp", "ormp"])
def test_candidates_covering_the_dictionary_equal_exact(rule):
    D = _dictionary(300, 40)
    Y = torch.randn(40, 40, generator=torch.Generator().manual_seed(6))
    idx, coef = omp(Y, D, 10, rule=rule)
    every = torch.stack([torch.randperm(300, generator=torch.Generator().manual_seed(t)) for t in range(40)])
    for cand in (300, 1000, every):  # the grouped path with a pool of every atom; explicit lists
        c_idx, c_coef = omp(Y, D, 10, cand, rule=rule, group_size=8)
        assert torch.equal(c_idx, idx)
        torch.testing.assert_close(c_coef, coef, atol=1e-5, rtol=1e-4)


def test_coefficients_are_the_least_squares_fit_on_the_support():
    D = _dictionary(300, 40)
    Y = torch.randn(10, 40, generator=torch.Generator().manual_seed(7))
    for cand in (None, 64):
        idx, coef = omp(Y, D, 8, cand)
        for t in range(len(Y)):
            ls = torch.linalg.lstsq(D[idx[t]].T.double(), Y[t].double().unsqueeze(1)).solution.squeeze(1)
            torch.testing.assert_close(coef[t].double(), ls, atol=1e-4, rtol=1e-4)


def test_more_candidates_fit_better_down_to_exact():
    """On a dictionary with structure (atoms near a few directions) the fast path's residual
    falls as candidates grow, towards exact OMP's; a random share of candidates (explore) helps
    when candidates are few."""
    gen = torch.Generator().manual_seed(8)
    centres = torch.randn(20, 48, generator=gen)
    D = centres[torch.randint(20, (2000,), generator=gen)] + 0.7 * torch.randn(2000, 48, generator=gen)
    Y = centres[torch.randint(20, (300,), generator=gen)] + 0.7 * torch.randn(300, 48, generator=gen)
    exact = float(residuals(Y, D, *omp(Y, D, 16)).mean())
    fit = {M: float(residuals(Y, D, *omp(Y, D, 16, candidates=M, group_size=32)).mean()) for M in (64, 256, 1024)}
    assert fit[64] > fit[256] > fit[1024] >= exact * 0.99, (fit, exact)
    explored = float(residuals(Y, D, *omp(Y, D, 16, candidates=64, explore=0.75, group_size=32)).mean())
    assert explored < fit[64]
    assert fit[64] < float(residuals(Y, D, *omp(Y, D, 8, candidates=64, group_size=32)).mean())


def test_spherical_kmeans_separates_clear_groups():
    gen = torch.Generator().manual_seed(9)
    centres = torch.eye(4, 16) * 10
    X = centres.repeat_interleave(50, 0) + 0.1 * torch.randn(200, 16, generator=gen)
    _, assign = spherical_kmeans(X, 4, seed=1)
    for g in range(4):
        assert len(set(assign[g * 50:(g + 1) * 50].tolist())) == 1
    assert len(set(assign.tolist())) == 4


def test_degenerate_inputs():
    D = _dictionary(50, 8)
    D[3] = 0  # a zero atom is never picked
    Y = torch.randn(4, 8, generator=torch.Generator().manual_seed(2))
    idx, coef = omp(Y, D, 64)  # k is capped at the dimension
    assert idx.shape == (4, 8) and not (idx[coef != 0] == 3).any()
    assert residuals(Y, D, idx, coef).max() < 1e-3
    idx, coef = omp(torch.zeros(2, 8), D, 4)  # zero targets: nothing to fit
    assert (coef == 0).all()
    assert omp(Y[:0], D, 4)[0].shape == (0, 0)
    with pytest.raises(ValueError, match="rule"):
        omp(Y, D, 4, rule="mp")


# -- the method, with a donor that uses the target tokenizer ------------------------------------

@pytest.fixture(scope="module")
def omp_setup(build_model, toks, tok_dirs, llama_bl, tmp_path_factory):
    """A tiny donor on the SentencePiece-style target tokenizer whose row of one new-only token
    copies the row of one shared token, plus an untied donor and the alignment source -> target."""
    root = tmp_path_factory.mktemp("omp-donors")
    old = load_tokenizer(llama_bl).vocabulary()
    new = load_tokenizer(tok_dirs["sp"]).vocabulary()
    alignment = Alignment.build(old, new)
    shared = sorted(i for i in alignment.exact if new.tokens[i].kind != SPECIAL)
    new_only = [i for i, t in enumerate(new.tokens)
                if t.kind == "normal" and i not in alignment.exact and len(t.text) > 3]
    copy_to, copy_from = new_only[0], shared[len(shared) // 2]
    donors = {}
    for name, tied in (("tied", True), ("untied", False)):
        folder = build_model(root / name, "llama", tied=tied, tok="sp", seed=3)
        weights = load_file(str(folder / "model.safetensors"))
        for key in ("model.embed_tokens.weight", "lm_head.weight"):
            if key in weights:
                weights[key][copy_to] = weights[key][copy_from]
        save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
        donors[name] = folder
    return {"donors": donors, "alignment": alignment, "copy_to": copy_to, "copy_from": copy_from,
            "shared": shared, "new_only": new_only}


def test_donor_row_equal_to_an_atom_copies_that_atoms_source_row(omp_setup, llama_bl, tok_dirs):
    s = omp_setup
    plan = transplant(llama_bl, tok_dirs["sp"], None, method="omp",
                      options={"omp.donor": str(s["donors"]["tied"])}).plan
    assert plan.output is None  # a tied donor: the same codes on both sides
    source, idx, w = plan.row(s["copy_to"])
    assert source == "omp"
    old_id = s["alignment"].exact[s["copy_from"]]
    assert idx == [old_id] and w == [pytest.approx(1.0, abs=1e-5)]
    counts = plan.counts()
    assert counts["omp"] >= len(s["new_only"]) * 0.9, counts
    # Every omp row mixes only shared tokens' old ids, at most k = min(64, hidden 32) of them.
    atoms = {s["alignment"].exact[i] for i in s["alignment"].exact}
    for i in s["new_only"][:50]:
        source, idx, w = plan.row(i)
        if source == "omp":
            assert set(idx) <= atoms and 1 <= len(idx) <= 32 and np.isfinite(w).all()
    assert any(k.startswith("donor:") for k in plan.meta["resources"])
    assert plan.meta["options"]["omp"]["donor"] == str(s["donors"]["tied"])


def test_untied_donor_gives_the_head_rows_of_its_own(omp_setup, llama_bl, tok_dirs, tmp_path):
    s = omp_setup
    out = tmp_path / "out"
    result = transplant(llama_bl, tok_dirs["sp"], out, method="omp", options={"omp.donor": str(s["donors"]["untied"])})
    plan = result.plan
    assert plan.output is not None
    i = s["new_only"][1]
    assert plan.row(i)[0] == plan.output.row(i)[0] == "omp"
    assert plan.row(i)[1:] != plan.output.row(i)[1:]
    # The copied token copies on both sides (the donor's head row was copied too).
    old_id = s["alignment"].exact[s["copy_from"]]
    assert plan.output.row(s["copy_to"])[1] == [old_id]
    # The written head holds the output side's mix of the old head rows.
    weights = load_file(str(out / "model.safetensors"))
    old = load_file(str(llama_bl / "model.safetensors"))
    _, idx, w = plan.output.row(i)
    expect = (torch.tensor(w).unsqueeze(1) * old["lm_head.weight"][idx]).sum(0)
    torch.testing.assert_close(weights["lm_head.weight"][i], expect, atol=1e-5, rtol=1e-4)
    _, idx, w = plan.row(i)
    expect = (torch.tensor(w).unsqueeze(1) * old["model.embed_tokens.weight"][idx]).sum(0)
    torch.testing.assert_close(weights["model.embed_tokens.weight"][i], expect, atol=1e-5, rtol=1e-4)


def test_exact_and_fast_pursuit_agree_on_tiny_vocabularies(omp_setup, llama_bl, tok_dirs):
    donor = str(omp_setup["donors"]["tied"])
    fast = transplant(llama_bl, tok_dirs["sp"], None, method="omp", options={"omp.donor": donor}).plan
    exact = transplant(llama_bl, tok_dirs["sp"], None, method="omp",
                       options={"omp.donor": donor, "omp.candidates": -1}).plan
    assert fast.counts() == exact.counts()


@pytest.mark.parametrize("cap", ["atoms", "median"])
def test_made_rows_are_never_longer_than_the_cap(omp_setup, llama_bl, tok_dirs, tmp_path, cap):
    """A code fitted in the donor's space may cancel there and not among the source rows; the
    written rows obey the cap on both sides (input and untied head), and `none` shows the cap
    is what holds them: without it some row is longer."""
    old = load_file(str(llama_bl / "model.safetensors"))
    donor = str(omp_setup["donors"]["untied"])
    lengths = {}
    for mode in (cap, "none"):
        out = tmp_path / mode
        plan = transplant(llama_bl, tok_dirs["sp"], out, method="omp", calibrate=False,
                          options={"omp.donor": donor, "omp.max_norm": mode}).plan
        new = load_file(str(out / "model.safetensors"))
        made = [i for i, p in enumerate(plan.provenance) if p == "omp"]
        excess = []
        for side_plan, key in ((plan, "model.embed_tokens.weight"), (plan.output, "lm_head.weight")):
            old_len = old[key].norm(dim=1)
            for i in made:
                _, idx, w = side_plan.row(i)
                used = [j for j, x in zip(idx, w) if x != 0]
                limit = old_len[used].max() if cap == "atoms" else old_len.median()
                excess.append(float(new[key][i].norm() / limit))
        lengths[mode] = max(excess)
    assert lengths[cap] <= 1 + 1e-4
    assert lengths["none"] > 1.01, lengths  # the fixture's codes do overshoot without the cap


def test_donor_on_another_tokenizer_is_refused(build_model, llama_bl, tok_dirs, tmp_path):
    other = build_model(tmp_path / "wp-donor", "llama", tied=True, tok="wp")
    with pytest.raises(TransplantError, match="does not use the new tokenizer"):
        transplant(llama_bl, tok_dirs["sp"], None, method="omp", options={"omp.donor": str(other)})


@pytest.mark.parametrize("key,value,match", [("omp.k", "0", "at least 1"), ("omp.rule", "mp", "omp.rule"),
                                             ("omp.candidates", "-5", "omp.candidates"),
                                             ("omp.max_norm", "huge", "omp.max_norm")])
def test_bad_option_values_are_one_line_errors(omp_setup, llama_bl, tok_dirs, key, value, match):
    with pytest.raises(TransplantError, match=match):
        transplant(llama_bl, tok_dirs["sp"], None, method="omp",
                   options={"omp.donor": str(omp_setup["donors"]["tied"]), key: value})


def test_donor_ids_identity_on_the_same_tokenizer(tok_dirs):
    from transplant.methods.initializers.omp import donor_ids

    vocab = load_tokenizer(tok_dirs["sp"]).vocabulary()
    ids = donor_ids(vocab, vocab, len(vocab))
    text = [i for i, t in enumerate(vocab.tokens) if t.text]
    assert (ids[text] == np.array(text)).all()
    assert (donor_ids(vocab, vocab, 100)[100:] == -1).all()  # ids without a donor row



def test_without_a_donor_the_pursuit_runs_in_the_model_space(llama_bl, tok_dirs):
    plan = transplant(llama_bl, tok_dirs["sp"], None, method="omp").plan
    made = [i for i, p in enumerate(plan.provenance) if p == "omp"]
    assert len(made) > 50, plan.counts()
    assert plan.output is None
    for i in made[:100]:
        _, idx, w = plan.row(i)
        # Aux vectors are centred and normalised: the mix is affine (weights sum to one).
        assert 1 <= len(idx) <= 32 and sum(w) == pytest.approx(1.0, abs=1e-4)
    assert plan.meta["options"]["omp"]["space"] == "model"


def test_affine_refit_sums_to_one_and_fits_best_under_that_constraint():
    D = _dictionary(300, 40)
    Y = torch.randn(10, 40, generator=torch.Generator().manual_seed(4))
    idx, coef = omp(Y, D, 6, affine=True)
    torch.testing.assert_close(coef.sum(1), torch.ones(10), atol=1e-5, rtol=0)
    for t in range(len(Y)):  # the KKT solution of min |y - A x| s.t. sum(x) = 1
        A = D[idx[t]].T.double()
        kkt = torch.zeros(7, 7, dtype=torch.float64)
        kkt[:6, :6] = A.T @ A
        kkt[:6, 6] = kkt[6, :6] = 1
        rhs = torch.cat([A.T @ Y[t].double(), torch.ones(1, dtype=torch.float64)])
        torch.testing.assert_close(coef[t].double(), torch.linalg.solve(kkt, rhs)[:6], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("candidates", [None, 128])
def test_duplicate_atoms_never_wreck_the_fit(candidates):
    """Embedding matrices hold (near-)duplicate rows; ORMP divides by what an atom adds beyond the
    atoms picked, which is round-off for a duplicate: such atoms must never be picked."""
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(200, 64, generator=gen)
    D = torch.cat([base, base[:100] + 1e-4 * torch.randn(100, 64, generator=gen), base[:50]])
    Y = torch.randn(50, 64, generator=gen)
    fits = {}
    for rule in ("omp", "ormp"):
        idx, coef = omp(Y, D, 32, candidates, rule=rule)
        assert coef.abs().max() < 5
        fits[rule] = float(residuals(Y, D, idx, coef).mean())
    assert fits["ormp"] <= fits["omp"] * 1.02, fits
