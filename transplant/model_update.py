"""Putting a plan into a model in memory: its rows (`new_tensors`), and its rows, vocab size and
special ids in place (`apply_in_place`, what `TransplantPlan.apply_to` does).

Example:
    >>> from transformers import AutoModelForCausalLM
    >>> from transplant.planned import plan_transplant
    >>> model = AutoModelForCausalLM.from_pretrained(model_dir)
    >>> planned = plan_transplant(model, new_tok_dir, old_tokenizer=model_dir, method="fvt")
    >>> new_tensors(model, planned.plan)["input"].shape[0] == planned.plan.new_size
    True
"""

from __future__ import annotations

import torch

from transplant.common.config_dict import text_section
from transplant.core.plan import Plan
from transplant.io.configs import remap_config, remap_generation_config
from transplant.prepare import Prepared


def _tied(model: torch.nn.Module) -> bool:
    out_mod = model.get_output_embeddings()
    return out_mod is None or out_mod.weight is model.get_input_embeddings().weight


def new_tensors(model: torch.nn.Module, plan: Plan) -> dict[str, torch.Tensor]:
    """The plan's rows for `model` (left untouched): "input", and "output" when the head has rows
    of its own (an untied model, or a plan that makes head rows of their own), "output_bias" for
    a per-token head bias (Phi), which follows its tokens like the rows do."""
    inp = model.get_input_embeddings().weight
    out_mod = model.get_output_embeddings()
    tied = _tied(model)
    untie = tied and plan.output is not None and out_mod is not None
    with torch.no_grad():
        out = {"input": plan.apply(inp.detach().cpu())}
        if not tied or untie:
            out["output"] = plan.side("output").apply((inp if tied else out_mod.weight).detach().cpu())
        bias = getattr(out_mod, "bias", None) if out_mod is not None else None
        if isinstance(bias, torch.Tensor) and bias.dim() == 1:
            out["output_bias"] = plan.side("output").apply(bias.detach().cpu().unsqueeze(1)).squeeze(1)
    return out


def apply_in_place(model: torch.nn.Module, plan: Plan, prep: Prepared) -> list[str]:
    """Give `model` the plan's rows (untying a tied head when the plan makes head rows of its own)
    and its config and generation config the new vocab size and special ids, by the rules a written
    checkpoint follows (`io.configs`); returns the notes."""
    tensors = new_tensors(model, plan)
    untie = _tied(model) and "output" in tensors
    # mean_resizing would sample every new row from a fitted normal (minutes for 200k rows, and a
    # warning) only for the rows to be overwritten next.
    model.resize_token_embeddings(plan.new_size, mean_resizing=False)
    text_cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if untie:
        model.config.tie_word_embeddings = text_cfg.tie_word_embeddings = False
        head = model.get_output_embeddings()
        head.weight = torch.nn.Parameter(tensors["output"].to(head.weight.dtype).to(head.weight.device))
    with torch.no_grad():
        model.get_input_embeddings().weight.copy_(tensors["input"])
        if "output" in tensors:
            model.get_output_embeddings().weight.copy_(tensors["output"])
        if "output_bias" in tensors:
            model.get_output_embeddings().bias.copy_(tensors["output_bias"])
    cfg, notes = remap_config(model.config.to_dict(), prep.ids, plan.new_size)
    section = text_section(cfg)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        if key in section:
            setattr(text_cfg, key, section[key])
    gen_cfg = getattr(model, "generation_config", None)
    if gen_cfg is not None:
        gen, gen_notes = remap_generation_config(gen_cfg.to_dict(), prep.ids)
        for key in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id",
                    "forced_bos_token_id", "forced_eos_token_id"):
            if key in gen:
                setattr(gen_cfg, key, gen[key])
        notes += gen_notes
    return notes


__all__ = ["apply_in_place", "new_tensors"]
