"""Checkpoint I/O: find the embedding tensors, read only them, stream the new checkpoint out.

The input-embedding and LM-head names come from the checkpoint's own files when they decide
them (`embedding_keys`: config, shard headers, transformers' declared tied names and key
conversion table), else from the model built on the meta device (`accelerate.init_empty_weights`);
never from per-architecture tables, so any architecture transformers knows works. Only the
shard(s) holding those tensors are rewritten (streamed, see
`shardio`); every other shard is copied or hard-linked byte for byte. Peak memory is about one
old embedding matrix, whatever the model size.

Example:
    >>> layout = locate_embeddings(Path(model_dir))  # an untied Llama
    >>> layout.input_key, layout.output_key, layout.tied
    ('model.embed_tokens.weight', 'lm_head.weight', False)
    >>> layout.rows, layout.dim, layout.dtype, layout.shard_of[layout.input_key]
    (500, 32, torch.float32, 'model.safetensors')
    >>> read_embedding(layout, layout.output_key).shape  # only this tensor is read
    torch.Size([500, 32])

    SmolLM2 is tied and stores only the input matrix:

    >>> layout = locate_embeddings(Path("SmolLM2-135M"))  # doctest: +SKIP
    >>> layout.input_key, layout.output_key, layout.tied  # doctest: +SKIP
    ('model.embed_tokens.weight', None, True)
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from transplant.common.errors import TransplantError
from transplant.core.plan import Plan
from transplant.common.progress import bar
from transplant.io.embedding_keys import fast_layout
from transplant.io.shardio import DTYPE_NAMES, INDEX_NAME, NewTensor, shard_map, copy_or_link, rewrite_shard, tensor_sizes

log = logging.getLogger(__name__)

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
    bias_key: str | None = None  # a per-token LM-head bias (Phi), remapped like the rows
    head_key: str | None = None  # the name an untied head is stored under (tied models store none)

    @property
    def row_keys(self) -> list[str]:
        """Every vocabulary-indexed tensor: the matrices and a head bias."""
        return self.keys + ([self.bias_key] if self.bias_key else [])

    @property
    def keys(self) -> list[str]:
        return [k for k in (self.input_key, self.output_key) if k]


def _weight_names(model: torch.nn.Module, module: torch.nn.Module) -> list[str]:
    """Names of `module.weight`, the module's own name first: a tied head shares its parameter
    with the input embedding, but a checkpoint that stores it stores it under the head's name."""
    own = [f"{n}.weight" for n, m in model.named_modules(remove_duplicate=False) if m is module]
    shared = [n for n, p in model.named_parameters(remove_duplicate=False) if p is module.weight]
    return own + [n for n in shared if n not in own]


def _checkpoint_renamer(model: torch.nn.Module):
    """Checkpoint key -> the model parameter `from_pretrained` loads it into (None: not a plain rename).

    Uses transformers' own key conversion (`conversion_mapping.get_model_conversion_mapping`, the
    per-architecture `WeightRenaming`s such as GPT-NeoX's `embed_out.` -> `lm_head.`, the legacy
    renamings, and the base-model-prefix add/strip), applied exactly as
    `core_model_loading.convert_and_load_state_dict_in_model` does. A key taken by a
    `WeightConverter` (merged, split or transformed on load) maps to None: its tensor is not the
    parameter's matrix row for row. Returns None when this transformers has no such machinery.
    """
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
    except ImportError:
        return None
    try:
        transforms = get_model_conversion_mapping(model) or []
    except Exception as exc:  # a model transformers cannot map: fall back to name guessing
        log.debug("no checkpoint conversion mapping for %s: %s", type(model).__name__, exc)
        transforms = []
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    meta_sd = model.state_dict()  # meta tensors: names only, nothing allocated
    prefix = getattr(model, "base_model_prefix", "") or ""

    def rename(key: str) -> str | None:
        try:
            renamed, pattern = rename_source_key(key, renamings, converters, prefix, meta_sd)
            if renamed not in meta_sd and key in meta_sd:
                # As in from_pretrained: the key should not have been renamed (only re-prefixed).
                renamed, pattern = rename_source_key(key, [], [], prefix, meta_sd)
        except Exception as exc:  # signature drift across transformers 5.x: guess names instead
            log.debug("cannot convert checkpoint key %s: %s", key, exc)
            return None
        return None if pattern is not None else renamed

    return rename


