"""Bad input through the `transplant` command line: exit code, one-line message, nothing written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import builders as B
import pytest
import torch
from cli_helpers import assert_clean_failure, run_cli
from safetensors.torch import save_file


def _copy_model(src, dst):
    shutil.copytree(src, dst)
    return dst


# Each case prepares its input under `tmp` and returns (extra args, key phrase).
def case_missing_tokenizer(tmp, model, tok_dirs):
    return ["--model", model, "--new-tok", tmp / "nowhere" / "tokenizer.json"], "tokenizer not found"


def case_tokenizer_folder_without_file(tmp, model, tok_dirs):
    (tmp / "emptytok").mkdir()
    return ["--model", model, "--new-tok", tmp / "emptytok"], "no tokenizer.json"


def case_malformed_tokenizer(tmp, model, tok_dirs):
    bad = tmp / "bad.json"
    bad.write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": ')
    return ["--model", model, "--new-tok", bad], "malformed tokenizer file"


def case_no_config(tmp, model, tok_dirs):
    folder = tmp / "noconfig"
    folder.mkdir()
    shutil.copy(model / "model.safetensors", folder)
    shutil.copy(model / "tokenizer.json", folder)
    return ["--model", folder, "--new-tok", tok_dirs["sp"]], "no config.json"


def case_not_a_language_model(tmp, model, tok_dirs):
    from transformers import AutoConfig

    folder = tmp / "vit"
    AutoConfig.for_model("vit").save_pretrained(str(folder))
    save_file({"w": torch.zeros(2, 2)}, str(folder / "model.safetensors"))
    shutil.copy(model / "tokenizer.json", folder)
    return ["--model", folder, "--new-tok", tok_dirs["sp"]], "causal"


def case_checkpoint_without_embeddings(tmp, model, tok_dirs):
    folder = tmp / "noemb"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(model / name, folder)
    save_file({"model.norm.weight": torch.ones(32)}, str(folder / "model.safetensors"))
    return ["--model", folder, "--new-tok", tok_dirs["sp"]], "input embedding"


def case_old_tokenizer_bigger_than_model(tmp, model, tok_dirs):
    # The SentencePiece tokenizer has 759 ids; the model's embedding has 500 rows.
    return ["--model", model, "--old-tok", tok_dirs["sp"], "--new-tok", tok_dirs["wp"]], "rows"


def case_model_smaller_than_its_tokenizer(tmp, model, tok_dirs):
    folder = tmp / "small"
    vocab = B.byte_level_bpe().get_vocab_size()
    B.save_model(B.tiny_model("llama", vocab - 100, True, 1, 0), B.byte_level_bpe(), folder,
                 bos="<|im_start|>", eos="<|endoftext|>")
    return ["--model", folder, "--new-tok", tok_dirs["sp"]], "pass the tokenizer that belongs to this model"


def case_new_tokenizer_without_eos(tmp, model, tok_dirs):
    tok = B.save_tokenizer(B.byte_level_bpe(specials=[]), tmp / "noeos", bos=None, eos=None)
    return ["--model", model, "--new-tok", tok], "end-of-sequence"


def case_pickle_only(tmp, model, tok_dirs):
    folder = tmp / "pickle"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(model / name, folder)
    # Not a real pickle, and never loaded: the tool must refuse before reading it.
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x02not a pickle" + os.urandom(64))
    return ["--model", folder, "--new-tok", tok_dirs["sp"]], "pickle"


def case_no_weights(tmp, model, tok_dirs):
    folder = tmp / "noweights"
    folder.mkdir()
    shutil.copy(model / "config.json", folder)
    return ["--model", folder, "--new-tok", tok_dirs["sp"]], "no safetensors"


def case_missing_model(tmp, model, tok_dirs):
    return ["--model", tmp / "no-such-model", "--new-tok", tok_dirs["sp"]], "model not found"


def case_unknown_method(tmp, model, tok_dirs):
    return ["--model", model, "--new-tok", tok_dirs["sp"], "--method", "magic"], "unknown method"


CASES = [case_missing_tokenizer, case_tokenizer_folder_without_file, case_malformed_tokenizer, case_no_config,
         case_not_a_language_model, case_checkpoint_without_embeddings, case_old_tokenizer_bigger_than_model,
         case_model_smaller_than_its_tokenizer, case_new_tokenizer_without_eos, case_pickle_only, case_no_weights,
         case_missing_model, case_unknown_method]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__[5:] for c in CASES])
def test_bad_input(case, llama_bl, tok_dirs, tmp_path):
    args, phrase = case(tmp_path, llama_bl, tok_dirs)
    out = tmp_path / "result"
    proc = run_cli("run", *args, "--out", out, cwd=tmp_path)
    assert_clean_failure(proc, phrase, out)


def test_output_inside_input(llama_bl, tok_dirs, tmp_path):
    model = _copy_model(llama_bl, tmp_path / "model")
    before = sorted(p.name for p in model.iterdir())
    out = model / "transplanted"
    proc = run_cli("run", "--model", model, "--new-tok", tok_dirs["sp"], "--out", out, cwd=tmp_path)
    assert_clean_failure(proc, "inside the input folder", out)
    assert sorted(p.name for p in model.iterdir()) == before


def test_existing_output_needs_overwrite(llama_bl, tok_dirs, tmp_path):
    out = tmp_path / "result"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = run_cli("run", "--model", llama_bl, "--new-tok", tok_dirs["sp"], "--out", out, cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--overwrite" in lines[0], proc.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert not list(tmp_path.glob(".result.partial-*"))

    # --overwrite replaces only an earlier output (a folder holding a plan), never any folder.
    proc = run_cli("run", "--model", llama_bl, "--new-tok", tok_dirs["sp"], "--out", out, "--overwrite",
                   cwd=tmp_path)
    assert proc.returncode != 0 and "not a tokentransplant output" in proc.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (out / "transplant_plan.json").write_text("{}")
    proc = run_cli("run", "--model", llama_bl, "--new-tok", tok_dirs["sp"], "--out", out, "--overwrite",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (out / "model.safetensors").exists() and not (out / "keep.txt").exists()
    assert not list(tmp_path.glob(".result.partial-*"))


def test_apply_without_a_plan(llama_bl, tmp_path):
    (tmp_path / "notaplan").mkdir()
    out = tmp_path / "result"
    proc = run_cli("apply", "--plan", tmp_path / "notaplan", "--model", llama_bl, "--out", out, cwd=tmp_path)
    assert_clean_failure(proc, "no plan in", out)


def test_missing_model_fails_before_torch_is_imported(tmp_path):
    """A bad --model is checked without torch or transformers: one line in a fraction of a second."""
    probe = ("import sys\nfrom transplant.cli.commands import main\n"
             f"sys.argv = ['transplant', 'run', '--model', {str(tmp_path / 'nope')!r}, '--new-tok', 'x', '--out', "
             f"{str(tmp_path / 'out')!r}]\n"
             "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
             "print(code, sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "2 []", proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: model not found: {tmp_path / 'nope'} (pass a folder, a .gguf "
                                                "file, a cached hub id, or one of smollm2-135m-instruct, gemma-3-270m)"]


@pytest.mark.parametrize("argv", [["transplant", "--help"], ["transplant", "hypernet", "--help"],
                                  ["transplant", "hypernet", "train", "--help"], ["hypernet", "--help"]])
def test_help_imports_neither_torch_nor_transformers(argv):
    """`transplant hypernet --help` imported torch through the package's `__init__` (2-3 s)."""
    entry = ("from hypernet.cli import main" if argv[0] == "hypernet"
             else "from transplant.cli.commands import main")
    probe = (f"import sys\n{entry}\nsys.argv = {argv!r}\ncode = 0\n"
             "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code or 0\n"
             "print(code, sorted(m for m in ('torch', 'transformers') if m in sys.modules), file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.stderr.strip().splitlines()[-1] == "0 []", proc.stderr


@pytest.mark.parametrize("flag", ["--eval-text", "--calibrate-text"])
def test_a_binary_text_is_refused_by_every_reader(flag, llama_bl, tok_dirs, tmp_path):
    """NUL bytes were refused only by heal's reader: `run` scored or calibrated on a binary file."""
    blob = tmp_path / "blob.txt"
    blob.write_bytes(b"valid utf-8\x00but a binary file\n")
    out = tmp_path / "out"
    proc = run_cli("run", "--model", llama_bl, "--new-tok", tok_dirs["sp"], "--out", out, "--method", "fvt", flag, blob,
                   cwd=tmp_path)
    assert_clean_failure(proc, f"{blob} holds NUL bytes: a binary file, not text", out)
    train = run_cli("tokenizer", "train", "--text", blob, "--vocab-size", "300", "--out", tmp_path / "tok", cwd=tmp_path)
    assert_clean_failure(train, "holds NUL bytes", tmp_path / "tok")
