"""Bad input to the commands added after `run`, `apply` and `eval`, held to their guarantees:
`transplant vectors train`, `hypernet train / export / info`, `transplant heal --resume`,
`transplant extend`, and the loaders they share (recipes, networks, tokenizers).

Every refusal is one `error: ...` line and exit status 2, no traceback, nothing left behind (no
output, no hidden `.NAME.partial-*`), and every input and existing folder byte-identical
afterwards. Most cases run in-process through the commands' `main()`; the extend case runs the
real command line in a subprocess (the old failure aborted the process).
"""

from __future__ import annotations

import json
import pickle
import shutil
import struct
import subprocess
import sys
from datetime import date
from pathlib import Path
from types import SimpleNamespace

import pytest
from cli_helpers import HN, TEXT, assert_refused, model, replaced, run_hn, run_inproc, run_tt, snapshot, text  # noqa: F401 (fixtures)

# --------------------------------------------------------------------------------------------
# Outputs: a command never writes over what is not its own output, nor into an input.

VECTORS = ["--dim", "8", "--epochs", "1", "--min-count", "1", "--threads", "1"]


@pytest.mark.parametrize("extra,phrase", [([], "already exists (pass --overwrite"),
                                          (["--overwrite"], "is not a fastText vectors file")],
                         ids=["plain", "overwrite"])
