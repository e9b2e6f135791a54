"""The embedding tensors' names read from the checkpoint's own files, without building the model.

`checkpoint.locate_embeddings` builds the model on the meta device to learn which tensor is the
input embedding and which the LM head; that imports the architecture's modeling code and costs
seconds. `fast_layout` answers the same question from what is already written down, and only
when it decides it unambiguously; otherwise it returns None and the meta-model path runs
unchanged (and reports any error). One rule for every architecture:

1. no custom code (`trust_remote_code` off, no `auto_map`), a config that `AutoConfig` reads
   (the same call the slow path makes) with no sub-configs, mapped by transformers' own auto
   tables (`CONFIG_MAPPING_NAMES`, `MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`) with nothing registered
   at run time;
2. the parameter names come from the causal-LM class's `_tied_weights_keys` (`{head: input}`,
   transformers' own declaration of which matrix the head is tied to), read with `ast` from its
   modeling file (never imported);
3. no checkpoint key conversion can apply: transformers' conversion table
   (`conversion_mapping`) has no entry for the model type or its classes, and none of the
   always-applied legacy renamings matches any checkpoint key;
4. the checkpoint holds the input matrix under exactly its parameter name, and no other key
   that the slow path's name matching (base-model prefix added or stripped, unique suffix) could
   take for the input, the head or a head bias; an untied config needs the head stored under
   exactly its name, a tied one stores it exactly so or not at all; both are 2-D, the input has
   config `vocab_size` rows, and the head (if stored) the input's shape.

Example:
    >>> fields = fast_layout(Path(model_dir))  # an untied Llama
    >>> fields["input_key"], fields["output_key"], fields["tied"], fields["head_key"]
    ('model.embed_tokens.weight', 'lm_head.weight', False, 'lm_head.weight')
"""

from __future__ import annotations

import ast
import json
import logging
from pathlib import Path

from transplant.common.safetensors_header import read_header, shard_map

log = logging.getLogger(__name__)

SUPPORTED_DTYPES = ("F32", "F16", "BF16", "F64")


def fast_layout(folder: Path, trust_remote_code: bool = False) -> dict | None:
    """The `EmbeddingLayout` fields (but `folder`; `dtype` as its safetensors name), or None to
    let the meta-model path decide. Never raises: anything odd declines."""
    try:
        return _fast_layout(Path(folder), trust_remote_code)
    except Exception as exc:  # the slow path reports broken inputs with its own messages
        log.debug("fast embedding lookup declined for %s: %s", folder, exc)
        return None


def _fast_layout(folder: Path, trust_remote_code: bool) -> dict | None:
    if trust_remote_code:
        return None
    raw = json.loads((folder / "config.json").read_text())
    if not isinstance(raw, dict) or raw.get("auto_map") or not isinstance(raw.get("model_type"), str):
        return None
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING, CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_MAPPING_NAMES)

    config = AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
    model_type = getattr(config, "model_type", "")
    if (CONFIG_MAPPING_NAMES.get(model_type) != type(config).__name__ or CONFIG_MAPPING._extra_content
            or MODEL_FOR_CAUSAL_LM_MAPPING._extra_content):
        return None
    if config.get_text_config() is not config:
        return None  # composite (text_config, ...): the text model's names are nested; build it
    causal = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    if not isinstance(causal, str):
        return None
    names = _tied_names(model_type, causal)
    if names is None:
        return None
    head, inp = names
    keys = shard_map(folder)
    if not _no_conversion(keys, model_type, causal, MODEL_MAPPING_NAMES.get(model_type)):
        return None
    tied = bool(getattr(config, "tie_word_embeddings", False))
    head_bias = head[: -len("weight")] + "bias"
    if _lookalikes(inp, keys) != {inp} or _lookalikes(head_bias, keys):
        return None
    stored_head = _lookalikes(head, keys)
    if stored_head not in ({head}, set()) or (not tied and not stored_head):
        return None
    shapes = {}
    for key in (inp, *stored_head):
        info = read_header(folder / keys[key])[0][key]
        shapes[key] = (list(info["shape"]), info["dtype"])
    (shape, dtype) = shapes[inp]
    if len(shape) != 2 or shape[0] != getattr(config, "vocab_size", None) or dtype not in SUPPORTED_DTYPES:
        return None
    if stored_head and shapes[head][0] != shape:
        return None
    return dict(input_key=inp, output_key=head if stored_head else None, tied=tied, shard_of=keys,
                rows=shape[0], dim=shape[1], dtype=dtype, config=raw, model_type=model_type,
                bias_key=None, head_key=head)


def _tail(name: str) -> str:
    return ".".join(name.split(".")[-2:])


def _lookalikes(name: str, keys: dict[str, str]) -> set[str]:
    """Every checkpoint key the slow path's matching could resolve `name` to: the name itself
    and any key sharing its last two components (prefixed, prefix-stripped or suffix matches)."""
    tail = _tail(name)
    return {k for k in keys if k == name or k == tail or k.endswith("." + tail)}


def _no_conversion(keys: dict[str, str], model_type: str, *classes: str | None) -> bool:
    """True when `from_pretrained` would rename no checkpoint key beyond the base-model prefix."""
    from transformers.conversion_mapping import USER_REGISTERED_MAPPINGS, get_checkpoint_conversion_mapping

    if USER_REGISTERED_MAPPINGS:
        return False
    for ident in (model_type, *classes):
        if ident and get_checkpoint_conversion_mapping(ident) is not None:
            return False
    for transform in get_checkpoint_conversion_mapping("legacy") or []:
        for key in keys:
            if transform.rename_source_key(key)[1] is not None:
                return False
    return True


def _tied_names(model_type: str, class_name: str) -> tuple[str, str] | None:
    """(head parameter, input parameter) from `class_name`'s literal `_tied_weights_keys` in the
    model type's modeling file, parsed, not imported; None unless it is exactly one str pair."""
    import transformers
    from transformers.models.auto.configuration_auto import model_type_to_module_name

    module = model_type_to_module_name(model_type)
    package = Path(transformers.__file__).parent / "models" / Path(*module.split("."))
    path = package / f"modeling_{module.split('.')[-1]}.py"
    if not path.is_file():
        return None
    tree = ast.parse(path.read_text(encoding="utf-8"))
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name]
    if len(classes) != 1:
        return None
    found = []
    for stmt in classes[0].body:
        if isinstance(stmt, ast.Assign):
            targets = stmt.targets
        else:
            targets = [stmt.target] if isinstance(stmt, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == "_tied_weights_keys" for t in targets):
            found.append(stmt.value)
    if len(found) != 1:
        return None
    try:
        value = ast.literal_eval(found[0])
    except ValueError:
        return None
    if not isinstance(value, dict) or len(value) != 1:
        return None
    (head, inp), = value.items()
    if not (isinstance(head, str) and isinstance(inp, str) and head.endswith(".weight") and inp.endswith(".weight")
            and head != inp and _tail(head) != _tail(inp)):
        return None
    return head, inp
