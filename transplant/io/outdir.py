"""The output folder's life cycle: stage in a hidden sibling, publish by one rename, never lose data.

Rules (each one a test in tests/test_outdir.py):

* Without ``overwrite`` nothing at ``out`` is ever deleted or replaced: the finished folder is
  moved into place with ``renameat2(RENAME_NOREPLACE)``, so a folder that appeared at ``out``
  while we were writing (another run, the user) wins and this run fails with one line. Of two
  concurrent runs to one ``out`` exactly one publishes.
* With ``overwrite`` the path holds the complete old output or the complete new one at every
  instant: the two are swapped with ``renameat2(RENAME_EXCHANGE)`` and the old one is deleted
  only afterwards, from its hidden name. ``overwrite`` refuses a folder that is not a previous
  output (or empty), a mount point, and a folder that holds one of the run's inputs.
* A hidden staging folder is named after the process that owns it
  (``.NAME.partial-PID-XXXX``); folders left by a killed process (pid no longer alive) are
  removed by the next run that writes to the same ``out``.
* The output folder gets the user's umask (``mkdtemp`` makes 0700 folders).
* SIGTERM cleans up like Ctrl-C (see `terminate_like_interrupt`).
* Each command names its kind of output (`OutputKind`: a transplant, a hypernetwork, a fastText
  file, ...) and ``overwrite`` replaces only that kind: a hypernetwork folder never replaces a
  model folder, fastText vectors never replace a model's weights. A kind may be a single file,
  staged as a hidden sibling file and published the same way.

Example:
    >>> out = check_output_path(Path("out"), inputs=[Path(model_dir)], overwrite=False)
    >>> with staged_output(out, overwrite=False) as stage:  # written under .out.partial-PID-XXXX
    ...     _ = (stage.path / "transplant_plan.json").write_text("{}")
    >>> sorted(p.name for p in Path("out").iterdir())  # published by one rename
    ['transplant_plan.json']
    >>> check_output_path(Path("out"), inputs=[], overwrite=False)
    Traceback (most recent call last):
    ...
    transplant.common.errors.TransplantError: output folder .../out already exists (pass --overwrite to replace it)
    >>> check_output_path(Path(model_dir) / "out", inputs=[Path(model_dir)], overwrite=False)
    Traceback (most recent call last):
    ...
    transplant.common.errors.TransplantError: output folder .../tiny-model/out is inside the input folder .../tiny-model (choose an output elsewhere)
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from transplant.common.errors import TransplantError
from transplant.common.permissions import follow_umask, umask

log = logging.getLogger(__name__)

# Files whose presence marks a folder as an earlier tokentransplant output (safe to replace).
OUTPUT_MARKERS = ("transplant_plan.json", "training_summary.json")  # a transplant; a trained tokenizer
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_AT_FDCWD = -100
_STAGE = re.compile(r"^\.(?P<name>.+)\.(?:partial|old)-(?P<pid>\d+)-[A-Za-z0-9_]+$")


def _has_marker(markers: tuple[str, ...]) -> Callable[[Path], bool]:
    def owns(folder: Path) -> bool:
        return any((folder / m).exists() for m in markers)

    return owns


@dataclass(frozen=True)
class OutputKind:
    """What one command writes, so that ``overwrite`` replaces that and nothing else.

    Args:
        name: the kind in words, for messages ("a tokentransplant output").
        hint: what an existing path lacks when it is not of this kind ("no transplant_plan.json").
        owns: whether an existing path is an earlier output of this kind (an empty folder always is).
        folder: a folder (True) or a single file (False).

    Example:
        >>> vectors = OutputKind("a fastText file", "no fastText header", lambda p: False, folder=False)
        >>> TRANSPLANT_OUTPUT.owns(Path(model_dir)), vectors.folder
        (False, False)
    """

    name: str
    hint: str
    owns: Callable[[Path], bool]
    folder: bool = True


# The default kind: a transplant (its plan) or a trained tokenizer (its summary).
TRANSPLANT_OUTPUT = OutputKind("a tokentransplant output", f"no {OUTPUT_MARKERS[0]}", _has_marker(OUTPUT_MARKERS))


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Linux renameat2; False when the call is unavailable here (other OS, old libc, some filesystems)."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL):  # not supported by this kernel / filesystem
        return False
    raise OSError(err, os.strerror(err), str(dst))


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_stages(out: Path) -> list[Path]:
    """Delete hidden staging/old folders of `out` whose owning process is gone; return them."""
    removed = []
    if not out.parent.is_dir():
        return removed
    for entry in out.parent.iterdir():
        m = _STAGE.match(entry.name)
        if not m or m.group("name") != out.name or _pid_alive(int(m.group("pid"))):
            continue
        _remove(entry)
        removed.append(entry)
        log.info("removed %s left by a process that no longer runs", entry)
    return removed


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _is_previous_output(path: Path, kind: OutputKind = TRANSPLANT_OUTPUT) -> bool:
    if not kind.folder:
        return path.is_file() and not path.is_symlink() and kind.owns(path)
    try:
        empty = not any(path.iterdir())
    except OSError:
        return False
    return empty or kind.owns(path)


def check_output_path(out: Path, inputs: list[Path], overwrite: bool, kind: OutputKind = TRANSPLANT_OUTPUT) -> Path:
    """Validate `out` before any work starts; return it with its parent resolved.

    Args:
        out: the requested output folder (or file, for a kind that is a file).
        inputs: every file or folder the run reads (model, tokenizers, plan, texts).
        overwrite: whether an existing output may be replaced.
        kind: what the command writes; `overwrite` replaces only an earlier output of this kind.
    """
    out = Path(os.path.abspath(out))
    out = out.parent.resolve() / out.name
    real_out = out.resolve()
    noun = "output folder" if kind.folder else "output file"
    for src in inputs:
        src = Path(src).resolve()
        if not kind.folder and real_out == src:
            raise TransplantError(f"{noun} {out} is one of this command's inputs (choose an output elsewhere)")
        if real_out == src or src in real_out.parents:
            what = "folder" if src.is_dir() else "file"
            raise TransplantError(f"{noun} {out} is inside the input {what} {src} (choose an output elsewhere)")
        if real_out in src.parents:
            raise TransplantError(f"the input {src} lies inside the {noun} {out}; writing there could "
                                  "delete it (move the input or choose another --out)")
    if out.exists() or out.is_symlink():
        _check_replaceable(out, overwrite, kind, noun)
    check_writable_place(out, noun)
    return out


def check_writable_place(out: Path, noun: str = "output folder") -> None:
    """Refuse, before any work, an output whose folder cannot take a new entry (read-only, another
    user's, /proc): the nearest existing folder on its way is tried with a hidden file, removed
    at once.

    Example:
        >>> check_writable_place(Path("/proc/out"))
        Traceback (most recent call last):
        ...
        transplant.common.errors.TransplantError: cannot write the output folder /proc/out: ... (choose another --out)
    """
    place = out.parent
    while not place.exists() and place != place.parent:
        place = place.parent
    why = cannot_create_in(place, out.name)
    if why is not None:
        raise TransplantError(f"cannot write the {noun} {out}: {why} in {place} (choose another --out)")


def cannot_create_in(folder: Path, name: str) -> str | None:
    """Why no new file can be made in `folder` (tried with a hidden file named after `name`,
    removed at once), or None when one can.

    Example:
        >>> cannot_create_in(Path("/proc"), "x") is not None
        True
    """
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{name}.", suffix=".probe", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return str(exc.strerror or exc)
    return None


def _check_replaceable(out: Path, overwrite: bool, kind: OutputKind, noun: str) -> None:
    """An existing `out` may be replaced only with `overwrite`, and only by its own kind of output."""
    if not overwrite:
        raise TransplantError(f"{noun} {out} already exists (pass --overwrite to replace it)")
    if os.path.ismount(out):
        raise TransplantError(f"{noun} {out} is a mount point; refusing to replace it "
                              "(write to a folder inside it)")
    if kind.folder and not out.is_dir():
        raise TransplantError(f"{out} exists and is not a folder; refusing to replace it (remove it or "
                              "choose another --out)")
    if not kind.folder and (out.is_symlink() or not out.is_file()):
        raise TransplantError(f"{out} exists and is not a plain file; refusing to replace it (remove it or "
                              "choose another --out)")
    if not _is_previous_output(out, kind):
        state = "is not empty and is not" if kind.folder else "is not"
        raise TransplantError(f"{out} {state} {kind.name} ({kind.hint}); refusing to delete it with "
                              "--overwrite (remove it yourself or choose another --out)")


class Stage:
    """A hidden folder (or file, for a file kind) beside `out` that becomes `out` on `publish()`."""

    def __init__(self, out: Path, overwrite: bool, kind: OutputKind = TRANSPLANT_OUTPUT):
        self.out = out
        self.overwrite = overwrite
        self.kind = kind
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_stages(out)
        prefix = f".{out.name}.partial-{os.getpid()}-"
        if kind.folder:
            self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=out.parent))
            os.chmod(self.path, 0o777 & ~umask())
        else:
            fd, name = tempfile.mkstemp(prefix=prefix, dir=out.parent)
            os.close(fd)
            self.path = Path(name)
            follow_umask(self.path)  # mkstemp makes private files
        self.published = False

    def publish(self) -> None:
        """Move the finished folder into place (see the module rules)."""
        out, path = self.out, self.path
        if self.overwrite and (out.exists() or out.is_symlink()):
            if not _is_previous_output(out, self.kind) and not out.is_symlink():
                raise TransplantError(f"{out} changed while this run was writing and is no longer "
                                      f"{self.kind.name}; left it untouched (remove it or choose another --out)")
            if _renameat2(path, out, _RENAME_EXCHANGE):
                self.published = True  # `path` now holds the old output
            else:
                old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}-", dir=out.parent))
                os.rmdir(old)
                os.rename(out, old)
                os.rename(path, out)
                self.published = True
                path = old
            _remove(path)
            return
        try:
            done = _renameat2(path, out, _RENAME_NOREPLACE)
        except FileExistsError:
            raise TransplantError(f"{out} appeared while this run was writing (another run?); left it untouched "
                                  "and discarded this run's output (pass --overwrite to replace it)") from None
        if not done:
            # No renameat2 here: os.rename refuses a non-empty target; an empty folder that
            # appeared in the last instant would be replaced, the only gap of this fallback.
            if out.exists() or out.is_symlink():
                raise TransplantError(f"{out} appeared while this run was writing (another run?); left it "
                                      "untouched (pass --overwrite to replace it)")
            try:
                if self.kind.folder:
                    os.rename(path, out)
                else:  # os.rename would replace a file silently; a hard link never does
                    os.link(path, out)
                    os.unlink(path)
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                    raise TransplantError(f"{out} appeared while this run was writing (another run?); left it "
                                          "untouched (pass --overwrite to replace it)") from None
                raise
        self.published = True

    def discard(self) -> None:
        if not self.published:
            _remove(self.path)


@contextlib.contextmanager
def staged_output(out: Path, overwrite: bool, kind: OutputKind = TRANSPLANT_OUTPUT) -> Iterator[Stage]:
    """Stage into a hidden folder (or file); publish on success, delete the stage on any failure or signal."""
    stage = Stage(out, overwrite, kind)
    try:
        with terminate_like_interrupt():
            yield stage
            stage.publish()
    finally:
        stage.discard()


@contextlib.contextmanager
def terminate_like_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt while the block runs (main thread only), so `finally`
    clauses clean up as they do for Ctrl-C."""
    try:
        previous = signal.getsignal(signal.SIGTERM)

        def handler(signum, frame):
            raise KeyboardInterrupt("terminated")

        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
