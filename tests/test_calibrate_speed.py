"""Output calibration's compact fit (one pass over the head, then Newton's method or the soft-cap
grid on a histogram of each position's made logits) against a brute-force fit on the full
logits, and its reading of the text through the new input rows of only the ids it uses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transplant.methods.calibrate import final_hidden_states, fit_scale
from transplant.methods.calibrate_compact import compact_score, head_pass, quantize
from transplant.methods.calibrate_read import hidden_states_through_rows

KEPT, MADE, DIM, N = 300, 20_000, 16, 1500


@pytest.fixture(scope="module")
def problem():
    """A large made vocabulary (20k rows in two buckets) holding 40% of the probability, spread
    so thin that each position's top 1,024 made rows hold only a quarter of it (the tail
    matters), and text drawn from a model that gives the two buckets' logits 0.7 and 0.9 of what
    the head gives them."""
    g = torch.Generator().manual_seed(0)
    vocab = KEPT + MADE
    head = torch.randn(vocab, DIM, generator=g) * torch.rand(vocab, 1, generator=g)
    head[:KEPT] *= 3.0
    h = torch.randn(N, DIM, generator=g) * 0.4
    made = torch.zeros(vocab, dtype=torch.bool)
    made[KEPT:] = True
    buckets = np.full(vocab, -1)
    buckets[KEPT:KEPT + MADE // 2], buckets[KEPT + MADE // 2:] = 0, 1
    true = h @ head.T
    true[:, KEPT:KEPT + MADE // 2] *= 0.7
    true[:, KEPT + MADE // 2:] *= 0.9
    y = torch.multinomial(torch.softmax(true, 1), 1, generator=g).squeeze(1)
    return h, y, head, made, buckets


def _exact_nll(h, y, head, buckets, scales: torch.Tensor, transform=None) -> torch.Tensor:
    """Summed NLL with the made rows' logits of bucket b times scales[b], from the full logits."""
    col = torch.cat([torch.ones(1), scales])[torch.from_numpy(buckets + 1)]
    total = torch.zeros((), dtype=torch.float64)
    for s in range(0, len(y), 250):
        z = (h[s:s + 250] @ head.T) * col
        z = transform(z) if transform else z
        total = total + torch.nn.functional.cross_entropy(z, y[s:s + 250], reduction="sum").double()
    return total


def _brute_force_fit(h, y, head, buckets) -> np.ndarray:
    """Per-bucket scales by Newton's method with autograd on the exact NLL (no approximation)."""
    a = torch.ones(2, dtype=torch.float32)
    for _ in range(12):
        grad = torch.autograd.functional.jacobian(lambda s: _exact_nll(h, y, head, buckets, s), a).float()
        hess = torch.autograd.functional.hessian(lambda s: _exact_nll(h, y, head, buckets, s), a).float()
        step = torch.linalg.solve(hess, grad)
        a = a - step
        if step.abs().max() < 1e-6:
            break
    return a.numpy()


def test_compact_fit_matches_a_brute_force_fit(problem):
    h, y, head, made, buckets = problem
    want = _brute_force_fit(h, y, head, buckets)
    assert abs(want[0] - 0.7) < 0.1 and abs(want[1] - 0.9) < 0.1, want
    fit = fit_scale(h, y, head, made, buckets=buckets, min_support=100)
    assert fit.bucket_scales is not None
    # 1e-3 relative: weights 5% too large in the histogram move the scales by 1.5%, each bin's
    # count given to both its points (not halved) by 18%.
    assert np.allclose(fit.bucket_scales, want, rtol=1e-3), (fit.bucket_scales, want)
    # The reported NLL is the exact one, before and after.
    ones, fitted = torch.ones(2), torch.tensor(fit.bucket_scales, dtype=torch.float32)
    assert fit.nll_before == pytest.approx(float(_exact_nll(h, y, head, buckets, ones)) / N, rel=1e-6)
    assert fit.nll_after == pytest.approx(float(_exact_nll(h, y, head, buckets, fitted)) / N, rel=1e-6)
    assert fit.nll_after < fit.nll_before


