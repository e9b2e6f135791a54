"""The Python API in two steps: `plan_transplant` then `apply_to(model)` (in memory) or `write(out)`.

What a fine-tuning script gets in memory must equal what a written checkpoint reloads to: the
rows (calibration included), the config's and generation config's ids, and the tokenizer (what a
plain `tokenizer(text)` adds, the special tokens, the chat template), on every architecture of
the suite.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import arch_builders as A
import builders as B
from conftest import ROLES
from transplant import RunSpec, plan_transplant, transplant, transplant_model
from transplant.common.errors import TransplantError
from transplant.io.forced_class import load_snippet_tokenizer

FAMILIES = ["bl", "sp", "wp"]
TEXT = (B.DATA / "bible_es.txt").read_text(encoding="utf-8")[:20_000]
SAMPLE = "In the beginning God created the heaven and the earth.\n\nY la tierra estaba desordenada."
CHAT = [{"role": "user", "content": "Hola"}, {"role": "assistant", "content": "Buenos días"}]


def _reloaded(folder):
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    return model, load_snippet_tokenizer(folder)


def _same_tokenizer(a, b) -> None:
    assert a(SAMPLE).input_ids == b(SAMPLE).input_ids
    assert a(SAMPLE, add_special_tokens=False).input_ids == b(SAMPLE, add_special_tokens=False).input_ids
    for role in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        assert getattr(a, role) == getattr(b, role), role
    assert a.chat_template == b.chat_template
    if a.chat_template:
        assert a.apply_chat_template(CHAT, tokenize=False) == b.apply_chat_template(CHAT, tokenize=False)


@pytest.mark.parametrize("arch", list(A.ARCHS))
def test_applied_in_memory_equals_written_and_reloaded(arch, toks, tok_dirs, tmp_path):
    index = list(A.ARCHS).index(arch)
    src_name, dst_name = FAMILIES[index % 3], FAMILIES[(index + 1) % 3]
    tok = toks[src_name]
    vocab = tok.get_vocab()
    tied = index % 2 == 0
    model = A.tiny_arch(arch, tok.get_vocab_size(with_added_tokens=True), tied, vocab[ROLES[src_name]["bos"]],
                        vocab[ROLES[src_name]["eos"]], seed=index)
    src = B.save_model(model, tok, tmp_path / "src", **ROLES[src_name])
    settings = dict(method="fvt", calibrate_texts=[TEXT], calibrate_tokens=256, allow_forced_tokenizer_class=True,
                    quality_check=False)

    written = plan_transplant(src, tok_dirs[dst_name], **settings).write(tmp_path / "out")
    in_memory = AutoModelForCausalLM.from_pretrained(str(src)).eval()
    planned = plan_transplant(in_memory, tok_dirs[dst_name], old_tokenizer=src, **settings)
    assert planned.plan.meta["calibration"] == written.plan.meta["calibration"]  # calibrated the same
    applied, applied_tok = planned.apply_to(in_memory)
    reloaded, reloaded_tok = _reloaded(tmp_path / "out")

    assert applied is in_memory
    assert torch.equal(applied.get_input_embeddings().weight, reloaded.get_input_embeddings().weight)
    assert torch.equal(applied.get_output_embeddings().weight, reloaded.get_output_embeddings().weight)
    for cfg_a, cfg_b in ((applied.config, reloaded.config), (applied.generation_config, reloaded.generation_config)):
        for key in ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id"):
            assert getattr(cfg_a, key, None) == getattr(cfg_b, key, None), (arch, key)
    _same_tokenizer(applied_tok, reloaded_tok)
    ids = applied_tok(SAMPLE, return_tensors="pt").input_ids[:, :12]
    with torch.no_grad():
        assert torch.allclose(applied(ids).logits, reloaded(ids).logits, atol=1e-5)


def test_a_fine_tuning_script_gets_a_configured_tokenizer(build_model, tok_dirs, tmp_path):
    """A target tokenizer trained without `--like` has no pad and no chat template: the tokenizer
    `transplant_model` hands back carries the source's chat template re-expressed and the same pad
    as the model's config, as the written folder does."""
    src = build_model(tmp_path / "src", kind="llama", tied=True, tok="bl")
    model = AutoModelForCausalLM.from_pretrained(str(src))
    result = transplant_model(model, src, tok_dirs["sp"], method="fvt")
    tok = result.tokenizer
    assert tok is not None and len(tok) == model.config.vocab_size
    assert tok.pad_token_id == model.config.pad_token_id
    written = transplant(src, tok_dirs["sp"], tmp_path / "out", method="fvt")
    _same_tokenizer(tok, load_snippet_tokenizer(written.output_dir))
    assert json.loads((written.output_dir / "config.json").read_text())["pad_token_id"] == model.config.pad_token_id


def test_an_in_memory_transplant_calibrates_and_unties_as_the_written_one(build_model, tok_dirs, tmp_path):
    """`transplant(model_in_memory, ...)` used to drop `calibrate_texts` and `untie` silently."""
    src = build_model(tmp_path / "src", kind="llama", tied=True, tok="bl")
    model = AutoModelForCausalLM.from_pretrained(str(src))
    kwargs = dict(method="fvt", calibrate_texts=[TEXT], calibrate_tokens=256, untie=True)
    in_memory = transplant(model, tok_dirs["sp"], old_tokenizer=src, **kwargs)
    from_folder = transplant(src, tok_dirs["sp"], None, **kwargs)
    assert in_memory.plan.meta["calibration"]["tokens"] == 256
    assert in_memory.plan.meta["calibration"] == from_folder.plan.meta["calibration"]
    assert sorted(in_memory.embeddings) == ["input", "output"]  # untied: the head has rows of its own
    for side in ("input", "output"):
        assert torch.equal(in_memory.embeddings[side], from_folder.embeddings[side])
    assert not torch.equal(in_memory.embeddings["input"], in_memory.embeddings["output"])
    assert model.get_input_embeddings().weight.shape[0] == 500  # left untouched


def test_one_return_type_and_one_line_errors(build_model, tok_dirs, tmp_path):
    src = build_model(tmp_path / "src", kind="llama", tied=False, tok="bl")
    model = AutoModelForCausalLM.from_pretrained(str(src))
    planned = plan_transplant(model, tok_dirs["sp"], old_tokenizer=src, method="fvt")
    with pytest.raises(TransplantError, match="made from a model in memory: use plan.apply_to"):
        planned.write(tmp_path / "out")
    other = build_model(tmp_path / "other", kind="llama", tied=False, tok="sp")
    with pytest.raises(TransplantError, match="plan was made for a 500x32 one"):
        planned.apply_to(AutoModelForCausalLM.from_pretrained(str(other)))
    spec = RunSpec(model=str(src), new_tokenizer=str(tok_dirs["sp"]), out=str(tmp_path / "spec"), method="fvt")
    with pytest.raises(TransplantError, match="takes every setting from the spec; calibrate_texts given"):
        transplant(spec, calibrate_texts=["x"])
    with pytest.raises(TransplantError, match="unknown setting colour"):
        plan_transplant(src, tok_dirs["sp"], colour="red")
    with pytest.raises(TransplantError, match="pass no out and no eval_texts"):
        transplant(model, tok_dirs["sp"], old_tokenizer=src, eval_texts=["x"])
    assert not (tmp_path / "out").exists() and not (tmp_path / "spec").exists()
