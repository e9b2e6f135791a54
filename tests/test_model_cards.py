"""One model card for `run`, `extend` and `heal`: the same metadata, title, usage snippet and GGUF
note on each; the card's language recognized in the run's text (or left out); the target
tokenizer named by its source."""

from __future__ import annotations

import re

import builders as B
import pytest
import yaml

from transplant import apply_plan, transplant
from transplant.common.language import detect_language
from transplant.extend import extend
from transplant.io import sources
from transplant.train.heal import HealConfig, heal

GERMAN = ("Am Anfang schuf Gott den Himmel und die Erde. Und die Erde war wüst und leer, und es war finster auf "
          "der Tiefe; und der Geist Gottes schwebte auf dem Wasser. Und Gott sprach: Es werde Licht! Und es ward "
          "Licht. Und Gott sah, dass das Licht gut war. Da schied Gott das Licht von der Finsternis.\n\n") * 8
HUB_ID = "tiny-org/tiny-llama"


def _card(folder):
    text = (folder / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    front, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(front), body, text


@pytest.fixture
def gguf_model(build_model, tmp_path, monkeypatch):
    """A `.gguf` argument: a real GGUF header (licence, language, Q8_0, source repo), whose
    conversion is the tiny model (converting a real GGUF is covered with the real models)."""
    gguf = pytest.importorskip("gguf")
    folder = build_model(tmp_path / "converted")
    path = tmp_path / "tiny.Q8_0.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string("general.license", "apache-2.0")
    writer.add_array("general.languages", ["en"])
    writer.add_uint32("general.file_type", 7)
    writer.add_string("general.source.huggingface.repository", HUB_ID)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    real = sources.convert_gguf
    monkeypatch.setattr(sources, "convert_gguf", lambda p: folder if p.name == path.name else real(p))
    return path


def _check_common(out, meta, body, text, tmp_path, kind):
    """What every card says, whichever command wrote it."""
    assert meta["base_model"] == HUB_ID
    assert meta["license"] == "apache-2.0"
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert {"tokenizer-transplant", "tokentransplant", "init-fvt"} <= set(meta["tags"])
    assert body.splitlines()[1].startswith(f"# tiny.Q8_0.gguf ({kind}")  # the model as the user named it
    assert "dequantized to float32 from the Q8_0 GGUF file `tiny.Q8_0.gguf`" in body
    assert "## How to use" in body and "AutoTokenizer.from_pretrained(" in body and "model.generate(" in body
    assert str(tmp_path) not in text and "converted" not in body  # no local path, no cache folder name
    # The snippet (loading, then generating) runs as written, with this folder for `path/to/...`.
    usage = body.split("## How to use", 1)[1].split("\n## ", 1)[0]
    code = "".join(block.split("```", 1)[0] for block in usage.split("```python\n")[1:])
    assert "from_pretrained" in code and "generate" in code
    scope: dict = {}
    exec(re.sub(r'"path/to/[^"]+"', repr(str(out)), code), scope)  # noqa: S102 (the card's own code)
    assert scope["outputs"].shape[1] > scope["inputs"]["input_ids"].shape[1]


def test_run_extend_and_heal_write_the_same_card(gguf_model, tok_dirs, tmp_path):
    run = transplant(gguf_model, tok_dirs["sp"], tmp_path / "run", method="fvt", eval_texts=[GERMAN]).output_dir
    meta, body, text = _card(run)
    _check_common(run, meta, body, text, tmp_path, "transplanted tokenizer")
    assert meta["language"] == ["de"]  # the German evaluation text, not the source's `en`
    assert "Target tokenizer: `sp` (BPE with byte fallback" in body
    assert "## Evaluation" in body

    spanish = tmp_path / "es.txt"
    spanish.write_text(B.sample_text("es")[:20_000], encoding="utf-8")
    ext = tmp_path / "ext"
    res = extend(gguf_model, [spanish], 30, ext, method="fvt")
    meta, body, text = _card(ext)
    _check_common(ext, meta, body, text, tmp_path, f"extended tokenizer, +{len(res.new_tokens)} tokens")
    assert meta["language"] == ["en", "es"]  # the source's languages, and the extension text's
    assert "vocabulary-extension" in meta["tags"]
    assert "## Added tokens" in body and "`es.txt`" in body
    assert f"with {len(res.new_tokens)} tokens appended" in body

    healed = heal(HealConfig(model=str(ext), texts=[str(spanish)], out=str(tmp_path / "healed"), steps=2,
                             seq_len=32)).out
    meta, body, text = _card(healed)
    _check_common(healed, meta, body, text, tmp_path,
                  f"extended tokenizer, +{len(res.new_tokens)} tokens, healed")
    assert meta["language"] == ["en", "es"] and "healed" in meta["tags"]
    assert "## Added tokens" in body and "## Healing" in body
    assert "distilling the original model (`tiny.Q8_0.gguf`)" in body  # the teacher as named, not its folder


def test_language_is_recognized_or_left_out(llama_bl, tok_dirs, tmp_path):
    transplant(llama_bl, tok_dirs["sp"], tmp_path / "none", method="fvt")
    meta, body, _ = _card(tmp_path / "none")
    assert "language" not in meta  # no text to tell: no language, never a default `en`
    assert 'tokenizer("Once upon a time"' in body
    transplant(llama_bl, tok_dirs["sp"], tmp_path / "de", method="fvt", eval_texts=[GERMAN])
    meta, body, _ = _card(tmp_path / "de")
    assert meta["language"] == ["de"] and 'tokenizer("Es war einmal"' in body
    apply_plan(tmp_path / "de", llama_bl, tmp_path / "applied")  # the plan's language goes with it
    meta, body, _ = _card(tmp_path / "applied")
    assert meta["language"] == ["de"] and "## How to use" in body
    transplant(llama_bl, tok_dirs["sp"], tmp_path / "given", method="fvt", eval_texts=[GERMAN], language=["fr"])
    assert _card(tmp_path / "given")[0]["language"] == ["fr"]  # --language wins


def test_detect_language():
    assert detect_language([GERMAN]) == "de"
    assert detect_language([B.sample_text("en")]) == "en"
    assert detect_language([B.sample_text("es")]) == "es"
    assert detect_language(["def f(x):\n    return x + 1\n\nclass A:\n    pass\n" * 5]) == "code"
    assert detect_language(["Lorem ipsum dolor sit amet, consectetur adipiscing elit"]) is None
    assert detect_language([]) is None and detect_language([""]) is None


def test_target_tokenizer_is_named_by_its_source(build_model, tok_dirs, llama_bl, tmp_path):
    """A tokenizer given as a model says so; a tokenizer file says what it is."""
    donor = build_model(tmp_path / "donor-model", tok="wp")
    transplant(llama_bl, donor, tmp_path / "a", method="fvt")
    body = _card(tmp_path / "a")[1]
    assert re.search(r"Target tokenizer: `donor-model` \(WordPiece, [\d,]+ tokens, from a llama model\)\.", body)
    transplant(llama_bl, tok_dirs["bl"] / "tokenizer.json", tmp_path / "b", method="fvt")
    body = _card(tmp_path / "b")[1]
    assert re.search(r"Target tokenizer: `bl/tokenizer.json` \(byte-level BPE, [\d,]+ tokens\)\.", body)
