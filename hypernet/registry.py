"""The networks this installation knows: shipped with the package, and registered by the user.

Shipped networks live in `hypernet/networks/<name>/` (one per packaged model). `hypernet train`
and `hypernet export` register their output by copying it (a few MB) into the user's registry,
`$TOKENTRANSPLANT_HOME/hypernets/<name>/` (default `~/.cache/tokentransplant/hypernets/`), so a
network keeps working after its training folder is gone, and a resumed run re-registers its
newer weights under the same name.

A network is matched to a model by the model's embeddings, as `HyperNet.check_source` does
(the stored fingerprint rows against the same rows of the model: a fine-tune of the base
matches, another model does not), never by its name. When several match, the choice is fixed by
the registry, never by timing: networks the user registered before shipped ones (the user
trained it on purpose, maybe on their own domain), then by name.

Example:
    >>> for net in known_networks():  # none registered yet: the shipped ones
    ...     print(net.name, net.origin, net.base_model)
    gemma-3-270m shipped gemma-3-270m
    smollm2-135m-instruct shipped smollm2-135m-instruct
    >>> from safetensors.torch import load_file
    >>> from hypernet.model import HyperNet
    >>> weights = load_file(f"{model_dir}/model.safetensors")
    >>> E_in, E_out = weights["model.embed_tokens.weight"], weights["lm_head.weight"]
    >>> print(find_network(E_in, E_out))  # the network for this model's embeddings, or None
    None
    >>> _ = HyperNet.create(E_in, E_out, base_model=model_dir, width=16, layers=1, heads=2).save("hn-tiny")
    >>> register("hn-tiny").origin  # what `hypernet train` does with its output
    'registered'
    >>> net, cosine = find_network(E_in, E_out)
    >>> net.name, round(cosine, 3)
    ('hn-tiny', 1.0)
    >>> unregister("hn-tiny").name
    'hn-tiny'
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

from transplant.common.errors import TransplantError
from transplant.common.safetensors_header import validate_shard
from transplant.io.outdir import OutputKind

log = logging.getLogger(__name__)

SHIPPED_DIR = Path(__file__).resolve().parent / "networks"
# Files of a network folder that are copied into the registry (training checkpoints are not).
NETWORK_FILES = ("config.json", "model.safetensors", "training.json")
REGISTERED = "registered.json"
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


def registry_dir() -> Path:
    """Where the user's networks are registered: `$TOKENTRANSPLANT_HOME/hypernets`, else the cache's."""
    home = os.environ.get("TOKENTRANSPLANT_HOME")
    if home:
        return Path(home) / "hypernets"
    from transplant.io.sources import cache_dir

    return cache_dir() / "hypernets"


@dataclass(frozen=True)
class KnownNetwork:
    """One network of the registry: where it is, whence it came, and what it was trained for."""

    name: str
    path: Path
    origin: str  # "registered" or "shipped"
    base_model: str
    hidden_size: int
    vocab_size: int
    untied: bool
    training: dict

    @property
    def summary(self) -> str:
        """One line of its training: stages, minutes, texts (a field of the wrong type reads as unknown)."""
        t = self.training
        if not t:
            return "no training summary"

        def number(key: str) -> float | None:
            value = t.get(key, 0)
            return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

        parts = [number(k) for k in ("stage1_done", "stage2_done", "stage1_seconds", "stage2_seconds")]
        texts = t.get("texts")
        steps = "? + ?" if None in parts[:2] else f"{parts[0]:.0f} + {parts[1]:.0f}"
        mins = "?" if None in parts[2:] else f"{(parts[2] + parts[3]) / 60:.0f}"
        n_texts = len(texts) if isinstance(texts, list) else "?"
        return f"{steps} steps (stage 1 + 2), {mins} min, {n_texts} training texts"


def _read(folder: Path, name: str, origin: str) -> KnownNetwork | None:
    """The entry of a network folder, or None (a warning) when it cannot be loaded: a damaged
    network in the registry is skipped, never a traceback in `transplant run` or `hypernet list`."""
    files = [folder / "config.json", folder / "model.safetensors"]
    if not all(f.is_file() for f in files):
        if any(os.path.lexists(f) for f in files):  # there but unreadable (a dangling link, a link loop)
            log.warning("skipped the %s network %s: %s is not a readable file", origin, name,
                        next(f.name for f in files if not f.is_file()))
        return None
    try:
        cfg = check_network_folder(folder)
    except TransplantError as exc:
        log.warning("skipped the %s network %s: %s", origin, name, exc)
        return None
    training = _json_object(folder / "training.json") or {}
    return KnownNetwork(name, folder, origin, str(cfg.get("base_model", "")), int(cfg["hidden_size"]),
                        int(cfg.get("vocab_size", 0)), bool(cfg.get("untied", False)), training)


def known_networks() -> list[KnownNetwork]:
    """Every usable network, in the order `find_network` tries them: registered, then shipped, by name."""
    found = []
    for origin, root in (("registered", registry_dir()), ("shipped", SHIPPED_DIR)):
        if not root.is_dir():
            continue
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            net = _read(folder, folder.name, origin)
            if net is not None:
                found.append(net)
    return found


def match_cosine(net: KnownNetwork, E_in, E_out) -> float | None:
    """Mean cosine of the network's fingerprint rows with the same rows of `E_in`, or None when
    the shapes say it belongs to another model (reads two small tensors, not the network)."""
    from safetensors import safe_open

    from hypernet.model import fingerprint_cosine

    if E_in.shape[1] != net.hidden_size or (E_out is not None) != net.untied:
        return None
    try:
        with safe_open(str(net.path / "model.safetensors"), "pt") as fh:
            ids, rows = fh.get_tensor("fingerprint_ids"), fh.get_tensor("fingerprint_rows").float()
    except Exception as exc:  # a damaged file: skipped like every other damaged entry
        log.warning("skipped the %s network %s: its fingerprint cannot be read (%s)", net.origin, net.name, exc)
        return None
    if (ids.dtype.is_floating_point or ids.dim() != 1 or rows.dim() != 2 or rows.shape[0] != ids.shape[0]
            or rows.shape[1] != E_in.shape[1]):
        log.warning("skipped the %s network %s: its fingerprint has the wrong shape", net.origin, net.name)
        return None
    return fingerprint_cosine(ids, rows, E_in)  # ids past this vocabulary (another model's) left out


def find_network(E_in, E_out) -> tuple[KnownNetwork, float] | None:
    """The first known network (see `known_networks` for the order) trained for the model whose
    embeddings are `E_in` (and head `E_out`, None when tied), with its fingerprint cosine.
    Only a few rows of `E_in` are read (any dtype), and of `E_out` only whether it is None."""
    from .model import SAME_BASE_COSINE

    for net in known_networks():
        cos = match_cosine(net, E_in, E_out)
        if cos is not None and cos >= SAME_BASE_COSINE:
            return net, cos
    return None


def register(folder: str | Path, name: str | None = None) -> KnownNetwork:
    """Copy a trained network folder into the user's registry (replacing an earlier copy of the
    same source folder); returns the registered entry.

    The name is the folder's name; a different network already registered under that name keeps
    it, and this one gets the name with a short hash of its source path.
    """
    folder = Path(folder).resolve()
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise TransplantError(f"{folder} is not a trained hypernetwork folder (config.json and model.safetensors "
                              "from `hypernet train` or `hypernet export`)")
    check_network_folder(folder)  # a damaged network is refused here, in one line
    root = registry_dir()
    name = name or folder.name
    target = root / name
    if target.exists() and _source_of(target) != str(folder):
        name = f"{name}-{hashlib.sha256(str(folder).encode()).hexdigest()[:8]}"
        target = root / name
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        for f in NETWORK_FILES:
            if (folder / f).is_file():
                shutil.copy2(folder / f, tmp / f)
        (tmp / REGISTERED).write_text(json.dumps({"source": str(folder)}, indent=2) + "\n")
        if target.exists():  # a newer version of the same network: swap it in, then drop the old one
            old = Path(tempfile.mkdtemp(prefix=f".{name}-old-", dir=root))
            os.replace(target, old / name)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _read(target, name, "registered")  # type: ignore[return-value]


def unregister(name: str) -> Path:
    """Remove a network from the user's registry (shipped networks cannot be removed). `name` is
    an entry's name as `hypernet list` shows it, never a path: nothing outside the registry goes."""
    root = registry_dir()
    target = root / name
    if (not name or name in (".", "..") or Path(name).name != name or "/" in name or os.sep in name
            or target.is_symlink() or target.resolve().parent != root.resolve()):
        raise TransplantError(f"{name!r} is not a network name: pass the name `hypernet list` shows (a registered "
                              "network), not a path")
    if not (target / REGISTERED).is_file():
        known = ", ".join(n.name for n in known_networks() if n.origin == "registered") or "none"
        raise TransplantError(f"no registered network named {name!r} (registered: {known}; see `hypernet list`)")
    shutil.rmtree(target)
    return target


