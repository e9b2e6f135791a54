"""The Python API in two steps: `plan_transplant(...)` decides everything (rows, special ids, what
a plain `tokenizer(text)` adds, the chat template, calibration when text is known) and returns a
`TransplantPlan`; then `plan.apply_to(model)` gives the model its new embeddings and a configured
tokenizer in memory, or `plan.write(out)` writes a checkpoint folder. Both give the same model and
tokenizer (tested on every architecture of the suite).

A fine-tuning script:

    >>> from transformers import AutoModelForCausalLM
    >>> model = AutoModelForCausalLM.from_pretrained(model_dir)
    >>> plan = plan_transplant(model, new_tok_dir, old_tokenizer=model_dir, method="fvt")
    >>> model, tok = plan.apply_to(model)
    >>> model.config.vocab_size == len(tok), tok.eos_token_id == model.generation_config.eos_token_id[0]
    (True, True)

From a checkpoint folder, written:

    >>> plan = plan_transplant(model_dir, new_tok_dir, method="fvt", calibrate_texts=[open(text_file).read()])
    >>> plan.write("moved").output_dir.name
    'moved'
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from transplant.common.config_dict import text_section
from transplant.common.errors import TransplantError
from transplant.common.language import detect_language
from transplant.common.progress import stage
from transplant.core.plan import Plan
from transplant.core.vocab import TokenizerSource
from transplant.io.card import describe_tokenizer, source_card_metadata
from transplant.io.checkpoint import EmbeddingLayout, check_vocab_fits, locate_embeddings, read_embedding
from transplant.io.outdir import check_output_path
from transplant.io.sources import base_model_id, open_tokenizer, resolve_model
from transplant.io.tokenizer_out import check_target_reloads
from transplant.prepare import Prepared, TransplantResult, gc_paused, generation_config, input_files, prepare
from transplant.runspec import RunSpec


@dataclass
class Sources:
    """What a plan is made from: the source model (a checkpoint folder, or a model in memory) and
    both tokenizers."""

    old_src: TokenizerSource
    new_src: TokenizerSource
    folder: Path | None = None  # a checkpoint on disk
    layout: EmbeddingLayout | None = None
    model: torch.nn.Module | None = None  # a model in memory
    checked_out: Path | None = None  # the output folder `check_output` passed

    @classmethod
    def open(cls, model: str | Path | torch.nn.Module, new_tokenizer: str | Path, old_tokenizer: str | Path | None,
             trust_remote_code: bool = False) -> Sources:
        """Open the inputs and run their cheap checks (a bad one is one line, before any work)."""
        new_src = open_tokenizer(new_tokenizer)
        if isinstance(model, torch.nn.Module):
            where = old_tokenizer or getattr(model, "name_or_path", None)
            if not where:
                raise TransplantError("a model in memory needs its tokenizer: pass old_tokenizer= (the folder or "
                                      "tokenizer.json the model was trained with)")
            old_src = open_tokenizer(where)
            rows = model.get_input_embeddings().weight.shape[0]
            if len(old_src.vocabulary()) > rows:
                raise TransplantError(f"old tokenizer has {len(old_src.vocabulary())} ids but the model only {rows} "
                                      "rows (pass the tokenizer that belongs to this model)")
            return cls(old_src, new_src, model=model)
        folder = resolve_model(model)
        old_src = open_tokenizer(old_tokenizer or folder)
        return cls(old_src, new_src, folder=folder)

    def check_output(self, out: str | Path, spec: RunSpec, input_paths: list[str | Path] | None = None) -> Path:
        """The output folder, checked before any work: a place that takes it (never over an input),
        and a target tokenizer the output's model type reloads as written. Checked once per folder."""
        out = Path(out)
        if self.checked_out != out:
            out = check_output_path(out, self.input_files(*(input_paths or [])), spec.overwrite)
            self.locate(spec.trust_remote_code)
            check_target_reloads(self.layout.config, self.new_src, spec.allow_forced_tokenizer_class)
            self.checked_out = out
        return out

    def locate(self, trust_remote_code: bool) -> None:
        """Find the embeddings of a checkpoint (reads its config and shard headers, no weights)."""
        if self.folder is not None and self.layout is None:
            self.layout = locate_embeddings(self.folder, trust_remote_code)
            check_vocab_fits(self.layout, len(self.old_src.vocabulary()))

    @property
    def tied(self) -> bool:
        if self.layout is not None:
            return self.layout.tied
        out_mod = self.model.get_output_embeddings()
        return out_mod is None or out_mod.weight is self.model.get_input_embeddings().weight

    @property
    def config(self) -> dict:
        return self.layout.config if self.layout is not None else self.model.config.to_dict()

    def generation(self) -> dict | None:
        if self.folder is not None:
            return generation_config(self.folder)
        gen = getattr(self.model, "generation_config", None)
        return gen.to_dict() if gen is not None else None

    def input_files(self, *more: str | Path) -> list[Path]:
        return input_files(self.folder, self.old_src, self.new_src, *(Path(p) for p in more))


