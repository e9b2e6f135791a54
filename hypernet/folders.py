"""What a hypernetwork folder and a hypernetwork training run's folder are, and the checks that
refuse a damaged one in one line: the run constants (`RUN_CONFIG`, `RUN_FORMAT`), the output
kind `HYPERNET_OUTPUT` (what `--overwrite` may replace), `check_network_folder` (config values
and weights' shapes) and `open_network`.

Example:
    >>> from hypernet.model import HyperNet
    >>> from safetensors.torch import load_file
    >>> w = load_file(f"{model_dir}/model.safetensors")
    >>> _ = HyperNet.create(w["model.embed_tokens.weight"], w["lm_head.weight"], width=16, layers=1, heads=2).save("hn")
    >>> is_hypernet_output(Path("hn")), open_network("hn").config.layers
    (True, 1)
"""

from __future__ import annotations

import json
import logging
from dataclasses import fields
from pathlib import Path

from transplant.common.errors import TransplantError
from transplant.common.safetensors_header import validate_shard
from transplant.io.outdir import OutputKind

log = logging.getLogger(__name__)

# Files of a network folder that are copied into the registry (training checkpoints are not).
NETWORK_FILES = ("config.json", "model.safetensors", "training.json")
# A training run's folder holds its settings from the moment it is created (`hypernet train`).
RUN_CONFIG = "train_config.json"
RUN_FORMAT = "tokentransplant-hypernet-run/1"
# Settings a run folder written before RUN_FORMAT existed is recognised by.
_RUN_KEYS = {"model", "texts", "out", "stage1_steps", "width"}
# Smallest valid value of each integer field of a network's config.json (ffn_mult: positive).
_CONFIG_MINIMUM = {"hidden_size": 1, "width": 0, "layers": 1, "heads": 0, "max_pieces": 1, "vocab_size": 0}


def _json_object(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def is_training_run(folder: Path) -> bool:
    """Whether `folder` is a `hypernet train` run folder (its settings file says so)."""
    settings = _json_object(Path(folder) / RUN_CONFIG)
    return settings is not None and (settings.get("format") == RUN_FORMAT or _RUN_KEYS <= settings.keys())


def is_hypernet_output(folder: Path) -> bool:
    """Whether `folder` was written by `hypernet train` or `hypernet export` (a run or a network),
    so that `--overwrite` may replace it; a model folder's config.json has no hypernetwork format.

    Example:
        >>> is_hypernet_output(Path(model_dir))
        False
    """
    from .model import FORMAT

    config = _json_object(Path(folder) / "config.json")
    return (config is not None and config.get("format") == FORMAT) or is_training_run(folder)


# What `hypernet train` and `hypernet export` write: `--overwrite` replaces only this.
HYPERNET_OUTPUT = OutputKind("a hypernetwork folder", f"no hypernetwork config.json or {RUN_CONFIG}",
                             is_hypernet_output)


def check_network_folder(folder: str | Path) -> dict:
    """The config of a saved network, after checking it can be loaded: config.json (JSON, format,
    known keys, types, ranges) and model.safetensors (header complete, tensors of the config's
    shapes), each failure one line. No tensor data is read.

    Example:
        >>> _ = Path("broken").mkdir()
        >>> _ = Path("broken/config.json").write_text('{"format": "tokentransplant-hypernet/1", "hidden": 3}')
        >>> _ = Path("broken/model.safetensors").write_bytes(b"")
        >>> check_network_folder("broken")
        Traceback (most recent call last):
        ...
        transplant.common.errors.TransplantError: broken/config.json: unknown key 'hidden' (valid keys: ...)
    """
    from .model import FORMAT

    folder = Path(folder)
    cfg_path, weights = folder / "config.json", folder / "model.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise TransplantError(f"{folder} is not a hypernetwork folder (expected config.json and "
                              "model.safetensors, as written by `hypernet train`)")
    fix = "train the network again, or export it from a checkpoint with `hypernet export`"
    raw = _json_object(cfg_path)
    if raw is None:
        raise TransplantError(f"{cfg_path} is not a JSON object ({fix})")
    if raw.get("format") != FORMAT:
        raise TransplantError(f"{cfg_path} is not a {FORMAT} config (train the network with this version)")
    values = {k: v for k, v in raw.items() if k != "format"}
    _check_config_values(values, cfg_path)
    _check_weights(weights, values, fix)
    return values


def _check_config_values(values: dict, where: Path) -> None:
    """Keys and types as `HyperNetConfig` declares them (the one spec schema), then the ranges."""
    from pydantic import ValidationError

    from transplant.common.specfile import dataclass_spec, explain

    from .model import HyperNetConfig

    spec = dataclass_spec(HyperNetConfig)
    try:
        spec.model_validate(values, strict=True)
    except ValidationError as exc:
        raise TransplantError(explain(exc, spec, str(where), values)) from None
    known = {f.name for f in fields(HyperNetConfig)}
    if "hidden_size" not in values:
        raise TransplantError(f"{where}: no hidden_size (valid keys: {', '.join(sorted(known))})")
    bad = [(key, f"at least {low}") for key, low in _CONFIG_MINIMUM.items() if key in values and values[key] < low]
    if "ffn_mult" in values and not 0 < values["ffn_mult"] < float("inf"):
        bad.append(("ffn_mult", "a positive number"))
    if bad:
        key, what = bad[0]
        raise TransplantError(f"{where}: {key} must be {what}, not {values[key]!r} (train the network again)")


def _check_weights(weights: Path, values: dict, fix: str, config: str = "its config.json") -> None:
    """The weights file's header is complete and holds exactly the tensors the config describes."""
    import torch

    from .model import HyperNet, HyperNetConfig

    header, _ = validate_shard(weights)
    try:
        with torch.device("meta"):  # shapes only: nothing is allocated
            expected = {k: list(v.shape) for k, v in HyperNet(HyperNetConfig(**values)).state_dict().items()}
    except (RuntimeError, ValueError, OverflowError) as exc:
        raise TransplantError(f"{weights.parent / 'config.json'} describes a network that cannot be built "
                              f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; {fix})") from None
    found = {k: v.get("shape") for k, v in header.items() if k != "__metadata__"}
    for name in sorted(set(expected) | set(found)):
        if expected.get(name) != found.get(name):
            there = "missing" if name not in found else f"of shape {found[name]}"
            want = "no such tensor" if name not in expected else f"shape {expected[name]}"
            raise TransplantError(f"{weights} does not match {config}: tensor {name} is {there} "
                                  f"(the config gives {want}; {fix})")


def open_network(folder: str | Path):
    """`HyperNet.load` after `check_network_folder`: a damaged or mismatched network is one line.

    Example:
        >>> from hypernet.model import HyperNet
        >>> from safetensors.torch import load_file
        >>> E_in = load_file(f"{model_dir}/model.safetensors")["model.embed_tokens.weight"]
        >>> _ = HyperNet.create(E_in, None, width=16, layers=1, heads=2).save("hn-open")
        >>> open_network("hn-open").config.width
        16
    """
    from .model import HyperNet

    check_network_folder(folder)
    return HyperNet.load(folder)


__all__ = ["HYPERNET_OUTPUT", "NETWORK_FILES", "RUN_CONFIG", "RUN_FORMAT", "check_network_folder", "is_hypernet_output",
           "is_training_run", "open_network"]
