"""The Python API: `plan_transplant()` then `plan.apply_to(model)` or `plan.write(out)`
(`planned.py`); `transplant()` (plan + write a checkpoint, from a `RunSpec` or keywords),
`apply_plan()` (re-apply a saved plan to a fine-tune, `output.py`), `transplant_model()` (in
memory, inside a training script, `inmemory.py`) are thin wrappers over them.

All share one path: `prepare()` (`prepare.py`) builds the vocabularies, the alignment, the
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

    >>> result = transplant("smollm2-135m-instruct", "de-tok/tokenizer.json", "out/", method="fvt")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from transplant.common.errors import TransplantError
from transplant.inmemory import transplant_model
from transplant.output import apply_plan
from transplant.planned import Sources, TransplantPlan, make_plan, plan_transplant
from transplant.prepare import TransplantResult, prepare
from transplant.runspec import RunSpec

log = logging.getLogger(__name__)


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
        model: a `RunSpec` (then no other argument may be given: the spec holds them all), a model
            folder, a cached hub id, a `.gguf` file or a packaged name (`smollm2-135m-instruct`,
            `gemma-3-270m`); or an in-memory `PreTrainedModel` with `out=None`: the new tensors
            are returned (calibrated, untied as asked), the model is untouched
            (`plan_transplant(...).apply_to(model)` changes it).
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
        given = [name for name, value in (("new_tokenizer", new_tokenizer), ("out", out), ("eval_texts", eval_texts),
                                          ("calibrate_texts", calibrate_texts), ("card", card)) if value is not None]
        if given:
            raise TransplantError(f"transplant(spec) takes every setting from the spec; {', '.join(given)} given "
                                  "beside it (set them in the RunSpec, or use the keyword form)")
        return run_spec(model)
    if isinstance(model, torch.nn.Module):
        # An in-memory model (inside a training script): plan from its tokenizer, return tensors.
        if out is not None or eval_texts:
            raise TransplantError("for an in-memory model pass no out and no eval_texts (transplant_model(...) or "
                                  "plan_transplant(...).apply_to(model) replace its embeddings; save_pretrained "
                                  "writes it)")
        return transplant_model(model, old_tokenizer, new_tokenizer, method=method, inplace=False,
                                calibrate_texts=calibrate_texts, fallback=fallback, seed=seed,
                                pad_to_multiple_of=pad_to_multiple_of, options=options, encode_like=encode_like,
                                untie=untie, calibrate=calibrate, calibrate_tokens=calibrate_tokens)
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


def _run(spec: RunSpec, model: str | Path, new_tokenizer: str | Path, out: str | Path | None,
         eval_texts: list[str] | None, eval_name: str, calibrate_texts: list[str] | None,
         input_paths: list[str | Path] | None, card: dict | None = None) -> TransplantResult:
    """The run itself: plan, then write (or return the tensors when `out` is None); `model`,
    `new_tokenizer` and `out` as the caller gave them (recorded as given)."""
    sources = Sources.open(model, new_tokenizer, spec.old_tokenizer, spec.trust_remote_code)
    if out is not None:  # a bad output place or a target the output would reload differently: before the work
        out = sources.check_output(out, spec, input_paths)
    planned = make_plan(sources, spec, str(model), str(new_tokenizer), calibrate_texts)
    log.info("plan: %s", planned.plan.counts())
    if out is None:
        return TransplantResult(planned.plan, None, planned.embeddings(), planned.prepared.notes,
                                special_ids=planned.prepared.ids)
    return planned.write(out, overwrite=spec.overwrite, link=spec.link, eval_texts=eval_texts, eval_name=eval_name,
                         input_paths=input_paths, card=card)


__all__ = ["RunSpec", "TransplantPlan", "TransplantResult", "apply_plan", "plan_transplant", "prepare", "run_spec",
           "transplant", "transplant_model"]