def _converted_names(model: torch.nn.Module, keys: dict[str, str]) -> dict[str, str]:
    """Checkpoint key -> model parameter name, for the keys that load into a parameter of `model`."""
    rename = _checkpoint_renamer(model)
    if rename is None:
        return {}
    params = model.state_dict()
    out = {}
    for key in keys:
        name = rename(key)
        if name is not None and name in params:
            out[key] = name
    return out


def _match_key(names: list[str], keys: dict[str, str], prefix: str,
               converted: dict[str, str] | None = None) -> str | None:
    """The checkpoint key holding the parameter called one of `names` (in order of preference).

    First the keys transformers itself loads into that parameter (`converted`, see
    `_converted_names`); then, for checkpoints whose names transformers does not map, the name
    as is, with the base-model prefix added or stripped, and finally a unique suffix. Keys that
    transformers loads into some *other* parameter are never guessed.
    """
    converted = converted or {}
    for name in names:
        hits = sorted(k for k, n in converted.items() if n == name)
        if hits:
            # Several keys loading into one parameter: prefer the one spelled like the parameter.
            return name if name in hits else hits[0]
    free = {k: v for k, v in keys.items() if k not in converted}
    for name in names:
        for cand in (name, f"{prefix}.{name}" if prefix else name,
                     name[len(prefix) + 1:] if prefix and name.startswith(prefix + ".") else name):
            if cand in free:
                return cand
    # Checkpoints saved under an older layout may carry another prefix; accept a unique suffix.
    for name in names:
        tail = ".".join(name.split(".")[-2:])
        hits = [k for k in free if k.endswith("." + tail) or k == tail]
        if len(hits) == 1:
            return hits[0]
    return None


def locate_embeddings(folder: Path, trust_remote_code: bool = False) -> EmbeddingLayout:
    """Find the embedding tensors in the checkpoint: from its own files when they decide it
    (`embedding_keys.fast_layout`), else by building the model on the meta device.

    Example:
        >>> layout = locate_embeddings(Path(model_dir))
        >>> layout.keys, layout.head_key, layout.model_type
        (['model.embed_tokens.weight', 'lm_head.weight'], 'lm_head.weight', 'llama')
    """
    from transplant.io.sources import refuse_custom_code

    refuse_custom_code(folder, trust_remote_code)  # before transformers could prompt or run anything
    if importlib.util.find_spec("accelerate") is None:
        # A required package (the meta-model path below): missing, it fails here as it always did.
        import accelerate  # noqa: F401
    # When the checkpoint's own files decide the names (see `embedding_keys`), skip building the model.
    fields = fast_layout(folder, trust_remote_code)
    if fields is not None:
        return EmbeddingLayout(folder, **dict(fields, dtype=_dtype_of(fields["dtype"])))
    return _locate_on_meta(folder, trust_remote_code)


