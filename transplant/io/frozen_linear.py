"""The backward pass through a frozen half-precision linear layer on the CPU, made as fast as its
forward.

Training through a frozen body (healing's offsets, the hypernetwork's rows) needs the gradient
of each linear layer's *input*: `grad @ W`. On CPUs without native bf16 matrix units (AVX2
machines: most laptops and many cloud cores), torch runs that product in bf16 through its
generic fallback kernel, at 0.3 GFLOPS on this machine where the forward (`x @ W.T`, oneDNN)
runs at 10-20 and float32 at 50: a 7B-width heal step took minutes. Here the input gradient is
computed from a float32 copy of `W`, a block of rows at a time (at most 8,192 rows: 134 MB at a
width of 4,096), with float32 accumulation as before; the forward is unchanged, and so is every
number it gives. GPUs (and float32 weights) keep torch's own path.

Example:
    >>> lm = load_frozen(Path(model_dir)).to(torch.bfloat16)  # doctest: +SKIP
    >>> route_frozen_linears(lm)  # doctest: +SKIP
    14
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_BLOCK_ROWS = 8192  # rows of W made float32 at a time in the backward pass


class _FrozenLinear(torch.autograd.Function):
    """y = x W^T + b with W and b frozen; the input gradient in float32 blocks (module docstring)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(weight)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (weight,) = ctx.saved_tensors
        flat = grad.reshape(-1, grad.shape[-1])
        out = torch.zeros(flat.shape[0], weight.shape[1], dtype=torch.float32, device=grad.device)
        for start in range(0, weight.shape[0], _BLOCK_ROWS):
            stop = start + _BLOCK_ROWS
            out.addmm_(flat[:, start:stop].float(), weight[start:stop].float())
        return out.to(grad.dtype).reshape(*grad.shape[:-1], weight.shape[1]), None, None


def needs_routing(weight: torch.Tensor) -> bool:
    """True where torch's own input gradient is the slow generic kernel: half-precision on the CPU."""
    return weight.device.type == "cpu" and weight.dtype in (torch.bfloat16, torch.float16)


def frozen_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` for a frozen `weight`, its input gradient fast on the CPU.

    Example:
        >>> w = torch.randn(6, 4).bfloat16()
        >>> x = torch.randn(3, 4).bfloat16().requires_grad_(True)
        >>> frozen_linear(x, w).float().sum().backward()
        >>> torch.allclose(x.grad.float(), w.float().sum(0).expand(3, 4), atol=0.05)
        True
    """
    if weight.requires_grad or not needs_routing(weight) or not torch.is_grad_enabled():
        return F.linear(x, weight, bias)
    return _FrozenLinear.apply(x, weight, bias)


def route_frozen_linears(model: torch.nn.Module) -> int:
    """Send every frozen half-precision `nn.Linear` of `model` on the CPU through `frozen_linear`
    (the instance's forward: hooks around it, such as FSDP's gathers, still run). Returns how many."""
    n = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and not module.weight.requires_grad and needs_routing(module.weight):
            module.forward = lambda x, _m=module: frozen_linear(x, _m.weight, _m.bias)
            n += 1
    return n
