"""The Python API: `transplant()` (plan + write a checkpoint, from a `RunSpec` or keywords),
`apply_plan()` (re-apply a saved plan to a fine-tune, `output.py`), `transplant_model()` (in
memory, inside a training script, `inmemory.py`).

All three share one path: `prepare()` (`prepare.py`) builds the vocabularies, the alignment, the
plan and the special-token decisions (`specials.SpecialIds`); the writers only write what it decided.

Example:
    >>> from transplant import transplant
    >>> result = transplant(model_dir, new_tok_dir, "moved", method="fvt")
    >>> result.plan.counts(), result.output_dir.name
    ({'mean': 1, 'special': 2, 'byte': 256, 'exact': 293, 'fvt': 207}, 'moved')
    >>> sorted(p.name for p in result.output_dir.iterdir())
    ['README.md', 'config.json', 'generation_config.json', 'model.safetensors', 'tokenizer.json',
     'tokenizer_config.json', 'transplant_plan.json', 'transplant_plan.safetensors']

    SmolLM2 onto a German tokenizer:

    >>> result = transplant("smollm2-135m-instruct", "de-tokenizer/tokenizer.json", "out/", method="fvt")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from transplant.common.errors import TransplantError
from transplant.common.language import detect_language
from transplant.common.progress import stage
from transplant.core.plan import Plan
from transplant.inmemory import transplant_model
from transplant.io.card import describe_tokenizer, source_card_metadata
from transplant.io.checkpoint import EmbeddingLayout, check_vocab_fits, locate_embeddings, read_embedding
from transplant.io.outdir import check_output_path
from transplant.io.sources import base_model_id, open_tokenizer, resolve_model
from transplant.io.tokenizer_out import check_target_reloads
from transplant.measure.quality_check import plan_quality_check, ratio_line
from transplant.methods.auto import choose as choose_auto
from transplant.methods.auto import is_auto
from transplant.methods.resources import Resources
from transplant.output import apply_plan, write_output
from transplant.prepare import Prepared, TransplantResult, gc_paused, generation_config, input_files, prepare
from transplant.runspec import RunSpec

log = logging.getLogger(__name__)


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


def _loaded_with_new_inputs(folder: Path, layout: EmbeddingLayout, plan: Plan, trust_remote_code: bool,
                            tokens: int):
    """(the source model, `ids -> the plan's new input rows of those ids`, tokens per batch) for calibration.

    The model's decoder layers are read one at a time as the text goes through them, in the
    checkpoint's dtype (`calibrate_stream`): peak memory is one layer and a batch's activations,
    not the model. Where that cannot be set up, the whole model is loaded in float32, as before,
    and a line says why. Either way the expected peak is said first, and a read that would not fit
    is refused in one line. The model is not resized to the new vocabulary: calibration reads its
    text through the rows of the ids it uses (`calibrate.fit_output_scale`), streamed here from
    the plan, so no new_vocab x dim matrix is made beside the head.
    """
    from transformers import AutoModelForCausalLM

    from transplant.common.memory import check_fits
    from transplant.io.shardio import tensor_sizes
    from transplant.methods.calibrate_stream import open_streamed

    fixes = "calibrate on fewer tokens with --calibrate-tokens N, or pass --no-calibrate"
    stored = torch.finfo(layout.dtype).bits // 8
    # the fit, once the model is let go: the new head in float32 beside its stored form, 3 work
    # buffers of 64 MB, the text's hidden states
    fit_peak = plan.side("output").new_size * layout.dim * (4 + stored) + (192 << 20) + tokens * layout.dim * 4
    old_input = layout.rows * layout.dim * stored  # read once to make the text's input rows
    streamed = open_streamed(folder, layout, trust_remote_code)
    if streamed.why_not is None:
        check_fits(max(streamed.peak_bytes(tokens) + old_input, fit_peak),
                   f"calibration (the source read one layer at a time, {str(layout.dtype).removeprefix('torch.')})",
                   fixes)
        model, batch_tokens = streamed.model, streamed.batch_tokens(512)
    else:
        stage(f"calibration: the source cannot be read one layer at a time ({streamed.why_not}); loading it whole")
        whole = sum(sum(tensor_sizes(layout.folder / shard).values())
                    for shard in set(layout.shard_of.values())) * 4 // stored
        check_fits(max(whole + old_input, fit_peak), "calibration (the whole source in float32)", fixes)
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                     trust_remote_code=trust_remote_code)
        batch_tokens = 2048
    model.eval()

    def input_rows(ids: np.ndarray) -> torch.Tensor:
        pieces, first = [], 0
        for chunk in plan.iter_apply(read_embedding(layout, layout.input_key)):
            inside = ids[(ids >= first) & (ids < first + len(chunk))] - first
            pieces.append(chunk[torch.from_numpy(inside)].to(torch.float32))
            first += len(chunk)
        return torch.cat(pieces)

    return model, input_rows, batch_tokens


def transplant(model: str | Path | torch.nn.Module | RunSpec, new_tokenizer: str | Path | None = None,
               out: str | Path | None = None, *,
               method: str | list[str] = "auto", fallback: str = "mean", old_tokenizer: str | Path | None = None,
               pad_to_multiple_of: int | None = None, seed: int = 0, overwrite: bool = False, link: bool = False,
               trust_remote_code: bool = False, eval_texts: list[str] | None = None, eval_name: str = "text",
               eval_ctx: int = 1024, options: dict | None = None, encode_like: str = "source",
               language: list[str] | None = None, input_paths: list[str | Path] | None = None,
               untie: bool = False, calibrate_texts: list[str] | None = None,
               calibrate_tokens: int = 4096, calibrate: bool = True,
               allow_forced_tokenizer_class: bool = False, card: dict | None = None,
               quality_check: bool = True, held_out_bytes: int = 2048) -> TransplantResult:
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
        language: language codes for the model card (default: recognized in the calibration or
            evaluation text, `transplant.common.language`; none when unsure).
        input_paths: further files the run reads (e.g. evaluation texts); never inside `out`.
        untie: write a tied model with an LM head of its own (the head's rows can then differ,
            e.g. be calibrated alone); costs new_vocab x hidden parameters.
        calibrate_texts: text in the target language/domain (e.g. the new tokenizer's training
            text, never the evaluation text): fit the scale of made tokens' output rows on it by
            likelihood (see `transplant.methods.calibrate`); recorded in the plan.
        calibrate_tokens: how many tokens of that text to read.
        calibrate: False: no calibration, not even on the text `auto` would find.
        quality_check: without `eval_texts`, score original and transplant on up to `held_out_bytes`
            of the held-out tail of the tokenizer's recorded training text
            (`transplant.measure.quality_check`); `result.quality` says the ratio, or why not.
        allow_forced_tokenizer_class: write the output even when transformers forces a tokenizer
            class on this model type that ignores the written tokenizer.json (`io/forced_class.py`);
            the card then gives the snippet that loads it right.
        card: further facts for the model card (`transplant.io.card.CardInfo`), e.g. what
            `transplant.extend` added; they replace the run's own.

    Returns:
        TransplantResult with the plan, the output folder (or the embeddings when `out` is None).

    Example:
        >>> r = transplant(model_dir, tok_json, None)  # method auto: FVT here (no network known); nothing written
        >>> r.plan.meta["auto"]["method"], r.embeddings["input"].shape, sorted(r.embeddings)
        ('fvt', torch.Size([759, 32]), ['input', 'output'])
        >>> spec = RunSpec(model=model_dir, new_tokenizer=tok_json, out="from-spec", method="fvt")
        >>> transplant(spec).output_dir.name
        'from-spec'
        >>> from transformers import AutoModelForCausalLM
        >>> model = AutoModelForCausalLM.from_pretrained(model_dir)
        >>> r = transplant(model, new_tok_dir, old_tokenizer=model_dir, method="fvt")  # in memory, untouched
        >>> r.embeddings["input"].shape, model.get_input_embeddings().weight.shape
        (torch.Size([759, 32]), torch.Size([500, 32]))
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
        calibrate_tokens=calibrate_tokens, calibrate=calibrate, eval_texts=[], calibrate_texts=[],
        allow_forced_tokenizer_class=allow_forced_tokenizer_class, quality_check=quality_check,
        held_out_bytes=held_out_bytes)
    return _run(spec, model, new_tokenizer, out, eval_texts, eval_name, calibrate_texts, input_paths, card)


def run_spec(spec: RunSpec) -> TransplantResult:
    """Run a transplant as `spec` says: methods and options checked first, then its texts read.

    Example:
        >>> spec = RunSpec(model=model_dir, new_tokenizer=new_tok_dir, out="scored", method="fvt",
        ...                eval_texts=[text_file], eval_bytes=5_000)
        >>> result = run_spec(spec)
        >>> sorted(result.evaluation)  # both models scored on the same leading chapters
        ['original', 'transplanted']
        >>> result.evaluation["original"].bytes == result.evaluation["transplanted"].bytes
        True
        >>> run_spec(RunSpec(model=model_dir, new_tokenizer=new_tok_dir))
        Traceback (most recent call last):
        ...
        transplant.common.errors.TransplantError: the run gives no out (pass --out)
    """
    spec.require()
    spec.check()
    return _run(spec, spec.model, spec.new_tokenizer, spec.out, spec.read_eval_texts(), spec.eval_name or "text",
                spec.read_calibrate_texts(), spec.input_paths)


@gc_paused
def _run(spec: RunSpec, model: str | Path, new_tokenizer: str | Path, out: str | Path | None,
         eval_texts: list[str] | None, eval_name: str, calibrate_texts: list[str] | None,
         input_paths: list[str | Path] | None, card: dict | None = None) -> TransplantResult:
    """The run itself; `model`, `new_tokenizer` and `out` as the caller gave them (recorded as given)."""
    method, fallback, options, calibrate = spec.method_arg, spec.fallback, spec.options or None, spec.calibrate
    old_tokenizer, trust_remote_code, language = spec.old_tokenizer, spec.trust_remote_code, spec.language or None
    folder = resolve_model(model)
    old_src = open_tokenizer(old_tokenizer or folder)
    new_src = open_tokenizer(new_tokenizer)
    if out is not None:
        inputs = input_files(folder, old_src, new_src, *(Path(p) for p in input_paths or []))
        out = check_output_path(Path(out), inputs, spec.overwrite)
    layout = locate_embeddings(folder, trust_remote_code)
    check_vocab_fits(layout, len(old_src.vocabulary()))
    if out is not None:  # a tokenizer the output's model type would load differently: refused before the work
        check_target_reloads(layout.config, new_src, spec.allow_forced_tokenizer_class)
    resources = Resources.from_checkpoint(layout, len(old_src.vocabulary()))
    check = None
    if out is not None and not eval_texts and spec.quality_check:
        check = plan_quality_check(new_src, folder, spec.held_out_bytes, torch.finfo(layout.dtype).bits // 8)
        eval_texts, eval_name = check.texts, check.name
    auto = None
    if is_auto(method):
        auto = choose_auto(resources, new_src, calibrate_texts, calibrate, options,
                           calibrate_tokens=spec.calibrate_tokens)
        method, options = auto.method, auto.options
        calibrate_texts = auto.calibration.texts if auto.calibration else None
    elif not calibrate:
        calibrate_texts = None
    prep = prepare(old_src, new_src, layout.config, generation_config(folder), method, fallback,
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
                         lambda: _loaded_with_new_inputs(folder, layout, plan, trust_remote_code,
                                                         spec.calibrate_tokens),
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
    # The output speaks the new tokenizer's language, not necessarily the source's: given, or
    # recognized in the text the run read in it; else none (a wrong `en` misleads more than none).
    source_meta.pop("language", None)
    card_info = dict(prep.card, base_model=str(model), new_tokenizer=str(new_tokenizer),
                     new_tokenizer_about=describe_tokenizer(new_src), **source_meta)
    card_info["base_model_id"] = source_meta.get("base_model_id") or base_model_id(model, folder)
    found = detect_language(calibrate_texts or eval_texts or [])
    card_info["language"] = list(language) if language else [found] if found else None
    card_info.update(card or {})
    if check is not None and check.texts:
        card_info["eval_note"] = check.note
    result = write_output(folder, layout, prep, new_src, out, spec.overwrite, spec.link, card_info, eval_texts,
                          eval_name, spec.eval_ctx, trust_remote_code,
                          allow_forced_class=spec.allow_forced_tokenizer_class)
    result.quality = (ratio_line(result.evaluation, eval_name) if result.evaluation
                      else check.line if check is not None else None)
    return result


__all__ = ["RunSpec", "TransplantResult", "apply_plan", "prepare", "run_spec", "transplant", "transplant_model"]