def _locate_on_meta(folder: Path, trust_remote_code: bool = False) -> EmbeddingLayout:
    """`locate_embeddings` by building the model on the meta device (any architecture)."""
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
    # Checkpoint names are resolved the way from_pretrained resolves them (e.g. a GPT-NeoX head
    # saved as `embed_out.weight` loads into `lm_head.weight`), not by per-architecture tables.
    converted = _converted_names(model, keys)
    input_key = _match_key(_weight_names(model, inp), keys, prefix, converted)
    if input_key is None:
        raise TransplantError(f"{folder}: input embedding tensor not found in the checkpoint (is the checkpoint complete?)")
    text_cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    tied_cfg = bool(getattr(text_cfg, "tie_word_embeddings", getattr(config, "tie_word_embeddings", False)))
    output_key = None
    bias_key = None
    head_key = None
    tied = True
    if out_mod is not None and getattr(out_mod, "weight", None) is not None:
        shared = out_mod.weight is inp.weight
        output_key = _match_key(_weight_names(model, out_mod), keys, prefix, converted)
        if output_key == input_key:
            output_key = None
        tied = shared or tied_cfg
        head_names = _weight_names(model, out_mod)
        head_key = output_key or (head_names[0] if head_names else None)
        bias = getattr(out_mod, "bias", None)
        if isinstance(bias, torch.nn.Parameter) and bias.dim() == 1:
            # A per-token head bias must follow its rows, or new ids get the old ids' biases.
            own = [f"{n}.bias" for n, m in model.named_modules(remove_duplicate=False) if m is out_mod]
            bias_key = _match_key(own, keys, prefix, converted)
        if output_key is None and not tied:
            raise TransplantError(f"{folder}: untied LM head not found in the checkpoint (is the checkpoint complete?)")
    with safe_open(str(folder / keys[input_key]), framework="pt") as fh:
        sl = fh.get_slice(input_key)
        rows, dim = sl.get_shape()
        dtype = _dtype_of(sl.get_dtype())
    raw_config = json.loads((folder / "config.json").read_text())
    return EmbeddingLayout(folder, input_key, output_key, tied, keys, rows, dim, dtype, raw_config,
                           getattr(config, "model_type", ""), bias_key, head_key)


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
                  chunk_rows: int | None = None) -> bool:
    """Write all weight shards (and the index) of the transplanted model into `out`.

    The input embedding gets the plan's input rows, the LM head (and a head bias) its output
    rows. A tied source whose plan has an output side of its own is written untied: the head is
    added as a new tensor beside the input embedding (the caller sets tie_word_embeddings=false).

    Returns:
        True when the output was untied.
    """
    dtype_name = DTYPE_NAMES[layout.dtype]
    untie = layout.tied and plan.output is not None
    if untie and not layout.head_key:
        raise TransplantError(f"{layout.folder}: this model has no LM head module to untie into "
                              "(use a method that makes the same rows on both sides, without --untie)")
    added = layout.head_key if untie and layout.output_key is None else None
    # Which plan side each vocabulary-indexed tensor takes.
    side = {layout.input_key: "input"}
    if layout.output_key:
        side[layout.output_key] = "output" if untie or not layout.tied else "input"
    if layout.bias_key:
        side[layout.bias_key] = "output"
    if added:
        side[added] = "output"
    shards = sorted(set(layout.shard_of.values()))
    # Progress in tensor bytes: whole shards when copied, chunk by chunk for the new embeddings.
    old_sizes = {shard: tensor_sizes(layout.folder / shard) for shard in shards}
    shapes = {key: [plan.new_size] if key == layout.bias_key else [plan.new_size, layout.dim] for key in side}
    total = sum(sum(v.values()) for v in old_sizes.values()) + sum(
        NewTensor(dtype_name, shapes[key], list).nbytes
        - (old_sizes[layout.shard_of[key]].get(key, 0) if key in layout.shard_of else 0)
        for key in side)
    pbar = bar(total=total, desc="writing", unit="B", unit_scale=True, unit_divisor=1024)

    def counted(produce):
        def chunks():
            for chunk in produce():
                yield chunk
                pbar.update(chunk.numel() * chunk.element_size())
        return chunks

    def new_tensor(key: str, read_key: str) -> NewTensor:
        dtype = _bias_dtype(layout, key) if key == layout.bias_key else dtype_name
        return NewTensor(dtype, shapes[key], counted(_producer(layout, read_key, plan.side(side[key]), chunk_rows)))

    home = layout.shard_of[layout.input_key]
    replace = {key: new_tensor(key, key) for key in layout.row_keys}
    # The untied head starts from the (tied) input matrix: the old head *is* that matrix.
    add = {added: new_tensor(added, layout.input_key)} if added else None
    sizes = write_shards(layout, out, replace, link, add, copied=pbar.update)
    pbar.close()
    index = layout.folder / INDEX_NAME
    if index.exists():
        doc = json.loads(index.read_text())
        if added:
            doc.setdefault("weight_map", {})[added] = home
        meta = doc.setdefault("metadata", {})
        meta["total_size"] = sum(sizes.values())
        if isinstance(meta.get("total_parameters"), int):
            # transformers records unique parameters: a tied head counts once even if stored twice.
            resized = 1 if layout.tied else len(layout.keys)
            meta["total_parameters"] += resized * (plan.new_size - layout.rows) * layout.dim
            if untie:
                meta["total_parameters"] += plan.new_size * layout.dim
            if layout.bias_key:
                meta["total_parameters"] += plan.new_size - layout.rows
        (out / INDEX_NAME).write_text(json.dumps(doc, indent=2))
    return untie


