"""The Python API: `transplant()` (plan + write a checkpoint), `apply_plan()` (re-apply a saved
plan to a fine-tune), `transplant_model()` (in memory, inside a training script).

Example:
    >>> from transplant import transplant
    >>> result = transplant("smollm2-135m-instruct", "de-tokenizer/tokenizer.json", "out/", method="fvt")  # doctest: +SKIP
    >>> result.plan.counts(), result.output_dir  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .align import Alignment
from .card import build_card
from .checkpoint import (EmbeddingLayout, check_vocab_fits, copy_side_files, locate_embeddings, read_embedding,
                         write_weights)
from .configs import IdMap, check_required_roles, remap_config, remap_generation_config
from .errors import TransplantError
from .evaluate import EvalResult, evaluate_bpb
from .plan import Plan
from .planner import build_plan
from .sources import base_model_id, resolve_model
from .tokenizer_out import chat_template_decision, write_tokenizer
from .vocab import TokenizerSource, Vocabulary, load_tokenizer

log = logging.getLogger(__name__)


@dataclass
class TransplantResult:
    """What a transplant produced."""

    plan: Plan
    output_dir: Path | None = None
    embeddings: dict[str, torch.Tensor] | None = None
    notes: list[str] = field(default_factory=list)
    evaluation: dict[str, EvalResult] | None = None


def vocab_fingerprint(vocab: Vocabulary) -> str:
    """Hash of (canonical bytes, kind) per id: two tokenizers with equal fingerprints align identically."""
    h = hashlib.sha256()
    for tok in vocab.tokens:
        h.update(tok.kind.encode() + b"\0" + tok.text + b"\0")
    return h.hexdigest()[:16]


def _check_output(out: Path, sources: list[Path], overwrite: bool) -> Path:
    out = out.resolve()
    for src in sources:
        src = src.resolve()
        if out == src or src in out.parents:
            raise TransplantError(f"output folder {out} is inside the input folder {src} (choose an output elsewhere)")
        if out in src.parents:
            raise TransplantError(f"output folder {out} contains the input {src} (choose an output elsewhere)")
    if out.exists() and not overwrite:
        raise TransplantError(f"output folder {out} already exists (pass --overwrite to replace it)")
    return out


def transplant(model: str | Path | torch.nn.Module, new_tokenizer: str | Path, out: str | Path | None = None, *,
               method: str | list[str] = "fvt", fallback: str = "mean", old_tokenizer: str | Path | None = None,
               pad_to_multiple_of: int | None = None, seed: int = 0, overwrite: bool = False, link: bool = False,
               trust_remote_code: bool = False, eval_texts: list[str] | None = None, eval_name: str = "text",
               eval_ctx: int = 1024, options: dict | None = None) -> TransplantResult:
    """Move a checkpoint onto `new_tokenizer`.

    Args:
        model: a model folder, a cached hub id, a `.gguf` file or a packaged name
            (`smollm2-135m-instruct`, `gemma-3-270m`); or an in-memory `PreTrainedModel`, with
            `old_tokenizer` given and `out=None`: the new tensors are returned, the model is untouched.
        new_tokenizer: a `tokenizer.json` or a tokenizer folder.
        out: output folder; None returns the new embedding tensors without writing anything.
        method: initializer after special tokens and exact overlap (see `transplant.initializers.available()`).
        fallback: initializer for tokens the method cannot make.
        pad_to_multiple_of: round the embedding rows up (e.g. 64 for tensor cores).
        link: hard-link untouched shards instead of copying them.
        eval_texts: if given, score the original and the new model on them (model card + result).

    Returns:
        TransplantResult with the plan, the output folder (or the embeddings when `out` is None).

    Example:
        >>> r = transplant("model/", "tok.json", None)  # doctest: +SKIP
        >>> r.embeddings["input"].shape  # doctest: +SKIP
        torch.Size([32000, 576])
    """
    if isinstance(model, torch.nn.Module):
        # An in-memory model (inside a training script): plan from its tokenizer, return tensors.
        if old_tokenizer is None or out is not None:
            raise TransplantError("for an in-memory model pass old_tokenizer= and no out (use save_pretrained "
                                  "yourself, or transplant_model(...) to replace the embeddings in place)")
        return transplant_model(model, old_tokenizer, new_tokenizer, method=method, fallback=fallback, seed=seed,
                                pad_to_multiple_of=pad_to_multiple_of, inplace=False)
    folder = resolve_model(model)
    old_src = load_tokenizer(old_tokenizer or folder)
    new_src = load_tokenizer(new_tokenizer)
    if out is not None:
        inputs = [folder] + ([new_src.folder] if new_src.folder else [])
        out = _check_output(Path(out), inputs, overwrite)
    layout = locate_embeddings(folder, trust_remote_code)
    old_vocab, new_vocab = old_src.vocabulary(), new_src.vocabulary()
    check_vocab_fits(layout, len(old_vocab))
    alignment = Alignment.build(old_vocab, new_vocab)
    ids = IdMap(alignment.special_map, new_vocab.roles)
    check_required_roles(layout.config, ids)
    plan = build_plan(old_vocab, new_vocab, method, fallback, pad_to_multiple_of, seed, options, alignment)
    plan.meta.update({
        "base_model": str(model), "new_tokenizer": str(new_tokenizer),
        "old_fingerprint": vocab_fingerprint(old_vocab), "new_fingerprint": vocab_fingerprint(new_vocab),
        "new_roles": new_vocab.roles, "tied": layout.tied,
    })
    log.info("plan: %s", plan.counts())
    if out is None:
        embeddings = {"input": plan.apply(read_embedding(layout, layout.input_key))}
        if layout.output_key:
            embeddings["output"] = plan.apply(read_embedding(layout, layout.output_key))
        return TransplantResult(plan, None, embeddings)
    template, template_note = chat_template_decision(new_src, old_src, old_vocab, new_vocab)
    card_info = {
        "base_model": str(model), "base_model_id": base_model_id(model, folder), "method": plan.meta["method"],
        "old_family": old_vocab.family,
        "new_family": new_vocab.family, "old_vocab": len(old_vocab), "new_vocab": len(new_vocab),
        "new_tokenizer": str(new_tokenizer), "chat_template": template_note,
    }
    return _write_output(folder, layout, plan, new_src, new_vocab, ids, template, out, link, card_info,
                         eval_texts, eval_name, eval_ctx)


def apply_plan(plan_dir: str | Path, model: str | Path, out: str | Path, *, overwrite: bool = False,
               link: bool = False, trust_remote_code: bool = False, eval_texts: list[str] | None = None,
               eval_name: str = "text", eval_ctx: int = 1024) -> TransplantResult:
    """Re-apply a saved plan (a `transplant run` output folder) to another checkpoint of the same base.

    Example:
        >>> apply_plan("smollm2-de/", "my-smollm2-finetune/", "my-finetune-de/")  # doctest: +SKIP
    """
    plan_dir = Path(plan_dir)
    plan = Plan.load(plan_dir)
    plan_folder = plan_dir if plan_dir.is_dir() else plan_dir.parent
    folder = resolve_model(model)
    out = _check_output(Path(out), [folder, plan_folder], overwrite)
    new_src = load_tokenizer(plan_folder)
    old_src = load_tokenizer(folder)
    layout = locate_embeddings(folder, trust_remote_code)
    old_vocab, new_vocab = old_src.vocabulary(), new_src.vocabulary()
    want = plan.meta.get("old_fingerprint")
    if want and vocab_fingerprint(old_vocab) != want:
        raise TransplantError(f"{folder} uses a different tokenizer than the plan was made for "
                              "(apply plans only to checkpoints of the same base model; recompute with `transplant run`)")
    check_vocab_fits(layout, plan.old_size)
    ids = IdMap({int(k): v for k, v in plan.meta.get("special_map", {}).items()}, new_vocab.roles)
    check_required_roles(layout.config, ids)
    card_info = {
        "base_model": str(model), "base_model_id": base_model_id(model, folder),
        "method": plan.meta.get("method", "?"), "old_family": old_vocab.family,
        "new_family": new_vocab.family, "old_vocab": len(old_vocab), "new_vocab": len(new_vocab),
        "new_tokenizer": f"{plan_folder} (re-applied plan)",
        "chat_template": "as in the plan's tokenizer" if new_src.chat_template else "none in the plan's tokenizer",
    }
    return _write_output(folder, layout, plan, new_src, new_vocab, ids, new_src.chat_template, out, link, card_info,
                         eval_texts, eval_name, eval_ctx)


def _write_output(folder: Path, layout: EmbeddingLayout, plan: Plan, new_src: TokenizerSource,
                  new_vocab: Vocabulary, ids: IdMap, template: str | None, out: Path, link: bool, card_info: dict,
                  eval_texts: list[str] | None, eval_name: str, eval_ctx: int) -> TransplantResult:
    out.parent.mkdir(parents=True, exist_ok=True)
    # Everything goes to a hidden sibling folder first and is renamed into place at the end, so
    # a failure or a kill never leaves a partial checkpoint under the requested name.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        write_weights(layout, plan, tmp, link=link)
        config, notes = remap_config(layout.config, ids, plan.new_size)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        gen_path = folder / "generation_config.json"
        if gen_path.exists():
            gen, gen_notes = remap_generation_config(json.loads(gen_path.read_text()), ids)
            notes += [n for n in gen_notes if n not in notes]
            (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        copy_side_files(folder, tmp)
        text_cfg = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
        write_tokenizer(new_src, new_vocab, tmp, template, text_cfg.get("max_position_embeddings"))
        plan_files = plan.save(tmp)
        for n in notes:
            log.warning(n)
        evaluation = None
        if eval_texts:
            evaluation = {"original": evaluate_bpb(folder, eval_texts, ctx=eval_ctx),
                          "transplanted": evaluate_bpb(tmp, eval_texts, ctx=eval_ctx)}
        counts = plan.counts()
        card_info.update({
            "old_rows": layout.rows, "new_rows": plan.new_size, "chain": " → ".join(plan.meta.get("chain", [])),
            "counts": counts, "notes": notes, "plan_files": ", ".join(f"`{f}`" for f in plan_files),
            "plan_ref": str(out), "head_note": "" if layout.tied else " and LM head",
            "eval_text": eval_name, "eval_bytes": evaluation["original"].bytes if evaluation else 0,
            "evaluation": [{"name": k, "bpb": f"{v.bpb:.4f}", "bpt": f"{v.bytes_per_token:.2f}"}
                           for k, v in evaluation.items()] if evaluation else None,
        })
        build_card(card_info).save(str(tmp / "README.md"))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return TransplantResult(plan, out, None, notes, evaluation)


def transplant_model(model: torch.nn.Module, old_tokenizer: str | Path, new_tokenizer: str | Path, *,
                     method: str | list[str] = "fvt", fallback: str = "mean", seed: int = 0,
                     pad_to_multiple_of: int | None = None, inplace: bool = True) -> TransplantResult:
    """Transplant an in-memory `PreTrainedModel` (e.g. inside a fine-tuning script).

    With `inplace=True` the model's embeddings (and untied head) are replaced and its config's
    vocab size and special ids updated; the new tensors are returned either way.

    Example:
        >>> result = transplant_model(model, "old-tok/", "new-tok/tokenizer.json")  # doctest: +SKIP
        >>> model.get_input_embeddings().weight.shape[0] == result.plan.new_size  # doctest: +SKIP
        True
    """
    old_src, new_src = load_tokenizer(old_tokenizer), load_tokenizer(new_tokenizer)
    old_vocab, new_vocab = old_src.vocabulary(), new_src.vocabulary()
    inp = model.get_input_embeddings().weight
    if len(old_vocab) > inp.shape[0]:
        raise TransplantError(f"old tokenizer has {len(old_vocab)} ids but the model only {inp.shape[0]} rows "
                              "(pass the tokenizer that belongs to this model)")
    alignment = Alignment.build(old_vocab, new_vocab)
    plan = build_plan(old_vocab, new_vocab, method, fallback, pad_to_multiple_of, seed, alignment=alignment)
    out_mod = model.get_output_embeddings()
    tied = out_mod is None or out_mod.weight is inp
    with torch.no_grad():
        new_in = plan.apply(inp.detach().cpu())
        new_out = None if tied else plan.apply(out_mod.weight.detach().cpu())
    result = TransplantResult(plan, None, {"input": new_in, **({"output": new_out} if new_out is not None else {})})
    if inplace:
        ids = IdMap(alignment.special_map, new_vocab.roles)
        model.resize_token_embeddings(plan.new_size)
        with torch.no_grad():
            model.get_input_embeddings().weight.copy_(new_in)
            if new_out is not None:
                model.get_output_embeddings().weight.copy_(new_out)
        cfg, notes = remap_config(model.config.to_dict(), ids, plan.new_size)
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if key in cfg:
                setattr(model.config, key, cfg[key])
        result.notes = notes
    return result


__all__ = ["transplant", "apply_plan", "transplant_model", "TransplantResult"]
