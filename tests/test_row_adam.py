"""RowAdam (healing's optimizer for large models): Adam's update where a row's gradient has one
scale, at a quarter of Adam's state, and it heals."""

from __future__ import annotations

import torch

from transplant.train.row_adam import RowAdam


def test_it_is_adam_where_each_row_has_one_gradient_scale():
    g = torch.Generator().manual_seed(0)
    a = torch.nn.Parameter(torch.randn(50, 16, generator=g))
    b = torch.nn.Parameter(a.detach().clone())
    adam, row = torch.optim.Adam([a], lr=0.01), RowAdam([b], lr=0.01)
    for _ in range(20):
        scale = torch.rand(50, 1, generator=g) * 3
        signs = torch.randint(0, 2, (50, 16), generator=g).float() * 2 - 1
        a.grad, b.grad = scale * signs, (scale * signs).clone()
        adam.step()
        row.step()
    assert torch.allclose(a, b, atol=2e-3)  # the bfloat16 first moment: a rounding far below the steps (0.01)


def test_its_state_is_a_quarter_of_adams():
    p = torch.nn.Parameter(torch.zeros(1000, 64))
    opt = RowAdam([p])
    p.grad = torch.ones_like(p)
    opt.step()
    state = sum(t.numel() * t.element_size() for t in opt.state[p].values())
    adam_state = 2 * p.numel() * 4
    assert state < 0.26 * adam_state


def test_a_zero_gradient_row_does_not_move_and_blocks_cover_every_row(monkeypatch):
    import transplant.train.row_adam as module

    monkeypatch.setattr(module, "BLOCK_ELEMENTS", 64)  # blocks of 4 rows at width 16
    p = torch.nn.Parameter(torch.zeros(10, 16))
    opt = RowAdam([p], lr=0.5)
    grad = torch.ones(10, 16)
    grad[3] = 0
    p.grad = grad
    opt.step()
    moved = p.detach()
    assert (moved[3] == 0).all()
    assert torch.allclose(moved[torch.arange(10) != 3], torch.full((9, 16), -0.5))


def test_it_is_adam_where_the_squared_gradient_factors_into_rows_and_columns():
    """A gradient a_i * b_j * sign (rows of one frequency, hidden dimensions of very different sizes,
    as the head's rows see them) has v_ij = a_i^2 b_j^2 exactly: the factored moment is Adam's, where
    one number per row would give the large dimensions the whole step."""
    g = torch.Generator().manual_seed(1)
    a = torch.nn.Parameter(torch.zeros(40, 12))
    b = torch.nn.Parameter(torch.zeros(40, 12))
    adam, row = torch.optim.Adam([a], lr=0.01), RowAdam([b], lr=0.01)
    cols = torch.ones(12)
    cols[3] = 50.0  # one very large hidden dimension
    rows = torch.rand(40, 1, generator=g) + 0.1
    for _ in range(15):
        signs = torch.randint(0, 2, (40, 12), generator=g).float() * 2 - 1
        a.grad = rows * cols * signs
        b.grad = a.grad.clone()
        adam.step()
        row.step()
    assert torch.allclose(a, b, atol=2e-3)
