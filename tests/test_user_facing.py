"""What a user sees: help texts, `methods`, eval labels, progress bars and --quiet, the demo's
output checks, the custom-code refusal, Ctrl-C, and the model card's metadata and paths."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import builders as B
import pytest
import yaml
from click.testing import CliRunner

import transplant.cli.commands as cli_mod
from transplant.io.card import build_card, gguf_metadata, source_card_metadata
from transplant.common.errors import TransplantError

EVAL_TEXT = "In the beginning God created the heaven and the earth.\n\nAnd the earth was without form, and void.\n"


def runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        return CliRunner()


def invoke(*args, **kwargs):
    return runner().invoke(cli_mod.cli, [str(a) for a in args], catch_exceptions=False, **kwargs)


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "held_out.txt"
    path.write_text(EVAL_TEXT)
    return path


@pytest.fixture
def bars_on(monkeypatch):
    """Progress bars enabled whatever HF_HUB_DISABLE_PROGRESS_BARS said when huggingface_hub was imported."""
    hub_tqdm = importlib.import_module("huggingface_hub.utils.tqdm")
    monkeypatch.setattr(hub_tqdm, "HF_HUB_DISABLE_PROGRESS_BARS", None)
    monkeypatch.setattr(hub_tqdm, "progress_bar_states", {})
    return hub_tqdm


# -- help texts and the methods listing --------------------------------------------------------

def _commands(group: click.Group, path=("transplant",)):
    yield path, group
    ctx = click.Context(group)
    for name in group.list_commands(ctx):  # the lazy `hypernet` group lists its commands here
        cmd = group.get_command(ctx, name)
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, path + (name,))
        else:
            yield path + (name,), cmd


def test_every_option_has_help():
    missing = []
    for path, cmd in _commands(cli_mod.cli):
        assert (cmd.help or "").strip(), f"{' '.join(path)} has no help"
        for param in cmd.params:
            if isinstance(param, click.Option) and not (param.help or "").strip():
                missing.append(f"{' '.join(path)} {param.opts[0]}")
    assert not missing, missing


def test_transplant_hypernet_is_the_hypernet_program(monkeypatch, capsys):
    """`transplant hypernet ...` runs the `hypernet` program's commands (it said "no such
    command"), and `transplant --help` names it."""
    from hypernet.cli import main as hn_main

    assert "hypernet" in invoke("--help").stdout
    listed = invoke("hypernet", "list").stdout
    monkeypatch.setattr("sys.argv", ["hypernet", "list"])
    hn_main()
    assert listed == capsys.readouterr().out and "shipped" in listed
    assert "--shard-body" in invoke("hypernet", "train", "--help").stdout


def test_help_lists_quiet_and_language():
    assert "--quiet" in invoke("--help").stdout
    assert "--language" in invoke("run", "--help").stdout
    assert "--trust-remote-code" in invoke("eval", "--help").stdout


def test_methods_have_descriptions():
    from transplant.methods.initializers import available

    result = invoke("methods")
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    for name in available():
        assert name in lines, result.stdout
        description = lines[name][len(name):].strip()
        assert len(description) > 15, lines[name]
    assert "always applied first" in lines["special"]


# -- eval: labels, JSON, custom code -----------------------------------------------------------

@pytest.fixture(scope="module")
def other_model(build_model, tmp_path_factory):
    return build_model(tmp_path_factory.mktemp("other") / "other-llama", "llama", tied=True, seed=1)


def test_eval_compare_labels_rows_with_model_names(llama_bl, other_model, text_file):
    result = invoke("--quiet", "eval", "--model", other_model, "--compare", llama_bl, "--text", text_file)
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["model", "bits/byte", "bytes/token", "ratio"]
    assert lines[1].startswith("llama-bl ") and lines[1].rstrip().endswith("1.000")
    assert lines[2].startswith("other-llama ")
    assert "original" not in result.stdout

    doc = json.loads(invoke("--quiet", "eval", "--model", other_model, "--compare", llama_bl, "--text", text_file,
                            "--json").stdout)
    assert doc["model"]["name"] == "other-llama" and doc["compare"]["name"] == "llama-bl"
    assert doc["ratio"] == pytest.approx(doc["model"]["bpb"] / doc["compare"]["bpb"])


