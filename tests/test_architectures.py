"""Every common architecture, tied and untied, moved onto another tokenizer family.

Each case builds a tiny random model (see `arch_builders.py`) for one tokenizer, saves it with
`save_pretrained`, transplants it onto the next family (bl -> sp -> wp -> bl) and checks that
the output loads cleanly with plain transformers, has the new vocabulary's rows, carries
exactly the rows the plan gives (old head rows for an untied head, not the input matrix) and
generates.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

import arch_builders as A
import builders as B
from conftest import ROLES
from transplant.api import transplant

FAMILIES = ["bl", "sp", "wp"]
CASES = [(arch, tied) for arch in A.ARCHS for tied in (True, False)]
# transformers 5.x `AutoTokenizer` forces Qwen2Tokenizer on model_type qwen2, which ignores the
# written tokenizer.json: those outputs are written with `allow_forced_tokenizer_class` and their
# tokenizer loaded as the card says (tests/test_forced_tokenizer_class.py covers the rule itself).
KNOWN_GAPS: dict = {}


def _params():
    for index, (arch, tied) in enumerate(CASES):
        marks = []
        if (arch, tied) in KNOWN_GAPS:
            reason, raises = KNOWN_GAPS[arch, tied]
            marks = [pytest.mark.xfail(strict=True, reason=reason, raises=raises)]
        yield pytest.param(index, id=f"{arch}-{'tied' if tied else 'untied'}", marks=marks)


@pytest.mark.parametrize("index", _params())
def test_architecture_transplants(index, toks, tok_dirs, tmp_path):
    arch, tied = CASES[index]
    # Rotate the tokenizer pair so every family is both a source and a target somewhere.
    src_name, dst_name = FAMILIES[index % 3], FAMILIES[(index + 1) % 3]
    tok = toks[src_name]
    vocab = tok.get_vocab()
    model = A.tiny_arch(arch, tok.get_vocab_size(with_added_tokens=True), tied,
                        vocab[ROLES[src_name]["bos"]], vocab[ROLES[src_name]["eos"]], seed=index)
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = None if tied else model.get_output_embeddings().weight.detach().clone()
    old_bias = getattr(model.get_output_embeddings(), "bias", None)
    old_bias = None if old_bias is None else old_bias.detach().clone()
    src = B.save_model(model, tok, tmp_path / "src", **ROLES[src_name])
    out = tmp_path / "out"

    result = transplant(src, tok_dirs[dst_name], out, method="fvt", allow_forced_tokenizer_class=True)
    plan = result.plan

    new, info = AutoModelForCausalLM.from_pretrained(str(out), output_loading_info=True)
    # A tied head stored once is re-tied silently, so nothing at all may be reported.
    for what in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert not info.get(what), f"{arch}: {what} {info.get(what)}"
    new_in = new.get_input_embeddings().weight.detach()
    new_out = new.get_output_embeddings().weight.detach()
    assert new_in.shape == (plan.new_size, old_in.shape[1])
    assert new_out.shape == (plan.new_size, old_in.shape[1])
    assert new.config.get_text_config().vocab_size == plan.new_size

    torch.testing.assert_close(new_in, plan.apply(old_in), rtol=0, atol=1e-6)
    exact = [(i, plan.row(i)[1][0]) for i, p in enumerate(plan.provenance) if p == "exact"]
    assert exact, "the tokenizer pair shares no token"
    if old_bias is not None:
        # A per-token head bias follows its token like the head row does.
        new_bias = new.get_output_embeddings().bias.detach()
        assert new_bias.shape == (plan.new_size,)
        assert all(torch.equal(new_bias[i], old_bias[j]) for i, j in exact)
    if tied:
        assert torch.equal(new_out, new_in)
    else:
        # The head is rebuilt from the old head, not copied from the new input matrix.
        torch.testing.assert_close(new_out, plan.apply(old_out), rtol=0, atol=1e-6)
        for i, j in exact:
            assert torch.equal(new_out[i], old_out[j]) and torch.equal(new_in[i], old_in[j])

    forced = result.plan.meta.get("forced_tokenizer_class")  # then the card says to load it generically
    new_tok = (PreTrainedTokenizerFast if forced else AutoTokenizer).from_pretrained(str(out))
    ids = new_tok("In the beginning God", add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        gen = new.eval().generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, min_new_tokens=4,
                                  do_sample=False)
    assert gen.shape == (1, ids.shape[1] + 4)
    assert int(gen.max()) < plan.new_size
