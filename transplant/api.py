"""The Python API: `transplant()` (plan + write a checkpoint), `apply_plan()` (re-apply a saved
plan to a fine-tune), `transplant_model()` (in memory, inside a training script).

All three share one path: `prepare()` builds the vocabularies, the alignment, the plan and the
special-token decisions (`specials.SpecialIds`); the writers only write what it decided.

Example:
    >>> from transplant import transplant
    >>> result = transplant("smollm2-135m-instruct", "de-tokenizer/tokenizer.json", "out/", method="fvt")  # doctest: +SKIP
    >>> result.plan.counts(), result.output_dir  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import gc
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from transplant.core.align import Alignment
from transplant.methods.auto import choose as choose_auto
from transplant.methods.auto import is_auto
from transplant.io.card import build_card, source_card_metadata
from transplant.io.checkpoint import EmbeddingLayout, check_vocab_fits, copy_side_files, locate_embeddings, read_embedding, write_weights
from transplant.io.configs import check_required_roles, remap_config, remap_generation_config
from transplant.common.errors import TransplantError
from transplant.measure.evaluate import EvalResult, evaluate_bpb
from transplant.methods.initializers import format_options
from transplant.io.outdir import check_output_path, staged_output
from transplant.core.plan import OVERRIDE, Plan
from transplant.methods.planner import build_plan
from transplant.common.progress import stage
from transplant.methods.resources import Resources
from transplant.io.sources import base_model_id, resolve_model
from transplant.runspec import RunSpec
from transplant.io.specials import (SpecialIds, added_by_encode, choose_chat_template, map_added, old_role_ids,
                       resolve_special_ids)
from transplant.io.tokenizer_out import is_lossless, write_tokenizer
from transplant.io.validate import validate_output
from transplant.core.vocab import ADDED, SPECIAL, TokenizerSource, Vocabulary, load_tokenizer, vocab_fingerprint

log = logging.getLogger(__name__)

ENCODE_CHOICES = ("source", "target")


@dataclass
class TransplantResult:
    """What a transplant produced."""

    plan: Plan
    output_dir: Path | None = None
    embeddings: dict[str, torch.Tensor] | None = None
    notes: list[str] = field(default_factory=list)
    evaluation: dict[str, EvalResult] | None = None
    special_ids: SpecialIds | None = None


def _gc_paused(fn):
    """Run `fn` with the cyclic garbage collector paused: building two vocabularies allocates
    millions of small objects, and rescanning them cost ~3.5 s of a 20 s run (nothing here
    makes reference cycles worth collecting mid-run; peak memory measured the same)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if was_enabled:
                gc.enable()
    return wrapper


@dataclass
class Prepared:
    """Everything decided before writing: plan, special ids, what encode adds, chat template."""

    plan: Plan
    old_vocab: Vocabulary
    new_vocab: Vocabulary
    ids: SpecialIds
    prefix: list[int]
    suffix: list[int]
    template: str | None
    notes: list[str]
    card: dict
    missing_markers: set[str] = field(default_factory=set)
    old_generation: dict | None = None
    new_tokenizer: object = None  # the target `tokenizers.Tokenizer`


