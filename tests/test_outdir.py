"""The output folder never loses data: no deletion without --overwrite, an atomic swap with it,
inputs and mount points protected, signals and killed runs cleaned up, the user's umask."""

from __future__ import annotations

import hashlib
import json
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


# -- publishing at the level of the mechanism: a concurrent reader, and a kill at every step ----

def _write_output(folder: Path, version: str, files: int) -> dict[str, str]:
    """A previous-output folder (it has the marker) of `files` files named after `version`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / outdir.OUTPUT_MARKERS[0]).write_text(f'{{"version": "{version}"}}')
    for k in range(files):
        (folder / f"{version}-{k:03d}.bin").write_bytes(f"{version} {k}".encode() * 64)
    return _snapshot(folder)


def _exchange_supported(tmp_path: Path) -> bool:
    a, b = tmp_path / "probe-a", tmp_path / "probe-b"
    a.mkdir()
    b.mkdir()
    try:
        return outdir._renameat2(a, b, outdir._RENAME_EXCHANGE)
    finally:
        a.rmdir()
        b.rmdir()


# A reader polling the output path in a process of its own. A listing that is neither version
# counts as partial only if the folder it listed is still the one at the path afterwards: a
# folder swapped out (and being deleted under its hidden name) is not what the path holds, and
# the open descriptor pins its inode number, so a new folder cannot reuse it meanwhile.
_POLLER = """
import json, os, sys
out, stop, versions = sys.argv[1], sys.argv[2], [frozenset(v.split(",")) for v in sys.argv[3:]]
polls = missing = partial = 0
print("ready", flush=True)
while not os.path.exists(stop):
    polls += 1
    try:
        fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        missing += 1
        continue
    try:
        if frozenset(os.listdir(fd)) not in versions:
            listed = os.fstat(fd)
            try:
                now = os.stat(out)
            except FileNotFoundError:
                missing += 1
                continue
            partial += (now.st_dev, now.st_ino) == (listed.st_dev, listed.st_ino)
    finally:
        os.close(fd)
print(json.dumps({"polls": polls, "missing": missing, "partial": partial}))
"""


def test_a_reader_never_sees_a_missing_or_partial_output_during_overwrite(tmp_path):
    """The README's "never loses data" for --overwrite: while publish swaps versions back and
    forth, a reader polling the path always finds one complete version."""
    if not _exchange_supported(tmp_path):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available on this filesystem")
    out, stop = tmp_path / "out", tmp_path / "stop"
    versions = {v: set(_write_output(tmp_path / f"model-{v}", v, 100)) for v in ("a", "b")}
    _write_output(out, "a", 100)
    poller = subprocess.Popen([sys.executable, "-c", _POLLER, str(out), str(stop),
                               *(",".join(sorted(names)) for names in versions.values())],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert poller.stdout.readline().strip() == "ready"
        for cycle in range(120):
            stage = outdir.Stage(out, overwrite=True)
            _write_output(stage.path, "ab"[(cycle + 1) % 2], 100)
            stage.publish()
    finally:
        stop.touch()
        seen = json.loads(poller.communicate(timeout=60)[0])
    assert seen["polls"] > 0
    assert seen["missing"] == 0 and seen["partial"] == 0, seen
    assert not _stages(tmp_path, "out")


# Publish in a child that SIGKILLs itself just before its `kill_at`-th filesystem change, as
# Python's audit hooks see them: renameat2 is looked up (`ctypes.dlsym`) just before it is called,
# shutil.rmtree unlinks file by file (`os.remove`, `os.rmdir`).
_KILLED_PUBLISH = """
import os, signal, sys
from pathlib import Path
from transplant.io.outdir import Stage
out, new, kill_at, overwrite = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
stage = Stage(out, overwrite=overwrite)
for f in sorted(new.iterdir()):
    (stage.path / f.name).write_bytes(f.read_bytes())
CHANGES = {"os.rename", "os.remove", "os.rmdir", "os.mkdir", "os.chmod", "shutil.rmtree", "shutil.move",
           "ctypes.dlsym"}
step = 0
def hook(event, args):
    global step
    if event in CHANGES:
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        step += 1
sys.addaudithook(hook)
stage.publish()
print(step, flush=True)
"""


@pytest.mark.parametrize("overwrite", [True, False], ids=["overwrite", "new"])
def test_sigkill_at_any_step_of_publish_leaves_a_complete_output(tmp_path, overwrite):
    """Killed at each step of publish in turn, the path holds the complete old output or the
    complete new one (nothing, or the new one, when there was none); what the killed process
    left under hidden names is removed by the next run."""
    new = _write_output(tmp_path / "new", "new", 4)
    seen, k = [], 0
    while True:
        parent = tmp_path / f"kill-{k}"
        out = parent / "out"
        old = _write_output(out, "old", 4) if overwrite else None
        proc = subprocess.run([sys.executable, "-c", _KILLED_PUBLISH, str(out), str(tmp_path / "new"), str(k),
                               "1" if overwrite else "0"], capture_output=True, text=True, timeout=120)
        state = _snapshot(out) if out.exists() else None
        assert state in (old, new), (k, proc.returncode, state and sorted(state))
        if proc.returncode == 0:
            assert state == new and int(proc.stdout) == k  # every step was a kill point before
            break
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        seen.append("new" if state == new else "old")
        outdir.Stage(out, overwrite=True).discard()  # the next run: removes the dead process's stages
        assert not _stages(parent, "out"), k
        k += 1
        assert k < 200
    # Kills landed before and after the switch (the hook did reach the publish).
    assert seen[0] == "old" and (seen[-1] == "new" or not overwrite), seen
