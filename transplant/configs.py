"""Rewrite `config.json` and `generation_config.json` for the new vocabulary.

Special ids are remapped by role (the old eos id becomes the new tokenizer's eos id), never
copied as raw numbers.

Example:
    >>> new_cfg, notes = remap_config(old_cfg, IdMap({2: 0}, {"eos": 0}), new_rows=32768)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from .errors import TransplantError

ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
_ROLE_OF_KEY = {"bos_token_id": "bos", "eos_token_id": "eos", "pad_token_id": "pad", "decoder_start_token_id": "bos"}


@dataclass
class IdMap:
    """Old special id -> new id (by content, else by role), and the new tokenizer's roles."""

    special_map: dict[int, int]
    new_roles: dict[str, int]


def _remap_ids(value: Any, key: str, ids: IdMap, notes: list[str]) -> Any:
    role = _ROLE_OF_KEY[key]
    if value is None:
        return ids.new_roles.get(role) if role == "pad" else None
    many = isinstance(value, list)
    mapped: list[int] = []
    for old_id in value if many else [value]:
        new_id = ids.special_map.get(int(old_id))
        if new_id is None and not many:
            new_id = ids.new_roles.get(role)
        if new_id is None:
            notes.append(f"{key} {old_id} has no counterpart in the new tokenizer and was dropped")
        elif new_id not in mapped:
            mapped.append(new_id)
    if many:
        return mapped
    return mapped[0] if mapped else None


def check_required_roles(config: dict, ids: IdMap) -> None:
    """The model generates until eos: refuse a target tokenizer that cannot express it."""
    eos = config.get("eos_token_id", (config.get("text_config") or {}).get("eos_token_id"))
    if eos is None:
        return
    notes: list[str] = []
    if _remap_ids(eos, "eos_token_id", ids, notes) in (None, []):
        raise TransplantError(
            "the new tokenizer has no end-of-sequence token, which this model needs (add one as a special "
            "token, e.g. <|endoftext|> or </s>, and mark it eos_token in tokenizer_config.json)")


def remap_config(config: dict, ids: IdMap, new_rows: int) -> tuple[dict, list[str]]:
    """Return a copy of a config dict with vocab size and special ids for the new tokenizer."""
    cfg = copy.deepcopy(config)
    notes: list[str] = []
    sections = [cfg] + [cfg[k] for k in ("text_config",) if isinstance(cfg.get(k), dict)]
    placed = False
    for section in sections:
        if "vocab_size" in section:
            section["vocab_size"] = new_rows
            placed = True
        for key in ID_KEYS:
            if key in section:
                section[key] = _remap_ids(section[key], key, ids, notes)
    if not placed:
        cfg["vocab_size"] = new_rows
    return cfg, notes


def remap_generation_config(gen: dict, ids: IdMap) -> tuple[dict, list[str]]:
    gen = copy.deepcopy(gen)
    notes: list[str] = []
    for key in ID_KEYS:
        if key in gen:
            gen[key] = _remap_ids(gen[key], key, ids, notes)
    return gen, notes
