"""Transplanting an in-memory `PreTrainedModel` (inside a fine-tuning script): `transplant_model`.

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

from transplant.common.errors import TransplantError
from transplant.common.progress import stage
from transplant.io.configs import remap_config, remap_generation_config
from transplant.io.sources import open_tokenizer
from transplant.methods.auto import choose as choose_auto
from transplant.methods.auto import is_auto
from transplant.methods.resources import Resources
from transplant.prepare import TransplantResult, prepare

log = logging.getLogger(__name__)


def transplant_model(model: torch.nn.Module, old_tokenizer: str | Path, new_tokenizer: str | Path, *,
                     method: str | list[str] = "auto", fallback: str = "mean", seed: int = 0,
                     pad_to_multiple_of: int | None = None, inplace: bool = True, options: dict | None = None,
                     encode_like: str = "source") -> TransplantResult:
    """Transplant an in-memory `PreTrainedModel` (e.g. inside a fine-tuning script).

    With `inplace=True` the model's embeddings (and untied head) are replaced and its config's and
    generation config's vocab size and special ids updated (same rules as a written checkpoint);
    the new tensors are returned either way.

    Example:
        >>> from transformers import AutoModelForCausalLM
        >>> model = AutoModelForCausalLM.from_pretrained(model_dir)
        >>> result = transplant_model(model, model_dir, tok_json, method="fvt", inplace=False)
        >>> result.embeddings["input"].shape, model.get_input_embeddings().weight.shape  # model untouched
        (torch.Size([759, 32]), torch.Size([500, 32]))
        >>> model.config.eos_token_id  # `<|endoftext|>` of the old tokenizer
        0
        >>> result = transplant_model(model, model_dir, tok_json, method="fvt")
        >>> model.config.vocab_size, model.config.eos_token_id, model.generation_config.eos_token_id  # `</s>` (+ `<s>`: old eos row)
        (759, 2, [2, 1])
    """
    old_src, new_src = open_tokenizer(old_tokenizer), open_tokenizer(new_tokenizer)
    inp = model.get_input_embeddings().weight
    old_rows = len(old_src.vocabulary())
    if old_rows > inp.shape[0]:
        raise TransplantError(f"old tokenizer has {old_rows} ids but the model only {inp.shape[0]} rows "
                              "(pass the tokenizer that belongs to this model)")
    gen_cfg = getattr(model, "generation_config", None)
    resources = Resources.from_model(model, old_rows)
    auto = None
    if is_auto(method):  # in memory there is no calibration pass (no text): the network or FVT
        auto = choose_auto(resources, new_src, None, False, options, no_calibration="in memory")
        method, options = auto.method, auto.options
    prep = prepare(old_src, new_src, model.config.to_dict(), gen_cfg.to_dict() if gen_cfg is not None else None,
                   method, fallback, pad_to_multiple_of, seed, options, encode_like, resources=resources)
    plan = prep.plan
    if auto is not None:
        stage(auto.line)
        plan.meta["auto"] = auto.meta()
    out_mod = model.get_output_embeddings()
    tied = out_mod is None or out_mod.weight is inp
    untie = tied and plan.output is not None and out_mod is not None
    with torch.no_grad():
        new_in = plan.apply(inp.detach().cpu())
        # The head takes the plan's output side: its own rows when the model is untied, or when
        # the plan makes head rows of their own (then a tied model is untied).
        new_out = (plan.side("output").apply((inp if tied else out_mod.weight).detach().cpu())
                   if not tied or untie else None)
        bias = getattr(out_mod, "bias", None) if out_mod is not None else None
        # A per-token head bias (Phi) follows its tokens like the rows do.
        new_bias = (plan.side("output").apply(bias.detach().cpu().unsqueeze(1)).squeeze(1)
                    if isinstance(bias, torch.Tensor) and bias.dim() == 1 else None)
    result = TransplantResult(plan, None, {"input": new_in, **({"output": new_out} if new_out is not None else {})},
                              prep.notes, special_ids=prep.ids)
    if inplace:
        # mean_resizing would sample every new row from a fitted normal (minutes for 200k rows,
        # and a warning) only for the rows to be overwritten next.
        model.resize_token_embeddings(plan.new_size, mean_resizing=False)
        if untie:
            text_cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
            model.config.tie_word_embeddings = text_cfg.tie_word_embeddings = False
            head = model.get_output_embeddings()
            head.weight = torch.nn.Parameter(new_out.to(head.weight.dtype).to(head.weight.device))
        with torch.no_grad():
            model.get_input_embeddings().weight.copy_(new_in)
            if new_out is not None:
                model.get_output_embeddings().weight.copy_(new_out)
            if new_bias is not None:
                model.get_output_embeddings().bias.copy_(new_bias)
        cfg, notes = remap_config(model.config.to_dict(), prep.ids, plan.new_size)
        text_cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        for key in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
            section = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg
            if key in section:
                setattr(text_cfg, key, section[key])
        if gen_cfg is not None:
            gen, gen_notes = remap_generation_config(gen_cfg.to_dict(), prep.ids)
            for key in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id",
                        "forced_bos_token_id", "forced_eos_token_id"):
                if key in gen:
                    setattr(gen_cfg, key, gen[key])
            notes += gen_notes
        result.notes = list(dict.fromkeys(prep.notes + notes))
    return result



__all__ = ["transplant_model"]
