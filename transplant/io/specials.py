"""Special tokens of the transplanted model: which new id plays each role, which ids stop
generation, what a plain `tokenizer(text)` adds, and the chat template in the new tokens.

One rule for every tokenizer family: *generation stops wherever the original model would, and
every role agrees in config.json, generation_config.json and the tokenizer.*

* eos: the new tokenizer's declared eos (else the new token carrying an old eos row) first,
  then every new special token whose row is an old eos row (a chat model's `<|im_end|>`, or a
  Llama-style `<s>` that inherited a GPT-2 `<|endoftext|>` that was both bos and eos). The
  generation config gets the list, config.json the declared one (a list where the source had one).
* bos, pad, unk: the new tokenizer's declared token, else the new token carrying the old one's
  row (a source whose pad was its eos gets pad = the new eos, keeping its convention). The new
  bos token's row is what the source model saw first (`prepare.sequence_start`: its encodes'
  bos, else its document separator), not an old token that merely declares the bos role.
* What `tokenizer(text)` adds: the source model's convention (Gemma always saw `<bos>` first,
  SmolLM2 nothing), re-expressed by role in the new tokens, unless the caller asks for the
  target's.
* Chat template: the format the model was trained on (the source's template, role names and
  newlines) with its markers re-expressed in the target's tokens by role; the target's own
  template only when the source has none or no marker can be matched.

Example:
    >>> import json
    >>> from transplant import transplant
    >>> from transplant.core.vocab import load_tokenizer
    >>> plan = transplant(model_dir, new_tok_dir, None, method="fvt").plan  # (nothing written)
    >>> old_vocab, new_vocab = load_tokenizer(model_dir).vocabulary(), load_tokenizer(new_tok_dir).vocabulary()
    >>> old_config = json.loads(open(f"{model_dir}/config.json").read())
    >>> old_generation_config = json.loads(open(f"{model_dir}/generation_config.json").read())
    >>> ids = resolve_special_ids(plan, old_vocab, new_vocab, old_config, old_generation_config)
    >>> ids.eos, ids.bos, ids.pad, ids.unk  # `<s>` holds the old `<|endoftext|>` row (eos and first token)
    ([2, 1], 1, None, 0)
    >>> ids.token_names(new_vocab)  # for tokenizer_config.json
    {'bos_token': '<s>', 'eos_token': '</s>', 'unk_token': '<unk>'}
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from transplant.core.plan import LINEAR, Plan
from transplant.core.vocab import ADDED, SPECIAL, TokenizerSource, Vocabulary

log = logging.getLogger(__name__)

_PROBE = "Hello world. Hola"
_CHAT_ROLES = ("turn_start", "turn_end")


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return [int(value)] if isinstance(value, int) and not isinstance(value, bool) else []


def _text_section(config: dict) -> list[dict]:
    return [config] + [config[k] for k in ("text_config",) if isinstance(config.get(k), dict)]


def _config_ids(config: dict | None, key: str) -> list[int]:
    out: list[int] = []
    for section in _text_section(config or {}):
        for v in _as_list(section.get(key)):
            if v not in out:
                out.append(v)
    return out


@dataclass
class SpecialIds:
    """The new ids of each role, decided once and written everywhere."""

    bos: int | None
    eos: list[int]  # declared eos first
    pad: int | None
    unk: int | None
    notes: list[str] = field(default_factory=list)

    @property
    def declared_eos(self) -> int | None:
        return self.eos[0] if self.eos else None

    def token_names(self, vocab: Vocabulary) -> dict[str, str]:
        """`bos_token`... contents for tokenizer_config.json."""
        out = {}
        for role, idx in (("bos", self.bos), ("eos", self.declared_eos), ("pad", self.pad), ("unk", self.unk)):
            if idx is not None:
                out[f"{role}_token"] = vocab.tokens[idx].text.decode("utf-8")
        return out


def row_copies(plan: Plan, vocab: Vocabulary) -> dict[int, list[int]]:
    """Old id -> the new special or added tokens whose plan row is exactly that old row (weight 1,
    linear). Only those tokens can play a role, so the 100k+ ordinary copies are never visited."""
    out: dict[int, list[int]] = {}
    for i, tok in enumerate(vocab.tokens):
        if tok.kind not in (SPECIAL, ADDED) or i >= plan.new_size:
            continue
        start, stop = int(plan.indptr[i]), int(plan.indptr[i + 1])
        if plan.kinds[i] == LINEAR and stop - start == 1 and float(plan.weights[start]) == 1.0:
            out.setdefault(int(plan.indices[start]), []).append(i)
    return out


def old_role_ids(old: Vocabulary, config: dict | None, generation: dict | None) -> dict[str, list[int]]:
    """Old ids of each role: config and generation config first, then the tokenizer's declared roles."""
    roles: dict[str, list[int]] = {}
    for role in ("bos", "eos", "pad", "unk"):
        ids = _config_ids(generation, f"{role}_token_id") + _config_ids(config, f"{role}_token_id")
        if role in old.roles:
            ids.append(old.roles[role])
        roles[role] = [i for n, i in enumerate(ids) if i not in ids[:n] and 0 <= i < len(old)]
    return roles