def write_shards(layout: EmbeddingLayout, out: Path, replace: dict[str, NewTensor], link: bool = False,
                 add: dict[str, NewTensor] | None = None, copied: Callable[[int], object] | None = None
                 ) -> dict[str, int]:
    """Write every weight shard of `layout.folder` into `out`: a shard holding a tensor of
    `replace` is streamed with those tensors swapped in (and `add` appended to the input
    embedding's shard), every other shard is copied (or hard-linked) byte for byte.

    `copied(n)` is told the bytes taken over unchanged (the new tensors' bytes are the caller's to
    count). Returns the byte size of every tensor written (for the shard index's total_size).

    Example:
        >>> layout = locate_embeddings(Path(model_dir))
        >>> key = layout.input_key
        >>> same = NewTensor(DTYPE_NAMES[layout.dtype], [layout.rows, layout.dim],
        ...                  lambda: [read_embedding(layout, key)])
        >>> out = Path("copy"); out.mkdir()
        >>> sizes = write_shards(layout, out, {key: same})
        >>> from safetensors.torch import load_file
        >>> new, old = load_file(out / "model.safetensors"), load_file(layout.folder / "model.safetensors")
        >>> new.keys() == old.keys() and all(new[k].equal(old[k]) for k in old)
        True
    """
    by_shard: dict[str, dict[str, NewTensor]] = {}
    for key, tensor in replace.items():
        by_shard.setdefault(layout.shard_of[key], {})[key] = tensor
    home = layout.shard_of[layout.input_key]
    sizes: dict[str, int] = {}
    for shard in sorted(set(layout.shard_of.values())):
        src, dst = layout.folder / shard, out / shard
        extra = add if add and shard == home else None
        if shard not in by_shard and not extra:
            copy_or_link(src, dst, link)
            kept = tensor_sizes(src)
            sizes.update(kept)
            if copied is not None:
                copied(sum(kept.values()))
            continue
        swapped = by_shard.get(shard, {})
        written = rewrite_shard(src, dst, swapped, add=extra)
        sizes.update(written)
        if copied is not None:
            copied(sum(v for k, v in written.items() if k not in swapped and k not in (extra or {})))
    return sizes


def _bias_dtype(layout: EmbeddingLayout, key: str) -> str:
    with safe_open(str(layout.folder / layout.shard_of[key]), framework="pt") as fh:
        return fh.get_slice(key).get_dtype()


def _producer(layout: EmbeddingLayout, key: str, plan: Plan, chunk_rows: int | None):
    def chunks():
        # Read the old matrix only when this tensor is written, and drop it right after.
        old = read_embedding(layout, key)
        if old.dim() == 1:  # a head bias: each token's bias is a one-column row
            yield from (c.reshape(-1) for c in plan.iter_apply(old.unsqueeze(1), chunk_rows=chunk_rows))
            return
        stats = plan.stats_of(old)
        yield from plan.iter_apply(old, chunk_rows=chunk_rows, stats=stats)
        del old
    return chunks


def copy_side_files(src: Path, out: Path) -> None:
    """Copy small non-weight, non-tokenizer files (e.g. custom code, preprocessor configs).

    A symbolic link that leads out of the model folder is never followed: it is skipped with a
    warning naming it (a link planted in a downloaded model, e.g. to `~/.ssh/id_rsa`, must not
    carry that file into an output that gets published).
    """
    from transplant.io.sources import link_outside

    skip = TOKENIZER_FILES | {"config.json", "generation_config.json", "README.md", INDEX_NAME}
    for path in sorted(src.iterdir()):
        if path.is_file() and path.name not in skip and path.suffix not in _NEVER_COPY_SUFFIXES:
            target = link_outside(src, path)
            if target is not None:
                log.warning("not copied: %s is a link to %s, outside the model folder (copy the file into the "
                            "folder if the model needs it)", path, target)
                continue
            copy_or_link(path, out / path.name, link=False)
