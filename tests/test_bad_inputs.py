"""More bad input: damaged shards and indexes, bad tokenizer configs, bad option values, missing
packages, missing local paths, and corrupt or mismatched plans given to `transplant apply`.

Every case must end in one `error: ...` line on stderr naming the problem, a non-zero exit, no
traceback, and no output folder or hidden `.NAME.partial-*` folder. Most cases run in-process
through `transplant.cli.commands` (fast); a few run the real command line in a subprocess.
"""

from __future__ import annotations

import json
import shutil
import struct
import sys

import builders as B
import numpy as np
import pytest
import torch
from cli_helpers import assert_clean_failure, run_cli, run_inproc
from conftest import ROLES
from safetensors.numpy import load_file as load_np
from safetensors.numpy import save_file as save_np


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _rewrite_header(path, edit):
    """Apply `edit(header)` to a safetensors file's JSON header, keeping the data bytes."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    edit(header)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + length:])


# --------------------------------------------------------------------------------------------
# `transplant run` with damaged inputs. Each case prepares its input under `tmp` and returns
# (args, key phrase of the one error line).

def _model_copy(tmp, model):
    return _copy(model, tmp / "model")


def case_truncated_shard(tmp, model, tok_dirs):
    folder = _model_copy(tmp, model)
    shard = folder / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[:-1000])
    return ["--model", folder, "--new-tok", tok_dirs["sp"]], "is truncated"


def case_non_utf8_header(tmp, model, tok_dirs):
    folder = _model_copy(tmp, model)
    shard = folder / "model.safetensors"
    raw = bytearray(shard.read_bytes())
    raw[9:13] = b"\xff\xfe\xff\xfe"  # inside the JSON header
    shard.write_bytes(bytes(raw))
    return ["--model", folder, "--new-tok", tok_dirs["sp"]], "corrupt header"


def case_header_not_json_object(tmp, model, tok_dirs):
    folder = _model_copy(tmp, model)
    blob = b"[1, 2, 3]     "
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(blob)) + blob)
    return ["--model", folder, "--new-tok", tok_dirs["sp"]], "corrupt header"


def case_offsets_beyond_file(tmp, model, tok_dirs):
    folder = _model_copy(tmp, model)

    def grow_last(header):
        name = max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][1])
        info = header[name]
        begin, end = info["data_offsets"]
        info["shape"] = [info["shape"][0] * 10] + info["shape"][1:]
        info["data_offsets"] = [begin, begin + (end - begin) * 10]

    _rewrite_header(folder / "model.safetensors", grow_last)
    return ["--model", folder, "--new-tok", tok_dirs["sp"]], "is truncated"


def case_offsets_do_not_match_shape(tmp, model, tok_dirs):
    folder = _model_copy(tmp, model)

    def lie_about_shape(header):
        info = header["model.embed_tokens.weight"]
        info["shape"] = [info["shape"][0], info["shape"][1] * 2]

    _rewrite_header(folder / "model.safetensors", lie_about_shape)
    return ["--model", folder, "--new-tok", tok_dirs["sp"]], "do not match shape"


def case_unknown_dtype(tmp, model, tok_dirs):
    folder = _model_copy(tmp, model)
    _rewrite_header(folder / "model.safetensors", lambda h: h["model.norm.weight"].update(dtype="F13"))
    return ["--model", folder, "--new-tok", tok_dirs["sp"]], "unknown dtype"


def case_header_length_beyond_file(tmp, model, tok_dirs):
    folder = _model_copy(tmp, model)
    shard = folder / "model.safetensors"
    raw = shard.read_bytes()
    shard.write_bytes(struct.pack("<Q", len(raw) * 2) + raw[8:])
    return ["--model", folder, "--new-tok", tok_dirs["sp"]], "is truncated"


def case_shard_too_short(tmp, model, tok_dirs):
    folder = _model_copy(tmp, model)
    (folder / "model.safetensors").write_bytes(b"\x01\x02")
    return ["--model", folder, "--new-tok", tok_dirs["sp"]], "not a safetensors file"


def _sharded(tmp, build_model):
    folder = build_model(tmp / "sharded", "llama", tied=False, shard_size="40KB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    embed = index["weight_map"]["model.embed_tokens.weight"]
    assert len(shards) > 2
    return folder, index, shards, embed


def case_truncated_untouched_shard(tmp, model, tok_dirs, build_model):
    # A shard that would only be copied: still refused before anything is written.
    folder, _, shards, embed = _sharded(tmp, build_model)
    victim = folder / next(s for s in shards if s != embed)
    victim.write_bytes(victim.read_bytes()[:-64])
    return ["--model", folder, "--new-tok", tok_dirs["sp"]], "is truncated"


def case_index_weight_map_not_a_dict(tmp, model, tok_dirs, build_model):
    folder, index, _, _ = _sharded(tmp, build_model)
    index["weight_map"] = list(index["weight_map"].items())
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return ["--model", folder, "--new-tok", tok_dirs["sp"]], "weight_map must map"


def case_index_names_missing_shard(tmp, model, tok_dirs, build_model):
    folder, _, shards, embed = _sharded(tmp, build_model)
    (folder / next(s for s in shards if s != embed)).unlink()
    return ["--model", folder, "--new-tok", tok_dirs["sp"]], "is missing"


def case_index_not_json(tmp, model, tok_dirs, build_model):
    folder, _, _, _ = _sharded(tmp, build_model)
    (folder / "model.safetensors.index.json").write_bytes(b'{"weight_map": {\xff')
    return ["--model", folder, "--new-tok", tok_dirs["sp"]], "malformed"


def case_index_stale(tmp, model, tok_dirs, build_model):
    folder, index, shards, embed = _sharded(tmp, build_model)
    index["weight_map"]["model.embed_tokens.weight"] = next(s for s in shards if s != embed)
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return ["--model", folder, "--new-tok", tok_dirs["sp"]], "stale index"


def _tok_copy(tmp, tok_dirs):
    return _copy(tok_dirs["sp"], tmp / "newtok")


def case_tokenizer_config_is_a_list(tmp, model, tok_dirs):
    tok = _tok_copy(tmp, tok_dirs)
    (tok / "tokenizer_config.json").write_text('["not", "a", "config"]')
    return ["--model", model, "--new-tok", tok], "not a JSON object"


def case_tokenizer_config_not_utf8(tmp, model, tok_dirs):
    tok = _tok_copy(tmp, tok_dirs)
    (tok / "tokenizer_config.json").write_bytes('{"eos_token": "é"}'.encode("latin-1"))
    return ["--model", model, "--new-tok", tok], "not UTF-8"


def case_model_tokenizer_config_is_a_list(tmp, model, tok_dirs):
    folder = _model_copy(tmp, model)
    (folder / "tokenizer_config.json").write_text("[]")
    return ["--model", folder, "--new-tok", tok_dirs["sp"]], "not a JSON object"


def case_pad_to_negative(tmp, model, tok_dirs):
    return ["--model", model, "--new-tok", tok_dirs["sp"], "--pad-to-multiple-of", "-64"], "--pad-to-multiple-of"


def case_pad_to_zero(tmp, model, tok_dirs):
    return ["--model", model, "--new-tok", tok_dirs["sp"], "--pad-to-multiple-of", "0"], "--pad-to-multiple-of"


def case_run_ctx_zero(tmp, model, tok_dirs):
    return ["--model", model, "--new-tok", tok_dirs["sp"], "--ctx", "0"], "--ctx"


def case_run_ctx_negative(tmp, model, tok_dirs):
    return ["--model", model, "--new-tok", tok_dirs["sp"], "--ctx", "-5"], "--ctx"


def case_eval_bytes_zero(tmp, model, tok_dirs):
    return ["--model", model, "--new-tok", tok_dirs["sp"], "--eval-bytes", "0"], "--eval-bytes"


def case_method_special(tmp, model, tok_dirs):
    return ["--model", model, "--new-tok", tok_dirs["sp"], "--method", "special"], "'special' is not a method"


def case_method_exact(tmp, model, tok_dirs):
    return ["--model", model, "--new-tok", tok_dirs["sp"], "--method", "exact"], "'exact' is not a method"


def case_method_chain_with_exact(tmp, model, tok_dirs):
    return ["--model", model, "--new-tok", tok_dirs["sp"], "--method", "fvt+exact"], "'exact' is not a method"


def case_fallback_fvt(tmp, model, tok_dirs):
    return ["--model", model, "--new-tok", tok_dirs["sp"], "--fallback", "fvt"], "cannot make every token"


def case_fallback_exact(tmp, model, tok_dirs):
    return ["--model", model, "--new-tok", tok_dirs["sp"], "--fallback", "exact"], "'exact' is not a method"


def case_unknown_option(tmp, model, tok_dirs):
    return ["--model", model, "--new-tok", tok_dirs["sp"], "--methd", "fvt"], "No such option"


def case_missing_relative_model_with_folder(tmp, model, tok_dirs):
    (tmp / "models").mkdir()  # `models/foo` is then clearly a local path, not a hub id
    return ["--model", "models/foo", "--new-tok", tok_dirs["sp"]], "model not found: models/foo"


def case_missing_relative_model(tmp, model, tok_dirs):
    # No `models/` folder either: could be a hub id, so the message also says it is not cached.
    return ["--model", "models/foo", "--new-tok", tok_dirs["sp"]], "model not found: models/foo (no such local folder"


def case_missing_dot_relative_model(tmp, model, tok_dirs):
    return ["--model", "./models/foo", "--new-tok", tok_dirs["sp"]], "model not found: ./models/foo"


def case_missing_absolute_model(tmp, model, tok_dirs):
    return ["--model", tmp / "abs" / "foo", "--new-tok", tok_dirs["sp"]], "model not found"


RUN_CASES = [case_truncated_shard, case_non_utf8_header, case_header_not_json_object, case_offsets_beyond_file,
             case_offsets_do_not_match_shape, case_unknown_dtype, case_header_length_beyond_file, case_shard_too_short,
             case_truncated_untouched_shard, case_index_weight_map_not_a_dict, case_index_names_missing_shard,
             case_index_not_json, case_index_stale, case_tokenizer_config_is_a_list, case_tokenizer_config_not_utf8,
             case_model_tokenizer_config_is_a_list, case_pad_to_negative, case_pad_to_zero, case_run_ctx_zero,
             case_run_ctx_negative, case_eval_bytes_zero, case_method_special, case_method_exact,
             case_method_chain_with_exact, case_fallback_fvt, case_fallback_exact, case_unknown_option,
             case_missing_relative_model_with_folder, case_missing_relative_model, case_missing_dot_relative_model,
             case_missing_absolute_model]
# These also run as real subprocesses (the installed entry point, not just `main()`).
SUBPROCESS = {case_truncated_shard, case_missing_relative_model_with_folder, case_pad_to_negative,
              case_fallback_fvt}


def _call(case, tmp, model, tok_dirs, build_model):
    if "build_model" in case.__code__.co_varnames[:case.__code__.co_argcount]:
        return case(tmp, model, tok_dirs, build_model)
    return case(tmp, model, tok_dirs)


@pytest.mark.parametrize("case", RUN_CASES, ids=[c.__name__[5:] for c in RUN_CASES])
def test_run_refuses(case, llama_bl, tok_dirs, build_model, tmp_path, monkeypatch, capsys):
    args, phrase = _call(case, tmp_path, llama_bl, tok_dirs, build_model)
    out = tmp_path / "result"
    argv = ["run", *args, "--out", out]
    if case in SUBPROCESS:
        proc = run_cli(*argv, cwd=tmp_path)
    else:
        proc = run_inproc(argv, monkeypatch, capsys, cwd=tmp_path)
    assert_clean_failure(proc, phrase, out)


# --------------------------------------------------------------------------------------------
# `transplant eval` option values (refused before any model is loaded).

EVAL_CASES = [(["--ctx", "0"], "--ctx"), (["--ctx", "-5"], "--ctx"), (["--max-bytes", "-1"], "--max-bytes"),
              (["--max-bytes", "-3"], "--max-bytes")]  # --max-bytes 0 means every document


@pytest.mark.parametrize("extra,phrase", EVAL_CASES, ids=["ctx0", "ctx-5", "max-bytes-1", "max-bytes-3"])
def test_eval_refuses(extra, phrase, llama_bl, tmp_path, monkeypatch, capsys):
    text = tmp_path / "t.txt"
    text.write_text("Some text.\n")
    proc = run_inproc(["eval", "--model", llama_bl, "--text", text, *extra], monkeypatch, capsys)
    assert_clean_failure(proc, phrase, tmp_path / "no-output")
    assert "range" in proc.stderr


def test_eval_refuses_truncated_shard(llama_bl, tmp_path, monkeypatch, capsys):
    folder = _copy(llama_bl, tmp_path / "model")
    shard = folder / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    text = tmp_path / "t.txt"
    text.write_text("Some text.\n")
    proc = run_inproc(["eval", "--model", folder, "--text", text], monkeypatch, capsys)
    assert_clean_failure(proc, "is truncated", tmp_path / "no-output")


def test_eval_ctx_zero_subprocess(llama_bl, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("Some text.\n")
    proc = run_cli("eval", "--model", llama_bl, "--text", text, "--ctx", "0", cwd=tmp_path)
    assert_clean_failure(proc, "--ctx", tmp_path / "no-output")


# --------------------------------------------------------------------------------------------
# Missing optional packages: one line naming what to pip install.

def test_missing_package_in_core_path(llama_bl, tok_dirs, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "accelerate", None)  # `import accelerate` now fails
    out = tmp_path / "result"
    proc = run_inproc(["run", "--model", llama_bl, "--new-tok", tok_dirs["sp"], "--out", out], monkeypatch, capsys)
    assert_clean_failure(proc, "the Python package 'accelerate' is not installed (pip install accelerate)", out)


def test_missing_package_of_a_method(llama_bl, tok_dirs, tmp_path, monkeypatch, capsys):
    import transplant.methods.initializers as inits
    from transplant.methods.initializers import registry

    plugin = tmp_path / "plugins"
    plugin.mkdir()
    (plugin / "needs_pkg.py").write_text("import some_missing_package_xyz  # noqa\n")
    monkeypatch.setattr(inits, "__path__", [*inits.__path__, str(plugin)])
    monkeypatch.setitem(registry._REGISTRY, "hyper", "needs_pkg:Hyper")
    out = tmp_path / "result"
    proc = run_inproc(["run", "--model", llama_bl, "--new-tok", tok_dirs["sp"], "--out", out, "--method", "hyper"],
                      monkeypatch, capsys)
    assert_clean_failure(proc, "pip install some-missing-package-xyz", out)
    assert "method 'hyper'" in proc.stderr


def test_missing_gguf_package(tok_dirs, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gguf", None)
    monkeypatch.setenv("TOKENTRANSPLANT_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + b"\0" * 64)
    out = tmp_path / "result"
    proc = run_inproc(["run", "--model", model, "--new-tok", tok_dirs["sp"], "--out", out], monkeypatch, capsys)
    assert_clean_failure(proc, "pip install gguf", out)


# --------------------------------------------------------------------------------------------
# `transplant apply` with a damaged, incomplete or mismatched plan. One valid plan is made once;
# each case copies it and breaks one thing.

@pytest.fixture(scope="module")
def plan_out(llama_bl, tok_dirs, tmp_path_factory):
    from transplant import transplant

    out = tmp_path_factory.mktemp("plan") / "planned"
    transplant(llama_bl, tok_dirs["wp"], out, method="multivariate", seed=1)
    return out


def _edit_json(folder, edit):
    path = folder / "transplant_plan.json"
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def _edit_arrays(folder, edit):
    path = folder / "transplant_plan.safetensors"
    arrays = dict(load_np(str(path)))
    edit(arrays)
    save_np(arrays, str(path))


def _pop_meta(key):
    return lambda doc: doc["meta"].pop(key)


def _set(name, fn):
    return lambda arrays: arrays.__setitem__(name, fn(arrays[name]))


def _other_tokenizer(folder):
    # The plan's tokenizer swapped for another one: the plan's rows no longer fit its ids.
    shutil.copy(folder.parent / "other-tokenizer.json", folder / "tokenizer.json")


PLAN_CASES = {
    "json_is_a_list": (lambda f: (f / "transplant_plan.json").write_text("[1, 2]"), "not a JSON object"),
    "json_not_utf8": (lambda f: (f / "transplant_plan.json").write_bytes(b'{"format": "\xff"}'), "not UTF-8 JSON"),
    "json_truncated": (lambda f: (f / "transplant_plan.json").write_text('{"format": "tokentransplant-plan/1", '),
                       "not UTF-8 JSON"),
    "other_format": (lambda f: _edit_json(f, lambda d: d.update(format="tokentransplant-plan/9")), "has format"),
    "lacks_provenance": (lambda f: _edit_json(f, lambda d: d.pop("provenance")), "no 'provenance' entry"),
    "lacks_old_size": (lambda f: _edit_json(f, lambda d: d.pop("old_size")), "no 'old_size' entry"),
    "meta_not_object": (lambda f: _edit_json(f, lambda d: d.update(meta=[])), "meta is not an object"),
    "short_provenance": (lambda f: _edit_json(f, lambda d: d.update(provenance=d["provenance"][:-3])),
                         "provenance labels"),
    "no_old_fingerprint": (lambda f: _edit_json(f, _pop_meta("old_fingerprint")), "fingerprint"),
    "no_new_fingerprint": (lambda f: _edit_json(f, _pop_meta("new_fingerprint")), "fingerprint"),
    "no_base_shape": (lambda f: _edit_json(f, _pop_meta("dim")), "base embedding shape"),
    "special_map_list": (lambda f: _edit_json(f, lambda d: d["meta"].update(special_map=[[1, 2]])), "special_map"),
    "special_map_bad_id": (lambda f: _edit_json(f, lambda d: d["meta"].update(special_map={"x": 1})), "special_map"),
    "special_map_out_of_range": (lambda f: _edit_json(f, lambda d: d["meta"].update(special_map={"1": 10 ** 6})),
                                 "special_map"),
    "new_size_mismatch": (lambda f: _edit_json(f, lambda d: d.update(new_size=d["new_size"] + 1)), "new_size"),
    "index_out_of_range": (lambda f: _edit_arrays(f, _set("indices", lambda a: a + 10 ** 6)), "outside the old"),
    "negative_index": (lambda f: _edit_arrays(f, _set("indices", lambda a: a - a.max() - 1)), "outside the old"),
    "short_indptr": (lambda f: _edit_arrays(f, _set("indptr", lambda a: a[:-5])), "indptr has"),
    "indptr_decreasing": (lambda f: _edit_arrays(f, _set("indptr", lambda a: np.concatenate([a[:1], a[1:][::-1]]))),
                          "indptr is not a row index"),
    "missing_weights": (lambda f: _edit_arrays(f, lambda a: a.pop("weights")), "no 'weights' array"),
    "weights_nan": (lambda f: _edit_arrays(f, _set("weights", lambda a: np.full_like(a, np.nan))), "non-finite"),
    "weights_wrong_dtype": (lambda f: _edit_arrays(f, _set("weights", lambda a: a.astype(np.int32))), "dtype"),
    "unknown_kind": (lambda f: _edit_arrays(f, _set("kinds", lambda a: np.full_like(a, 9))), "unknown row kinds"),
    "override_without_values": (lambda f: _edit_arrays(f, _set("kinds", lambda a: np.concatenate([[4], a[1:]])
                                                               .astype(a.dtype))), "override"),
    "truncated_arrays": (lambda f: (f / "transplant_plan.safetensors").write_bytes(
        (f / "transplant_plan.safetensors").read_bytes()[:-40]), "truncated"),
    "plan_tokenizer_swapped": (_other_tokenizer, "not the one the plan was made for"),
}
PLAN_SUBPROCESS = {"short_indptr", "no_base_shape"}


@pytest.mark.parametrize("name", list(PLAN_CASES))
def test_apply_refuses_bad_plan(name, plan_out, llama_bl, tok_dirs, tmp_path, monkeypatch, capsys):
    break_it, phrase = PLAN_CASES[name]
    plan = _copy(plan_out, tmp_path / "plan")
    shutil.copy(tok_dirs["sp"] / "tokenizer.json", tmp_path / "other-tokenizer.json")
    break_it(plan)
    out = tmp_path / "result"
    argv = ["apply", "--plan", plan, "--model", llama_bl, "--out", out]
    proc = run_cli(*argv, cwd=tmp_path) if name in PLAN_SUBPROCESS else run_inproc(argv, monkeypatch, capsys)
    assert_clean_failure(proc, phrase, out)


def test_apply_refuses_other_base_shape(plan_out, toks, tmp_path, monkeypatch, capsys):
    # Same tokenizer, different hidden size: a plan for the base must not be applied silently.
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = toks["bl"].get_vocab()
    cfg = LlamaConfig(vocab_size=toks["bl"].get_vocab_size(), hidden_size=48, intermediate_size=64,
                      num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=False, bos_token_id=vocab[ROLES["bl"]["bos"]],
                      eos_token_id=vocab[ROLES["bl"]["eos"]])
    other = B.save_model(LlamaForCausalLM(cfg), toks["bl"], tmp_path / "other", **ROLES["bl"])
    out = tmp_path / "result"
    proc = run_inproc(["apply", "--plan", plan_out, "--model", other, "--out", out], monkeypatch, capsys)
    assert_clean_failure(proc, "the plan was made for a", out)


def test_valid_plan_still_applies(plan_out, llama_bl, tmp_path, monkeypatch, capsys):
    # The baseline every case above breaks: the untouched copy applies cleanly.
    plan = _copy(plan_out, tmp_path / "plan")
    out = tmp_path / "result"
    proc = run_inproc(["apply", "--plan", plan, "--model", llama_bl, "--out", out], monkeypatch, capsys)
    assert proc.returncode == 0, proc.stderr
    assert (out / "model.safetensors").exists()
    assert not list(tmp_path.glob(".result.partial-*"))


# --------------------------------------------------------------------------------------------
# The checks themselves, without the command line.

def test_validate_shard_accepts_real_checkpoints(llama_bl, build_model, tmp_path):
    from transplant.io.shardio import validate_shard

    header, start = validate_shard(llama_bl / "model.safetensors")
    assert "model.embed_tokens.weight" in header and start > 8
    folder = build_model(tmp_path / "bf16", tied=True, dtype=torch.bfloat16, shard_size="40KB")
    for shard in folder.glob("*.safetensors"):
        validate_shard(shard)


def test_check_methods_accepts_exactly_the_complete_fallbacks():
    from transplant.common.errors import TransplantError
    from transplant.methods.initializers import available, get_initializer
    from transplant.methods.planner import FIXED_STEPS, check_methods

    complete = [n for n in available() if n not in FIXED_STEPS and get_initializer(n).complete]
    assert {"mean", "multivariate", "random"} <= set(complete)
    for name in available():
        if name in FIXED_STEPS:
            continue
        if name in complete:
            assert check_methods("fvt", name) is None
        else:
            with pytest.raises(TransplantError, match="cannot make every token"):
                check_methods("fvt", name)
    assert check_methods(["fvt", "random"], "mean") is None
