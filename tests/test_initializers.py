"""Every registered initializer onto the SentencePiece-style and WordPiece tokenizers; plans re-applied."""

from __future__ import annotations

import subprocess
import sys

import builders as B
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from transplant import Plan, apply_plan, transplant
from transplant.core.vocab import load_tokenizer
from transplant.methods.initializers import available

METHODS = [m for m in available() if m not in ("special", "exact")]
COPIED = ("exact", "byte", "special")
# Methods needing resources the tiny fixtures lack: method -> fixture giving {method: {target: options}}.
SETTINGS = {"wechsel": "crosslingual_options", "focus": "crosslingual_options", "hypernet": "hypernet_options",
            "cw2v": "text_options"}


@pytest.fixture(scope="session")
def text_options():
    """Methods that learn from target text: the repo's sample, briefly."""
    return {"cw2v": {t: {"cw2v.text": str(B.DATA / "bible_en.txt"), "cw2v.steps": 30} for t in ("sp", "wp")}}


@pytest.fixture(scope="session")
def hypernet_options(hypernet_dir):
    return {"hypernet": {t: {"hypernet.path": str(hypernet_dir)} for t in ("sp", "wp")}}


@pytest.fixture(scope="session")
def crosslingual_options(tok_dirs, tmp_path_factory):
    """Tiny fastText vectors and dictionary trained on the fixture text (tests/vector_fixtures.py)."""
    from vector_fixtures import crosslingual_options

    return crosslingual_options(tmp_path_factory.mktemp("vectors"), tok_dirs)


def test_registry_lists_the_chain_steps():
    assert {"special", "exact", "fvt", "mean"} <= set(available())
    assert METHODS  # something besides the fixed steps


def _embeddings(folder):
    weights = load_file(str(folder / "model.safetensors"))
    return weights["model.embed_tokens.weight"], weights.get("lm_head.weight")


@pytest.mark.parametrize("target", ["sp", "wp"])
@pytest.mark.parametrize("method", METHODS)
def test_initializer_matrix(method, target, llama_bl, tok_dirs, tmp_path, request):
    out = tmp_path / "out"
    options = request.getfixturevalue(SETTINGS[method])[method][target] if method in SETTINGS else None
    result = transplant(llama_bl, tok_dirs[target], out, method=method, seed=1, options=options)
    plan = result.plan
    assert plan.meta["chain"][:3] == ["special", "exact", method]
    counts = plan.counts()
    assert counts.get("special", 0) >= 2  # bos and eos at least, matched by role
    assert counts.get("exact", 0) + counts.get("byte", 0) > 100
    made_by_method = {"fvt": "fvt", "mean": "mean", "multivariate": "multivariate", "random": "random"}
    if method in made_by_method:
        assert counts.get(made_by_method[method], 0) > 0, counts

    old_in, old_out = _embeddings(llama_bl)
    new_in, new_out = _embeddings(out)
    old_vocab = load_tokenizer(llama_bl).vocabulary()
    new_vocab = load_tokenizer(out).vocabulary()
    assert new_in.shape == (len(new_vocab), old_in.shape[1]) == new_out.shape
    for mat in (new_in, new_out):
        assert torch.isfinite(mat).all()

    copied = 0
    for i, source in enumerate(plan.provenance):
        if source not in COPIED:
            continue
        _, idx, w = plan.row(i)
        assert len(idx) == 1 and w == [1.0], (i, source)
        j = idx[0]
        assert torch.equal(new_in[i], old_in[j]) and torch.equal(new_out[i], old_out[j]), (i, source)
        if source == "special":
            assert new_vocab.tokens[i].kind == old_vocab.tokens[j].kind == "special"
        else:
            assert new_vocab.tokens[i].text == old_vocab.tokens[j].text, (i, source)
        copied += 1
    assert copied == sum(counts.get(s, 0) for s in COPIED)
    # Rows that are not copies are new vectors, not leftovers of the same id in the old matrix.
    assert not torch.equal(new_in[:len(old_vocab)], old_in)
    _check_made_rows(method, plan, {"input": old_in, "output": old_out}, {"input": new_in, "output": new_out},
                     old_vocab, new_vocab, request)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out))
    model = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert model.get_input_embeddings().weight.shape[0] == len(new_vocab)
    enc = tok("In the beginning God created", return_tensors="pt")
    gen = model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tok.eos_token_id)
    assert gen.shape[1] > enc.input_ids.shape[1]
    assert int(gen.max()) < len(new_vocab)
    assert isinstance(tok.decode(gen[0]), str)