def _encode_convention(old_src: TokenizerSource, new_src: TokenizerSource, plan: Plan, old_vocab: Vocabulary,
                       new_vocab: Vocabulary, ids: SpecialIds, old_roles: dict, encode_like: str
                       ) -> tuple[list[int], list[int], list[str], str]:
    """(prefix, suffix, notes, card line) for what a plain `tokenizer(text)` adds."""
    notes: list[str] = []
    tgt_prefix, tgt_suffix = added_by_encode(new_src)

    def names(seq: list[int], vocab: Vocabulary) -> str:
        return " ".join(vocab.tokens[i].text.decode("utf-8", "replace") for i in seq) or "nothing"

    if encode_like == "target":
        prefix, suffix = tgt_prefix, tgt_suffix
        line = f"the target tokenizer's own: adds {names(prefix, new_vocab)} before and {names(suffix, new_vocab)} after"
    else:
        src_prefix, src_suffix = added_by_encode(old_src)
        prefix, dropped_p = map_added(src_prefix, old_vocab, new_vocab, plan, ids, old_roles)
        suffix, dropped_s = map_added(src_suffix, old_vocab, new_vocab, plan, ids, old_roles)
        if dropped_p or dropped_s:
            notes.append(f"the source tokenizer adds {', '.join(dropped_p + dropped_s)} to every encode but the new "
                         "tokenizer has no token of that role; encodes go without it")
        line = (f"the source model's convention: adds {names(prefix, new_vocab)} before the text and "
                f"{names(suffix, new_vocab)} after (source: {names(src_prefix, old_vocab)} / "
                f"{names(src_suffix, old_vocab)})")
        if (tgt_prefix, tgt_suffix) != (prefix, suffix) and (tgt_prefix or tgt_suffix):
            notes.append(f"the target tokenizer adds {names(tgt_prefix, new_vocab)} before and "
                         f"{names(tgt_suffix, new_vocab)} after every encode; replaced by the source model's "
                         "convention (--encode-like target keeps it)")
        if (tgt_prefix, tgt_suffix) != (prefix, suffix):
            line += (f"; the target tokenizer alone would add {names(tgt_prefix, new_vocab)} / "
                     f"{names(tgt_suffix, new_vocab)} (use encode_like='target' / --encode-like target for that)")
    if suffix and any(i in ids.eos for i in suffix):
        notes.append(f"every encode ends with {names(suffix, new_vocab)} (end of sequence): prompts look finished "
                     "to the model, so generation may stop at once (pass add_special_tokens=False for prompts)")
    return prefix, suffix, notes, line


def prepare(old_src: TokenizerSource, new_src: TokenizerSource, old_config: dict, old_generation: dict | None,
            method: str | list[str] = "fvt", fallback: str = "mean", pad_to_multiple_of: int | None = None,
            seed: int = 0, options: dict | None = None, encode_like: str = "source",
            plan: Plan | None = None, resources: Resources | None = None) -> Prepared:
    """The one planning path: plan (or a loaded one), special ids, encode convention, template.

    Args:
        old_src, new_src: the source and target tokenizers.
        old_config, old_generation: the source model's config.json / generation_config.json dicts.
        plan: an existing plan (re-application); built from the vocabularies when None.
        resources: what methods may read beyond the alignment (old matrices, donor, vectors).
        encode_like: what `tokenizer(text)` adds: the source model's convention ("source") or
            the target tokenizer's own ("target").
    """
    if encode_like not in ENCODE_CHOICES:
        raise TransplantError(f"encode_like must be one of {', '.join(ENCODE_CHOICES)}, not {encode_like!r}")
    old_vocab, new_vocab = old_src.vocabulary(), new_src.vocabulary()
    if plan is None:
        alignment = Alignment.build(old_vocab, new_vocab)
        plan = build_plan(old_vocab, new_vocab, method, fallback, pad_to_multiple_of, seed, options, alignment,
                          resources)
        plan.meta.update({"old_fingerprint": vocab_fingerprint(old_vocab),
                          "new_fingerprint": vocab_fingerprint(new_vocab), "new_roles": new_vocab.roles})
    ids = resolve_special_ids(plan, old_vocab, new_vocab, old_config, old_generation)
    check_required_roles(old_config, ids)
    old_roles = old_role_ids(old_vocab, old_config, old_generation)
    prefix, suffix, notes, encode_line = _encode_convention(old_src, new_src, plan, old_vocab, new_vocab, ids,
                                                            old_roles, encode_like)
    template, template_note = choose_chat_template(old_src, new_src, old_vocab, new_vocab)
    if not is_lossless(new_src.tokenizer):
        notes.append("the new tokenizer is lossy (decode(encode(text)) != text, e.g. it drops newlines or "
                     "spaces): generated text loses them and bits per byte are not comparable with the source")
    notes = list(ids.notes) + notes
    card = {"chat_template": template_note, "encode_convention": encode_line, "old_family": old_vocab.family,
            "new_family": new_vocab.family, "old_vocab": len(old_vocab), "new_vocab": len(new_vocab),
            "method": plan.meta.get("method", "?"),
            "options": format_options(plan.meta.get("options") or {}),
            "resources": ", ".join(f"{k} (sha256 {v})" for k, v in (plan.meta.get("resources") or {}).items())}
    new_contents = {t.text for t in new_vocab.tokens if t.kind in (SPECIAL, ADDED)}
    missing = {t.text.decode("utf-8", "replace") for t in old_vocab.tokens
               if t.kind == SPECIAL and t.text and t.text not in new_contents}
    return Prepared(plan, old_vocab, new_vocab, ids, prefix, suffix, template, notes, card, missing,
                    old_generation, new_src.tokenizer)


