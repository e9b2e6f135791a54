"""One rule for what turns a body's output into logits (`measure.lm.LogitRule`): the paths that
compute logits themselves (heal's and the hypernetwork's `FrozenLM`, calibration's fit) must give
what transformers' own forward gives, on every architecture of the suite, including the ones
that scale (Cohere's `logit_scale`, Granite's `logits_scaling`) or soft-cap (Gemma) their logits."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import arch_builders as A
from transplant.measure.lm import LogitRule
from transplant.train.heal_model import FrozenLM

# Settings that make the rule matter where the architecture has it.
EXTRA = {"cohere": {"logit_scale": 0.25}, "gemma3_text": {"final_logit_softcapping": 3.0},
         "granite": {"logits_scaling": 4.0}}
ARCHS = {**A.ARCHS, "granite": dict(A.ARCHS["llama"])}


def _tiny(model_type: str) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = AutoConfig.for_model(model_type, vocab_size=64, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                               pad_token_id=None, **ARCHS[model_type], **EXTRA.get(model_type, {}))
    model = AutoModelForCausalLM.from_config(cfg).float().eval()
    with torch.no_grad():  # logits large enough for a cap or a scale to show
        model.get_output_embeddings().weight.normal_(0, 2.0)
    return model


@pytest.mark.parametrize("model_type", list(ARCHS))
def test_frozen_lm_logits_are_the_models_own(model_type):
    model = _tiny(model_type)
    ids = torch.tensor([[1, 5, 9, 33, 12, 7], [1, 40, 3, 3, 60, 2]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits.float()
        frozen = FrozenLM(model)
        got = frozen.logits(frozen.hidden(frozen.E_in[ids].float(), mask))
        plain = frozen.rule.__class__()(torch.nn.functional.linear(frozen.hidden(frozen.E_in[ids].float(), mask),
                                                                  frozen.W_out, frozen.bias))
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (model_type, (got - want).abs().max())
    if model_type in EXTRA:  # the rule is what makes them agree here
        assert not torch.allclose(plain, want, atol=1e-3)


def test_the_rule_reads_every_config_form():
    assert LogitRule.of(_tiny("cohere").config) == LogitRule(0.25, None)
    assert LogitRule.of(_tiny("granite").config) == LogitRule(0.25, None)
    assert LogitRule.of(_tiny("gemma3_text").config) == LogitRule(1.0, 3.0)
    assert LogitRule.of(_tiny("llama").config) == LogitRule()
