"""A model's `config.json` read as a dict: the section that describes the text model.

A multimodal config (Gemma 3, Llava, ...) keeps the language model's settings under `text_config`;
every other config is its own text section. Read one rule, here, wherever a dict config is read
(the in-memory `PretrainedConfig` has `get_text_config()` for the same purpose:
`transplant.measure.lm.text_config`).

Example:
    >>> text_section({"model_type": "gemma3", "text_config": {"hidden_size": 640}})
    {'hidden_size': 640}
    >>> text_section({"hidden_size": 576})
    {'hidden_size': 576}
    >>> text_section({"text_config": None, "hidden_size": 576})  # an empty section is no section
    {'text_config': None, 'hidden_size': 576}
"""

from __future__ import annotations


def text_section(config: dict) -> dict:
    """The text model's settings of a dict config: its `text_config` when that is a dict, else itself."""
    section = config.get("text_config")
    return section if isinstance(section, dict) else config


__all__ = ["text_section"]