def _untie_and_calibrate(prep: Prepared, tied: bool, untie: bool, texts: list[str] | None, max_tokens: int,
                         load_model, new_head) -> None:
    """Give the plan an LM-head side of its own when asked (`untie`), and fit the output scale."""
    from copy import deepcopy

    from transplant.methods.calibrate import apply_scale, fit_output_scale, row_buckets

    plan = prep.plan
    if untie and not tied:
        prep.notes.append("--untie has no effect: the model's LM head is already separate")
    if untie and tied and plan.output is None:
        plan.output = deepcopy(plan)
        plan.output.output, plan.output.meta = None, {}
    if not texts:
        return
    ids = prep.ids
    start = ids.bos if ids.bos is not None else (ids.eos[0] if ids.eos else None)
    if start is None:
        raise TransplantError("calibration needs a start token (bos or eos) in the new tokenizer")
    tok = prep.new_tokenizer

    def encode(docs: list[str]) -> list[list[int]]:
        return [e.ids for e in tok.encode_batch(docs, add_special_tokens=False)]

    made = plan.side("output").made_rows()
    buckets = row_buckets(plan.side("output"), made)
    fit = fit_output_scale(load_model, new_head, made, encode, start, texts, max_tokens, buckets=buckets)
    side = apply_scale(plan, fit, output_only=not tied or untie, buckets=buckets)
    plan.meta["calibration"] = dict(fit.as_meta(), side=side)
    scaled = (f"by {fit.scale:.2f}" if not fit.bucket_scales else
              "by " + "/".join(f"{v:.2f}" for v in fit.bucket_scales) + " (rows mixing 1/2/3/4+ old rows, other)")
    prep.card["calibration"] = (
        f"made tokens' output rows scaled {scaled} ({'LM head only' if side == 'output' else 'tied rows'}), "
        f"fitted by likelihood on {fit.tokens} tokens of calibration text: {fit.nll_before:.4f} → "
        f"{fit.nll_after:.4f} nats/token there; probability mass on made tokens {fit.made_mass_before:.2f} → "
        f"{fit.made_mass_after:.2f} (their share of the text: {fit.made_share:.2f})")
    log.info("calibration: %s", plan.meta["calibration"])


