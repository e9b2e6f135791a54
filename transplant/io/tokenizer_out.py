"""Write the new tokenizer next to the weights so `AutoTokenizer.from_pretrained(out)` works the
way the transplanted model needs.

* What a plain `tokenizer(text)` adds comes from the source model's convention re-expressed in
  the new tokens (`specials.added_by_encode` + `specials.map_added`), unless the caller keeps
  the target's; the target's other options (tokenizer_config keys such as `padding_side`,
  `clean_up_tokenization_spaces`, its tokenizer class) are kept.
* The written folder is reloaded and checked: the same ids as the raw `tokenizer.json` for the
  text, exactly the chosen start/end tokens around it. A tokenizer class that re-tokenizes
  differently is replaced by the generic backend (and the card says so).

Example:
    >>> from transformers import AutoTokenizer
    >>> from transplant.core.vocab import load_tokenizer
    >>> new_src = load_tokenizer(new_tok_dir)
    >>> ids = SpecialIds(bos=1, eos=[2], pad=None, unk=0)  # as `specials.resolve_special_ids` decides
    >>> write_tokenizer(new_src, new_src.vocabulary(), Path("out"), None, ids, prefix=[1], suffix=[])  # the card's notes
    []
    >>> AutoTokenizer.from_pretrained("out")("In the beginning").input_ids[:1]  # `<s>` first, as the source model saw
    [1]
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tokenizers import Tokenizer, processors

from transplant.common.errors import TransplantError
from transplant.io.specials import SpecialIds
from transplant.core.vocab import TokenizerSource, Vocabulary

log = logging.getLogger(__name__)

# tokenizer_config keys this module decides (or that only describe where a file was loaded from).
_DECIDED = {"bos_token", "eos_token", "pad_token", "unk_token", "chat_template", "model_max_length",
            "added_tokens_decoder", "add_bos_token", "add_eos_token", "is_local", "local_files_only",
            "name_or_path", "auto_map", "tokenizer_file", "backend"}
_ADDS_SPECIALS = {"TemplateProcessing", "BertProcessing", "RobertaProcessing"}
GENERIC_CLASS = "TokenizersBackend"
_CHECK_TEXTS = ["In the beginning God created the heaven and the earth.", "Hola, ¿qué tal?\n  x = 1\t# ok"]
# Text that a lossless tokenizer reproduces exactly: newlines, runs of spaces, tabs, accents, CJK, emoji.
LOSSLESS_PROBE = "Line one.\n\n  Two  spaces\tand a tab.\r\nÉté: naïve café — 東京 😀 x=1;"


def is_lossless(tokenizer: Tokenizer, probe: str = LOSSLESS_PROBE) -> bool:
    """Whether decode(encode(text)) == text on a probe with whitespace runs, newlines and non-ASCII."""
    ids = tokenizer.encode(probe, add_special_tokens=False).ids
    return tokenizer.decode(ids, skip_special_tokens=False) == probe


def _template(prefix: list[str], suffix: list[str], vocab: dict[str, int]) -> dict | None:
    if not prefix and not suffix:
        return None
    single = " ".join(prefix + ["$A"] + suffix)
    pair = " ".join(prefix + ["$A"] + suffix + prefix + ["$B:1"] + suffix)
    specials = [(t, vocab[t]) for t in dict.fromkeys(prefix + suffix)]
    proc = processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)
    return json.loads(proc.__getstate__())


def with_added_tokens(tokenizer: Tokenizer, prefix: list[int], suffix: list[int]) -> Tokenizer:
    """A copy whose post-processor adds exactly `prefix` ... `suffix` (keeping e.g. ByteLevel offsets).

    Only the post-processor is rebuilt (a 262k vocabulary is never round-tripped through Python JSON).
    """
    copy = Tokenizer.from_str(tokenizer.to_str())
    current = json.loads(tokenizer.post_processor.__getstate__()) if tokenizer.post_processor else None
    parts = current.get("processors", []) if isinstance(current, dict) and current.get("type") == "Sequence" else (
        [current] if isinstance(current, dict) else [])
    kept = [p for p in parts if p.get("type") not in _ADDS_SPECIALS]
    names = [tokenizer.id_to_token(i) for i in prefix], [tokenizer.id_to_token(i) for i in suffix]
    template = _template(names[0], names[1], {t: i for t, i in zip(names[0] + names[1], prefix + suffix)})
    pieces = kept + ([template] if template is not None else [])
    if pieces == parts:
        return copy
    # Rebuild the processor objects from their (small) JSON through a vocabulary-free tokenizer.
    spec = {"version": "1.0", "model": {"type": "WordLevel", "vocab": {}, "unk_token": "[UNK]"},
            "post_processor": None if not pieces else (
                pieces[0] if len(pieces) == 1 else {"type": "Sequence", "processors": pieces})}
    copy.post_processor = Tokenizer.from_str(json.dumps(spec)).post_processor
    return copy


def write_tokenizer(new: TokenizerSource, new_vocab: Vocabulary, out: Path, chat_template: str | None,
                    ids: SpecialIds, prefix: list[int], suffix: list[int],
                    model_max_length: int | None = None) -> list[str]:
    """Save the target tokenizer (adding `prefix`/`suffix` on encode) and check it reloads right.

    Returns notes for the model card.
    """
    from transformers import PreTrainedTokenizerFast

    raw = with_added_tokens(new.tokenizer, prefix, suffix)
    extra = {"model_max_length": model_max_length} if model_max_length else {}
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, **ids.token_names(new_vocab), **extra)
    if chat_template:
        tok.chat_template = chat_template
    tok.save_pretrained(str(out))
    cfg_path = out / "tokenizer_config.json"
    written = json.loads(cfg_path.read_text())
    kept = {k: v for k, v in new.config.items() if k not in _DECIDED and k not in written}
    kept_class = new.config.get("tokenizer_class")
    written.update(kept)
    if kept_class:
        written["tokenizer_class"] = kept_class
    # Flags some tokenizer classes read to rebuild their post-processor: make them say the same.
    written["add_bos_token"] = ids.bos is not None and ids.bos in prefix
    written["add_eos_token"] = bool(suffix) and ids.declared_eos in suffix
    cfg_path.write_text(json.dumps(written, indent=2, ensure_ascii=False) + "\n")
    notes = []
    problem = check_written_tokenizer(out, raw, prefix, suffix)
    if problem and kept_class and kept_class != GENERIC_CLASS:
        written["tokenizer_class"] = GENERIC_CLASS
        cfg_path.write_text(json.dumps(written, indent=2, ensure_ascii=False) + "\n")
        notes.append(f"the target's tokenizer class {kept_class} re-tokenizes differently from its tokenizer.json "
                     f"once reloaded ({problem}); wrote the generic {GENERIC_CLASS} instead")
        problem = check_written_tokenizer(out, raw, prefix, suffix)
    if problem:
        raise TransplantError(f"the written tokenizer does not reload as written ({problem}); nothing was "
                              "written (report this with the tokenizer attached)")
    return notes


def check_written_tokenizer(folder: Path, raw: Tokenizer, prefix: list[int], suffix: list[int]) -> str | None:
    """None when `AutoTokenizer.from_pretrained(folder)` encodes like `raw` with `prefix`/`suffix` added."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except Exception as exc:
        return f"AutoTokenizer cannot load it: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    for text in _CHECK_TEXTS:
        want = raw.encode(text, add_special_tokens=False).ids
        got_plain = list(tok(text, add_special_tokens=False)["input_ids"])
        if got_plain != want:
            return f"{text[:20]!r} encodes to {got_plain[:6]}... instead of {want[:6]}..."
        got = list(tok(text)["input_ids"])
        if got != prefix + want + suffix:
            return f"tokenizer(text) adds {got[:len(got) - len(want)]} instead of {prefix} ... {suffix}"
    return None