def test_compact_form_scores_like_the_full_logits(problem):
    """The histogram's two points per bin keep count, sum and sum of squares: the NLL and made
    mass it gives at any scale are those of the full logits to a few 1e-6, far from the start too
    (one point per bin, at the members' mean, is off by ~1e-4 here)."""
    h, y, head, made, buckets = problem
    group = torch.where(made, torch.from_numpy(buckets), -1)
    scales = np.array([[1.0, 1.0], [0.3, 1.5], [1.6, 0.5]])
    exact_nll, exact_mass, compact = head_pass(h, y, head, group, scales, bins=64)
    for k, a in enumerate(scales):
        nll, mass, _, _ = compact_score(compact, a)
        assert nll == pytest.approx(exact_nll[k], rel=2e-5) and mass == pytest.approx(exact_mass[k], rel=1e-4)
        assert exact_nll[k] == pytest.approx(float(_exact_nll(h, y, head, buckets, torch.tensor(a).float())), rel=1e-6)


def test_soft_capped_fit_picks_the_brute_force_grid_point(problem):
    h, _, head, made, _ = problem
    cap = 4.0
    transform = lambda x: cap * torch.tanh(x / cap)  # noqa: E731
    true = h @ head.T
    true[:, made] *= 0.7
    y = torch.multinomial(torch.softmax(transform(true), 1), 1, generator=torch.Generator().manual_seed(1)).squeeze(1)
    fit = fit_scale(h, y, head, made, transform)
    grid = np.round(np.arange(fit.scale - 0.03, fit.scale + 0.0301, 0.01), 4)
    single = np.where(made.numpy(), 0, -1)
    exact = [float(_exact_nll(h, y, head, single, torch.tensor([a]).float(), transform)) for a in grid]
    assert grid[int(np.argmin(exact))] == pytest.approx(fit.scale), (grid, exact)
    assert fit.nll_after == pytest.approx(min(exact) / N, rel=1e-6)


def test_quantize_keeps_count_sum_and_sum_of_squares_per_group():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 3000, generator=g) * 4
    column_group = torch.randint(0, 3, (3000,), generator=g)  # group 2 is left out
    values, logw = quantize(x, column_group, 2, bins=16)
    w = logw.exp()
    for k in range(2):
        member = x[:, column_group == k].double()
        assert torch.allclose(w[:, k].sum(1).double(), torch.full((5,), float(member.shape[1]), dtype=torch.float64))
        assert torch.allclose((w[:, k] * values[:, k]).sum(1).double(), member.sum(1), rtol=1e-5, atol=1e-2)
        assert torch.allclose((w[:, k] * values[:, k] ** 2).sum(1).double(), (member ** 2).sum(1), rtol=1e-5)


def _tiny(kind: str):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if kind == "gemma":  # its embedding module multiplies rows by sqrt(hidden)
        cfg = Gemma3TextConfig(vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256)
        return Gemma3ForCausalLM(cfg).eval()
    cfg = LlamaConfig(vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, pad_token_id=3)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("kind", ["llama", "gemma"])
def test_reading_through_the_used_rows_equals_a_resized_model(kind):
    new_rows = torch.randn(400, 32)
    chunks = [[5, 399, 17, 17, 250], [0, 1, 2, 398]]
    model = _tiny(kind)
    weight = model.get_input_embeddings().weight
    h, y = hidden_states_through_rows(model, lambda ids: new_rows[torch.from_numpy(ids)], chunks, 7, 400)
    assert model.get_input_embeddings().weight is weight  # the model's own matrix is back
    model.resize_token_embeddings(400, mean_resizing=False)
    with torch.no_grad():
        model.get_input_embeddings().weight.copy_(new_rows)
    want_h, want_y = final_hidden_states(model, chunks, 7)
    assert torch.equal(y, want_y) and torch.allclose(h, want_h, atol=1e-5)
