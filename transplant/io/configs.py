"""Rewrite `config.json` and `generation_config.json` for the new vocabulary.

Special ids are decided once by role (`specials.SpecialIds`) and written the same way into both
files and the tokenizer, never copied as raw numbers: bos/pad/unk ids equal the tokenizer's,
config.json's eos is the tokenizer's eos (a list where the source had a list), and the
generation config stops at every id that carries an old end-of-sequence row.

Example:
    >>> import json
    >>> old_cfg = json.loads(open(f"{model_dir}/config.json").read())
    >>> old_cfg["vocab_size"], old_cfg["bos_token_id"], old_cfg["eos_token_id"]
    (500, 1, 0)
    >>> ids = SpecialIds(bos=1, eos=[2, 5], pad=None, unk=0)  # as `specials.resolve_special_ids` decides
    >>> new_cfg, notes = remap_config(old_cfg, ids, new_rows=759)
    >>> new_cfg["vocab_size"], new_cfg["bos_token_id"], new_cfg["eos_token_id"]  # the declared eos
    (759, 1, 2)
    >>> gen, notes = remap_generation_config({"eos_token_id": 0}, ids)
    >>> gen["eos_token_id"]  # generation stops at every eos
    [2, 5]
"""

from __future__ import annotations

import copy
from typing import Any

from transplant.common.config_dict import text_section
from transplant.common.errors import TransplantError
from transplant.io.specials import SpecialIds

# Keys a GGUF conversion or an old save leaves behind that name a local or internal path.
_STRAY_KEYS = ("_model_name_or_path", "_name_or_path", "_commit_hash")
# Generation-config keys holding token ids that have no role and cannot be remapped safely.
_UNMAPPABLE_GEN_KEYS = ("suppress_tokens", "begin_suppress_tokens", "bad_words_ids", "force_words_ids",
                        "sequence_bias", "forced_decoder_ids")


def _eos_value(ids: SpecialIds, was_list: bool, everything: bool) -> Any:
    chosen = ids.eos if everything else ids.eos[:1]
    if not chosen:
        return [] if was_list else None
    if was_list or len(chosen) > 1:
        return list(chosen)
    return chosen[0]


def _set_roles(section: dict, ids: SpecialIds, all_eos: bool, always: bool) -> None:
    """Write the role ids into one config section (keys it has, or all when `always`)."""
    values = {"bos_token_id": ids.bos, "pad_token_id": ids.pad, "decoder_start_token_id": ids.bos}
    for key, value in values.items():
        if key in section or (always and key != "decoder_start_token_id" and value is not None):
            section[key] = value
    if "unk_token_id" in section:
        section["unk_token_id"] = ids.unk
    if "eos_token_id" in section or always:
        section["eos_token_id"] = _eos_value(ids, isinstance(section.get("eos_token_id"), list), all_eos)


def check_required_roles(config: dict, ids: SpecialIds) -> None:
    """The model generates until eos: refuse a target tokenizer that cannot express it."""
    eos = config.get("eos_token_id", text_section(config).get("eos_token_id"))
    if eos is None or eos == []:
        return
    if not ids.eos:
        raise TransplantError(
            "the new tokenizer has no end-of-sequence token, which this model needs (add one as a special "
            "token, e.g. <|endoftext|> or </s>, and mark it eos_token in tokenizer_config.json)")


def remap_config(config: dict, ids: SpecialIds, new_rows: int) -> tuple[dict, list[str]]:
    """Return a copy of a config dict with vocab size and special ids for the new tokenizer."""
    cfg = copy.deepcopy(config)
    for key in _STRAY_KEYS:
        cfg.pop(key, None)
    sections = [cfg] + [cfg[k] for k in ("text_config",) if isinstance(cfg.get(k), dict)]
    placed = False
    for section in sections:
        if "vocab_size" in section:
            section["vocab_size"] = new_rows
            placed = True
        _set_roles(section, ids, all_eos=False, always=section is sections[-1])
    if not placed:
        cfg["vocab_size"] = new_rows
    return cfg, list(ids.notes)


def remap_generation_config(gen: dict | None, ids: SpecialIds) -> tuple[dict, list[str]]:
    """The generation config for the new ids (made from scratch when the source has none)."""
    gen = copy.deepcopy(gen) if gen else {"_from_model_config": True}
    notes: list[str] = []
    for key in _STRAY_KEYS:
        gen.pop(key, None)
    _set_roles(gen, ids, all_eos=True, always=True)
    if "forced_bos_token_id" in gen and gen["forced_bos_token_id"] is not None:
        gen["forced_bos_token_id"] = ids.bos
    if "forced_eos_token_id" in gen and gen["forced_eos_token_id"] is not None:
        gen["forced_eos_token_id"] = _eos_value(ids, isinstance(gen["forced_eos_token_id"], list), True)
    for key in _UNMAPPABLE_GEN_KEYS:
        if gen.get(key):
            notes.append(f"generation_config {key} named old token ids and was dropped (set it again for "
                         "the new tokenizer if you need it)")
            gen.pop(key)
    return gen, notes
