"""Writing a transplant's output folder (`write_output`) and re-applying a saved plan to another
checkpoint of the same base model (`apply_plan`, e.g. a fine-tune).

Everything is written into a staged folder moved into place at the end (`io/outdir.py`): a
failure leaves no partial output and never touches a file that is not its own.

Example:
    >>> from transplant import transplant
    >>> first = transplant(model_dir, new_tok_dir, "first", method="fvt")
    >>> apply_plan("first", model_dir, "again").output_dir.name
    'again'
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from transplant.common.config_dict import text_section
from transplant.core.plan import OVERRIDE, PLAN_JSON, PLAN_WEIGHTS, Plan
from transplant.core.vocab import TokenizerSource, Vocabulary, load_tokenizer, vocab_fingerprint
from transplant.io.card import build_card, describe_tokenizer, source_card_metadata, stored_facts
from transplant.io.checkpoint import (
    EmbeddingLayout,
    check_vocab_fits,
    copy_side_files,
    locate_embeddings,
    write_weights,
)
from transplant.io.configs import remap_config, remap_generation_config
from transplant.io.outdir import check_output_path, staged_output
from transplant.io.sources import base_model_id, resolve_model
from transplant.io.specials import SpecialIds
from transplant.io.tokenizer_out import write_tokenizer
from transplant.io.validate import validate_output
from transplant.measure.evaluate import evaluate_bpb
from transplant.prepare import Prepared, TransplantResult, gc_paused, generation_config, input_files, prepare

log = logging.getLogger(__name__)

PLAN_FILES = (PLAN_WEIGHTS, PLAN_JSON)  # what `Plan.save` writes


@gc_paused
def apply_plan(plan_dir: str | Path, model: str | Path, out: str | Path, *, overwrite: bool = False,
               link: bool = False, trust_remote_code: bool = False, eval_texts: list[str] | None = None,
               eval_name: str = "text", eval_ctx: int = 1024,
               input_paths: list[str | Path] | None = None) -> TransplantResult:
    """Re-apply a saved plan (a `transplant run` output folder) to another checkpoint of the same base.

    The plan folder's tokenizer already carries the encode convention and chat template chosen
    when the plan was made; they are kept as they are.

    Example:
        >>> import shutil
        >>> from transplant import transplant
        >>> planned = transplant(model_dir, new_tok_dir, "planned", method="fvt")
        >>> _ = shutil.copytree(model_dir, "finetune")  # stands for a fine-tune of the same base model
        >>> result = apply_plan("planned", "finetune", "finetune-new")
        >>> result.plan.counts() == planned.plan.counts(), result.plan.new_size
        (True, 759)
        >>> apply_plan("smollm2-de/", "my-smollm2-finetune/", "my-finetune-de/")  # doctest: +SKIP
    """
    plan_dir = Path(plan_dir)
    plan = Plan.load(plan_dir)
    plan_folder = plan_dir if plan_dir.is_dir() else plan_dir.parent
    folder = resolve_model(model)
    out = check_output_path(Path(out), input_files(folder, plan_folder, *(Path(p) for p in input_paths or [])),
                            overwrite)
    new_src = load_tokenizer(plan_folder)
    old_src = load_tokenizer(folder)
    layout = locate_embeddings(folder, trust_remote_code)
    old_vocab, new_vocab = old_src.vocabulary(), new_src.vocabulary()
    plan.check_target(layout.rows, layout.dim, vocab_fingerprint(old_vocab), vocab_fingerprint(new_vocab), folder,
                      plan_folder)
    check_vocab_fits(layout, plan.old_size)
    prep = prepare(old_src, new_src, layout.config, generation_config(folder), plan=plan, encode_like="target")
    prep.template = new_src.chat_template
    dense = int(np.count_nonzero(plan.kinds == OVERRIDE))
    if dense:
        methods = sorted({plan.provenance[i] for i in np.nonzero(plan.kinds == OVERRIDE)[0]})
        prep.notes.append(f"{dense} rows are dense values the plan stores ({', '.join(methods)}, predicted from the "
                          "embeddings of the model the plan was made for) and are reused as they are; to predict "
                          "them from this checkpoint's own embeddings, run `transplant run` with the same method on it")
    # What the plan's own card said about its target (what was done, the text's language) still
    # holds; the source facts are this checkpoint's.
    planned = plan.meta.get("card") or {}
    source_meta = source_card_metadata(folder, model)
    source_meta.pop("language", None)
    card_info = dict(prep.card, base_model=str(model), new_tokenizer=str(plan_folder), **source_meta,
                     **{k: planned[k] for k in ("kind", "extension", "language") if planned.get(k)})
    about = planned.get("new_tokenizer_about") or describe_tokenizer(new_src)
    card_info["new_tokenizer_about"] = f"the re-applied plan's tokenizer: {about}"
    card_info["base_model_id"] = (source_meta.get("base_model_id") or base_model_id(model, folder)
                                  or plan.meta.get("base_model_id"))
    card_info["chat_template"] = ("as in the plan's tokenizer" if new_src.chat_template
                                  else "none in the plan's tokenizer")
    return write_output(folder, layout, prep, new_src, out, overwrite, link, card_info, eval_texts, eval_name,
                         eval_ctx, trust_remote_code)


def write_output(folder: Path, layout: EmbeddingLayout, prep: Prepared, new_src: TokenizerSource, out: Path,
                  overwrite: bool, link: bool, card_info: dict, eval_texts: list[str] | None, eval_name: str,
                  eval_ctx: int, trust_remote_code: bool, allow_forced_class: bool = False) -> TransplantResult:
    plan = prep.plan
    plan.meta["base_model_id"] = card_info.get("base_model_id")
    # Everything goes to a hidden sibling folder, checked, then renamed into place (outdir.py):
    # a failure, Ctrl-C or SIGTERM never leaves a partial checkpoint or touches an existing one.
    with staged_output(out, overwrite) as stage:
        tmp = stage.path
        untied = write_weights(layout, plan, tmp, link=link)
        config, notes = remap_config(layout.config, prep.ids, plan.new_size)
        if untied:
            _set_untied(config)
            notes.append(f"written with an untied LM head (the plan makes head rows of their own): "
                         f"+{plan.new_size * layout.dim:,} parameters")
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        gen, gen_notes = remap_generation_config(prep.old_generation, prep.ids)
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        copy_side_files(folder, tmp)
        text_cfg = text_section(config)
        # A plan made with the forced class allowed (its card says so) is re-applied the same way.
        allow_forced = allow_forced_class or bool(plan.meta.get("forced_tokenizer_class"))
        written = write_tokenizer(new_src, prep.new_vocab, tmp, prep.template, prep.ids, prep.prefix, prep.suffix,
                                  text_cfg.get("max_position_embeddings"), allow_forced_class=allow_forced)
        if written.forced is not None:
            plan.meta["forced_tokenizer_class"] = written.forced.loaded
            card_info["forced_tokenizer"] = written.forced.card()
        notes = list(dict.fromkeys(prep.notes + notes + gen_notes + written.notes))
        card_info.update({
            "old_rows": layout.rows, "new_rows": plan.new_size, "chain": " → ".join(plan.meta.get("chain", [])),
            "counts": plan.counts(), "notes": notes, "plan_files": ", ".join(f"`{f}`" for f in PLAN_FILES),
            "head_note": "" if layout.tied and plan.output is None else " and LM head",
            "special_ids": _describe_ids(prep.ids, prep.new_vocab),
        })
        # Kept with the plan, so `heal` (and `apply`) can rebuild this card with their own parts.
        plan.meta["card"] = stored_facts(card_info)
        plan.save(tmp)
        validate_output(tmp, plan, prep.ids, prep.prefix, prep.template, prep.missing_markers)
        for n in notes:
            log.warning(n)
        evaluation = None
        if eval_texts:
            evaluation = {"original": evaluate_bpb(folder, eval_texts, ctx=eval_ctx,
                                                   trust_remote_code=trust_remote_code, label="original"),
                          "transplanted": evaluate_bpb(tmp, eval_texts, ctx=eval_ctx,
                                                       trust_remote_code=trust_remote_code, label="transplanted")}
        card_info.update({
            "plan_ref": str(out), "eval_text": eval_name,
            "eval_bytes": evaluation["original"].bytes if evaluation else 0,
            "eval_ratio": f"{evaluation['transplanted'].bpb / evaluation['original'].bpb:.3f}" if evaluation else None,
            "evaluation": [{"name": k, "bpb": f"{v.bpb:.4f}", "bpt": f"{v.bytes_per_token:.2f}"}
                           for k, v in evaluation.items()] if evaluation else None,
        })
        build_card(card_info).save(str(tmp / "README.md"))
    return TransplantResult(plan, out, None, notes, evaluation, prep.ids)


def _set_untied(config: dict) -> None:
    """tie_word_embeddings=false wherever the config (or its text sub-config) declares it."""
    config["tie_word_embeddings"] = False
    text_section(config)["tie_word_embeddings"] = False


def _describe_ids(ids: SpecialIds, vocab: Vocabulary) -> str:
    def name(i: int | None) -> str:
        return "none" if i is None else f"`{vocab.tokens[i].text.decode('utf-8', 'replace')}` ({i})"

    return (f"bos {name(ids.bos)}, eos {', '.join(name(i) for i in ids.eos) or 'none'}, pad {name(ids.pad)}, "
            f"unk {name(ids.unk)}")


__all__ = ["apply_plan", "write_output"]
