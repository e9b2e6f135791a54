"""`transplant heal` under faults: two runs on one run folder, numbers out of range, bad text, a
full disk, a budget that trains nothing, an earlier run folder. Each refusal is one `error:` line
(exit 2) that comes before any model loads where it can, and leaves no folder behind; a full disk
leaves the earlier checkpoints to resume from and no partial output.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import builders as B
import pytest
from cli_helpers import assert_refused, run_tt, snapshot

from transplant.common.errors import TransplantError
from transplant.train.heal import HealConfig, heal

ROOT = Path(__file__).resolve().parents[1]
TEXT = B.DATA / "bible_en.txt"
# A run in a child process that stops when its training starts (models loaded, run folder
# written) and waits there, holding its run folder, until it is killed.
BLOCKED_IN_TRAINING = (
    "import sys, json, time, pathlib; sys.path.insert(0, %r); import transplant.train.heal_loop as hl\n"
    "def blocked(self):\n"
    "    pathlib.Path(sys.argv[2]).write_text('training')\n"
    "    time.sleep(600)\n"
    "hl.HealLoop.train = blocked\n"
    "from transplant.train.heal import heal, HealConfig\n"
    "heal(HealConfig(**json.loads(sys.argv[1])))\n")


@pytest.fixture(scope="module")
def moved(llama_bl, tok_dirs, tmp_path_factory):
    """A transplant to heal (FVT onto the SentencePiece-style tokenizer) and a text for it."""
    from transplant import transplant

    root = tmp_path_factory.mktemp("heal-faults")
    text = root / "t.txt"
    text.write_text(TEXT.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    transplant(llama_bl, tok_dirs["sp"], root / "moved", method="fvt")
    return SimpleNamespace(model=root / "moved", text=text)


def _args(moved, out: Path, *extra, budget=("--steps", "2")) -> list:
    return ["--quiet", "heal", "--model", moved.model, "--text", moved.text, "--out", out, *budget, "--seq-len",
            "32", "--batch-size", "1", "--eval-every", "1", "--checkpoint-every", "1", *extra]


def _cfg(moved, out: Path, **kw) -> HealConfig:
    base = {"model": str(moved.model), "texts": [str(moved.text)], "out": str(out), "steps": 2, "seq_len": 32,
            "batch_size": 1, "eval_every": 1, "checkpoint_every": 1}
    return HealConfig(**{**base, **kw})


@pytest.fixture
def no_models(monkeypatch):
    """Loading a model fails the test: the refusal must come first."""
    def loads(*args, **kwargs):
        raise AssertionError("a model was loaded before the refusal")

    monkeypatch.setattr("transplant.train.heal.load_models", loads)


def _no_trace(out: Path) -> None:
    """Neither the output nor its run folder (nor a hidden stage of either) was left."""
    run = out.with_name(out.name + ".heal-run")
    assert not out.exists() and not run.exists(), sorted(p.name for p in out.parent.iterdir())
    assert not list(out.parent.glob(f".{out.name}*"))


# --------------------------------------------------------------------------------------------
# 1. One run per run folder; the run folder is never the output, inside it or around it.

def test_a_second_run_on_a_busy_run_folder_is_refused_before_loading(moved, tmp_path, monkeypatch, capsys):
    out = tmp_path / "healed"
    run = tmp_path / "healed.heal-run"
    marker = tmp_path / "first-is-training"
    first = subprocess.Popen([sys.executable, "-c", BLOCKED_IN_TRAINING % str(ROOT),
                              json.dumps(asdict(_cfg(moved, out))), str(marker)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1"})
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert first.poll() is None, first.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "the first run never started training"
            time.sleep(0.2)
        before = snapshot(run)
        with monkeypatch.context() as m:
            m.setattr("transplant.train.heal.load_models", lambda *a, **k: pytest.fail("models loaded"))
            proc = run_tt(_args(moved, out), monkeypatch, capsys)
        assert_refused(proc, "is in use by another heal run", out)
        assert str(run) in proc.stderr and f"pid {first.pid}" in proc.stderr
        assert snapshot(run) == before  # the first run's folder untouched
    finally:
        first.kill()  # as a crash would: the kernel releases its lock
        first.wait()
    # The killed run left its settings but no checkpoint: an earlier run, free to start afresh.
    proc = run_tt(_args(moved, out), monkeypatch, capsys)
    assert_refused(proc, "pass --resume to continue it or --overwrite to start it afresh", out)
    proc = run_tt(_args(moved, out, "--overwrite"), monkeypatch, capsys)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "heal.json").read_text())["step"] == 2


@pytest.mark.parametrize("where,phrase", [("same", "--run and --out are the same folder"),
                                          ("inside-out", "is inside the output folder"),
                                          ("around-out", "is inside the run folder")])
def test_run_folder_is_never_the_output_nor_nested_with_it(where, phrase, moved, tmp_path, no_models, monkeypatch,
                                                           capsys):
    out = tmp_path / "healed"
    if where == "around-out":
        run, out = out, out / "inner"
    else:
        run = out if where == "same" else out / "run"
    proc = run_tt(_args(moved, out, "--run", run), monkeypatch, capsys)
    assert_refused(proc, phrase, out)
    assert not run.exists() and not out.exists()


# --------------------------------------------------------------------------------------------
# 2. Numbers out of range: refused in one line before anything loads.

@pytest.mark.parametrize("flags", [["--lr", "nan"], ["--lr", "-1"], ["--lr", "0"], ["--lr", "inf"],
                                   ["--minutes", "0"], ["--minutes", "nan"], ["--minutes", "-1"],
                                   ["--steps", "-1"], ["--steps", "0"], ["--batch-size", "0"], ["--seq-len", "4"],
                                   ["--seq-len", "100000"], ["--eval-every", "0"], ["--checkpoint-every", "0"],
                                   ["--patience", "-1"], ["--lm-weight", "nan"], ["--anchor-weight", "-1"],
                                   ["--anchor-weight", "inf"], ["--seed", "-1"]],
                         ids=lambda f: " ".join(f))
def test_numbers_out_of_range_are_refused(flags, moved, tmp_path, no_models, monkeypatch, capsys):
    out = tmp_path / "healed"
    budget = () if flags[0] in ("--minutes", "--steps") else ("--steps", "2")
    proc = run_tt(_args(moved, out, *flags, budget=budget), monkeypatch, capsys)
    assert_refused(proc, flags[0], out)
    _no_trace(out)


@pytest.mark.parametrize("setting", [{"lr": float("nan")}, {"lr": -1.0}, {"minutes": float("inf"), "steps": 0},
                                     {"warmup": -1}, {"held_out": 1.0}, {"held_out": 0.0},
                                     {"keep_checkpoints": 0}, {"min_count": 0}, {"seed": 2**40},
                                     {"steps": True}, {"batch_size": 2.5}, {"distill_weight": 0.0, "lm_weight": 0.0}],
                         ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_settings_out_of_range_are_refused_by_the_api(setting, moved, tmp_path, monkeypatch):
    """A recipe or a Python caller reaches `heal` without the flags' types: the same refusals."""
    monkeypatch.setattr("transplant.train.heal.training_accelerator", lambda: pytest.fail("accelerator started"))
    out = tmp_path / "healed"
    with pytest.raises(TransplantError, match=r"^--[a-z-]+ (must be|and --lm-weight)"):
        heal(_cfg(moved, out, **setting))
    _no_trace(out)