def _loaded_with_new_inputs(folder: Path, layout: EmbeddingLayout, plan: Plan, trust_remote_code: bool):
    """(the source model in float32, `ids -> the plan's new input rows of those ids`) for calibration.

    The model is not resized to the new vocabulary: calibration reads its text through the rows of
    the ids it uses (`calibrate.fit_output_scale`), streamed here from the plan, so no
    new_vocab x dim matrix is made beside the head (600 MB for Gemma's vocabulary at SmolLM2's width).
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                 trust_remote_code=trust_remote_code)
    model.eval()

    def input_rows(ids: np.ndarray) -> torch.Tensor:
        pieces, first = [], 0
        for chunk in plan.iter_apply(read_embedding(layout, layout.input_key)):
            inside = ids[(ids >= first) & (ids < first + len(chunk))] - first
            pieces.append(chunk[torch.from_numpy(inside)].to(torch.float32))
            first += len(chunk)
        return torch.cat(pieces)

    return model, input_rows


def _generation_config(folder: Path) -> dict | None:
    path = folder / "generation_config.json"
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TransplantError(f"malformed {path}: {str(exc).splitlines()[0]} (fix or delete the file)") from None
    if not isinstance(doc, dict):
        raise TransplantError(f"malformed {path}: not a JSON object (fix or delete the file)")
    return doc


def _input_paths(*items: Path | TokenizerSource | None) -> list[Path]:
    paths: list[Path] = []
    for item in items:
        if item is None:
            continue
        if isinstance(item, TokenizerSource):
            paths += [item.path] + ([item.folder] if item.folder else [])
        else:
            paths.append(Path(item))
    return paths


def transplant(model: str | Path | torch.nn.Module | RunSpec, new_tokenizer: str | Path | None = None,
               out: str | Path | None = None, *,
               method: str | list[str] = "auto", fallback: str = "mean", old_tokenizer: str | Path | None = None,
               pad_to_multiple_of: int | None = None, seed: int = 0, overwrite: bool = False, link: bool = False,
               trust_remote_code: bool = False, eval_texts: list[str] | None = None, eval_name: str = "text",
               eval_ctx: int = 1024, options: dict | None = None, encode_like: str = "source",
               language: list[str] | None = None, input_paths: list[str | Path] | None = None,
               untie: bool = False, calibrate_texts: list[str] | None = None,
               calibrate_tokens: int = 4096, calibrate: bool = True) -> TransplantResult:
    """Move a checkpoint onto `new_tokenizer`: `transplant(spec)` with a `RunSpec`, or the keyword form.

    The keyword form is a thin wrapper: it builds the `RunSpec` of these arguments, except that
    `eval_texts` and `calibrate_texts` here are the texts themselves (a spec names files).

    Args:
        model: a `RunSpec` (every other argument is then ignored), a model folder, a cached hub id, a `.gguf` file or a packaged name
            (`smollm2-135m-instruct`, `gemma-3-270m`); or an in-memory `PreTrainedModel`, with
            `old_tokenizer` given and `out=None`: the new tensors are returned, the model is untouched.
        new_tokenizer: a `tokenizer.json` or a tokenizer folder.
        out: output folder; None returns the new embedding tensors without writing anything.
        method: initializer after special tokens and exact overlap (see `transplant.methods.initializers.available()`);
            "auto" (default): the hypernetwork known for this base model, else FVT, then output
            calibration when calibration text is known (`transplant.methods.auto`; the choice is recorded).
        fallback: initializer for tokens the method cannot make.
        pad_to_multiple_of: round the embedding rows up (e.g. 64 for tensor cores).
        link: hard-link untouched shards instead of copying them.
        eval_texts: if given, score the original and the new model on them (model card + result).
        encode_like: "source" (default) makes `tokenizer(text)` add what the source model always saw
            (e.g. Gemma's start token) in the new tokens; "target" keeps the target tokenizer's own.
        language: language codes for the model card.
        input_paths: further files the run reads (e.g. evaluation texts); never inside `out`.
        untie: write a tied model with an LM head of its own (the head's rows can then differ,
            e.g. be calibrated alone); costs new_vocab x hidden parameters.
        calibrate_texts: text in the target language/domain (e.g. the new tokenizer's training
            text, never the evaluation text): fit the scale of made tokens' output rows on it by
            likelihood (see `transplant.methods.calibrate`); recorded in the plan.
        calibrate_tokens: how many tokens of that text to read.
        calibrate: False: no calibration, not even on the text `auto` would find.

    Returns:
        TransplantResult with the plan, the output folder (or the embeddings when `out` is None).

    Example:
        >>> spec = RunSpec(model="model/", new_tokenizer="tok.json", out="out/", method="fvt")  # doctest: +SKIP
        >>> transplant(spec).output_dir  # doctest: +SKIP
        PosixPath('out')
        >>> r = transplant("model/", "tok.json", None)  # doctest: +SKIP
        >>> r.embeddings["input"].shape  # doctest: +SKIP
        torch.Size([32000, 576])
    """
    if isinstance(model, RunSpec):
        return run_spec(model)
    if isinstance(model, torch.nn.Module):
        # An in-memory model (inside a training script): plan from its tokenizer, return tensors.
        if old_tokenizer is None or out is not None:
            raise TransplantError("for an in-memory model pass old_tokenizer= and no out (use save_pretrained "
                                  "yourself, or transplant_model(...) to replace the embeddings in place)")
        return transplant_model(model, old_tokenizer, new_tokenizer, method=method, fallback=fallback, seed=seed,
                                pad_to_multiple_of=pad_to_multiple_of, inplace=False, options=options,
                                encode_like=encode_like)
    # model_construct: the keyword form is checked where it always was (in the run), not by the schema.
    spec = RunSpec.model_construct(
        model=str(model), new_tokenizer=str(new_tokenizer), out=None if out is None else str(out),
        method=[method] if isinstance(method, str) else list(method), fallback=fallback,
        old_tokenizer=None if old_tokenizer is None else str(old_tokenizer), pad_to_multiple_of=pad_to_multiple_of,
        seed=seed, overwrite=overwrite, link=link, trust_remote_code=trust_remote_code, eval_ctx=eval_ctx,
        options=options or {}, encode_like=encode_like, language=list(language or []), untie=untie,
        calibrate_tokens=calibrate_tokens, calibrate=calibrate, eval_texts=[], calibrate_texts=[])
    return _run(spec, model, new_tokenizer, out, eval_texts, eval_name, calibrate_texts, input_paths)


def run_spec(spec: RunSpec) -> TransplantResult:
    """Run a transplant as `spec` says: methods and options checked first, then its texts read.

    Example:
        >>> run_spec(RunSpec(model="model/", new_tokenizer="tok.json", out="out/"))  # doctest: +SKIP
    """
    spec.require()
    spec.check()
    return _run(spec, spec.model, spec.new_tokenizer, spec.out, spec.read_eval_texts(), spec.eval_name or "text",
                spec.read_calibrate_texts(), spec.input_paths)


@_gc_paused
def _run(spec: RunSpec, model: str | Path, new_tokenizer: str | Path, out: str | Path | None,
         eval_texts: list[str] | None, eval_name: str, calibrate_texts: list[str] | None,
         input_paths: list[str | Path] | None) -> TransplantResult:
    """The run itself; `model`, `new_tokenizer` and `out` as the caller gave them (recorded as given)."""
    method, fallback, options, calibrate = spec.method_arg, spec.fallback, spec.options or None, spec.calibrate
    old_tokenizer, trust_remote_code, language = spec.old_tokenizer, spec.trust_remote_code, spec.language or None
    folder = resolve_model(model)
    old_src = load_tokenizer(old_tokenizer or folder)
    new_src = load_tokenizer(new_tokenizer)
    if out is not None:
        inputs = _input_paths(folder, old_src, new_src, *(Path(p) for p in input_paths or []))
        out = check_output_path(Path(out), inputs, spec.overwrite)
    layout = locate_embeddings(folder, trust_remote_code)
    check_vocab_fits(layout, len(old_src.vocabulary()))
    resources = Resources.from_checkpoint(layout, len(old_src.vocabulary()))
    auto = None
    if is_auto(method):
        auto = choose_auto(resources, new_src, calibrate_texts, calibrate, options)
        method, options = auto.method, auto.options
        calibrate_texts = auto.calibration.texts if auto.calibration else None
    elif not calibrate:
        calibrate_texts = None
    prep = prepare(old_src, new_src, layout.config, _generation_config(folder), method, fallback,
                   spec.pad_to_multiple_of, spec.seed, options, spec.encode_like, resources=resources)
    plan = prep.plan
    if auto is not None:  # said once the inputs passed their checks: a bad input stays one error line
        stage(auto.line)
        plan.meta["auto"] = auto.meta()
        prep.card["auto"] = auto.line.removeprefix("auto: ")
    plan.record_base(layout.rows, layout.dim)
    plan.meta.update({"base_model": str(model), "new_tokenizer": str(new_tokenizer), "tied": layout.tied,
                      "encode_like": spec.encode_like})
    _untie_and_calibrate(prep, layout.tied, spec.untie, calibrate_texts, spec.calibrate_tokens,
                         lambda: _loaded_with_new_inputs(folder, layout, plan, trust_remote_code),
                         lambda: plan.side("output").apply(
                             read_embedding(layout, layout.output_key or layout.input_key)))
    log.info("plan: %s", plan.counts())
    if out is None:
        embeddings = {"input": plan.apply(read_embedding(layout, layout.input_key))}
        if layout.output_key or plan.output is not None:
            # The head's own rows (an untied model, or a plan that makes head rows of their own).
            embeddings["output"] = plan.side("output").apply(
                read_embedding(layout, layout.output_key or layout.input_key))
        return TransplantResult(plan, None, embeddings, prep.notes, special_ids=prep.ids)
    source_meta = source_card_metadata(folder, model)
    card_info = dict(prep.card, base_model=str(model), new_tokenizer=str(new_tokenizer), **source_meta)
    card_info["base_model_id"] = source_meta.get("base_model_id") or base_model_id(model, folder)
    if language:
        card_info["language"] = list(language)
    return _write_output(folder, layout, prep, new_src, out, spec.overwrite, spec.link, card_info, eval_texts,
                         eval_name, spec.eval_ctx, trust_remote_code)


@_gc_paused
def apply_plan(plan_dir: str | Path, model: str | Path, out: str | Path, *, overwrite: bool = False,
               link: bool = False, trust_remote_code: bool = False, eval_texts: list[str] | None = None,
               eval_name: str = "text", eval_ctx: int = 1024,
               input_paths: list[str | Path] | None = None) -> TransplantResult:
    """Re-apply a saved plan (a `transplant run` output folder) to another checkpoint of the same base.

    The plan folder's tokenizer already carries the encode convention and chat template chosen
    when the plan was made; they are kept as they are.

    Example:
        >>> apply_plan("smollm2-de/", "my-smollm2-finetune/", "my-finetune-de/")  # doctest: +SKIP
    """
    plan_dir = Path(plan_dir)
    plan = Plan.load(plan_dir)
    plan_folder = plan_dir if plan_dir.is_dir() else plan_dir.parent
    folder = resolve_model(model)
    out = check_output_path(Path(out), _input_paths(folder, plan_folder, *(Path(p) for p in input_paths or [])),
                            overwrite)
    new_src = load_tokenizer(plan_folder)
    old_src = load_tokenizer(folder)
    layout = locate_embeddings(folder, trust_remote_code)
    old_vocab, new_vocab = old_src.vocabulary(), new_src.vocabulary()
    plan.check_target(layout.rows, layout.dim, vocab_fingerprint(old_vocab), vocab_fingerprint(new_vocab), folder,
                      plan_folder)
    check_vocab_fits(layout, plan.old_size)
    prep = prepare(old_src, new_src, layout.config, _generation_config(folder), plan=plan, encode_like="target")
    prep.template = new_src.chat_template
    dense = int(np.count_nonzero(plan.kinds == OVERRIDE))
    if dense:
        methods = sorted({plan.provenance[i] for i in np.nonzero(plan.kinds == OVERRIDE)[0]})
        prep.notes.append(f"{dense} rows are dense values the plan stores ({', '.join(methods)}, predicted from the "
                          "embeddings of the model the plan was made for) and are reused as they are; to predict "
                          "them from this checkpoint's own embeddings, run `transplant run` with the same method on it")
    source_meta = source_card_metadata(folder, model)
    card_info = dict(prep.card, base_model=str(model), new_tokenizer=f"{plan_folder.name} (re-applied plan)",
                     **source_meta)
    card_info["base_model_id"] = (source_meta.get("base_model_id") or base_model_id(model, folder)
                                  or plan.meta.get("base_model_id"))
    card_info["chat_template"] = ("as in the plan's tokenizer" if new_src.chat_template
                                  else "none in the plan's tokenizer")
    return _write_output(folder, layout, prep, new_src, out, overwrite, link, card_info, eval_texts, eval_name,
                         eval_ctx, trust_remote_code)


def _write_output(folder: Path, layout: EmbeddingLayout, prep: Prepared, new_src: TokenizerSource, out: Path,
                  overwrite: bool, link: bool, card_info: dict, eval_texts: list[str] | None, eval_name: str,
                  eval_ctx: int, trust_remote_code: bool) -> TransplantResult:
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
        text_cfg = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
        tok_notes = write_tokenizer(new_src, prep.new_vocab, tmp, prep.template, prep.ids, prep.prefix, prep.suffix,
                                    text_cfg.get("max_position_embeddings"))
        notes = list(dict.fromkeys(prep.notes + notes + gen_notes + tok_notes))
        plan_files = plan.save(tmp)
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
            "old_rows": layout.rows, "new_rows": plan.new_size, "chain": " → ".join(plan.meta.get("chain", [])),
            "counts": plan.counts(), "notes": notes, "plan_files": ", ".join(f"`{f}`" for f in plan_files),
            "plan_ref": str(out), "head_note": "" if layout.tied and plan.output is None else " and LM head",
            "eval_text": eval_name, "eval_bytes": evaluation["original"].bytes if evaluation else 0,
            "evaluation": [{"name": k, "bpb": f"{v.bpb:.4f}", "bpt": f"{v.bytes_per_token:.2f}"}
                           for k, v in evaluation.items()] if evaluation else None,
            "special_ids": _describe_ids(prep.ids, prep.new_vocab),
        })
        build_card(card_info).save(str(tmp / "README.md"))
    return TransplantResult(plan, out, None, notes, evaluation, prep.ids)


def _set_untied(config: dict) -> None:
    """tie_word_embeddings=false wherever the config (or its text sub-config) declares it."""
    config["tie_word_embeddings"] = False
    if isinstance(config.get("text_config"), dict):
        config["text_config"]["tie_word_embeddings"] = False


def _describe_ids(ids: SpecialIds, vocab: Vocabulary) -> str:
    def name(i: int | None) -> str:
        return "none" if i is None else f"`{vocab.tokens[i].text.decode('utf-8', 'replace')}` ({i})"

    return (f"bos {name(ids.bos)}, eos {', '.join(name(i) for i in ids.eos) or 'none'}, pad {name(ids.pad)}, "
            f"unk {name(ids.unk)}")


def transplant_model(model: torch.nn.Module, old_tokenizer: str | Path, new_tokenizer: str | Path, *,
                     method: str | list[str] = "auto", fallback: str = "mean", seed: int = 0,
                     pad_to_multiple_of: int | None = None, inplace: bool = True, options: dict | None = None,
                     encode_like: str = "source") -> TransplantResult:
    """Transplant an in-memory `PreTrainedModel` (e.g. inside a fine-tuning script).

    With `inplace=True` the model's embeddings (and untied head) are replaced and its config's and
    generation config's vocab size and special ids updated (same rules as a written checkpoint);
    the new tensors are returned either way.

    Example:
        >>> result = transplant_model(model, "old-tok/", "new-tok/tokenizer.json")  # doctest: +SKIP
        >>> model.get_input_embeddings().weight.shape[0] == result.plan.new_size  # doctest: +SKIP
        True
    """
    old_src, new_src = load_tokenizer(old_tokenizer), load_tokenizer(new_tokenizer)
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
        model.resize_token_embeddings(plan.new_size)
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


__all__ = ["transplant", "run_spec", "apply_plan", "transplant_model", "prepare", "TransplantResult", "RunSpec"]
