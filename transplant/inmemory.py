"""Transplanting an in-memory `PreTrainedModel` (inside a fine-tuning script) in one call:
`transplant_model`, a thin wrapper over `plan_transplant(...).apply_to(model)` (`planned.py`).

Example:
    >>> from transformers import AutoModelForCausalLM
    >>> model = AutoModelForCausalLM.from_pretrained(model_dir)
    >>> result = transplant_model(model, model_dir, new_tok_dir, method="fvt")
    >>> model.get_input_embeddings().weight.shape[0] == result.plan.new_size
    True
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from transplant.prepare import TransplantResult

log = logging.getLogger(__name__)


def transplant_model(model: torch.nn.Module, old_tokenizer: str | Path, new_tokenizer: str | Path, *,
                     method: str | list[str] = "auto", inplace: bool = True, calibrate_texts: list[str] | None = None,
                     **settings) -> TransplantResult:
    """Transplant an in-memory `PreTrainedModel` (e.g. inside a fine-tuning script):
    `plan_transplant` then `TransplantPlan.apply_to` in one call.

    With `inplace=True` the model's embeddings (and untied head) are replaced and its config's and
    generation config's vocab size and special ids updated (same rules as a written checkpoint),
    and `result.tokenizer` is the configured new tokenizer (special tokens, chat template, encode
    convention); the new tensors are returned either way. `calibrate_texts` (or, with "auto", the
    tokenizer's recorded training text) fits the made rows' output scale; `settings` are
    `RunSpec` fields (`options`, `seed`, `untie`, `encode_like`, ...).

    Example:
        >>> from transformers import AutoModelForCausalLM
        >>> model = AutoModelForCausalLM.from_pretrained(model_dir)
        >>> result = transplant_model(model, model_dir, tok_json, method="fvt", inplace=False)
        >>> result.embeddings["input"].shape, model.get_input_embeddings().weight.shape  # model untouched
        (torch.Size([759, 32]), torch.Size([500, 32]))
        >>> model.config.eos_token_id  # `<|endoftext|>` of the old tokenizer
        0
        >>> result = transplant_model(model, model_dir, tok_json, method="fvt")
        >>> model.config.vocab_size, model.config.eos_token_id  # `</s>`
        (759, 2)
        >>> model.generation_config.eos_token_id  # `</s>`, and `<s>`, whose row is the old eos row
        [2, 1]
        >>> result.tokenizer.eos_token_id
        2
    """
    from transplant.planned import plan_transplant

    planned = plan_transplant(model, new_tokenizer, old_tokenizer=old_tokenizer, method=method,
                              calibrate_texts=calibrate_texts, **settings)
    result = TransplantResult(planned.plan, None, planned.embeddings(), planned.prepared.notes,
                              special_ids=planned.prepared.ids)
    if inplace:
        _, result.tokenizer = planned.apply_to(model)
        result.notes = planned.prepared.notes
    return result


__all__ = ["transplant_model"]