def ship(folder: str | Path, name: str, root: Path = SHIPPED_DIR) -> Path:
    """Write a trained network as a shipped one, `root/name/`: its weights in bfloat16 (half the
    size; the statistics and fingerprint buffers stay float32, they set the scale of every
    prediction), its config and training summary. Maintainers' step (BENCHMARKS.md)."""
    import torch
    from safetensors.torch import load_file, save_file

    from .model import FORMAT

    folder = Path(folder)
    state = load_file(str(folder / "model.safetensors"))
    buffers = {"mean_in", "std_in", "mean_out", "std_out", "fingerprint_ids", "fingerprint_rows"}
    state = {k: (v if k in buffers or not v.is_floating_point() else v.to(torch.bfloat16)).contiguous()
             for k, v in state.items()}
    target = root / name
    target.mkdir(parents=True, exist_ok=True)
    save_file(state, str(target / "model.safetensors"), metadata={"format": FORMAT})
    os.chmod(target / "model.safetensors", 0o644)  # a package file: readable by everyone, like the rest
    for f in ("config.json", "training.json"):
        if (folder / f).is_file():
            shutil.copy2(folder / f, target / f)
    return target


def export_checkpoint(checkpoint: str | Path, out: str | Path, run: str | Path | None = None, *,
                      overwrite: bool = False) -> Path:
    """A network folder from a training checkpoint (`<run>/checkpoints/step-N`), to use or score
    the network as it was at that step. The run folder's `config.json` gives the shape (it is
    written when training ends; pass `run` for a checkpoint copied elsewhere); the weights are
    the checkpoint's safetensors, checked against that shape. `out` is written like every output
    (staged, one rename); `overwrite` may replace an earlier hypernetwork folder, nothing else.

    Example:
        >>> from hypernet.training import TrainConfig, train
        >>> run = train(TrainConfig(model=model_dir, texts=[text_file], out="hn", stage1_steps=2,
        ...                         stage1_batch=32, width=16, layers=1, checkpoint_every=1))
        >>> export_checkpoint(run / "checkpoints" / "step-000001", "hn-step1").name
        'hn-step1'
    """
    from safetensors.torch import load_file

    from transplant.io.outdir import check_output_path, staged_output

    checkpoint = Path(checkpoint)
    weights = checkpoint / "model.safetensors"
    run = Path(run) if run is not None else checkpoint.parent.parent
    if not weights.is_file():
        raise TransplantError(f"{checkpoint} is not a training checkpoint (no model.safetensors)")
    if not (run / "config.json").is_file():
        raise TransplantError(f"{run} has no config.json yet (it is written when training ends; export after that)")
    net = open_network(run)
    registry = registry_dir().resolve()
    if registry == Path(out).resolve() or registry in Path(out).resolve().parents:
        raise TransplantError(f"--out {out} is inside the hypernetwork registry {registry}, which only `hypernet "
                              "train` and `export` fill, each by registering its own output: pass --out elsewhere")
    target = check_output_path(Path(out), [checkpoint, run], overwrite, HYPERNET_OUTPUT)
    _check_weights(weights, check_network_folder(run), f"pass --run: the folder of the run {checkpoint} belongs to",
                   f"the run's {run / 'config.json'}")
    net.load_state_dict(load_file(str(weights)))
    with staged_output(target, overwrite, HYPERNET_OUTPUT) as staged:
        net.save(staged.path)
    return Path(out)


def _source_of(folder: Path) -> str | None:
    try:
        return json.loads((folder / REGISTERED).read_text(encoding="utf-8")).get("source")
    except (OSError, ValueError, AttributeError):
        return None


__all__ = ["KnownNetwork", "known_networks", "find_network", "match_cosine", "register", "unregister", "ship",
           "registry_dir", "SHIPPED_DIR", "HYPERNET_OUTPUT", "RUN_CONFIG", "RUN_FORMAT", "check_network_folder",
           "is_hypernet_output", "is_training_run", "open_network", "export_checkpoint"]