def test_vectors_never_replace_a_models_weights(extra, phrase, model, text, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TOKENTRANSPLANT_CACHE", str(tmp_path / "cache"))
    before = snapshot(model, text)
    out = model / "model.safetensors"
    proc = run_tt(["vectors", "train", "--text", text, "--out", out, *VECTORS, *extra], monkeypatch, capsys)
    assert_refused(proc, phrase, out, before)


def test_vectors_never_replace_their_own_text(text, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TOKENTRANSPLANT_CACHE", str(tmp_path / "cache"))
    before = snapshot(text)
    proc = run_tt(["vectors", "train", "--text", text, "--out", text, *VECTORS], monkeypatch, capsys)
    assert_refused(proc, "is one of this command's inputs", text, before)


@pytest.mark.parametrize("extra,phrase", [([], "already exists (pass --overwrite"),
                                          (["--overwrite"], "is not a hypernetwork folder")],
                         ids=["plain", "overwrite"])
def test_hypernet_train_never_writes_into_a_model_folder(extra, phrase, model, text, tmp_path, monkeypatch, capsys):
    other = shutil.copytree(model, tmp_path / "other-model")
    before = snapshot(model, other, text)
    proc = run_hn(["--quiet", "train", "--model", model, "--text", text, "--out", other, *HN, *extra],
                  monkeypatch, capsys)
    assert_refused(proc, phrase, other, before)


def test_hypernet_train_never_writes_inside_its_model(model, text, monkeypatch, capsys):
    before = snapshot(model, text)
    out = model / "hn"
    proc = run_hn(["--quiet", "train", "--model", model, "--text", text, "--out", out, *HN], monkeypatch, capsys)
    assert_refused(proc, "inside the input folder", out, before)


def test_hypernet_resume_needs_a_training_run(model, text, tmp_path, monkeypatch, capsys):
    other = shutil.copytree(model, tmp_path / "other-model")
    before = snapshot(model, other, text)
    proc = run_hn(["--quiet", "train", "--model", model, "--text", text, "--out", other, "--resume", *HN],
                  monkeypatch, capsys)
    assert_refused(proc, "not a training run", other, before)


def test_hypernet_overwrite_replaces_its_own_run_only(model, text, tmp_path, monkeypatch, capsys):
    out = tmp_path / "hn"
    args = ["--quiet", "train", "--model", model, "--text", text, "--out", out, *HN]
    assert run_hn(args, monkeypatch, capsys).returncode == 0
    (out / "mine.txt").write_text("left by the earlier run's user")
    proc = run_hn(args, monkeypatch, capsys)
    assert_refused(proc, "pass --resume to continue it, --overwrite to start afresh", out, snapshot(out))
    assert run_hn([*args, "--overwrite"], monkeypatch, capsys).returncode == 0
    assert not (out / "mine.txt").exists() and (out / "config.json").is_file()
    assert json.loads((out / "train_config.json").read_text())["format"] == "tokentransplant-hypernet-run/1"
    assert not list(tmp_path.glob(".hn.*"))


@pytest.fixture(scope="module")
def hn_run(llama_bl, tmp_path_factory):
    """A finished two-step hypernetwork run (checkpoints at steps 1 and 2) on a text of its own."""
    from hypernet.training import TrainConfig, train

    root = tmp_path_factory.mktemp("hn-run")
    text = root / "t.txt"
    text.write_text(TEXT.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    run = train(TrainConfig(model=str(llama_bl), texts=[str(text)], out=str(root / "run"), stage1_steps=2,
                            stage1_batch=32, width=16, layers=1, checkpoint_every=1))
    return SimpleNamespace(run=run, text=text, model=llama_bl)


@pytest.mark.parametrize("extra,phrase", [([], "already exists (pass --overwrite"),
                                          (["--overwrite"], "is not a hypernetwork folder")],
                         ids=["plain", "overwrite"])
def test_hypernet_export_never_writes_into_a_model_folder(extra, phrase, hn_run, model, monkeypatch, capsys):
    before = snapshot(model, hn_run.run)
    ckpt = hn_run.run / "checkpoints" / "step-000002"
    proc = run_hn(["export", ckpt, "--out", model, *extra], monkeypatch, capsys)
    assert_refused(proc, phrase, model, before)


def test_hypernet_export_stages_and_replaces_its_own_output(hn_run, tmp_path, monkeypatch, capsys):
    ckpt = hn_run.run / "checkpoints" / "step-000001"
    out = tmp_path / "exported"
    assert run_hn(["export", ckpt, "--out", out], monkeypatch, capsys).returncode == 0
    assert_refused(run_hn(["export", ckpt, "--out", out], monkeypatch, capsys), "--overwrite", out, snapshot(out))
    assert run_hn(["export", ckpt, "--out", out, "--overwrite"], monkeypatch, capsys).returncode == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]


# --------------------------------------------------------------------------------------------
# `hypernet train`: every setting typed and bounded, every input checked before any work.

def _deep(n: int) -> str:
    return "[" * n + "]" * n


RECIPES = {
    "nested_too_deep": (f"model: {_deep(3000)}\n", "nests its values too deeply"),
    "steps_as_text": ("steps: '3'\n", "steps expects"),
    "resume_as_text": ("resume: 'yes'\n", "resume expects"),
    "width_negative": ("width: -4\n", "--width must be a whole number >= 0"),
    "log_every_zero": ("log_every: 0\n", "--log-every must be a whole number >= 1"),
    "lr_nan": ("lr: .nan\n", "--lr must be a finite number above 0"),
}


@pytest.mark.parametrize("name", list(RECIPES))
def test_hypernet_recipe_values_are_checked(name, model, text, tmp_path, monkeypatch, capsys):
    body, phrase = RECIPES[name]
    recipe = tmp_path / "r.yaml"
    keys = {line.split(":")[0] for line in body.splitlines()}
    base = {"model": str(model), "texts": f"[{text}]", "out": str(tmp_path / "hn"), "stage1_steps": "1",
            "stage1_batch": "8", "width": "16", "layers": "1"}
    recipe.write_text(body + "".join(f"{k}: {v}\n" for k, v in base.items() if k not in keys))
    before = snapshot(model, text, recipe)
    proc = run_hn(["--quiet", "train", "--recipe", recipe], monkeypatch, capsys)
    assert_refused(proc, phrase, tmp_path / "hn", before)


def test_run_recipe_nested_too_deep_is_one_line(tmp_path, monkeypatch, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {_deep(3000)}\nnew_tokenizer: x\nout: {tmp_path / 'o'}\n")
    proc = run_tt(["run", "--recipe", recipe], monkeypatch, capsys)
    assert_refused(proc, "nests its values too deeply", tmp_path / "o")


def test_hypernet_model_without_tokenizer(model, text, tmp_path, monkeypatch, capsys):
    (model / "tokenizer.json").unlink()
    before = snapshot(model, text)
    out = tmp_path / "hn"
    proc = run_hn(["--quiet", "train", "--model", model, "--text", text, "--out", out, *HN], monkeypatch, capsys)
    assert_refused(proc, "no tokenizer.json", out, before)


def test_hypernet_missing_text_is_refused_whatever_stage_reads_it(model, text, tmp_path, monkeypatch, capsys):
    # Stage 1 alone never reads the texts: they must be checked before any work all the same.
    out = tmp_path / "hn"
    missing = tmp_path / "missing.txt"
    before = snapshot(model, text)
    proc = run_hn(["--quiet", "train", "--model", model, "--text", text, "--text", missing, "--out", out, *HN,
                   "--steps", "0"], monkeypatch, capsys)
    assert_refused(proc, f"training text not found: {missing}", out, before)


# --------------------------------------------------------------------------------------------
# `--resume`: the same run or one line, and the run folder untouched.

def _resume_args(hn_run, out, *extra, model=None, text=None):
    return ["--quiet", "train", "--model", model or hn_run.model, "--text", text or hn_run.text, "--out", out, *HN,
            "--resume", *extra]


@pytest.fixture
def run_copy(hn_run, tmp_path):
    return Path(shutil.copytree(hn_run.run, tmp_path / "run"))


def test_resume_with_another_width(hn_run, run_copy, monkeypatch, capsys):
    before = snapshot(run_copy, hn_run.text)
    proc = run_hn([*_resume_args(hn_run, run_copy), "--width", "32"], monkeypatch, capsys)
    assert_refused(proc, "was started with width=16, not 32", run_copy, before)


def test_resume_with_another_model(hn_run, run_copy, build_model, tmp_path, monkeypatch, capsys):
    other = build_model(tmp_path / "other", tied=False, seed=1)  # same shapes, other embeddings
    before = snapshot(run_copy, other, hn_run.text)
    proc = run_hn(_resume_args(hn_run, run_copy, model=other), monkeypatch, capsys)
    assert_refused(proc, "was trained for another model", run_copy, before)


def test_resume_with_another_text(hn_run, run_copy, monkeypatch, capsys):
    with replaced(hn_run.text, hn_run.text.read_bytes()[:10_000] + b"\nAnother ending entirely.\n"):
        before = snapshot(run_copy, hn_run.text)
        proc = run_hn(_resume_args(hn_run, run_copy, "--steps", "1"), monkeypatch, capsys)
        assert_refused(proc, "was started with other texts", run_copy, before)


def test_resume_of_a_pickled_checkpoint(hn_run, run_copy, monkeypatch, capsys):
    # A pickled object where the optimizer state belongs: refused by weights_only, in one line.
    (run_copy / "checkpoints" / "step-000002" / "optimizer.bin").write_bytes(pickle.dumps({"when": date.today()}))
    before = snapshot(run_copy, hn_run.text)
    proc = run_hn(_resume_args(hn_run, run_copy, "--stage1-steps", "3"), monkeypatch, capsys)
    assert_refused(proc, "cannot be loaded", run_copy, before)


def test_resume_of_a_checkpoint_of_another_shape(hn_run, run_copy, tmp_path, monkeypatch, capsys):
    # The checkpoint's weights replaced by those of a wider network (settings file unchanged).
    from hypernet import HyperNet
    from hypernet.training import load_source

    _, E_in, E_out, _ = load_source(str(hn_run.model))
    wide = HyperNet.create(E_in, E_out, width=32, layers=1).save(tmp_path / "wide")
    shutil.copy(wide / "model.safetensors", run_copy / "checkpoints" / "step-000002" / "model.safetensors")
    before = snapshot(run_copy, hn_run.text)
    proc = run_hn(_resume_args(hn_run, run_copy, "--stage1-steps", "3"), monkeypatch, capsys)
    assert_refused(proc, "does not fit this run", run_copy, before)


@pytest.fixture(scope="module")
def heal_run(llama_bl, tok_dirs, tmp_path_factory):
    """A transplant and a finished two-step healing run of it (checkpoints at steps 1 and 2)."""
    from transplant import transplant
    from transplant.train.heal import HealConfig, heal

    root = tmp_path_factory.mktemp("heal-run")
    text = root / "t.txt"
    text.write_text(TEXT.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    moved = root / "moved"
    transplant(llama_bl, tok_dirs["sp"], moved, method="fvt")
    args = ["--steps", "2", "--seq-len", "32", "--batch-size", "1", "--eval-every", "1", "--checkpoint-every", "1"]
    res = heal(HealConfig(model=str(moved), texts=[str(text)], out=str(root / "healed"), steps=2, seq_len=32,
                          batch_size=1, eval_every=1, checkpoint_every=1))
    return SimpleNamespace(moved=moved, text=text, out=res.out, run=res.run, args=args, root=root)


def _heal(heal_run, *extra):
    return ["--quiet", "heal", "--model", heal_run.moved, "--text", heal_run.text, "--out", heal_run.out,
            *heal_run.args, "--resume", "--overwrite", *extra]


def test_heal_resume_with_another_text(heal_run, monkeypatch, capsys):
    with replaced(heal_run.text, heal_run.text.read_bytes()[:6_000]):
        before = snapshot(heal_run.run, heal_run.out, heal_run.text, heal_run.moved)
        proc = run_tt(_heal(heal_run), monkeypatch, capsys)
        assert_refused(proc, "was started with other texts", heal_run.out, before)


def test_heal_resume_with_another_model(heal_run, tok_dirs, llama_bl, monkeypatch, capsys):
    from transplant import transplant

    aside = heal_run.root / "moved-aside"
    heal_run.moved.rename(aside)
    try:  # another transplant at the same path: other rows made
        transplant(llama_bl, tok_dirs["wp"], heal_run.moved, method="fvt")
        before = snapshot(heal_run.run, heal_run.out, heal_run.text, heal_run.moved)
        proc = run_tt(_heal(heal_run), monkeypatch, capsys)
        assert_refused(proc, "was started with other model files", heal_run.out, before)
    finally:
        shutil.rmtree(heal_run.moved, ignore_errors=True)
        aside.rename(heal_run.moved)


def test_heal_resume_of_a_pickled_checkpoint(heal_run, monkeypatch, capsys):
    optimizer = heal_run.run / "checkpoints" / "step-000002" / "optimizer.bin"
    with replaced(optimizer, pickle.dumps({"when": date.today()})):
        before = snapshot(heal_run.run, heal_run.out, heal_run.text, heal_run.moved)
        proc = run_tt(_heal(heal_run, "--steps", "3"), monkeypatch, capsys)
        assert_refused(proc, "cannot be loaded", heal_run.out, before)


# --------------------------------------------------------------------------------------------
# Saved networks: `hypernet info` and `transplant run --method hypernet` on a damaged one.

def _edit_config(edit):
    def apply(folder: Path) -> None:
        cfg = json.loads((folder / "config.json").read_text())
        edit(cfg)
        (folder / "config.json").write_text(json.dumps(cfg))
    return apply


def _truncate(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-500])


NETWORKS = {
    "config_not_json": (lambda f: (f / "config.json").write_text('{"format": "tokentransplant-hypernet/1", '),
                        "is not a JSON object"),
    "unknown_key": (_edit_config(lambda c: c.update(colour="blue")), "unknown key 'colour'"),
    "hidden_size_as_text": (_edit_config(lambda c: c.update(hidden_size="32")), "hidden_size expects"),
    "layers_zero": (_edit_config(lambda c: c.update(layers=0)), "layers must be at least 1"),
    "width_of_other_weights": (_edit_config(lambda c: c.update(width=32, heads=2)), "does not match its config.json"),
    "truncated_weights": (_truncate, "is truncated"),
    "weights_header_len": (lambda f: (f / "model.safetensors").write_bytes(struct.pack("<Q", 1 << 40)),
                           "not a safetensors file"),
}


@pytest.mark.parametrize("name", list(NETWORKS))
def test_a_damaged_network_is_one_line(name, hypernet_dir, llama_bl, tok_dirs, tmp_path, monkeypatch, capsys):
    break_it, phrase = NETWORKS[name]
    net = Path(shutil.copytree(hypernet_dir, tmp_path / "hn"))
    break_it(net)
    before = snapshot(net, llama_bl)
    assert_refused(run_hn(["info", net], monkeypatch, capsys), phrase, None, before)
    out = tmp_path / "out"
    proc = run_tt(["--quiet", "run", "--model", llama_bl, "--new-tok", tok_dirs["sp"], "--out", out, "--method",
                   "hypernet", "--set", f"hypernet.path={net}"], monkeypatch, capsys)
    assert_refused(proc, phrase, out, before)


def test_a_damaged_registered_network_is_skipped(hypernet_dir, llama_bl, tok_dirs, tmp_path, monkeypatch, capsys):
    from hypernet.registry import known_networks, register

    entry = register(hypernet_dir)
    _truncate(entry.path)
    assert known_networks() == [n for n in known_networks() if n.origin == "shipped"]
    out = tmp_path / "out"
    proc = run_tt(["--quiet", "run", "--model", llama_bl, "--new-tok", tok_dirs["sp"], "--out", out],
                  monkeypatch, capsys)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------------------------
# Tokenizers that give one id to two tokens, and an extension asked for more than its text holds.

def _duplicate_id(folder: Path) -> Path:
    spec = json.loads((folder / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    pieces = sorted(vocab, key=vocab.get)
    vocab[pieces[300]] = vocab[pieces[301]]
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    return folder


def test_run_refuses_a_new_tokenizer_with_a_duplicate_id(llama_bl, tok_dirs, tmp_path, monkeypatch, capsys):
    tok = _duplicate_id(Path(shutil.copytree(tok_dirs["bl"], tmp_path / "tok")))
    before = snapshot(tok, llama_bl)
    out = tmp_path / "out"
    proc = run_tt(["--quiet", "run", "--model", llama_bl, "--new-tok", tok, "--out", out, "--method", "fvt"],
                  monkeypatch, capsys)
    assert_refused(proc, "gives id", out, before)
    assert str(tok / "tokenizer.json") in proc.stderr


def test_hypernet_refuses_a_model_tokenizer_with_a_duplicate_id(model, text, tmp_path, monkeypatch, capsys):
    _duplicate_id(model)
    before = snapshot(model, text)
    out = tmp_path / "hn"
    proc = run_hn(["--quiet", "train", "--model", model, "--text", text, "--out", out, *HN], monkeypatch, capsys)
    assert_refused(proc, "gives id", out, before)


def test_extend_asked_for_more_tokens_than_the_text_holds(model, text, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text(text.read_text(encoding="utf-8")[:3_000], encoding="utf-8")
    before = snapshot(model, short)
    out = tmp_path / "ext"
    proc = subprocess.run([sys.executable, "-m", "transplant.cli", "--quiet", "extend", "--model", str(model),
                           "--text", str(short), "--add", str(10 ** 12), "--out", str(out), "--method", "fvt"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    added = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
    assert 0 < len(added) - 500 < 3_000  # bounded by the text, not by the request
    assert snapshot(model, short) == before


@pytest.mark.parametrize("algorithm", ["bpe", "unigram"])
def test_tokenizer_asked_for_more_tokens_than_the_text_holds(algorithm, text, tmp_path):
    before = snapshot(text)
    out = tmp_path / "tok"
    proc = subprocess.run([sys.executable, "-m", "transplant.cli", "--quiet", "tokenizer", "train", "--text",
                           str(text), "--vocab-size", str(10 ** 12), "--algorithm", algorithm, "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "saturated" in proc.stdout
    assert (out / "tokenizer.json").is_file() and snapshot(text) == before


def test_heal_run_folder_never_inside_its_model(heal_run, monkeypatch, capsys):
    before = snapshot(heal_run.moved, heal_run.text)
    out = heal_run.root / "healed-again"
    run = heal_run.moved / "run"
    proc = run_tt(["--quiet", "heal", "--model", heal_run.moved, "--text", heal_run.text, "--out", out,
                   "--run", run, *heal_run.args], monkeypatch, capsys)
    assert_refused(proc, "inside the input folder", out, before)
    assert not run.exists()


# --------------------------------------------------------------------------------------------
# The registry: nothing outside it is deleted, its entries are written only by registering, and
# a damaged entry is skipped with a warning, never a traceback.

def test_unregister_takes_names_never_paths(hn_run, tmp_path, monkeypatch, capsys):
    from hypernet.registry import REGISTERED, registry_dir

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / REGISTERED).write_text("{}")  # looks like an entry
    (victim / "data.txt").write_text("mine")
    before = snapshot(victim)
    relative = Path("..") / ".." / victim.relative_to(victim.anchor)
    for name in (str(victim), "../victim", str(relative), ".", ".."):
        proc = run_hn(["unregister", name], monkeypatch, capsys)
        assert_refused(proc, "not a network name", None, before)
    registry_dir().mkdir(parents=True, exist_ok=True)
    link = registry_dir() / "linked"
    link.symlink_to(victim, target_is_directory=True)
    try:
        assert_refused(run_hn(["unregister", "linked"], monkeypatch, capsys), "not a network name", None, before)
    finally:
        link.unlink()


def test_export_never_writes_into_the_registry(hn_run, monkeypatch, capsys):
    from hypernet.registry import known_networks, register, registry_dir

    entry = register(hn_run.run, name="kept")
    before = snapshot(registry_dir())
    ckpt = hn_run.run / "checkpoints" / "step-000001"
    for extra in ([], ["--overwrite"]):
        proc = run_hn(["export", ckpt, "--out", entry.path, *extra], monkeypatch, capsys)
        assert_refused(proc, "inside the hypernetwork registry", None, before)
    assert "kept" in [n.name for n in known_networks()]


@pytest.mark.parametrize("damage", ["odd_types", "ids_out_of_range", "ids_negative", "config_link_loop"])
def test_a_damaged_registry_entry_is_skipped_with_a_warning(damage, hn_run, llama_bl, tok_dirs, tmp_path,
                                                            monkeypatch, capsys, caplog):
    import os

    import torch
    from safetensors.torch import load_file, save_file

    from hypernet.registry import register

    entry = register(hn_run.run, name=f"damaged-{damage}")
    try:
        if damage == "odd_types":
            (entry.path / "training.json").write_text(json.dumps({"texts": 5, "stage1_seconds": "x"}))
        elif damage.startswith("ids"):
            state = load_file(str(entry.path / "model.safetensors"))
            n = state["fingerprint_ids"].shape[0]
            bad = 10**9 if damage == "ids_out_of_range" else -(10**9)
            state["fingerprint_ids"] = torch.full((n,), bad, dtype=state["fingerprint_ids"].dtype)
            save_file(state, str(entry.path / "model.safetensors"))
        else:
            os.unlink(entry.path / "config.json")
            os.symlink("config.json", entry.path / "config.json")  # a link to itself: a loop
        proc = run_hn(["list"], monkeypatch, capsys)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        proc = run_tt(["methods"], monkeypatch, capsys)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        if damage == "config_link_loop":
            assert "config.json is not a readable file" in proc.stderr + caplog.text
        out = tmp_path / "o"
        proc = run_tt(["run", "--model", llama_bl, "--new-tok", tok_dirs["sp"], "--out", out], monkeypatch, capsys)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    finally:
        shutil.rmtree(entry.path, ignore_errors=True)


def test_a_non_string_recorded_text_path_is_no_traceback(llama_bl, tok_dirs, tmp_path, monkeypatch, capsys):
    tok = tmp_path / "tok"
    shutil.copytree(tok_dirs["sp"], tok)
    (tok / "training_summary.json").write_text(json.dumps({"training_texts": [{"path": 5, "sha256": "x"}]}))
    proc = run_tt(["run", "--model", llama_bl, "--new-tok", tok, "--out", tmp_path / "o"], monkeypatch, capsys)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr


def test_hypernet_train_owns_its_run_folder(hn_run, tmp_path, monkeypatch, capsys):
    """A second `hypernet train --resume` on a folder another run holds is refused before any
    model loads, and leaves the folder as it was (it had doubled every logged step)."""
    from transplant.train.heal_config import RunFolder

    run = tmp_path / "run"
    shutil.copytree(hn_run.run, run)
    before = snapshot(run)
    with RunFolder.owned(run, command="hypernet train"):  # the first run, still going
        proc = run_hn(["--quiet", "train", "--model", hn_run.model, "--text", hn_run.text, "--out", run, "--resume",
                       "--stage1-steps", "4", "--stage1-batch", "32", "--width", "16", "--layers", "1",
                       "--checkpoint-every", "1"], monkeypatch, capsys)
    assert proc.returncode == 2 and "in use by another hypernet train run" in proc.stderr, proc.stderr
    lock = str(run / ".heal.lock")
    assert {k: v for k, v in snapshot(run).items() if k != lock} == {k: v for k, v in before.items() if k != lock}


def test_hypernet_train_holds_its_run_folder_while_it_trains(hn_run, tmp_path, monkeypatch, capsys):
    """While a training runs, its folder is locked: another run asking for it mid-training is refused."""
    import hypernet.loop as training
    from transplant.common.errors import TransplantError
    from transplant.train.heal_config import RunFolder

    run = tmp_path / "run"
    shutil.copytree(hn_run.run, run)
    real, seen = training.begin_step, []

    def try_to_take_it(*args, **kwargs):
        if not seen:
            try:
                with RunFolder.owned(run, command="hypernet train", create=False):
                    seen.append("taken")
            except TransplantError as exc:
                seen.append(str(exc))
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "begin_step", try_to_take_it)
    proc = run_hn(["--quiet", "train", "--model", hn_run.model, "--text", hn_run.text, "--out", run, "--resume",
                   "--stage1-steps", "3", "--stage1-batch", "32", "--width", "16", "--layers", "1",
                   "--checkpoint-every", "1"], monkeypatch, capsys)
    assert proc.returncode == 0, proc.stderr
    assert seen and "in use by another hypernet train run" in seen[0], seen


def test_extend_takes_the_flag_its_refusal_names(build_model, tmp_path, monkeypatch, capsys):
    """The forced-class refusal names --allow-forced-tokenizer-class; `extend` (which reaches that
    refusal through `transplant`) had no such flag. It now has, and passes it on."""
    import transplant.api as api
    from transplant.io.forced_class import FLAG, ForcedClass

    assert FLAG in ForcedClass("qwen2", "Qwen2Tokenizer").refusal("x")
    seen = {}
    real = api.transplant

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "transplant", spy)
    model = build_model(tmp_path / "m", "llama", tied=True)
    args = ["extend", "--model", model, "--text", TEXT, "--add", "20", "--method", "fvt", "--out", tmp_path / "o",
            FLAG]
    proc = run_tt(args, monkeypatch, capsys)
    assert proc.returncode == 0, proc.stderr
    assert seen["allow_forced_tokenizer_class"] is True


def test_a_reload_mismatch_shows_where_the_encodings_part():
    """Two encodings equal over their first six ids printed two identical lists."""
    from transplant.io.tokenizer_out import _first_difference

    line = _first_difference("some text", [5, 6, 7, 8, 9, 10, 11, 12, 99], [5, 6, 7, 8, 9, 10, 11, 12, 13, 14])
    assert "(from token 8 on)" in line
    got, want = line.split("encodes to ")[1].split(" (from")[0].split(" instead of ")
    assert got != want and "99" in got and "13" in want


def test_an_output_that_cannot_be_written_is_refused_before_the_work(llama_bl, tok_dirs, tmp_path, monkeypatch,
                                                                      capsys):
    """--out in a folder that takes no new entry: one line before any work (it was a raw
    `[Errno ...]` after the setup)."""
    import transplant.planned as planned

    monkeypatch.setattr(planned, "locate_embeddings", None)  # any work past the checks would fail otherwise
    for out in (Path("/proc/tt-out"), Path("/proc/self/tt/out")):
        proc = run_tt(["run", "--model", llama_bl, "--new-tok", tok_dirs["sp"], "--out", out], monkeypatch, capsys)
        assert_refused(proc, "cannot write the output folder")
