"""The in-memory API used inside fine-tuning scripts: no files written, tensors returned."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from transplant import transplant, transplant_model


def test_transplant_without_out_returns_tensors_equal_to_written_checkpoint(build_model, tok_dirs, tmp_path):
    src = build_model(tmp_path / "src", kind="llama", tied=False, tok="bl")
    in_memory = transplant(str(src), str(tok_dirs["sp"]), None, method="fvt")
    assert in_memory.output_dir is None
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())
    written = transplant(str(src), str(tok_dirs["sp"]), str(tmp_path / "out"), method="fvt")
    model = AutoModelForCausalLM.from_pretrained(str(written.output_dir))
    assert torch.equal(in_memory.embeddings["input"], model.get_input_embeddings().weight.detach())
    assert torch.equal(in_memory.embeddings["output"], model.get_output_embeddings().weight.detach())


def test_transplant_model_replaces_embeddings_and_ids(build_model, tok_dirs, tmp_path):
    src = build_model(tmp_path / "src", kind="llama", tied=True, tok="bl")
    model = AutoModelForCausalLM.from_pretrained(str(src))
    old_rows = model.get_input_embeddings().weight.detach().clone()
    result = transplant_model(model, str(src), str(tok_dirs["sp"]), method="fvt")
    emb = model.get_input_embeddings().weight
    assert emb.shape[0] == result.plan.new_size
    assert torch.equal(emb.detach(), result.embeddings["input"])
    # tied stays tied, and the config speaks the new tokenizer's ids (</s> is eos there).
    assert model.get_output_embeddings().weight is emb
    sp_vocab = {"</s>": 2, "<s>": 1}
    assert model.config.eos_token_id == sp_vocab["</s>"]
    # exact rows are copies of old rows
    for i, label in enumerate(result.plan.provenance):
        if label in ("exact", "byte"):
            _, idx, _ = result.plan.row(i)
            assert torch.equal(emb[i].detach(), old_rows[idx[0]])
    out = model.generate(torch.tensor([[1, 40, 41]]), max_new_tokens=3, do_sample=False)
    assert out.shape[1] == 6


def test_transplant_accepts_an_in_memory_model_and_leaves_it_untouched(build_model, tok_dirs, tmp_path):
    src = build_model(tmp_path / "src", kind="llama", tied=False, tok="bl")
    model = AutoModelForCausalLM.from_pretrained(str(src))
    before = model.get_input_embeddings().weight.detach().clone()
    result = transplant(model, str(tok_dirs["sp"]), old_tokenizer=str(src), method="fvt")
    from_disk = transplant(str(src), str(tok_dirs["sp"]), None, method="fvt")
    assert torch.equal(result.embeddings["input"], from_disk.embeddings["input"])
    assert torch.equal(result.embeddings["output"], from_disk.embeddings["output"])
    assert torch.equal(model.get_input_embeddings().weight, before)


def test_transplant_model_does_not_sample_rows_it_overwrites(build_model, tok_dirs, tmp_path, monkeypatch):
    """Growing the in-memory model must not fit and sample a normal for every new row (transformers'
    mean_resizing: minutes and a warning on a 262k vocabulary) when the plan overwrites them all."""
    src = build_model(tmp_path / "src", kind="llama", tied=True, tok="bl")
    model = AutoModelForCausalLM.from_pretrained(str(src))
    calls = []
    resize = type(model).resize_token_embeddings

    def spy(self, *args, **kwargs):
        calls.append(kwargs.get("mean_resizing", True))
        return resize(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "resize_token_embeddings", spy)
    transplant_model(model, str(src), str(tok_dirs["sp"]), method="fvt")
    assert calls == [False]
