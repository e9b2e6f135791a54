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
