"""The networks this installation knows: shipped with the package, and registered by the user
(the store and the matching; what a network folder is: `hypernet.folders`; export: `hypernet.export`).

Shipped networks live in `hypernet/networks/<name>/` (one per packaged model). `hypernet train`
and `hypernet export` register their output by copying it (a few MB) into the user's registry,
`$TOKENTRANSPLANT_HOME/hypernets/<name>/` (default `~/.cache/tokentransplant/hypernets/`), so a
network keeps working after its training folder is gone, and a resumed run re-registers its
newer weights under the same name.

A network is matched to a model by the model's embeddings, as `HyperNet.check_source` does
(the stored fingerprint rows against the same rows of the model: a fine-tune of the base
matches, another model does not), never by its name. When several match, the choice is fixed by
the registry, never by timing: networks the user registered before shipped ones (the user
trained it on purpose, maybe on their own domain), then by name; so a model's own network comes
before its `-dynamic` one, which dynamic tokenization prefers (`trained_dynamic`).

Example:
    >>> for net in known_networks():  # none registered yet: the shipped ones
    ...     print(net.name, net.origin, net.base_model)
    gemma-3-270m shipped gemma-3-270m
    smollm2-135m-instruct shipped smollm2-135m-instruct
    smollm2-135m-instruct-dynamic shipped smollm2-135m-instruct
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
from dataclasses import dataclass
from pathlib import Path

from hypernet.folders import NETWORK_FILES, _json_object, check_network_folder
from transplant.common.errors import TransplantError

log = logging.getLogger(__name__)

SHIPPED_DIR = Path(__file__).resolve().parent / "networks"
REGISTERED = "registered.json"


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
    found = find_networks(E_in, E_out)
    return found[0] if found else None


def find_networks(E_in, E_out) -> list[tuple[KnownNetwork, float]]:
    """Every known network trained for this model, in `known_networks`' order, with its cosine."""
    from .model import SAME_BASE_COSINE

    found = []
    for net in known_networks():
        cos = match_cosine(net, E_in, E_out)
        if cos is not None and cos >= SAME_BASE_COSINE:
            found.append((net, cos))
    return found


def trained_dynamic(net: KnownNetwork) -> bool:
    """Whether stage 2 read dynamically merged batches (`hypernet train --dynamic-share`)."""
    share = net.training.get("dynamic_share")
    return isinstance(share, (int, float)) and not isinstance(share, bool) and share > 0


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


def _source_of(folder: Path) -> str | None:
    try:
        return json.loads((folder / REGISTERED).read_text(encoding="utf-8")).get("source")
    except (OSError, ValueError, AttributeError):
        return None


__all__ = ["KnownNetwork", "known_networks", "find_network", "match_cosine", "register", "unregister", "ship",
           "registry_dir", "SHIPPED_DIR", "REGISTERED"]