@dataclass
class TransplantPlan:
    """Everything a transplant decided; `apply_to(model)` or `write(out)` carries it out.

    Attributes:
        plan: the rows (`core.plan.Plan`): how each new row is made, calibration included.
        prepared: special ids, what encode adds, chat template, notes and card facts.
        sources: the model and tokenizers the plan was made from.
        spec: the settings it was made with.
        calibrate_texts: the calibration text used (None: no calibration).
    """

    prepared: Prepared
    sources: Sources
    spec: RunSpec
    model_arg: str
    new_tokenizer_arg: str
    calibrate_texts: list[str] | None = None

    @property
    def plan(self) -> Plan:
        return self.prepared.plan

    def embeddings(self) -> dict[str, torch.Tensor]:
        """The new input rows, and the head's own rows when the model or the plan has them."""
        src, plan = self.sources, self.plan
        if src.layout is not None:
            layout = src.layout
            out = {"input": plan.apply(read_embedding(layout, layout.input_key))}
            if layout.output_key or plan.output is not None:
                out["output"] = plan.side("output").apply(read_embedding(layout, layout.output_key or layout.input_key))
            return out
        from transplant.model_update import new_tensors

        return new_tensors(src.model, plan)

    def tokenizer(self):
        """The new tokenizer as the written checkpoint's folder loads it: special tokens and their
        roles, the chat template, and what a plain `tokenizer(text)` adds (the encode convention)."""
        with tempfile.TemporaryDirectory(prefix="tokentransplant-tok-") as tmp:
            folder = Path(tmp)
            self._write_tokenizer(folder)
            from transformers import AutoTokenizer

            from transplant.io.forced_class import load_snippet_tokenizer

            if self.plan.meta.get("forced_tokenizer_class"):
                return load_snippet_tokenizer(folder)
            return AutoTokenizer.from_pretrained(str(folder))

    def _write_tokenizer(self, folder: Path):
        from transplant.io.configs import remap_config
        from transplant.io.tokenizer_out import write_tokenizer

        prep = self.prepared
        config, _ = remap_config(self.sources.config, prep.ids, self.plan.new_size)
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        text_cfg = text_section(config)
        written = write_tokenizer(self.sources.new_src, prep.new_vocab, folder, prep.template, prep.ids, prep.prefix,
                                  prep.suffix, text_cfg.get("max_position_embeddings"),
                                  allow_forced_class=self.spec.allow_forced_tokenizer_class)
        if written.forced is not None:
            self.plan.meta["forced_tokenizer_class"] = written.forced.loaded
        return written

    def apply_to(self, model: torch.nn.Module):
        """Give `model` (the source model, or a fine-tune of it, in memory) the plan's rows, vocab
        size and special ids, in place; returns `(model, tokenizer)` (see `tokenizer()`).

        Example:
            >>> model, tok = plan.apply_to(model)  # doctest: +SKIP
            >>> chat = [{"role": "user", "content": "Hola"}]
            >>> tok.apply_chat_template(chat, add_generation_prompt=True)  # doctest: +SKIP
        """
        from transplant.model_update import apply_in_place

        rows, dim = model.get_input_embeddings().weight.shape
        if (rows, dim) != (self.plan.meta["old_rows"], self.plan.meta["dim"]):
            raise TransplantError(
                f"the model has a {rows}x{dim} embedding but the plan was made for a {self.plan.meta['old_rows']}x"
                f"{self.plan.meta['dim']} one (apply a plan to the model it was made from, or a fine-tune of it)")
        notes = apply_in_place(model, self.plan, self.prepared)
        self.prepared.notes[:] = list(dict.fromkeys(self.prepared.notes + notes))
        return model, self.tokenizer()

    def write(self, out: str | Path, *, overwrite: bool = False, link: bool = False,
              eval_texts: list[str] | None = None, eval_name: str = "text",
              input_paths: list[str | Path] | None = None, card: dict | None = None) -> TransplantResult:
        """Write the transplanted checkpoint to `out` (atomically): weights, config, generation
        config, tokenizer, model card and the plan. Scores it on `eval_texts`, else (unless the
        plan's spec says `quality_check=False`) on the tokenizer's held-out text (`result.quality`).
        Needs a plan made from a checkpoint folder (for a model in memory use `apply_to`, then
        `save_pretrained`)."""
        from transplant.measure.quality_check import plan_quality_check, ratio_line
        from transplant.output import write_output

        src, spec, prep = self.sources, self.spec, self.prepared
        if src.folder is None:
            raise TransplantError("this plan was made from a model in memory: use plan.apply_to(model) and the "
                                  "model's save_pretrained, or plan from its folder to write a checkpoint")
        out = src.check_output(out, spec.model_copy(update={"overwrite": overwrite}), input_paths)
        check = None
        if not eval_texts and spec.quality_check:
            check = plan_quality_check(src.new_src, src.folder, spec.held_out_bytes,
                                       torch.finfo(src.layout.dtype).bits // 8)
            eval_texts, eval_name = check.texts, check.name
        source_meta = source_card_metadata(src.folder, self.model_arg)
        # The output speaks the new tokenizer's language, not necessarily the source's: given, or
        # recognized in the text the run read in it; else none (a wrong `en` misleads more than none).
        source_meta.pop("language", None)
        card_info = dict(prep.card, base_model=self.model_arg, new_tokenizer=self.new_tokenizer_arg,
                         new_tokenizer_about=describe_tokenizer(src.new_src), **source_meta)
        card_info["base_model_id"] = source_meta.get("base_model_id") or base_model_id(self.model_arg, src.folder)
        found = detect_language(self.calibrate_texts or eval_texts or [])
        card_info["language"] = list(spec.language) if spec.language else [found] if found else None
        card_info.update(card or {})
        if check is not None and check.texts:
            card_info["eval_note"] = check.note
        result = write_output(src.folder, src.layout, prep, src.new_src, out, overwrite, link, card_info,
                              eval_texts, eval_name, spec.eval_ctx, spec.trust_remote_code,
                              allow_forced_class=spec.allow_forced_tokenizer_class)
        result.quality = (ratio_line(result.evaluation, eval_name) if result.evaluation
                          else check.line if check is not None else None)
        return result


def plan_transplant(model: str | Path | torch.nn.Module, new_tokenizer: str | Path, *,
                    old_tokenizer: str | Path | None = None, method: str | list[str] = "auto",
                    calibrate_texts: list[str] | None = None, spec: RunSpec | None = None,
                    **settings) -> TransplantPlan:
    """Decide a transplant of `model` onto `new_tokenizer`; nothing is written or changed.

    Args:
        model: a model folder, cached hub id, `.gguf` file or packaged name; or a `PreTrainedModel`
            in memory (its tokenizer: `old_tokenizer`, else its `name_or_path` folder).
        new_tokenizer: a `tokenizer.json` or a tokenizer folder.
        old_tokenizer: the source tokenizer when not the model folder's.
        method: "auto" (default: the hypernetwork known for the model, else FVT) or an initializer chain.
        calibrate_texts: text in the target language or domain: the made rows' output scale is
            fitted on it (with "auto", the tokenizer's recorded training text is used when none is given).
        spec: a `RunSpec` holding the other settings; or give them as keywords (`RunSpec` field
            names: `fallback`, `options`, `seed`, `pad_to_multiple_of`, `encode_like`, `untie`,
            `calibrate`, `calibrate_tokens`, `trust_remote_code`, `allow_forced_tokenizer_class`, ...).

    Returns:
        a `TransplantPlan`: `.plan` (the rows), `.apply_to(model)`, `.write(out)`, `.tokenizer()`.
    """
    settings = {k: v for k, v in settings.items() if v is not None}
    if spec is not None and settings:
        raise TransplantError(f"pass the settings in spec= or as keywords, not both (got {', '.join(settings)})")
    unknown = sorted(set(settings) - set(RunSpec.model_fields))
    if unknown:
        raise TransplantError(f"unknown setting {', '.join(unknown)} (settings are RunSpec's fields: "
                              f"{', '.join(sorted(RunSpec.model_fields))})")
    if spec is None:
        spec = RunSpec.model_validate({"method": method, **settings})
    spec.check()
    sources = Sources.open(model, new_tokenizer, old_tokenizer or spec.old_tokenizer, spec.trust_remote_code)
    return make_plan(sources, spec, str(model) if not isinstance(model, torch.nn.Module) else "", str(new_tokenizer),
                     calibrate_texts)


@gc_paused
def make_plan(sources: Sources, spec: RunSpec, model_arg: str, new_tokenizer_arg: str,
              calibrate_texts: list[str] | None) -> TransplantPlan:
    """The planning every front end shares (`plan_transplant`, `transplant`, `transplant_model`)."""
    from transplant.calibration import untie_and_calibrate
    from transplant.methods.auto import choose as choose_auto
    from transplant.methods.auto import is_auto
    from transplant.methods.resources import Resources

    sources.locate(spec.trust_remote_code)
    old_rows = len(sources.old_src.vocabulary())
    resources = (Resources.from_checkpoint(sources.layout, old_rows) if sources.layout is not None
                 else Resources.from_model(sources.model, old_rows))
    resources.new_source = sources.new_src  # its recorded training text, for methods that learn from text
    method, options = spec.method_arg, spec.options or None
    auto = None
    if is_auto(method):
        auto = choose_auto(resources, sources.new_src, calibrate_texts, spec.calibrate, options,
                           calibrate_tokens=spec.calibrate_tokens)
        method, options = auto.method, auto.options
        calibrate_texts = auto.calibration.texts if auto.calibration else None
    elif not spec.calibrate:
        calibrate_texts = None
    prep = prepare(sources.old_src, sources.new_src, sources.config, sources.generation(), method, spec.fallback,
                   spec.pad_to_multiple_of, spec.seed, options, spec.encode_like, resources=resources)
    plan = prep.plan
    if auto is not None:  # said once the inputs passed their checks: a bad input stays one error line
        stage(auto.line)
        plan.meta["auto"] = auto.meta()
        prep.card["auto"] = auto.line.removeprefix("auto: ")
    inp = None if sources.layout is not None else sources.model.get_input_embeddings().weight
    rows, dim = (sources.layout.rows, sources.layout.dim) if inp is None else tuple(inp.shape)
    plan.record_base(rows, dim)
    plan.meta.update({"base_model": model_arg, "new_tokenizer": new_tokenizer_arg, "tied": sources.tied,
                      "encode_like": spec.encode_like})
    load, head = _calibration_readers(sources, plan, spec)
    untie_and_calibrate(prep, sources.tied, spec.untie, calibrate_texts, spec.calibrate_tokens, load, head)
    return TransplantPlan(prep, sources, spec, model_arg, new_tokenizer_arg, calibrate_texts)


def _calibration_readers(sources: Sources, plan: Plan, spec: RunSpec):
    """(load_model, new_head) for calibration: from the checkpoint (streamed), or the model in memory."""
    from transplant.calibration import checkpoint_reader, in_memory_reader

    layout = sources.layout
    if layout is not None:
        def load():
            return checkpoint_reader(sources.folder, layout, plan, spec.trust_remote_code, spec.calibrate_tokens)

        def head():
            return plan.side("output").apply(read_embedding(layout, layout.output_key or layout.input_key))

        return load, head
    model = sources.model
    out_mod = model.get_output_embeddings()
    weight = (model.get_input_embeddings().weight if sources.tied or out_mod is None else out_mod.weight)

    def head_in_memory():
        return plan.side("output").apply(weight.detach().cpu())

    return in_memory_reader(model, plan), head_in_memory


__all__ = ["Sources", "TransplantPlan", "make_plan", "plan_transplant"]
