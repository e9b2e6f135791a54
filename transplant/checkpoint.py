"""Checkpoint I/O: find the embedding tensors, read only them, stream the new checkpoint out.

The input-embedding and LM-head names come from the model built on the meta device
(`accelerate.init_empty_weights`), not from per-architecture tables, so any architecture
transformers knows works. Only the shard(s) holding those tensors are rewritten (streamed, see
`shardio`); every other shard is copied or hard-linked byte for byte. Peak memory is about one
old embedding matrix, whatever the model size.

Example:
    >>> layout = locate_embeddings(Path("SmolLM2-135M"))  # doctest: +SKIP
    >>> layout.input_key, layout.output_key, layout.tied  # doctest: +SKIP
    ('model.embed_tokens.weight', None, True)
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from .errors import TransplantError
from .plan import Plan
from .shardio import DTYPE_NAMES, NewTensor, copy_or_link, read_header, rewrite_shard, tensor_sizes

log = logging.getLogger(__name__)

INDEX_NAME = "model.safetensors.index.json"
TOKENIZER_FILES = {
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json",
    "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json", "vocab.txt",
}
_NEVER_COPY_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".safetensors", ".gguf", ".msgpack", ".h5"}


@dataclass
class EmbeddingLayout:
    """Where the embeddings live in a checkpoint folder."""

    folder: Path
    input_key: str
    output_key: str | None  # None when tied and the checkpoint stores only the input matrix
    tied: bool
    shard_of: dict[str, str]
    rows: int
    dim: int
    dtype: torch.dtype
    config: dict = field(default_factory=dict)
    model_type: str = ""

    @property
    def keys(self) -> list[str]:
        return [k for k in (self.input_key, self.output_key) if k]


def shard_map(folder: Path) -> dict[str, str]:
    """Checkpoint tensor name -> shard file name (from the index, else from the shard headers)."""
    index = folder / INDEX_NAME
    if index.exists():
        try:
            return dict(json.loads(index.read_text())["weight_map"])
        except (json.JSONDecodeError, KeyError):
            raise TransplantError(f"malformed {index} (re-save the checkpoint)") from None
    out: dict[str, str] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        header, _ = read_header(shard)
        out.update({k: shard.name for k in header if k != "__metadata__"})
    return out


def _weight_names(model: torch.nn.Module, module: torch.nn.Module) -> list[str]:
    """Names of `module.weight`, the module's own name first: a tied head shares its parameter
    with the input embedding, but a checkpoint that stores it stores it under the head's name."""
    own = [f"{n}.weight" for n, m in model.named_modules(remove_duplicate=False) if m is module]
    shared = [n for n, p in model.named_parameters(remove_duplicate=False) if p is module.weight]
    return own + [n for n in shared if n not in own]


def _match_key(names: list[str], keys: dict[str, str], prefix: str) -> str | None:
    for name in names:
        for cand in (name, f"{prefix}.{name}" if prefix else name,
                     name[len(prefix) + 1:] if prefix and name.startswith(prefix + ".") else name):
            if cand in keys:
                return cand
    # Checkpoints saved under an older layout may carry another prefix; accept a unique suffix.
    for name in names:
        tail = ".".join(name.split(".")[-2:])
        hits = [k for k in keys if k.endswith("." + tail) or k == tail]
        if len(hits) == 1:
            return hits[0]
    return None


