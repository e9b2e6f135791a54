"""What the command-line tests share: running `transplant` / `hypernet` in this process or in a
subprocess, the one-line refusal every bad input must get, snapshots proving nothing else changed,
and the small inputs (a writable model copy, a text) those tests refuse or accept.

Test files import these from here, never from one another.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import builders as B
import pytest

from transplant.cli import main
from transplant.common import progress

TEXT = B.DATA / "bible_en.txt"


# The settings of every tiny hypernetwork run here (seconds on a CPU).
HN = ["--stage1-steps", "2", "--stage1-batch", "32", "--width", "16", "--layers", "1", "--checkpoint-every", "1"]


def run_inproc(args, monkeypatch, capsys, cwd=None, entry=None, prog="transplant"):
    """`transplant ARGS` (or `prog` with its `entry` point) in this process; returns what a subprocess
    run would (returncode, stdout, stderr)."""
    if cwd is not None:
        monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", [prog, *map(str, args)])
    capsys.readouterr()
    code = 0
    try:
        (entry or main)()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err)


def run_hn(args, monkeypatch, capsys):
    """`hypernet ARGS` in this process; returns (returncode, stdout, stderr) as a subprocess would."""
    from hypernet.cli import main

    monkeypatch.setattr(progress, "_quiet", progress._quiet)  # `--quiet` is undone after the test
    return run_inproc(args, monkeypatch, capsys, entry=main, prog="hypernet")


def run_tt(args, monkeypatch, capsys):
    """`transplant ARGS` in this process (`--quiet` undone after the test)."""
    monkeypatch.setattr(progress, "_quiet", progress._quiet)
    return run_inproc(args, monkeypatch, capsys)


def run_cli(*args, cwd):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "transplant.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


def assert_clean_failure(proc, phrase, out):
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert phrase in lines[0], lines[0]
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.partial-*"))


class Snapshot(dict):
    """Every file and folder under `roots`, hidden ones included, with its content's hash."""

    def __init__(self, roots: tuple[Path, ...]):
        super().__init__()
        self.roots = roots
        for root in roots:
            for p in [root, *root.rglob("*")] if root.is_dir() else [root]:
                self[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"


def snapshot(*paths: Path) -> Snapshot:
    return Snapshot(tuple(Path(p) for p in paths))


def assert_refused(proc, phrase: str, out: Path | None = None, before: Snapshot | None = None) -> None:
    """One `error:` line holding `phrase`, exit 2, no traceback; `out` left as it was (absent, or
    in `before`) with no hidden stage beside it; everything in `before` byte-identical."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert phrase in lines[0], lines[0]
    if out is not None:
        assert not list(out.parent.glob(f".{out.name}.partial-*"))
        if before is None or str(out) not in before:
            assert not out.exists() and not out.is_symlink()
    if before is not None:
        assert snapshot(*before.roots) == before


@contextmanager
def replaced(path: Path, content: bytes):
    """`path` holds `content` inside the block, its own bytes again afterwards."""
    original = path.read_bytes()
    path.write_bytes(content)
    try:
        yield path
    finally:
        path.write_bytes(original)


@pytest.fixture
def model(llama_bl, tmp_path):
    """A writable copy of the tiny model (a folder that is not any command's output)."""
    return Path(shutil.copytree(llama_bl, tmp_path / "model"))


@pytest.fixture
def text(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(TEXT.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    return path
