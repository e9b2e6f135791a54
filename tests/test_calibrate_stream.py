"""Calibration reads the source one decoder layer at a time (`calibrate_stream`): the hidden
states are the whole model's, bit for bit, on every common architecture and in the checkpoint's
own dtype; each layer is read once and let go; the fitted scale is the whole-model path's; the
expected peak is said first and a read that cannot fit is refused in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import arch_builders as A
from conftest import TEXT
from transplant.api import transplant
from transplant.common.errors import TransplantError
from transplant.io.checkpoint import locate_embeddings, read_embedding
from transplant.methods import calibrate_stream
from transplant.methods.calibrate_read import hidden_states_through_rows

VOCAB = 300


def _chunks() -> list[list[int]]:
    rng = np.random.RandomState(0)
    return [rng.randint(3, VOCAB, 120).tolist(), rng.randint(3, VOCAB, 70).tolist()]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("arch", list(A.ARCHS))
def test_streamed_hidden_states_are_the_whole_models(arch, dtype, tmp_path):
    model = A.tiny_arch(arch, VOCAB, tied=arch in ("gpt2", "gemma", "gemma3_text"), bos=1, eos=2, seed=1).to(dtype)
    model.save_pretrained(tmp_path)
    layout = locate_embeddings(tmp_path)
    old = read_embedding(layout, layout.input_key)

    def rows(ids):
        return old[torch.from_numpy(ids)].flip(1)  # "new" rows unlike the model's own

    whole = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=dtype).eval()
    h_whole, y_whole = hidden_states_through_rows(whole, rows, _chunks(), 1, VOCAB)
    streamed = calibrate_stream.open_streamed(tmp_path, layout)
    assert streamed.why_not is None and streamed.dtype == dtype
    h, y = hidden_states_through_rows(streamed.model, rows, _chunks(), 1, VOCAB, streamed.batch_tokens(512))
    assert torch.equal(y, y_whole)
    assert torch.equal(h, h_whole)  # the same forward, layer for layer, in the stored dtype
    assert dict(streamed.reads) == {i: 1 for i in range(streamed.layers)}  # one batch: each layer read once
    # every layer let go once it ran, the head never read
    assert all(p.device.type == "meta" for n, p in streamed.model.named_parameters()
               if "embed" not in n and p.dim() > 1 and p is not streamed.model.get_input_embeddings().weight
               and ("layers" in n or ".h." in n or "lm_head" in n))


def test_the_calibrated_transplant_fits_the_whole_models_scale(llama_bl, tok_dirs, tmp_path, monkeypatch):
    """The streamed read and the whole-model read give the same fitted scales and the same rows."""
    streamed = transplant(llama_bl, tok_dirs["sp"], tmp_path / "streamed", method="fvt", calibrate_texts=[TEXT])

    def refuse(folder, layout, trust_remote_code=False):
        return calibrate_stream.StreamedModel(None, "refused by the test")

    monkeypatch.setattr(calibrate_stream, "open_streamed", refuse)
    whole = transplant(llama_bl, tok_dirs["sp"], tmp_path / "whole", method="fvt", calibrate_texts=[TEXT])
    a, b = streamed.plan.meta["calibration"], whole.plan.meta["calibration"]
    assert a["scale"] != 1.0 and a == b
    from safetensors.torch import load_file

    assert all(torch.equal(t, load_file(tmp_path / "whole" / "model.safetensors")[k])
               for k, t in load_file(tmp_path / "streamed" / "model.safetensors").items())


def test_a_source_that_cannot_stream_is_read_whole_with_a_line(llama_bl, tok_dirs, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(calibrate_stream, "open_streamed",
                        lambda *a, **k: calibrate_stream.StreamedModel(None, "no stack of decoder layers found"))
    transplant(llama_bl, tok_dirs["sp"], tmp_path / "out", method="fvt", calibrate_texts=[TEXT])
    err = capsys.readouterr().err
    assert "cannot be read one layer at a time (no stack of decoder layers found); loading it whole" in err
    assert "calibration (the whole source in float32): expected peak" in err


def test_calibration_says_its_peak_and_refuses_what_cannot_fit(llama_bl, tok_dirs, tmp_path, monkeypatch, capsys):
    transplant(llama_bl, tok_dirs["sp"], tmp_path / "fits", method="fvt", calibrate_texts=[TEXT])
    assert "calibration (the source read one layer at a time, float32): expected peak" in capsys.readouterr().err
    monkeypatch.setenv("TOKENTRANSPLANT_MAX_MEMORY", "1M")  # less than this process already holds
    with pytest.raises(TransplantError, match=r"calibration .* more memory .*--calibrate-tokens N.*--no-calibrate"):
        transplant(llama_bl, tok_dirs["sp"], tmp_path / "refused", method="fvt", calibrate_texts=[TEXT])
    assert not (tmp_path / "refused").exists()  # refused before anything was written


def test_the_peak_estimate_grows_with_one_layer_not_the_depth():
    shallow = calibrate_stream.StreamedModel(None, layers=4, dtype=torch.bfloat16, layer_bytes=436 << 20,
                                             width=4096, widest=14336, heads=32)
    deep = calibrate_stream.StreamedModel(None, layers=32, dtype=torch.bfloat16, layer_bytes=436 << 20,
                                          width=4096, widest=14336, heads=32)
    assert shallow.peak_bytes(4096) == deep.peak_bytes(4096) < 2_000_000_000
    assert deep.batch_tokens(512) >= 4096  # the default text in one batch at 7B widths: each layer read once


def test_calibration_reads_and_encodes_only_the_head_its_budget_can_use(tmp_path):
    """A calibration text is read and encoded only as far as `calibrate_tokens` can reach: a
    50 MB one-line file (what `tokenizer train` may have recorded) cost 150 s and 8.2 GB."""
    from transplant.common.texts import BYTES_PER_TOKEN_BOUND, read_text_head
    from transplant.methods.calibrate_read import calibration_chunks
    from transplant.runspec import RunSpec

    big = tmp_path / "one-line.txt"
    with open(big, "w", encoding="utf-8") as fh:
        for _ in range(400):
            fh.write("wörter " * 2_000)  # 6.4 MB on one line
    spec = RunSpec(model="m", new_tokenizer="t", out="o", calibrate_texts=[str(big)], calibrate_tokens=512)
    (text,) = spec.read_calibrate_texts()
    assert len(text.encode("utf-8")) <= 512 * BYTES_PER_TOKEN_BOUND < big.stat().st_size
    seen = []

    def encode(docs):
        seen.extend(len(d) for d in docs)
        return [[1] * len(d) for d in docs]

    for text in ("wörter " * 1_000_000, "a\n\n" * 1_000_000):  # one 7 MB line; a million documents
        seen.clear()
        chunks = calibration_chunks(encode, [text], 100, 50)
        assert sum(len(c) for c in chunks) == 100 and sum(seen) <= 100 * BYTES_PER_TOKEN_BOUND + 2 * len(seen)
    assert read_text_head(big, 3) == "wö"  # a character cut at the end is left out