def test_eval_scores_50_kb_by_default_as_run_does(llama_bl, text_file, tmp_path):
    """`eval` on a long file scores its leading whole documents up to 50,000 bytes, like
    `run --eval-text`; `--max-bytes 0` scores every document."""
    long = tmp_path / "long.txt"
    sample = B.sample_text("en").strip()
    long.write_text("\n\n".join([sample] * (1 + 60_000 // len(sample.encode()))) + "\n")
    assert long.stat().st_size > 60_000
    default = json.loads(invoke("-q", "eval", "--model", llama_bl, "--text", long, "--json").stdout)["model"]
    whole = json.loads(invoke("-q", "eval", "--model", llama_bl, "--text", long, "--max-bytes", "0",
                              "--json").stdout)["model"]
    assert 40_000 < default["bytes"] <= 50_000 < whole["bytes"]


def test_eval_same_folder_twice_gets_distinct_labels(llama_bl, text_file):
    doc = json.loads(invoke("-q", "eval", "--model", llama_bl, "--compare", llama_bl, "--text", text_file,
                            "--json").stdout)
    assert doc["model"]["name"] != doc["compare"]["name"]
    assert doc["ratio"] == pytest.approx(1.0)


@pytest.fixture
def custom_code_model(llama_bl, tmp_path):
    """A model folder whose config asks for custom code that would leave a marker file if run."""
    folder = tmp_path / "custom"
    shutil.copytree(llama_bl, folder)
    marker = tmp_path / "CUSTOM_CODE_RAN"
    (folder / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "class EvilConfig(LlamaConfig):\n    pass\n"
        "class EvilModel(LlamaForCausalLM):\n    config_class = EvilConfig\n")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder, marker


@pytest.mark.parametrize("stdin", ["closed", "yes"])
def test_eval_refuses_custom_code_without_prompting(custom_code_model, text_file, stdin, tmp_path):
    folder, marker = custom_code_model
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    kwargs = {"stdin": subprocess.DEVNULL} if stdin == "closed" else {"input": "y\n"}
    proc = subprocess.run([sys.executable, "-m", "transplant.cli", "eval", "--model", str(folder), "--text",
                           str(text_file)], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
                          **kwargs)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "needs custom code" in lines[0], lines[0]
    assert "pass --trust-remote-code if you trust it" in lines[0]
    assert not marker.exists()


def test_evaluate_bpb_refuses_custom_code_in_process(custom_code_model):
    from transplant.measure.evaluate import evaluate_bpb

    folder, marker = custom_code_model
    with pytest.raises(TransplantError, match="needs custom code"):
        evaluate_bpb(folder, [EVAL_TEXT])
    assert not marker.exists()


# -- progress bars --------------------------------------------------------------------------

def test_eval_shows_progress(bars_on, llama_bl, text_file):
    result = invoke("eval", "--model", llama_bl, "--text", text_file)
    assert "scoring llama-bl" in result.stderr and "tok" in result.stderr, result.stderr
    assert "scoring" not in result.stdout


def test_quiet_silences_progress(bars_on, llama_bl, text_file):
    result = invoke("--quiet", "eval", "--model", llama_bl, "--text", text_file)
    assert "scoring" not in result.stderr and "%|" not in result.stderr, result.stderr
    assert result.stdout.splitlines()[1].startswith("llama-bl")
    # --quiet lasts for its command only.
    from transplant.common.progress import bars_disabled

    assert not bars_disabled()


def test_hf_env_var_silences_progress(bars_on, monkeypatch, llama_bl, text_file):
    # HF_HUB_DISABLE_PROGRESS_BARS=1 is read when huggingface_hub is imported: set what it sets.
    monkeypatch.setattr(bars_on, "HF_HUB_DISABLE_PROGRESS_BARS", True)
    monkeypatch.setattr("transformers.utils.logging._tqdm_active", False)  # transformers reads it at import too
    result = invoke("eval", "--model", llama_bl, "--text", text_file)
    assert "scoring" not in result.stderr and "%|" not in result.stderr, result.stderr


def test_run_shows_each_stage_and_quiet_hides_them(bars_on, llama_bl, tok_dirs, tmp_path):
    shown = invoke("run", "--model", llama_bl, "--new-tok", tok_dirs["sp"], "--out", tmp_path / "a")
    for stage in ("aligning", "planning", "writing"):
        assert stage in shown.stderr, shown.stderr
    quiet = invoke("-q", "run", "--model", llama_bl, "--new-tok", tok_dirs["sp"], "--out", tmp_path / "b")
    for stage in ("aligning", "planning", "writing", "%|"):
        assert stage not in quiet.stderr, quiet.stderr
    assert quiet.stdout.startswith("wrote ")


# -- the demo ---------------------------------------------------------------------------------

def _forbid(name):
    def fail(*args, **kwargs):
        raise AssertionError(f"{name} called before the output check")
    return fail


def run_main(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["transplant", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        cli_mod.main()
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def test_demo_refuses_existing_output_before_any_work(monkeypatch, capsys, tmp_path):
    import transplant.demo as demo
    import transplant.io.sources as sources

    for name in ("train_byte_level_bpe", "demo_split"):
        monkeypatch.setattr(demo, name, _forbid(name))
    for name in ("resolve_model", "packaged_gguf", "convert_gguf"):
        monkeypatch.setattr(sources, name, _forbid(name))
    out = tmp_path / "smollm2-es"
    out.mkdir()
    code, stdout, stderr = run_main(monkeypatch, capsys, "demo", "--out", out)
    assert code != 0
    assert stderr == f"error: output folder {out.resolve()} already exists (pass --overwrite to replace it)\n"


def test_demo_defaults_to_the_cache_and_reuses_its_tokenizer(monkeypatch, tmp_path):
    import transplant.api as api
    import transplant.demo as demo
    import transplant.io.sources as sources

    monkeypatch.setenv("TOKENTRANSPLANT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sources, "packaged_gguf", lambda name: tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf")
    monkeypatch.setattr(sources, "resolve_model", lambda spec: tmp_path)
    calls = {"train": 0, "transplant": []}
    real_train = demo.train_byte_level_bpe

    def train(lines, vocab_size, folder):
        calls["train"] += 1
        return real_train(lines[:200], vocab_size, folder)

    def fake_transplant(model, tok, out, **kwargs):
        calls["transplant"].append((out, kwargs["overwrite"]))
        return "result"

    monkeypatch.setattr(demo, "train_byte_level_bpe", train)
    monkeypatch.setattr(api, "transplant", fake_transplant)
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        info = demo.run_demo(vocab_size=300, eval_bytes=2000, compare_fvt=False)
    assert calls["train"] == 1  # the second run reused the cached tokenizer
    out, overwrite = calls["transplant"][-1]
    assert Path(out) == tmp_path / "cache" / "demo" / "smollm2-es-auto" and overwrite
    assert Path(info["tokenizer"]).parent == tmp_path / "cache" / "demo"
    assert (Path(info["tokenizer"]) / "tokenizer.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("smollm2")]  # nothing in the current folder


def test_demo_help_says_where_the_output_goes():
    assert "cache" in invoke("demo", "--help").stdout


def test_tokenizer_train_prints_no_blank_lines(tmp_path):
    """tokenizers' trainers end each progress stage with a newline on stdout (at the C level,
    so a real process, with bars enabled): none of them may reach the command's output."""
    text = tmp_path / "train.txt"
    text.write_text(B.sample_text("en")[:20_000], encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    proc = subprocess.run([sys.executable, "-m", "transplant.cli", "tokenizer", "train", "--text", str(text),
                           "--vocab-size", "400", "--out", str(tmp_path / "tok")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("tokenizer: ") and "\n\n" not in proc.stdout, repr(proc.stdout)


# -- Ctrl-C -----------------------------------------------------------------------------------

def test_ctrl_c_prints_one_line_and_exits_130(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # the handler raises before this ends

    before = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(cli_mod.cli, "main", interrupted)
    code, stdout, stderr = run_main(monkeypatch, capsys, "methods")
    assert code == 130
    assert stderr == "error: interrupted (no output was written)\n"
    assert signal.getsignal(signal.SIGINT) is before


def test_keyboard_interrupt_inside_click_prints_one_line(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise click.exceptions.Abort()

    monkeypatch.setattr(cli_mod.cli, "main", interrupted)
    code, _, stderr = run_main(monkeypatch, capsys, "methods")
    assert code == 130 and stderr == "error: interrupted (no output was written)\n"


# -- the model card -----------------------------------------------------------------------------

def _info(tmp_path: Path, **extra) -> dict:
    info = {
        "base_model": str(tmp_path / "models" / "my-model"), "base_model_id": None, "method": "fvt",
        "old_family": "byte-level BPE", "new_family": "SentencePiece BPE", "old_vocab": 500, "new_vocab": 800,
        "new_tokenizer": str(tmp_path / "de-tok" / "tokenizer.json"), "chat_template": "kept",
        "old_rows": 500, "new_rows": 800, "chain": "special → exact → fvt → mean",
        "counts": {"exact": 300, "fvt": 450, "mean": 50}, "notes": [f"pad_token_id remapped ({tmp_path}/x)"],
        "plan_files": "`transplant_plan.json`", "plan_ref": str(tmp_path / "out" / "my-model-de"), "head_note": "",
        "eval_text": f"{tmp_path}/dev.txt", "eval_bytes": 1000,
        "evaluation": [{"name": "original", "bpb": "1.0000", "bpt": "2.00"}],
    }
    info.update(extra)
    return info


def _split(card_text: str) -> tuple[dict, str]:
    assert card_text.startswith("---\n")
    front, body = card_text[4:].split("\n---\n", 1)
    return yaml.safe_load(front), body


def test_card_has_no_local_absolute_paths(tmp_path):
    (tmp_path / "models" / "my-model").mkdir(parents=True)
    text = str(build_card(_info(tmp_path)))
    assert str(tmp_path) not in text
    meta, body = _split(text)
    assert "base_model" not in meta  # a local folder is no hub id
    assert "`my-model`" in body and "de-tok/tokenizer.json" in body
    assert "--plan path/to/my-model-de" in body
    assert "dev.txt" in body


def test_card_keeps_hub_ids_and_carries_license_language_and_quantization(tmp_path):
    info = _info(tmp_path, base_model="smollm2-135m-instruct", base_model_id="HuggingFaceTB/SmolLM2-135M-Instruct",
                 license="apache-2.0", language=["de", "en"],
                 source_note="weights dequantized to float32 from the Q4_1 GGUF file `SmolLM2-135M-Instruct.Q4_1.gguf`")
    text = str(build_card(info))
    meta, body = _split(text)
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["license"] == "apache-2.0" and meta["language"] == ["de", "en"]
    assert "`smollm2-135m-instruct` (weights dequantized to float32 from the Q4_1 GGUF file" in body
    assert str(tmp_path) not in text


def test_card_accepts_a_single_language_string(tmp_path):
    meta, _ = _split(str(build_card(_info(tmp_path, language="es"))))
    assert meta["language"] == ["es"]


def test_source_card_metadata_reads_front_matter(tmp_path):
    (tmp_path / "README.md").write_text("---\nlicense: mit\nlanguage:\n- de\n- en\nbase_model: org/parent\n---\n# x\n")
    assert source_card_metadata(tmp_path) == {"license": "mit", "language": ["de", "en"]}
    (tmp_path / "README.md").write_text("# no front matter\n")
    assert source_card_metadata(tmp_path) == {}
    assert source_card_metadata(tmp_path / "missing") == {}


def test_source_card_metadata_from_a_gguf_header(tmp_path):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "tiny.Q8_0.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string("general.license", "apache-2.0")
    writer.add_array("general.languages", ["en", "fr"])
    writer.add_uint32("general.file_type", 7)
    writer.add_string("general.source.huggingface.repository", "org/tiny")
    writer.add_array("tokenizer.ggml.tokens", ["a", "b", "c"])
    writer.add_array("tokenizer.ggml.scores", [0.0, 1.0, 2.0])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    assert gguf_metadata(path)["general.file_type"] == 7
    meta = source_card_metadata(tmp_path, path)
    assert meta["license"] == "apache-2.0" and meta["language"] == ["en", "fr"]
    assert meta["base_model_id"] == "org/tiny"
    assert "Q8_0" in meta["source_note"] and "tiny.Q8_0.gguf" in meta["source_note"]
    assert str(tmp_path) not in meta["source_note"]