def resolve_special_ids(plan: Plan, old: Vocabulary, new: Vocabulary, config: dict | None,
                        generation: dict | None) -> SpecialIds:
    """Decide the new bos / eos list / pad / unk (see the module rules).

    Args:
        plan: the plan (its rows say which new ids carry which old rows).
        old, new: the two vocabularies (roles declared by their tokenizer configs).
        config, generation: the source model's config.json and generation_config.json dicts.
    """
    copies = row_copies(plan, new)
    old_ids = old_role_ids(old, config, generation)

    def carrier(role: str) -> int | None:
        return next((copies[j][0] for j in old_ids[role] if copies.get(j)), None)

    notes: list[str] = []
    bos = new.roles.get("bos", carrier("bos"))
    unk = new.roles.get("unk")
    eos_first = new.roles.get("eos", carrier("eos"))
    eos: list[int] = [eos_first] if eos_first is not None else []
    for j in old_ids["eos"]:
        eos += [i for i in copies.get(j, []) if i not in eos]
    pad = new.roles.get("pad")
    if pad is None and old_ids["pad"]:
        old_pad = old_ids["pad"][0]
        pad = eos_first if old_pad in old_ids["eos"] else carrier("pad")
    if old_ids["eos"] and not eos:
        notes.append("the source model stops at an end-of-sequence token but the new tokenizer has none "
                     "(generation will run to the length limit)")
    return SpecialIds(bos, eos, pad, unk, notes)