# Made rows that are a mix of old rows with weights on the simplex (softmax, sparsemax, convex
# fits, a local/global blend of two such mixes).
CONVEX = ("knn", "wechsel", "hull", "focus", "tokenadapt")


def _check_made_rows(method, plan, old, new, old_vocab, new_vocab, request) -> None:
    """Each made row is what its method's definition says, on both sides, from the written weights:
    a mix of old rows with the plan's weights, and per method: fvt the mean of the rows of a
    complete decomposition, mean the mean old row, hypernet the network's prediction, random and
    multivariate draws with the old rows' statistics, the convex methods weights on the simplex,
    omp an affine mix, focus a mix of anchors (old tokens that new tokens copy exactly)."""
    from transplant.core.align import Alignment

    align = Alignment.build(old_vocab, new_vocab)
    made = [i for i, p in enumerate(plan.provenance) if p == method]
    means = [i for i, p in enumerate(plan.provenance) if p in ("mean", "pad")]
    for tensor in ("input", "output"):
        side, O, N = plan.side(tensor), old[tensor].double(), new[tensor].double()
        scale = np.ones(plan.new_size) if side.scales is None else side.scales
        for i in made:
            _, idx, w = side.row(i)
            if side.kinds[i] == 0:  # a linear row: the weighted old rows the plan records
                mix = (torch.tensor(w, dtype=torch.float64)[:, None] * O[idx]).sum(0) * float(scale[i])
                torch.testing.assert_close(N[i], mix, rtol=1e-5, atol=1e-5)
            if method in CONVEX:
                assert min(w) >= 0 and sum(w) == pytest.approx(1, abs=1e-5), (i, w)
            if method == "omp":
                assert sum(w) == pytest.approx(1, abs=1e-5), (i, w)
            if method == "focus":
                assert set(idx) <= set(align.exact.values()), i
            if method == "fvt":
                pieces = align.decomposition(i)
                assert b"".join(old_vocab.tokens[j].text for j in pieces) == new_vocab.tokens[i].text
                torch.testing.assert_close(N[i], O[pieces].mean(0), rtol=1e-5, atol=1e-5)
        for i in means:  # the mean method, and any row left to the chain's mean
            torch.testing.assert_close(N[i], O.mean(0), rtol=1e-5, atol=1e-5)
        if method in ("random", "multivariate"):
            _check_draws(method, N[made], O)
    if method == "hypernet":
        from hypernet import HyperNet

        net = HyperNet.load(request.getfixturevalue("hypernet_dir"))
        predicted = net.predict([align.decomposition(i) for i in made], old["input"], old["output"])
        for tensor, rows in zip(("input", "output"), predicted):
            torch.testing.assert_close(new[tensor][made], rows, rtol=1e-5, atol=1e-5)


def _check_draws(method: str, rows: torch.Tensor, old: torch.Tensor) -> None:
    """`rows` look drawn from the method's normal: N(0, std^2 I) at the old rows' overall std
    (random), N(mean, cov) of the old rows (multivariate: whitened, they are N(0, I)). Bounds of
    five standard errors of the estimates from these many draws."""
    if method == "multivariate":
        mean = old.mean(0)
        chol = torch.linalg.cholesky(torch.cov(old.T, correction=0))
        rows, target = torch.linalg.solve_triangular(chol, (rows - mean).T, upper=False).T, 1.0
    else:
        target = float((old - old.mean(0)).pow(2).mean().sqrt())
    n, dim = rows.shape
    assert (rows.mean(0).abs() <= 5 * target / n ** 0.5).all(), rows.mean(0)
    spread = float(rows.pow(2).mean().sqrt())
    assert abs(spread / target - 1) <= 5 / (2 * n * dim) ** 0.5, (spread, target)