def test_a_recipes_nan_is_refused(moved, tmp_path, no_models, monkeypatch, capsys):
    recipe = tmp_path / "heal.yaml"
    out = tmp_path / "healed"
    recipe.write_text(f"model: {moved.model}\ntexts: [{moved.text}]\nout: {out}\nsteps: 2\nlr: .nan\n")
    proc = run_tt(["--quiet", "heal", "--recipe", recipe], monkeypatch, capsys)
    assert_refused(proc, "--lr must be a finite number above 0, not nan", out)


# --------------------------------------------------------------------------------------------
# 3. The text is checked before a folder is made or a model loaded.

@pytest.mark.parametrize("content,phrase", [(b"In the beginning.\n", "fewer than the 2 a run needs"),
                                            (b"", "the healing text is empty"),
                                            (b"\n\n\n", "the healing text is empty"),
                                            (bytes(range(256)) * 40, "is not UTF-8 text"),
                                            (b"\0" * 5000, "holds NUL bytes"),
                                            ("Über Größe und Maß. ".encode("latin-1") * 300, "is not UTF-8 text")],
                         ids=["short", "empty", "blank", "binary", "nul", "latin-1"])
def test_bad_text_leaves_nothing_and_loads_nothing(content, phrase, moved, tmp_path, no_models, monkeypatch, capsys):
    text = tmp_path / "bad.txt"
    text.write_bytes(content)
    out = tmp_path / "healed"
    args = _args(moved, out)
    args[args.index(moved.text)] = text
    proc = run_tt(args, monkeypatch, capsys)
    assert_refused(proc, phrase, out)
    _no_trace(out)