# -- what a plain tokenizer(text) adds ---------------------------------------------------------
def added_by_encode(src: TokenizerSource) -> tuple[list[int], list[int]]:
    """(ids before, ids after) the text that a plain `tokenizer(text)` adds, as users of this
    tokenizer get it from `AutoTokenizer` (which applies tokenizer_config flags such as
    `add_bos_token`), else from the raw `tokenizers` post-processor."""
    plain_ids = full_ids = None
    # Only a specific tokenizer class or add_*_token flags can make transformers encode differently
    # from tokenizer.json's own post-processor (loading AutoTokenizer costs ~0.3 s per tokenizer).
    generic = src.config.get("tokenizer_class") in (None, "TokenizersBackend", "PreTrainedTokenizerFast")
    flags = any(k in src.config for k in ("add_bos_token", "add_eos_token"))
    if src.folder is not None and (flags or not generic):
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(src.folder), trust_remote_code=False)
            full_ids = list(tok(_PROBE)["input_ids"])
            plain_ids = list(tok(_PROBE, add_special_tokens=False)["input_ids"])
        except Exception as exc:  # a tokenizer transformers cannot load: the raw file decides
            log.info("AutoTokenizer could not load %s (%s); using tokenizer.json's post-processor",
                     src.folder, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            plain_ids = full_ids = None
    if plain_ids is None or full_ids is None:
        full_ids = src.tokenizer.encode(_PROBE, add_special_tokens=True).ids
        plain_ids = src.tokenizer.encode(_PROBE, add_special_tokens=False).ids
    n = len(plain_ids)
    for start in range(len(full_ids) - n + 1):
        if full_ids[start:start + n] == plain_ids:
            return full_ids[:start], full_ids[start + n:]
    return [], []


def map_added(old_ids: list[int], old: Vocabulary, new: Vocabulary, plan: Plan, ids: SpecialIds,
              old_roles: dict[str, list[int]]) -> tuple[list[int], list[str]]:
    """Re-express old special ids (an encode's prefix or suffix) as new ids, by role then by row."""
    copies = row_copies(plan, new)
    out, dropped = [], []
    for j in old_ids:
        if j in old_roles["bos"] and ids.bos is not None:
            out.append(ids.bos)
        elif j in old_roles["eos"] and ids.declared_eos is not None:
            out.append(ids.declared_eos)
        else:
            hits = copies.get(j)
            if hits:
                out.append(hits[0])
            else:
                dropped.append(old.tokens[j].text.decode("utf-8", "replace"))
    return out, dropped


# -- chat template ----------------------------------------------------------------------------
def _markers_in(template: str, vocab: Vocabulary) -> list[int]:
    return [i for i, t in enumerate(vocab.tokens)
            if t.kind in (SPECIAL, ADDED) and t.text and t.text.decode("utf-8", "replace") in template]


def reexpress_template(template: str, old: Vocabulary, new: Vocabulary) -> tuple[str | None, dict[str, str], list[str]]:
    """The source template with each of its special markers spelled as the target's token of the
    same role (chat roles first: `<|im_start|>` -> `<start_of_turn>`).

    Returns (template or None when a marker has no counterpart, {old marker: new marker}, missing).
    """
    new_by_text = {t.text: i for i, t in enumerate(new.tokens) if t.kind in (SPECIAL, ADDED)}
    mapping: dict[str, str] = {}
    missing: list[str] = []
    for j in _markers_in(template, old):
        old_text = old.tokens[j].text
        content = old_text.decode("utf-8", "replace")
        if old_text in new_by_text:
            mapping[content] = content
            continue
        roles = old.roles_of(j)
        ordered = [r for r in roles if r in _CHAT_ROLES] + [r for r in roles if r not in _CHAT_ROLES]
        target = next((new.roles[r] for r in ordered if r in new.roles), None)
        if target is None:
            missing.append(content)
        else:
            mapping[content] = new.tokens[target].text.decode("utf-8")
    if missing:
        return None, mapping, missing
    changed = {k: v for k, v in mapping.items() if k != v}
    if not changed:
        return template, mapping, []
    # One pass, longest marker first, so a replacement is never replaced again.
    pattern = re.compile("|".join(re.escape(k) for k in sorted(changed, key=len, reverse=True)))
    return pattern.sub(lambda m: changed[m.group(0)], template), mapping, []


def choose_chat_template(old_src: TokenizerSource, new_src: TokenizerSource, old: Vocabulary,
                         new: Vocabulary) -> tuple[str | None, str]:
    """(template to write, one-line explanation for the card)."""
    if old_src.chat_template:
        template, mapping, missing = reexpress_template(old_src.chat_template, old, new)
        if template is not None:
            changed = {k: v for k, v in mapping.items() if k != v}
            if not changed:
                return template, "carried the source model's chat template (its markers exist in the new vocabulary)"
            spelled = ", ".join(f"{k} → {v}" for k, v in changed.items())
            return template, f"carried the source model's chat template, markers re-expressed by role: {spelled}"
        what = (f"source chat template NOT carried over: the new tokenizer has no token for "
                f"{', '.join(sorted(missing))} by content or role (add them as special tokens to use it)")
        if new_src.chat_template:
            what += "; kept the target tokenizer's own template, which the model was not trained on"
            log.warning(what)
            return new_src.chat_template, what
        log.warning(what)
        return None, what
    if new_src.chat_template:
        return new_src.chat_template, "kept the target tokenizer's own chat template (the source model has none)"
    return None, "neither tokenizer has a chat template"