@pytest.mark.parametrize("method", ["fvt", "multivariate"])
def test_plan_round_trip(method, llama_bl, tok_dirs, tmp_path):
    out = tmp_path / "out"
    plan = transplant(llama_bl, tok_dirs["sp"], out, method=method, seed=5).plan
    loaded = Plan.load(out)
    assert Plan.load(out / "transplant_plan.json").new_size == plan.new_size
    assert (loaded.old_size, loaded.seed, loaded.provenance) == (plan.old_size, plan.seed, plan.provenance)
    for name in ("indptr", "indices", "weights", "kinds", "override_rows"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(plan, name), err_msg=name)
    assert loaded.meta["chain"] == plan.meta["chain"]
    assert loaded.meta["old_fingerprint"] == plan.meta["old_fingerprint"]
    old_in, _ = _embeddings(llama_bl)
    assert torch.equal(loaded.apply(old_in), plan.apply(old_in))
    new_in, _ = _embeddings(out)
    assert torch.equal(loaded.apply(old_in), new_in)


def test_same_seed_same_rows(llama_bl, tok_dirs):
    a = transplant(llama_bl, tok_dirs["wp"], None, method="random", seed=3).embeddings
    b = transplant(llama_bl, tok_dirs["wp"], None, method="random", seed=3).embeddings
    c = transplant(llama_bl, tok_dirs["wp"], None, method="random", seed=4).embeddings
    assert torch.equal(a["input"], b["input"]) and torch.equal(a["output"], b["output"])
    assert not torch.equal(a["input"], c["input"])


@pytest.fixture(scope="module")
def finetune(build_model, tmp_path_factory):
    """A second checkpoint of the same base: same tokenizer and shapes, perturbed weights."""
    return build_model(tmp_path_factory.mktemp("finetune") / "src2", "llama", tied=False, seed=11)


def test_cli_apply_matches_direct_transplant(llama_bl, finetune, tok_dirs, tmp_path):
    out, out2 = tmp_path / "out", tmp_path / "out2"
    transplant(llama_bl, tok_dirs["sp"], out, method="fvt")
    proc = subprocess.run([sys.executable, "-m", "transplant.cli", "apply", "--plan", str(out),
                           "--model", str(finetune), "--out", str(out2)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    direct = transplant(finetune, tok_dirs["sp"], None, method="fvt").embeddings
    applied_in, applied_out = _embeddings(out2)
    assert torch.equal(applied_in, direct["input"])
    assert torch.equal(applied_out, direct["output"])
    # ... and differs from the base model's transplant (the fine-tune's weights were used).
    assert not torch.equal(applied_in, _embeddings(out)[0])
    assert (out2 / "tokenizer.json").read_bytes() == (out / "tokenizer.json").read_bytes()


def test_apply_plan_recomputes_statistics(llama_bl, finetune, tok_dirs, tmp_path):
    """Statistical rows (mean, multivariate) come from the matrix the plan is applied to."""
    out, out2 = tmp_path / "out", tmp_path / "out2"
    transplant(llama_bl, tok_dirs["wp"], out, method="multivariate", seed=2)
    apply_plan(out, finetune, out2)
    direct = transplant(finetune, tok_dirs["wp"], None, method="multivariate", seed=2).embeddings
    applied_in, applied_out = _embeddings(out2)
    assert torch.equal(applied_in, direct["input"]) and torch.equal(applied_out, direct["output"])


def test_apply_plan_refuses_other_base(llama_bl, build_model, tok_dirs, tmp_path):
    from transplant import TransplantError

    out = tmp_path / "out"
    transplant(llama_bl, tok_dirs["sp"], out)
    other = build_model(tmp_path / "other", "llama", tied=False, tok="wp")
    with pytest.raises(TransplantError, match="different tokenizer"):
        apply_plan(out, other, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()
