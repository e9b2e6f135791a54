"""The output folder never loses data: no deletion without --overwrite, an atomic swap with it,
inputs and mount points protected, signals and killed runs cleaned up, the user's umask."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import transplant.output as api  # the writer of an output folder
import transplant.io.outdir as outdir
from transplant import transplant
from transplant.common.errors import TransplantError

ROOT = Path(__file__).resolve().parents[1]


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _stages(parent: Path, name: str) -> list[Path]:
    return [p for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def _appear_during_write(out: Path, contents: bool):
    real = api.write_weights

    def write_then_appear(*args, **kwargs):
        real(*args, **kwargs)
        out.mkdir()
        if contents:
            (out / "mine.txt").write_text("user data")
    return write_then_appear


@pytest.mark.parametrize("contents", [True, False], ids=["with-a-file", "empty"])
def test_folder_created_mid_run_is_never_deleted(llama_bl, tok_dirs, tmp_path, monkeypatch, contents):
    out = tmp_path / "out"
    monkeypatch.setattr(api, "write_weights", _appear_during_write(out, contents))
    with pytest.raises(TransplantError, match="appeared while this run was writing"):
        transplant(llama_bl, tok_dirs["sp"], out)
    assert out.is_dir()
    assert [p.name for p in out.iterdir()] == (["mine.txt"] if contents else [])
    assert not _stages(tmp_path, "out")


def test_concurrent_runs_to_one_output_exactly_one_wins(llama_bl, tok_dirs, tmp_path):
    out = tmp_path / "out"
    code = ("import sys; from transplant import transplant; from transplant.common.errors import TransplantError\n"
            "try:\n    transplant(sys.argv[1], sys.argv[2], sys.argv[3])\n"
            "except TransplantError as e:\n    print('error:', e, file=sys.stderr); sys.exit(2)\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(llama_bl), str(tok_dirs["sp"]), str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    loser = next(err for rc, err in results if rc)
    assert "appeared while this run was writing" in loser or "already exists" in loser
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    assert not _stages(tmp_path, "out")


def test_overwrite_swaps_and_an_interrupt_keeps_the_complete_old_output(llama_bl, tok_dirs, tmp_path, monkeypatch):
    out = tmp_path / "out"
    transplant(llama_bl, tok_dirs["sp"], out)
    before = _snapshot(out)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(api, "write_tokenizer", interrupted)
        with pytest.raises(KeyboardInterrupt):
            transplant(llama_bl, tok_dirs["wp"], out, overwrite=True)
    assert _snapshot(out) == before
    assert not _stages(tmp_path, "out")
    transplant(llama_bl, tok_dirs["wp"], out, overwrite=True)
    assert _snapshot(out) != before and (out / "tokenizer.json").exists()
    assert not _stages(tmp_path, "out")


def test_overwrite_without_renameat2_still_swaps(llama_bl, tok_dirs, tmp_path, monkeypatch):
    out = tmp_path / "out"
    transplant(llama_bl, tok_dirs["sp"], out)
    monkeypatch.setattr(outdir, "_renameat2", lambda *a: False)
    transplant(llama_bl, tok_dirs["wp"], out, overwrite=True)
    assert "[SEP]" in (out / "tokenizer.json").read_text()
    assert not _stages(tmp_path, "out")


def test_interrupt_after_publishing_keeps_the_new_output(llama_bl, tok_dirs, tmp_path, monkeypatch):
    out = tmp_path / "out"
    transplant(llama_bl, tok_dirs["sp"], out)
    real_remove = outdir._remove

    def interrupted_removal(path):
        if path.name.startswith(".out."):
            raise KeyboardInterrupt
        real_remove(path)

    monkeypatch.setattr(outdir, "_remove", interrupted_removal)
    with pytest.raises(KeyboardInterrupt):
        transplant(llama_bl, tok_dirs["wp"], out, overwrite=True)
    assert "[SEP]" in (out / "tokenizer.json").read_text() and (out / "model.safetensors").exists()
    monkeypatch.setattr(outdir, "_remove", real_remove)
    # The old output left under its hidden name belongs to a live process (ours) until it ends;
    # a later run from another process removes it (see test_stale_stages_are_removed).


@pytest.mark.parametrize("where", ["tokenizer-file", "tokenizer-folder"])
def test_overwrite_never_deletes_an_input_inside_the_output(llama_bl, tok_dirs, tmp_path, where):
    out = tmp_path / "out"
    transplant(llama_bl, tok_dirs["sp"], out)
    if where == "tokenizer-file":
        new_tok = out / "mine.json"
        new_tok.write_bytes((tok_dirs["wp"] / "tokenizer.json").read_bytes())
    else:
        new_tok = out / "tok"
        new_tok.mkdir()
        for f in tok_dirs["wp"].iterdir():
            (new_tok / f.name).write_bytes(f.read_bytes())
    with pytest.raises(TransplantError, match="lies inside the output folder"):
        transplant(llama_bl, new_tok, out, overwrite=True)
    assert new_tok.exists()


def test_overwrite_refuses_a_folder_that_is_not_an_output(llama_bl, tok_dirs, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(TransplantError, match="not a tokentransplant output"):
        transplant(llama_bl, tok_dirs["sp"], out, overwrite=True)
    assert (out / "thesis.tex").read_text() == "years of work"


def test_overwrite_refuses_a_mount_point(llama_bl, tok_dirs, tmp_path, monkeypatch):
    out = tmp_path / "mnt"
    out.mkdir()
    monkeypatch.setattr(outdir.os.path, "ismount", lambda p: Path(p) == out)
    with pytest.raises(TransplantError, match="mount point"):
        transplant(llama_bl, tok_dirs["sp"], out, overwrite=True)
    assert out.is_dir()


def test_stale_stages_are_removed(llama_bl, tok_dirs, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.partial-{dead.pid}-abc123"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    live = tmp_path / f".out.partial-{os.getppid()}-def456"
    live.mkdir()
    other = tmp_path / f".other.partial-{dead.pid}-abc123"
    other.mkdir()
    transplant(llama_bl, tok_dirs["sp"], tmp_path / "out")
    assert not stale.exists() and live.exists() and other.exists()


def test_output_gets_the_users_umask(llama_bl, tok_dirs, tmp_path):
    old = os.umask(0o022)
    try:
        transplant(llama_bl, tok_dirs["sp"], tmp_path / "out")
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_mid_write_leaves_nothing(llama_bl, tok_dirs, tmp_path, sig):
    out = tmp_path / "out"
    code = ("import sys, time, transplant.output as api\n"
            "real = api.write_weights\n"
            "def slow(*a, **k):\n    real(*a, **k); print('writing', flush=True); time.sleep(60)\n"
            "api.write_weights = slow\n"
            "from transplant.cli import main\n"
            "sys.argv = ['transplant', 'run', '--model', sys.argv[1], '--new-tok', sys.argv[2], '--out', sys.argv[3], '--method', 'fvt']\n"
            "main()\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    proc = subprocess.Popen([sys.executable, "-c", code, str(llama_bl), str(tok_dirs["sp"]), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "writing"
    assert _stages(tmp_path, "out")
    proc.send_signal(sig)
    rc = proc.wait(timeout=60)
    err = proc.stderr.read()
    assert rc != 0 and "Traceback" not in err, err
    assert len([line for line in err.splitlines() if line.strip()]) == 1, err
    assert not out.exists() and not _stages(tmp_path, "out")
