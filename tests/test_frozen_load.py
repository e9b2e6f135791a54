"""The training commands' frozen models (`io.frozen_load.load_frozen`) are `from_pretrained`'s,
tensor for tensor and tie for tie, in the checkpoint's own dtype, on every common architecture,
and are assembled without `from_pretrained` (whose memory map doubled the load's peak)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import arch_builders as A
from transplant.io.frozen_load import load_frozen


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("arch", list(A.ARCHS))
def test_load_frozen_is_from_pretrained_without_its_memory_map(arch, tied, tmp_path, monkeypatch):
    A.tiny_arch(arch, 300, tied=tied, bos=1, eos=2, seed=2).to(torch.bfloat16).save_pretrained(tmp_path)
    reference = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()

    def refused(*args, **kwargs):
        raise AssertionError("load_frozen fell back to from_pretrained")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refused)
    lm = load_frozen(tmp_path)
    want, got = reference.state_dict(), lm.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in lm.parameters())
    shared = lm.get_output_embeddings().weight is lm.get_input_embeddings().weight
    assert shared == (reference.get_output_embeddings().weight is reference.get_input_embeddings().weight)
    ids = torch.randint(3, 300, (1, 16))
    with torch.no_grad():
        assert torch.equal(lm(ids).logits, reference(ids).logits)


@pytest.mark.parametrize("arch", list(A.ARCHS))
def test_checkpointed_layers_keep_less_for_the_backward_pass_and_give_the_same_gradients(arch, tmp_path):
    """`checkpoint_layers`: the input rows' gradient through a frozen body is the same, and what
    autograd keeps for the backward pass shrinks (each layer's input instead of its products),
    on every architecture; the body stays in eval mode (no dropout turned on)."""
    from transplant.io.frozen_load import checkpoint_layers

    A.tiny_arch(arch, 300, tied=True, bos=1, eos=2, seed=2).save_pretrained(tmp_path)
    lm = load_frozen(tmp_path)
    decoder = lm.base_model
    x0 = torch.randn(2, 24, lm.get_input_embeddings().weight.shape[1])

    def grad_and_kept():
        kept = []

        def pack(t):
            kept.append(t.numel() * t.element_size())
            return t

        x = x0.clone().requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = decoder(inputs_embeds=x, use_cache=False).last_hidden_state
        out.pow(2).sum().backward()
        return x.grad, sum(kept)

    plain_grad, plain_kept = grad_and_kept()
    assert checkpoint_layers(lm) > 0
    grad, kept = grad_and_kept()
    torch.testing.assert_close(grad, plain_grad, rtol=1e-5, atol=1e-6)
    assert kept < plain_kept / 2, (kept, plain_kept)
    assert not lm.training and not any(m.training for m in lm.modules())
    with torch.no_grad():  # without gradients (and filling a cache) the layers run as they are
        torch.testing.assert_close(decoder(inputs_embeds=x0).last_hidden_state,
                                   decoder(inputs_embeds=x0, use_cache=False).last_hidden_state)


@pytest.mark.parametrize("arch", list(A.ARCHS))
def test_routed_linears_give_the_bf16_body_the_same_input_gradient(arch, tmp_path):
    """`route_frozen_linears`: a bf16 body on the CPU computes its input gradient from float32
    blocks of each weight (torch's bf16 kernel for `grad @ W` ran at 0.3 GFLOPS on AVX2 CPUs):
    the same forward, bit for bit, and the same gradient within bf16's rounding, on every
    architecture; frozen float32 weights and trainable ones are left to torch."""
    from transplant.io.frozen_linear import route_frozen_linears

    A.tiny_arch(arch, 300, tied=True, bos=1, eos=2, seed=2).to(torch.bfloat16).save_pretrained(tmp_path)
    plain, routed = load_frozen(tmp_path), load_frozen(tmp_path)
    linears = [m for m in routed.modules() if isinstance(m, torch.nn.Linear)]
    assert route_frozen_linears(routed) == len(linears) > 0
    x0 = torch.randn(2, 12, routed.get_input_embeddings().weight.shape[1], dtype=torch.bfloat16)
    outs, grads = [], []
    for lm in (plain, routed):
        x = x0.clone().requires_grad_(True)
        out = lm.base_model(inputs_embeds=x, use_cache=False).last_hidden_state
        out.float().pow(2).sum().backward()
        outs.append(out.detach())
        grads.append(x.grad.float())
    assert torch.equal(outs[0], outs[1])
    torch.testing.assert_close(grads[1], grads[0], rtol=0.02, atol=0.02 * float(grads[0].abs().max()))
    assert route_frozen_linears(load_frozen(tmp_path).float()) == 0  # float32: torch's own kernel is fast


SHARDED_PROBE = """
import sys, torch, torch.distributed as dist
from pathlib import Path
from transplant.io.sharded_load import load_sharded, process_mesh
from transplant.io.frozen_load import layer_stack, load_frozen
dist.init_process_group("gloo")
folder = Path(sys.argv[1])
lm, whole = load_sharded(folder, process_mesh("cpu"), "cpu"), load_frozen(folder)
layers = layer_stack(lm.base_model)[1]
local = lambda t: t.to_local() if hasattr(t, "to_local") else t
def layer_bytes():
    return sum(local(p).numel() * local(p).element_size() for layer in layers for p in layer.parameters())
full = sum(p.numel() * p.element_size() for layer in layer_stack(whole.base_model)[1] for p in layer.parameters())
held = layer_bytes()
x = torch.randn(2, 9, lm.get_input_embeddings().weight.shape[1], requires_grad=True)
out = lm.base_model(inputs_embeds=x, use_cache=False).last_hidden_state
after_forward = layer_bytes()
ref = whole.base_model(inputs_embeds=x, use_cache=False).last_hidden_state
out.sum().backward()
# One file per rank: two ranks printing to one stdout can interleave their lines.
Path(sys.argv[2], f"rank{dist.get_rank()}.txt").write_text(
    f"{held / full} {after_forward / full} {float((out - ref).abs().max())} {float(x.grad.abs().sum() > 0)}")
"""


@pytest.mark.parametrize("arch", ["llama", pytest.param("gemma3_text", marks=pytest.mark.slow)])
def test_a_sharded_body_holds_half_of_its_layers_on_each_of_two_processes(arch, tmp_path):
    """`load_sharded` over two processes (gloo): each holds half of every layer, still half after
    a forward (FSDP left its root units gathered, so the whole body came back), and computes what
    the whole model computes."""
    import subprocess
    import sys

    A.tiny_arch(arch, 300, tied=True, bos=1, eos=2, seed=2).save_pretrained(tmp_path / "m")
    probe = tmp_path / "probe.py"
    probe.write_text(SHARDED_PROBE)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(probe),
                           str(tmp_path / "m"), str(tmp_path)], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [(tmp_path / f"rank{rank}.txt").read_text() for rank in (0, 1)]
    for line in lines:
        held, after_forward, diff, has_grad = map(float, line.split())
        assert held == pytest.approx(0.5, abs=0.05) and after_forward == pytest.approx(0.5, abs=0.05), line
        assert diff < 1e-5 and has_grad == 1.0