def test_text_that_uses_no_made_row_leaves_no_run_folder(llama_bl, tok_dirs, tmp_path, no_models, monkeypatch,
                                                         capsys):
    from transplant import transplant

    same = tmp_path / "same"
    transplant(llama_bl, tok_dirs["bl"], same, method="fvt")  # the same tokenizer: every row an exact copy
    out = tmp_path / "healed"
    args = _args(SimpleNamespace(model=same, text=TEXT), out)
    proc = run_tt(args, monkeypatch, capsys)
    assert_refused(proc, "uses none of the rows the transplant made", out)
    _no_trace(out)


# --------------------------------------------------------------------------------------------
# 4. A full disk: one line naming the disk and the fix; the earlier checkpoint stays usable.

FULL_DISK = {
    "ENOSPC": lambda path: OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)),
    "torch-write": lambda path: RuntimeError("[enforce fail at inline_container.cc:783] . PytorchStreamWriter "
                                             "failed writing file data/0: file write failed"),
    "torch-pos": lambda path: RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 3456 vs 3412"),
}


@pytest.mark.parametrize("kind", list(FULL_DISK))
def test_full_disk_while_checkpointing(kind, moved, tmp_path, monkeypatch, capsys):
    from accelerate import Accelerator

    out = tmp_path / "healed"
    run = tmp_path / "healed.heal-run"
    real = Accelerator.save_state
    calls = []

    def save_state(self, output_dir=None, **kwargs):
        calls.append(output_dir)
        if len(calls) < 2:
            return real(self, output_dir, **kwargs)
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "model.safetensors").write_bytes(b"\0" * 64)  # half written
        raise FULL_DISK[kind](Path(output_dir) / "model.safetensors")

    with monkeypatch.context() as m:
        m.setattr(Accelerator, "save_state", save_state)
        proc = run_tt(_args(moved, out, budget=("--steps", "3")), monkeypatch, capsys)
    assert_refused(proc, f"the disk holding {run} (mounted at", out)
    assert "is full" in proc.stderr and "--resume" in proc.stderr and "step-000001" in proc.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000001"]  # no partial one
    assert not list(run.glob(".*.partial"))
    proc = run_tt(_args(moved, out, "--resume", budget=("--steps", "3")), monkeypatch, capsys)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "heal.json").read_text())["step"] == 3


def test_full_disk_writing_the_best_state_of_a_fresh_run_leaves_nothing(moved, tmp_path, monkeypatch, capsys):
    from safetensors import SafetensorError

    def save_file(tensors, path):
        Path(path).write_bytes(b"\0" * 16)
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                              '"No space left on device" })')

    monkeypatch.setattr("transplant.train.heal_loop.save_file", save_file)
    out = tmp_path / "healed"
    proc = run_tt(_args(moved, out), monkeypatch, capsys)
    assert_refused(proc, "is full", out)
    assert "continue from the start" in proc.stderr
    _no_trace(out)  # no checkpoint yet: nothing to resume, the run folder is gone


def test_full_disk_writing_the_output(moved, tmp_path, monkeypatch, capsys):
    from transplant.train import heal_writer

    out = tmp_path / "healed"
    run = tmp_path / "healed.heal-run"

    def write_shards(layout, folder, replace, *args, **kwargs):
        (Path(folder) / "model.safetensors").write_bytes(b"\0" * 64)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(folder) / "model.safetensors"))

    with monkeypatch.context() as m:
        m.setattr(heal_writer, "write_shards", write_shards)
        proc = run_tt(_args(moved, out), monkeypatch, capsys)
    assert_refused(proc, f"the disk holding {out.parent}", out)
    assert "rerun the command with --resume" in proc.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000001", "step-000002"]
    proc = run_tt(_args(moved, out, "--resume"), monkeypatch, capsys)
    assert proc.returncode == 0, proc.stderr
    assert (out / "heal.json").is_file()


