"""Write the new tokenizer next to the weights so `AutoTokenizer.from_pretrained(out)` works the
way the transplanted model needs.

* What a plain `tokenizer(text)` adds comes from the source model's convention re-expressed in
  the new tokens (`specials.added_by_encode` + `specials.map_added`), unless the caller keeps
  the target's; the target's other options (tokenizer_config keys such as `padding_side`,
  `clean_up_tokenization_spaces`, its tokenizer class) are kept.
* The written folder is reloaded and checked: the same ids as the raw `tokenizer.json` for the
  text, exactly the chosen start/end tokens around it, no token it lacks. A tokenizer class that
  re-tokenizes differently is replaced by the generic backend (and the card says so).
* A model type whose tokenizer class transformers forces (`forced_class.py`) is refused, before
  the heavy work when the target alone shows it (`check_target_reloads`) and after writing in any
  case, unless the caller allows it: then the folder is checked as the card's snippet loads it.

Example:
    >>> from transformers import AutoTokenizer
    >>> from transplant.core.vocab import load_tokenizer
    >>> new_src = load_tokenizer(new_tok_dir)
    >>> ids = SpecialIds(bos=1, eos=[2], pad=None, unk=0)  # as `specials.resolve_special_ids` decides
    >>> write_tokenizer(new_src, new_src.vocabulary(), Path("out"), None, ids, prefix=[1], suffix=[]).notes  # the card's
    []
    >>> AutoTokenizer.from_pretrained("out")("In the beginning").input_ids[:1]  # `<s>` first, as the source model saw
    [1]
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Tokenizer, processors

from transplant.common.errors import TransplantError
from transplant.core.vocab import TokenizerSource, Vocabulary
from transplant.io.forced_class import ForcedClass, forced_class, load_snippet_tokenizer, model_config
from transplant.io.specials import SpecialIds

log = logging.getLogger(__name__)

# tokenizer_config keys this module decides (or that only describe where a file was loaded from).
_DECIDED = {"bos_token", "eos_token", "pad_token", "unk_token", "chat_template", "model_max_length",
            "added_tokens_decoder", "add_bos_token", "add_eos_token", "is_local", "local_files_only",
            "name_or_path", "auto_map", "tokenizer_file", "backend"}
_ADDS_SPECIALS = {"TemplateProcessing", "BertProcessing", "RobertaProcessing"}
GENERIC_CLASS = "TokenizersBackend"
# The reload check's texts; the last one tells pipelines apart that agree on plain prose: decomposed
# accents (an NFC normalizer composes them) and digit runs (split one by one, in threes, or whole).
_CHECK_TEXTS = ["In the beginning God created the heaven and the earth.", "Hola, ¿qué tal?\n  x = 1\t# ok",
                "Cafe\u0301 cre\u0300me, 1234567 + 89 = 1234656"]
# Text that a lossless tokenizer reproduces exactly: newlines, runs of spaces, tabs, accents, CJK, emoji.
LOSSLESS_PROBE = "Line one.\n\n  Two  spaces\tand a tab.\r\nÉté: naïve café — 東京 😀 x=1;"


# How `tokenizers` (and safetensors) word a failed write: Rust's io::Error, "... (os error 28)".
_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def save_pretrained(tok, folder: Path) -> None:
    """`tok.save_pretrained(folder)`, a failed write raised as the OSError it is (so the commands
    print it as one line, as every other failed write): `tokenizers` raises a plain Exception,
    e.g. "No space left on device (os error 28)" on a full disk.

    Example:
        >>> class OnAFullDisk:  # what `tokenizers` raises there
        ...     def save_pretrained(self, folder):
        ...         raise Exception("No space left on device (os error 28)")
        >>> save_pretrained(OnAFullDisk(), Path("out"))
        Traceback (most recent call last):
        ...
        OSError: [Errno 28] No space left on device: 'out'
    """
    _as_os_error(lambda: tok.save_pretrained(str(folder)), folder)


def save_json(tok: Tokenizer, path: Path) -> None:
    """`tok.save(path)` (a `tokenizers.Tokenizer`), a failed write raised as an OSError like
    `save_pretrained`.

    Example:
        >>> from tokenizers import Tokenizer, models
        >>> save_json(Tokenizer(models.BPE()), Path("tokenizer.json"))
        >>> Path("tokenizer.json").is_file()
        True
    """
    _as_os_error(lambda: tok.save(str(path)), path)


def _as_os_error(write, where: Path) -> None:
    try:
        write()
    except OSError:
        raise
    except Exception as exc:
        found = _OS_ERROR.search(str(exc))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(where)) from None


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


@dataclass
class WrittenTokenizer:
    """What `write_tokenizer` decided: notes for the card, and the forced class written anyway (if any)."""

    notes: list[str] = field(default_factory=list)
    forced: ForcedClass | None = None


def write_tokenizer(new: TokenizerSource, new_vocab: Vocabulary, out: Path, chat_template: str | None,
                    ids: SpecialIds, prefix: list[int], suffix: list[int],
                    model_max_length: int | None = None, allow_forced_class: bool = False) -> WrittenTokenizer:
    """Save the target tokenizer (adding `prefix`/`suffix` on encode) and check it reloads right.

    `out` already holds the output's config.json (its model type decides the class transformers
    loads). With `allow_forced_class`, a tokenizer that only a forced class spoils is written
    anyway and checked as the card's snippet loads it (`forced_class.SNIPPET_CLASS`).
    """
    from transformers import PreTrainedTokenizerFast

    raw = with_added_tokens(new.tokenizer, prefix, suffix)
    extra = {"model_max_length": model_max_length} if model_max_length else {}
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, **ids.token_names(new_vocab), **extra)
    if chat_template:
        tok.chat_template = chat_template
    save_pretrained(tok, out)
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
    result = WrittenTokenizer()
    problem = check_written_tokenizer(out, raw, prefix, suffix)
    if problem and kept_class and kept_class != GENERIC_CLASS:
        written["tokenizer_class"] = GENERIC_CLASS
        cfg_path.write_text(json.dumps(written, indent=2, ensure_ascii=False) + "\n")
        result.notes.append(f"the target's tokenizer class {kept_class} re-tokenizes differently from its "
                            f"tokenizer.json once reloaded ({problem}); wrote the generic {GENERIC_CLASS} instead")
        problem = check_written_tokenizer(out, raw, prefix, suffix)
    if problem:
        result.forced = _forced_or_raise(out, raw, prefix, suffix, problem, allow_forced_class)
        result.notes.append(result.forced.note())
    return result


def _forced_or_raise(out: Path, raw: Tokenizer, prefix: list[int], suffix: list[int], problem: str,
                     allow: bool) -> ForcedClass:
    """The forced class an allowed output is written with; else the refusal naming the cause.

    The forced class is the cause only when the generic class (the card's snippet) reads the folder
    right; otherwise the problem is another one, reported as such.
    """
    forced = forced_class(model_config(out))
    generic_problem = problem if forced is None else check_written_tokenizer(out, raw, prefix, suffix,
                                                                             loader=load_snippet_tokenizer)
    if generic_problem:
        raise TransplantError(f"the written tokenizer does not reload as written ({generic_problem}); nothing was "
                              "written (report this with the tokenizer attached)")
    if not allow:
        raise TransplantError(forced.refusal(problem))
    return forced


def _first_difference(text: str, got: list[int], want: list[int]) -> str:
    """Where two encodings of `text` part, shown around the first differing position.

    Example:
        >>> _first_difference("abc", [1, 2, 3, 4, 9], [1, 2, 3, 4, 5, 6])
        "'abc' encodes to [..., 4, 9] instead of [..., 4, 5, 6] (from token 4 on)"
    """
    at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    lo = max(0, at - 1)
    lead = "..., " if lo else ""

    def show(ids: list[int]) -> str:
        part = ids[lo:at + 3]
        return f"[{lead}{', '.join(map(str, part))}{', ...' if len(ids) > at + 3 else ''}]"

    return f"{text[:20]!r} encodes to {show(got)} instead of {show(want)} (from token {at} on)"


def check_target_reloads(config: dict, new: TokenizerSource, allow_forced_class: bool = False) -> ForcedClass | None:
    """Before any heavy work: refuse a target tokenizer that a forced class would load differently.

    Cheap when the model type forces nothing (one cached probe, `forced_class`). Otherwise the
    target is loaded as AutoTokenizer would load it next to a model of this config and compared
    with its tokenizer.json; the post-write check stays the final guard.

    Returns:
        The forced class the output will be written with (`allow_forced_class`), or None.

    Example:
        >>> from transplant.core.vocab import load_tokenizer
        >>> check_target_reloads({"model_type": "llama"}, load_tokenizer(new_tok_dir)) is None
        True
        >>> check_target_reloads({"model_type": "qwen2"}, load_tokenizer(new_tok_dir))
        Traceback (most recent call last):
        ...
        transplant.common.errors.TransplantError: the new tokenizer would not load as written: transformers loads the tokenizer of every `qwen2` model as Qwen2Tokenizer ...
    """
    forced = forced_class(config)
    if forced is None:
        return None
    roles = {k: v for k, v in new.config.items() if k not in ("tokenizer_class", "auto_map", "tokenizer_file",
                                                               "chat_template")}
    with tempfile.TemporaryDirectory(prefix="tt-reload-") as tmp:
        folder = Path(tmp)
        (folder / "config.json").write_text(json.dumps({k: config[k] for k in ("model_type", "model_name")
                                                        if k in config}))
        (folder / "tokenizer_config.json").write_text(json.dumps(dict(roles, tokenizer_class=GENERIC_CLASS)))
        _link_or_copy(new.path, folder / "tokenizer.json")
        problem = check_written_tokenizer(folder, new.tokenizer, None, None)
    if problem is None:
        return None
    if not allow_forced_class:
        raise TransplantError(forced.refusal(problem))
    return forced


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.symlink(Path(src).resolve(), dst)
    except OSError:  # no symlinks here (some file systems): a copy reads the same
        dst.write_bytes(Path(src).read_bytes())


def check_written_tokenizer(folder: Path, raw: Tokenizer, prefix: list[int] | None, suffix: list[int] | None,
                            loader=None) -> str | None:
    """None when the tokenizer `loader(folder)` gives (default: AutoTokenizer's) encodes like `raw`.

    With `prefix`/`suffix`, a plain `tokenizer(text)` must add exactly those around the text; with
    None only the encoding without special tokens is compared. A tokenizer holding tokens that
    `raw` lacks (a class adding its default specials) is refused too: they have no embedding row.
    """
    from transformers import AutoTokenizer

    try:
        tok = (loader or (lambda f: AutoTokenizer.from_pretrained(str(f), trust_remote_code=False)))(folder)
    except Exception as exc:
        who = "AutoTokenizer" if loader is None else "the card's loader"
        return f"{who} cannot load it: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    for text in _CHECK_TEXTS:
        want = raw.encode(text, add_special_tokens=False).ids
        got_plain = list(tok(text, add_special_tokens=False)["input_ids"])
        if got_plain != want:
            return _first_difference(text, got_plain, want)
        if prefix is None:
            continue
        got = list(tok(text)["input_ids"])
        if got != prefix + want + suffix:
            return f"tokenizer(text) adds {got[:len(got) - len(want)]} instead of {prefix} ... {suffix}"
    extra = sorted(set(tok.get_vocab()) - set(raw.get_vocab(with_added_tokens=True)))
    if extra:
        return f"it adds {', '.join(extra[:3])} absent from tokenizer.json (no embedding row)"
    return None
