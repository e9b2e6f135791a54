"""Adam for matrices of embedding rows at a quarter of its state: the first moment in bfloat16,
the second moment factored into one number per row and one per column (Adafactor's rank-1 form).

Healing trains offsets of tens of thousands of rows at a model's width: at 7B widths the float32
offsets, their gradients and Adam's two float32 moments are 16 bytes per element, several GB.
Here the first moment is stored in bfloat16 (a running mean: its rounding error, 2**-8 of its
size, is far below the step-to-step noise it smooths) and the second moment is Adafactor's
rank-1 factorisation, v_ij = r_i c_j / mean(r), from the rows' and the columns' mean squares (a
row's gradient scales with the token's frequency, a column's with that hidden dimension's size:
one number per row alone let the few very large hidden dimensions take over the head's rows, and
SmolLM2's held-out score got worse where Adam's improved), so state costs 2 bytes per element
instead of 8. The step works in blocks of rows so that its
float32 temporaries stay small.

Example:
    >>> p = torch.nn.Parameter(torch.zeros(3, 4))
    >>> opt = RowAdam([p], lr=0.1)
    >>> p.grad = torch.tensor([[1.0, -1.0, 1.0, -1.0], [0.0] * 4, [2.0] * 4])
    >>> opt.step()
    >>> (p.detach() * 10).round().tolist()  # Adam's first step: -lr * sign; a zero gradient: no move
    [[-1.0, 1.0, -1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [-1.0, -1.0, -1.0, -1.0]]
    >>> {k: v.dtype for k, v in opt.state[p].items()}
    {'step': torch.float32, 'exp_avg': torch.bfloat16, 'exp_avg_sq_row': torch.float32, 'exp_avg_sq_col': torch.float32}
"""

from __future__ import annotations

import torch

BLOCK_ELEMENTS = 1 << 22  # float32 temporaries of the step: 16 MB each


class RowAdam(torch.optim.Optimizer):
    """Adam with a bfloat16 first moment and a factored second moment (see the module docstring).

    Args:
        params: matrices of rows (any shape: the last dimension is the row).
        lr, betas, eps: as `torch.optim.Adam`.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                width = p.shape[-1] if p.dim() else 1
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.bfloat16, memory_format=torch.preserve_format)
                    state["exp_avg_sq_row"] = torch.zeros(p.shape[:-1], dtype=torch.float32, device=p.device)
                    state["exp_avg_sq_col"] = torch.zeros(width, dtype=torch.float32, device=p.device)
                state["step"] += 1
                t = float(state["step"])
                step_size = group["lr"] / (1 - beta1 ** t)
                bias2 = 1 - beta2 ** t
                rows = max(1, BLOCK_ELEMENTS // max(1, width))
                flat_p, flat_g = p.view(-1, width), p.grad.view(-1, width)
                flat_m, flat_r = state["exp_avg"].view(-1, width), state["exp_avg_sq_row"].view(-1)
                col = torch.zeros(width, dtype=torch.float32, device=p.device)
                for s in range(0, flat_p.shape[0], rows):  # first pass: the squares' row and column means
                    sq = flat_g[s:s + rows].float().square()
                    flat_r[s:s + rows].mul_(beta2).add_(sq.mean(-1), alpha=1 - beta2)
                    col += sq.sum(0)
                c = state["exp_avg_sq_col"].mul_(beta2).add_(col / flat_p.shape[0], alpha=1 - beta2)
                # Adafactor's rank-1 second moment: v_ij = r_i c_j / mean(r), bias-corrected
                col_scale = c / (flat_r.mean().clamp_min(1e-30) * bias2)
                for s in range(0, flat_p.shape[0], rows):
                    g = flat_g[s:s + rows].float()
                    m = flat_m[s:s + rows].float().mul_(beta1).add_(g, alpha=1 - beta1)
                    flat_m[s:s + rows].copy_(m)
                    denom = torch.outer(flat_r[s:s + rows], col_scale).sqrt_().add_(group["eps"])
                    flat_p[s:s + rows].addcdiv_(m, denom, value=-step_size)
        return loss