# --------------------------------------------------------------------------------------------
# 5. The budget counts training only; setup shows progress; no step at all is an error.

def test_minutes_count_training_time_only(moved, tmp_path, monkeypatch, capsys):
    """A budget shorter than the setup (loading, the first held-out score) still trains: before,
    the first score used it up and a 0-step "healed" copy of the input was written."""
    from transplant.train import heal_loop

    bars = []
    real = heal_loop.bar
    monkeypatch.setattr(heal_loop, "bar", lambda **kw: bars.append(kw) or real(**kw))
    out = tmp_path / "healed"
    args = _args(moved, out, budget=("--minutes", "1e-7"))[1:]  # not --quiet: the stage lines are shown
    proc = run_tt(args, monkeypatch, capsys)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "heal.json").read_text())
    assert summary["step"] >= 1 and summary["setup_seconds"] > 0
    assert "held-out windows before training (setup: not counted" in proc.stderr
    assert "min of training (the budget; setup" in proc.stdout
    assert [b["desc"] for b in bars] == ["healing"] and bars[0]["total"] == pytest.approx(6e-6)  # seconds
    from tqdm import tqdm  # the bar as drawn: its total, then "step N, M:SS left" (no stray "[, ")
    drawn = tqdm.format_meter(3, 6, 1.0, prefix="healing", bar_format=bars[0]["bar_format"], postfix="step 2, 0:03 left")
    assert drawn.endswith("3/6 s of training, step 2, 0:03 left"), drawn


def test_the_step_bar_shows_its_total(moved, tmp_path, monkeypatch):
    from transplant.train import heal_loop

    bars = []
    real = heal_loop.bar
    monkeypatch.setattr(heal_loop, "bar", lambda **kw: bars.append(kw) or real(**kw))
    heal(_cfg(moved, tmp_path / "healed", steps=3))
    assert bars[0]["total"] == 3 and bars[0]["unit"] == "step"


def test_a_run_that_trains_no_step_is_an_error(moved, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("transplant.train.heal_loop.budget_spent", lambda *a: True)
    out = tmp_path / "healed"
    proc = run_tt(_args(moved, out), monkeypatch, capsys)
    assert_refused(proc, "the training budget was used up before the first step", out)
    assert "--minutes" in proc.stderr
    _no_trace(out)


# --------------------------------------------------------------------------------------------
# 6. An earlier run folder: --resume continues it, --overwrite starts it afresh, else refused.

def test_an_earlier_run_folder_needs_resume_or_overwrite(moved, tmp_path, monkeypatch, capsys):
    run = tmp_path / "shared.heal-run"
    first = heal(_cfg(moved, tmp_path / "first", run=str(run), steps=3))
    assert first.summary["step"] == 3
    out = tmp_path / "second"
    before = snapshot(run)
    proc = run_tt(_args(moved, out, "--run", run), monkeypatch, capsys)
    assert_refused(proc, "pass --resume to continue it or --overwrite to start it afresh", out, before)
    proc = run_tt(_args(moved, out, "--run", run, "--overwrite"), monkeypatch, capsys)
    assert proc.returncode == 0, proc.stderr
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2]  # a new run: the old steps are gone
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000001", "step-000002"]
    assert json.loads((run / "heal_config.json").read_text())["out"] == str(out)
    assert json.loads((out / "heal.json").read_text())["step"] == 2


def test_a_run_folder_holding_only_its_lock_is_free(moved, tmp_path):
    """A run killed before it wrote its settings leaves the lock file alone: not an earlier run."""
    from transplant.train.heal_config import LOCK_FILE

    run = tmp_path / "healed.heal-run"
    run.mkdir()
    (run / LOCK_FILE).write_text("12345\n")
    res = heal(_cfg(moved, tmp_path / "healed"))
    assert res.summary["step"] == 2