def locate_embeddings(folder: Path, trust_remote_code: bool = False) -> EmbeddingLayout:
    """Build the model on the meta device and find its embedding tensors in the checkpoint."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    except ValueError as exc:
        msg = str(exc).splitlines()[0]
        if "trust_remote_code" in str(exc):
            raise TransplantError(f"{folder} needs custom code to load ({msg[:120]}); pass --trust-remote-code "
                                  "if you trust it") from None
        raise TransplantError(f"cannot read config of {folder}: {msg}") from None
    try:
        with init_empty_weights():
            # Heads are not tied on the meta device (transformers 5.24), so tying is read from the
            # config below as well as from parameter identity.
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise TransplantError(f"cannot build {getattr(config, 'model_type', '?')} as a causal LM: "
                              f"{str(exc).splitlines()[0]} (pass a causal language model)") from None
    try:
        inp = model.get_input_embeddings()
    except NotImplementedError:
        inp = None
    if inp is None or getattr(inp, "weight", None) is None:
        raise TransplantError(f"{folder}: the model has no input embeddings (pass a language model)")
    out_mod = model.get_output_embeddings()
    keys = shard_map(folder)
    prefix = getattr(model, "base_model_prefix", "") or ""
    input_key = _match_key(_weight_names(model, inp), keys, prefix)
    if input_key is None:
        raise TransplantError(f"{folder}: input embedding tensor not found in the checkpoint (is the checkpoint complete?)")
    text_cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    tied_cfg = bool(getattr(text_cfg, "tie_word_embeddings", getattr(config, "tie_word_embeddings", False)))
    output_key = None
    tied = True
    if out_mod is not None and getattr(out_mod, "weight", None) is not None:
        shared = out_mod.weight is inp.weight
        output_key = _match_key(_weight_names(model, out_mod), keys, prefix)
        if output_key == input_key:
            output_key = None
        tied = shared or tied_cfg
        if output_key is None and not tied:
            raise TransplantError(f"{folder}: untied LM head not found in the checkpoint (is the checkpoint complete?)")
    with safe_open(str(folder / keys[input_key]), framework="pt") as fh:
        sl = fh.get_slice(input_key)
        rows, dim = sl.get_shape()
        dtype = _dtype_of(sl.get_dtype())
    raw_config = json.loads((folder / "config.json").read_text())
    return EmbeddingLayout(folder, input_key, output_key, tied, keys, rows, dim, dtype, raw_config,
                           getattr(config, "model_type", ""))


def _dtype_of(name: str) -> torch.dtype:
    table = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
    if name not in table:
        raise TransplantError(f"embedding dtype {name} is not supported (dequantize the checkpoint to bf16/fp16/fp32)")
    return table[name]


def read_embedding(layout: EmbeddingLayout, key: str) -> torch.Tensor:
    """Read one tensor from its shard (only that tensor is loaded)."""
    with safe_open(str(layout.folder / layout.shard_of[key]), framework="pt") as fh:
        return fh.get_tensor(key)


def check_vocab_fits(layout: EmbeddingLayout, old_ids: int) -> None:
    if old_ids > layout.rows:
        raise TransplantError(
            f"the model's tokenizer has ids up to {old_ids - 1} but its embedding has only {layout.rows} rows "
            "(pass the tokenizer that belongs to this model)")


def write_weights(layout: EmbeddingLayout, plan: Plan, out: Path, link: bool = False,
                  chunk_rows: int | None = None) -> None:
    """Write all weight shards (and the index) of the transplanted model into `out`."""
    dtype_name = DTYPE_NAMES[layout.dtype]
    by_shard: dict[str, list[str]] = {}
    for key in layout.keys:
        by_shard.setdefault(layout.shard_of[key], []).append(key)
    shards = sorted(set(layout.shard_of.values()))
    sizes: dict[str, int] = {}
    for shard in shards:
        src, dst = layout.folder / shard, out / shard
        if shard not in by_shard:
            copy_or_link(src, dst, link)
            sizes.update(tensor_sizes(src))
            continue
        replace = {key: NewTensor(dtype_name, [plan.new_size, layout.dim], _producer(layout, key, plan, chunk_rows))
                   for key in by_shard[shard]}
        sizes.update(rewrite_shard(src, dst, replace))
    index = layout.folder / INDEX_NAME
    if index.exists():
        doc = json.loads(index.read_text())
        meta = doc.setdefault("metadata", {})
        meta["total_size"] = sum(sizes.values())
        if isinstance(meta.get("total_parameters"), int):
            # transformers records unique parameters: a tied head counts once even if stored twice.
            resized = 1 if layout.tied else len(layout.keys)
            meta["total_parameters"] += resized * (plan.new_size - layout.rows) * layout.dim
        (out / INDEX_NAME).write_text(json.dumps(doc, indent=2))


def _producer(layout: EmbeddingLayout, key: str, plan: Plan, chunk_rows: int | None):
    def chunks():
        # Read the old matrix only when this tensor is written, and drop it right after.
        old = read_embedding(layout, key)
        stats = plan.stats_of(old)
        yield from plan.iter_apply(old, chunk_rows=chunk_rows, stats=stats)
        del old
    return chunks


def copy_side_files(src: Path, out: Path) -> None:
    """Copy small non-weight, non-tokenizer files (e.g. custom code, preprocessor configs)."""
    skip = TOKENIZER_FILES | {"config.json", "generation_config.json", "README.md", INDEX_NAME}
    for path in src.iterdir():
        if path.is_file() and path.name not in skip and path.suffix not in _NEVER_COPY_SUFFIXES:
            copy_or_link(path, out / path.name, link=False)
