"""Write the new tokenizer next to the weights so `AutoTokenizer.from_pretrained(out)` works,
and decide the chat template.

Chat template rule: keep the new tokenizer's; if it has none, carry the source's only when
every special token the template names exists in the new vocabulary; otherwise write none and
say so (warning + model card).

Example:
    >>> decision = write_tokenizer(new_src, old_src, old_vocab, new_vocab, Path("out"))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from pathlib import Path

from .vocab import SPECIAL, TokenizerSource, Vocabulary

log = logging.getLogger(__name__)


def chat_template_decision(new: TokenizerSource, old: TokenizerSource, old_vocab: Vocabulary,
                           new_vocab: Vocabulary) -> tuple[str | None, str]:
    """Return (template to write or None, one-line explanation for the model card)."""
    if new.chat_template:
        return new.chat_template, "kept the target tokenizer's own chat template"
    if not old.chat_template:
        return None, "neither tokenizer has a chat template"
    new_contents = {t.text for t in new_vocab.tokens if t.kind == SPECIAL} | {
        t.text for t in new_vocab.tokens if t.kind == "added"}
    needed = {t.text for t in old_vocab.tokens if t.kind == SPECIAL and t.text.decode("utf-8", "replace") in old.chat_template}
    missing = sorted(x.decode("utf-8", "replace") for x in needed - new_contents)
    if missing:
        msg = (f"source chat template NOT carried over: the new tokenizer lacks {', '.join(missing)} "
               "(add them as special tokens to use it)")
        log.warning(msg)
        return None, msg
    return old.chat_template, "carried the source model's chat template (all its special tokens exist in the new vocabulary)"


def write_tokenizer(new: TokenizerSource, new_vocab: Vocabulary, out: Path, chat_template: str | None,
                    model_max_length: int | None = None) -> None:
    """Save the target tokenizer with transformers so it reloads with AutoTokenizer."""
    from transformers import PreTrainedTokenizerFast

    roles = {}
    for role in ("bos", "eos", "pad", "unk"):
        idx = new_vocab.roles.get(role)
        if idx is not None:
            roles[f"{role}_token"] = new_vocab.tokens[idx].text.decode("utf-8")
    extra = {}
    if model_max_length:
        extra["model_max_length"] = model_max_length
    tok = PreTrainedTokenizerFast(tokenizer_object=new.tokenizer, **roles, **extra)
    if chat_template:
        tok.chat_template = chat_template
    tok.save_pretrained(str(out))
