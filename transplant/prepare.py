"""The one planning path every front end shares: vocabularies, alignment, plan, special ids,
what a plain `tokenizer(text)` adds, the chat template (`prepare`), and what a run returns.

Example:
    >>> from transplant.core.vocab import load_tokenizer
    >>> prep = prepare(load_tokenizer(model_dir), load_tokenizer(new_tok_dir), {}, None, method="fvt")
    >>> prep.plan.new_size == len(prep.new_vocab)
    True
"""

from __future__ import annotations

import functools
import gc
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from transplant.common.errors import TransplantError
from transplant.core.align import Alignment
from transplant.core.plan import Plan
from transplant.core.vocab import ADDED, SPECIAL, TokenizerSource, Vocabulary, vocab_fingerprint
from transplant.io.configs import check_required_roles
from transplant.io.specials import (
    SpecialIds,
    added_by_encode,
    choose_chat_template,
    map_added,
    old_role_ids,
    resolve_special_ids,
)
from transplant.io.tokenizer_out import is_lossless
from transplant.measure.evaluate import EvalResult
from transplant.methods.initializers import format_options
from transplant.methods.planner import build_plan
from transplant.methods.resources import Resources

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
    # One line on what the move cost: the transplant's bits per byte against the original's on
    # the run's evaluation text or the tokenizer's held-out text, or why nothing was scored.
    quality: str | None = None
    tokenizer: object = None  # the configured new tokenizer, when the model was transplanted in memory


def gc_paused(fn):
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


def _encode_convention(src_added: tuple[list[int], list[int]] | None, new_src: TokenizerSource, plan: Plan,
                       old_vocab: Vocabulary, new_vocab: Vocabulary, ids: SpecialIds, old_roles: dict,
                       encode_like: str) -> tuple[list[int], list[int], list[str], str]:
    """(prefix, suffix, notes, card line) for what a plain `tokenizer(text)` adds; `src_added` is
    `added_by_encode` of the source tokenizer (needed unless encode_like is "target")."""
    notes: list[str] = []
    tgt_prefix, tgt_suffix = added_by_encode(new_src)

    def names(seq: list[int], vocab: Vocabulary) -> str:
        return " ".join(vocab.tokens[i].text.decode("utf-8", "replace") for i in seq) or "nothing"

    if encode_like == "target":
        prefix, suffix = tgt_prefix, tgt_suffix
        line = f"the target tokenizer's own: adds {names(prefix, new_vocab)} before and {names(suffix, new_vocab)} after"
    else:
        src_prefix, src_suffix = src_added
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


def sequence_start(src: TokenizerSource, added: tuple[list[int], list[int]] | None = None) -> int | None:
    """The token a model of this tokenizer saw first in its sequences: the one a plain
    `tokenizer(text)` puts first, else (an encode that adds nothing, as GPT-2, SmolLM2 and Qwen
    do) the document separator its pre-training put between documents. `added`: what
    `added_by_encode(src)` returned, when the caller has it already.

    Example:
        >>> from transplant.core.vocab import load_tokenizer
        >>> src = load_tokenizer(model_dir)  # byte-level BPE that adds nothing
        >>> src.vocabulary().tokens[sequence_start(src)].text
        b'<|endoftext|>'
    """
    prefix, _ = added if added is not None else added_by_encode(src)
    return prefix[0] if prefix else src.vocabulary().document_separator()


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

    Example:
        >>> from transplant.core.vocab import load_tokenizer
        >>> config = json.loads(Path(model_dir, "config.json").read_text())
        >>> prep = prepare(load_tokenizer(model_dir), load_tokenizer(new_tok_dir), config,
        ...                generation_config(Path(model_dir)), method="fvt")
        >>> [prep.new_vocab.tokens[i].text for i in (prep.ids.bos, *prep.ids.eos)]  # by role
        [b'<s>', b'</s>', b'<s>']
        >>> print(prep.card["encode_convention"])
        the source model's convention: adds nothing before the text and nothing after (source: nothing / nothing)
        >>> sorted(prep.missing_markers)  # old special tokens the new tokenizer does not have
        ['<|endoftext|>', '<|im_end|>', '<|im_start|>']
    """
    if encode_like not in ENCODE_CHOICES:
        raise TransplantError(f"encode_like must be one of {', '.join(ENCODE_CHOICES)}, not {encode_like!r}")
    old_vocab, new_vocab = old_src.vocabulary(), new_src.vocabulary()
    # What the source's encodes add: read once (it may load AutoTokenizer) for the bos row and the convention.
    src_added = added_by_encode(old_src) if plan is None or encode_like == "source" else None
    if plan is None:
        alignment = Alignment.build(old_vocab, new_vocab, start=sequence_start(old_src, src_added))
        plan = build_plan(old_vocab, new_vocab, method, fallback, pad_to_multiple_of, seed, options, alignment,
                          resources)
        plan.meta.update({"old_fingerprint": vocab_fingerprint(old_vocab),
                          "new_fingerprint": vocab_fingerprint(new_vocab), "new_roles": new_vocab.roles})
    ids = resolve_special_ids(plan, old_vocab, new_vocab, old_config, old_generation)
    check_required_roles(old_config, ids)
    old_roles = old_role_ids(old_vocab, old_config, old_generation)
    prefix, suffix, notes, encode_line = _encode_convention(src_added, new_src, plan, old_vocab, new_vocab, ids,
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


def generation_config(folder: Path) -> dict | None:
    """A model folder's generation_config.json as a dict; None when it has none.

    Example:
        >>> generation_config(Path(model_dir))["eos_token_id"], generation_config(Path(new_tok_dir))
        (0, None)
    """
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


def input_files(*items: Path | TokenizerSource | None) -> list[Path]:
    paths: list[Path] = []
    for item in items:
        if item is None:
            continue
        if isinstance(item, TokenizerSource):
            paths += [item.path] + ([item.folder] if item.folder else [])
        else:
            paths.append(Path(item))
    return paths



__all__ = ["TransplantResult", "Prepared", "prepare", "gc_paused", "generation_config", "input_files"]
