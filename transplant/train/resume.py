"""What a resumed training run must match (`hypernet train --resume`, `transplant heal --resume`),
checked before anything is loaded from the checkpoint or written to the run folder.

A resume continues the run it finds: the same inputs (compared by content, not by path: a file
replaced at the same path is another input), a checkpoint whose tensors have the shapes of the
module built now (another model or another width gives other shapes), and files that load
without unpickling anything (`torch.load(weights_only=True)`, which refuses a pickled object).
Each mismatch is one line naming what differs; the run folder is left as it was.

Example:
    >>> _ = Path("a.txt").write_text("some text")
    >>> saved = input_fingerprints({"texts": ["a.txt"]})
    >>> check_same_inputs(saved, input_fingerprints({"texts": ["a.txt"]}), Path("run"))  # unchanged
    >>> _ = Path("a.txt").write_text("other text")
    >>> check_same_inputs(saved, input_fingerprints({"texts": ["a.txt"]}), Path("run"))
    Traceback (most recent call last):
    ...
    transplant.common.errors.TransplantError: run was started with other texts: a.txt has changed since (...
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import torch

from transplant.common.errors import TransplantError
from transplant.common.fingerprint import file_fingerprint
from transplant.common.safetensors_header import validate_shard
from transplant.io.outdir import OutputKind, check_output_path, staged_output
from transplant.train.trainloop import STATE_FILE, Checkpoints, restore

# Where to go from a checkpoint that cannot be used.
_FIX = "delete that checkpoint folder to resume from an earlier one, or start afresh"


def check_run_output(out: Path, inputs: list[Path], resume: bool, overwrite: bool, kind: OutputKind,
                     is_run: Callable[[Path], bool], settings_name: str) -> Path | None:
    """Where a run whose output folder is its run folder goes, checked before any work; returns the
    checkpoint a resume starts from (None: a new run).

    A new run needs a free `out`, or with `overwrite` an earlier output of its `kind` there;
    `resume` needs a run folder there (`is_run`; none at all: a new run). Never inside an input.
    """
    if resume and overwrite:
        raise TransplantError("pass --resume (continue the run in --out) or --overwrite (start afresh), not both")
    exists = out.exists() or out.is_symlink()
    latest = Checkpoints(out, 1).latest() if exists else None
    if exists and resume:
        if not is_run(out):
            raise TransplantError(f"{out} is not a training run of this command (no {settings_name}); nothing to "
                                  "resume there (drop --resume, or pass the run's folder as --out)")
        check_output_path(out, inputs, True, kind)  # its own kind: only the inputs are checked
        return latest
    if latest is not None and not overwrite:
        raise TransplantError(f"{out} holds a training run (checkpoint {latest.name}); pass --resume to continue "
                              "it, --overwrite to start afresh, or choose another --out")
    check_output_path(out, inputs, overwrite, kind)
    return None


def open_run_output(out: Path, settings_name: str, settings: dict, resume: bool, overwrite: bool,
                    kind: OutputKind) -> None:
    """Write a run's settings once every check passed (main process): into the run folder on a
    resume, else into a new folder published by one rename (with `overwrite`, swapped with the
    earlier output), so the folder holds its settings, and is resumable, from its first instant."""
    if resume and out.is_dir():
        write_json(out / settings_name, settings)
        return
    with staged_output(out, overwrite, kind) as staged:
        write_json(staged.path / settings_name, settings)


def write_json(path: Path, value: dict) -> None:
    """Write beside the final name and rename: a kill never leaves half a file."""
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)


def check_same_settings(saved: dict, now: dict, may_change: set[str], run: Path, elsewhere: str) -> None:
    """Refuse a resume whose settings differ from those the run was started with (but `may_change`).

    Example:
        >>> check_same_settings({"lr": 0.1, "steps": 5}, {"lr": 0.1, "steps": 9}, {"steps"}, Path("run"), "--out")
        >>> check_same_settings({"lr": 0.1}, {"lr": 1.0}, set(), Path("run"), "another --out")
        Traceback (most recent call last):
        ...
        transplant.common.errors.TransplantError: run was started with lr=0.1, not 1.0; ...
    """
    for key, value in now.items():
        if key not in may_change and key in saved and saved[key] != value:
            raise TransplantError(f"{run} was started with {key}={saved[key]!r}, not {value!r}; a resume continues "
                                  f"the same run (pass the same setting, or start a new run with {elsewhere})")


def input_fingerprints(groups: dict[str, list[str | Path]]) -> dict[str, list[list[str]]]:
    """{group: [[path, content fingerprint], ...]} for each group of input files (texts, model files).

    Example:
        >>> _ = Path("t.txt").write_bytes(b"hello\\n")
        >>> input_fingerprints({"texts": ["t.txt"]})
        {'texts': [['t.txt', '5891b5b522d5df08']]}
    """
    return {group: [[str(p), file_fingerprint(p)] for p in paths] for group, paths in groups.items()}


def check_same_inputs(saved: dict | None, now: dict, run: Path) -> None:
    """Refuse a resume whose inputs differ in content from those the run was started with.

    `saved` is None for a run folder written before inputs were recorded: nothing to compare.
    """
    if not isinstance(saved, dict):
        return
    for group, files in now.items():
        before = saved.get(group)
        if before is None:
            continue
        if len(before) != len(files):
            raise TransplantError(f"{run} was started with {len(before)} {group}, not {len(files)}; a resume "
                                  "continues the same run (pass the same inputs, or start a new run elsewhere)")
        for (old_path, old_fp), (path, fp) in zip(before, files):
            if old_fp != fp:
                changed = f"{path} has changed since" if old_path == path else f"{path} is not the {old_path} it read"
                raise TransplantError(f"{run} was started with other {group}: {changed} (fingerprint {fp}, not "
                                      f"{old_fp}); a resume continues the same run (pass the same inputs, or start "
                                      "a new run elsewhere)")


def checkpoint_tensors(checkpoint: Path, module: torch.nn.Module, what: str) -> dict:
    """The checkpoint's weights header, after checking it holds `module`'s tensors with their shapes.

    Args:
        checkpoint: a `step-N` folder of `trainloop.Checkpoints`.
        module: the module built for the resumed run (unwrapped).
        what: the run's settings that fix the shapes, for the message ("--model and --width").
    """
    _check_state_file(checkpoint)
    weights = checkpoint / "model.safetensors"
    if not weights.is_file():
        raise TransplantError(f"checkpoint {checkpoint} has no model.safetensors ({_FIX})")
    header, _ = validate_shard(weights)
    expected = {k: list(v.shape) for k, v in module.state_dict().items()}
    found = {k: v["shape"] for k, v in header.items() if k != "__metadata__"}
    for name in sorted(set(expected) | set(found)):
        if expected.get(name) != found.get(name):
            shape = "missing" if name not in found else "x".join(map(str, found[name])) or "scalar"
            want = "absent" if name not in expected else "x".join(map(str, expected[name])) or "scalar"
            raise TransplantError(f"checkpoint {checkpoint} does not fit this run: tensor {name} is {shape} there, "
                                  f"{want} here (it was trained with another {what}); resume with the settings "
                                  "the run was started with, or start a new run elsewhere")
    return header


def _check_state_file(checkpoint: Path) -> None:
    try:
        state = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        state = None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise TransplantError(f"checkpoint {checkpoint} has a damaged {STATE_FILE} ({_FIX})")


def restore_checked(accelerator, checkpoint: Path, log_path: Path) -> dict:
    """`trainloop.restore`, with a checkpoint that cannot be loaded as one line instead of a traceback.

    Nothing is written before the checkpoint has loaded (the log is trimmed afterwards), so a
    refused checkpoint leaves the run folder as it was. A pickled object in a checkpoint file is
    refused by `torch.load(weights_only=True)` (accelerate's default), never unpickled.
    """
    try:
        return restore(accelerator, checkpoint, log_path)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TransplantError(f"checkpoint {checkpoint} cannot be loaded ({first[:200]}): it is damaged or was "
                              f"not written by this tool ({_FIX})") from None


__all__ = ["check_run_output", "open_run_output", "write_json", "check_same_settings", "input_fingerprints",
           "check_same_inputs", "checkpoint_tensors", "restore_checked"]
