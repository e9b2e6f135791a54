"""Canonical token forms: what bytes each token stands for, across tokenizer families.

Everything above this module compares canonical forms, never raw token strings. A token's
canonical form is the exact UTF-8 (or raw) byte string it contributes to decoded text in the
middle of a stream, with the family's space marker turned back into a space byte:

* byte-level BPE (GPT-2 alphabet): ``Ġhello`` -> ``b" hello"``, ``Ċ`` -> ``b"\\n"``, and the
  alphabet character that stands for byte 0x80 -> ``b"\\x80"`` (never the look-alike letter);
* SentencePiece style (``▁`` marker, ``<0xNN>`` byte fallback): ``▁hello`` -> ``b" hello"``,
  ``<0x0A>`` -> ``b"\\n"``;
* WordPiece: ``hello`` -> ``b" hello"`` (starts a word), ``##llo`` -> ``b"llo"``;
* special tokens keep their content but are matched by *role* (bos, eos, chat markers), never
  by bytes or id.

A token is word-initial exactly when its canonical bytes start with a space.

Example:
    >>> from tokenizers import Tokenizer
    >>> vocab = Vocabulary.from_tokenizer(Tokenizer.from_file(tok_json))  # SentencePiece style
    >>> vocab.family
    'sentencepiece'
    >>> vocab.tokens[vocab.lookup(b" the")]  # the piece `▁the`
    CanonicalToken(text=b' the', kind='normal')
    >>> vocab.tokens[vocab.lookup(b"\\n")]  # the byte-fallback piece `<0x0A>`
    CanonicalToken(text=b'\\n', kind='byte')
    >>> old = load_tokenizer(model_dir).vocabulary()  # byte-level BPE: `Ġthe` is the same bytes
    >>> old.family, old.tokens[old.lookup(b" the")]
    ('byte_level', CanonicalToken(text=b' the', kind='normal'))
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Iterable

from tokenizers import Tokenizer

from transplant.common.errors import TransplantError

NORMAL, BYTE, SPECIAL, ADDED, UNUSED = "normal", "byte", "special", "added", "unused"
_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")

# Spellings that name a role across families; used only when a tokenizer_config.json does not
# say. Chat markers get roles too so `<|im_start|>` in one vocabulary maps to
# `<start_of_turn>` in another.
_ROLE_SPELLINGS: dict[str, tuple[str, ...]] = {
    "bos": ("<s>", "<bos>", "<|begin_of_text|>", "<|startoftext|>", "[CLS]", "<|bos|>"),
    "eos": ("</s>", "<eos>", "<|endoftext|>", "<|end_of_text|>", "[SEP]", "<|eos|>"),
    "pad": ("<pad>", "[PAD]", "<|pad|>", "<|padding|>", "<|finetune_right_pad_id|>"),
    "unk": ("<unk>", "[UNK]", "<|unk|>"),
    "turn_start": ("<|im_start|>", "<start_of_turn>", "<|start_header_id|>", "<|user|>"),
    "turn_end": ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>"),
}
CORE_ROLES = ("bos", "eos", "pad", "unk")


@lru_cache(maxsize=1)
def gpt2_byte_alphabet() -> dict[str, int]:
    """Map each character of the GPT-2 byte-level alphabet back to the byte it stands for.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes are shifted to code
    points 256 and up so every byte has a visible, non-whitespace character.
    """
    kept = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    char_of = {b: chr(b) for b in kept}
    shift = 0
    for b in range(256):
        if b not in char_of:
            char_of[b] = chr(256 + shift)
            shift += 1
    return {c: b for b, c in char_of.items()}


@dataclass(frozen=True)
class CanonicalToken:
    """The bytes a token stands for and what sort of token it is."""

    text: bytes
    kind: str = NORMAL

    @property
    def word_initial(self) -> bool:
        return self.text.startswith(b" ")


def _walk(component: Any) -> Iterable[dict]:
    """Yield every component dict inside a (possibly nested Sequence) tokenizer component."""
    if isinstance(component, dict):
        yield component
        for key in ("pretokenizers", "decoders", "normalizers", "processors"):
            for child in component.get(key) or []:
                yield from _walk(child)


def detect_family(spec: dict) -> tuple[str, str]:
    """Return (family, space marker) from a parsed tokenizer.json."""
    parts = [c for key in ("pre_tokenizer", "decoder", "normalizer") for c in _walk(spec.get(key))]
    types = {p.get("type") for p in parts}
    if "ByteLevel" in types:
        return "byte_level", "Ġ"
    if (spec.get("model") or {}).get("type") == "WordPiece":
        return "wordpiece", ""
    for p in parts:
        if p.get("type") == "Metaspace":
            return "sentencepiece", p.get("replacement", "▁")
        if p.get("type") == "Replace":
            pattern = p.get("pattern", {})
            pat = pattern.get("String") if isinstance(pattern, dict) else pattern
            if pat == "▁" or p.get("content") == "▁":
                return "sentencepiece", "▁"
    return "plain", ""


@dataclass
class Vocabulary:
    """Canonical forms, special tokens and roles of one tokenizer.

    Args:
        tokenizer: the `tokenizers.Tokenizer`.
        config: the parsed `tokenizer_config.json` when the tokenizer came from a folder.

    Example:
        >>> src = load_tokenizer(new_tok_dir)
        >>> vocab = Vocabulary.from_tokenizer(src.tokenizer, src.config)
        >>> vocab.roles  # bos and eos as tokenizer_config.json declares them, unk by its spelling
        {'bos': 1, 'eos': 2, 'unk': 0}
        >>> vocab.roles_of(1), vocab.tokens[1]
        (['bos'], CanonicalToken(text=b'<s>', kind='special'))
    """

    tokenizer: Tokenizer
    family: str
    tokens: list[CanonicalToken]
    roles: dict[str, int]
    config: dict = field(default_factory=dict)
    _by_text: dict[bytes, int] = field(default_factory=dict, repr=False)

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer, config: dict | None = None,
                       where: str = "the tokenizer") -> "Vocabulary":
        spec = json.loads(tokenizer.to_str())
        family, marker = detect_family(spec)
        model = spec.get("model") or {}
        prefix = model.get("continuing_subword_prefix") or "##"
        alphabet = gpt2_byte_alphabet()
        added = {a["id"]: a for a in spec.get("added_tokens") or []}
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        check_unique_ids(vocab, where)
        size = max(vocab.values()) + 1 if vocab else 0
        tokens = [CanonicalToken(b"", UNUSED)] * size
        for piece, idx in vocab.items():
            tokens[idx] = _canonical(piece, idx, added, family, marker, prefix, alphabet)
        roles = _find_roles(vocab, tokens, config or {})
        by_text: dict[bytes, int] = {}
        # Prefer a real, trained token over a byte-fallback piece for the same bytes, and the
        # lower id among equals, so lookups never depend on hash order.
        rank = {NORMAL: 0, ADDED: 1, BYTE: 2}
        for idx in sorted(range(size), key=lambda i: (rank.get(tokens[i].kind, 9), i)):
            tok = tokens[idx]
            if tok.kind in rank and tok.text and tok.text not in by_text:
                by_text[tok.text] = idx
        return cls(tokenizer, family, tokens, roles, config or {}, by_text)

    def __len__(self) -> int:
        return len(self.tokens)

    def lookup(self, text: bytes) -> int | None:
        """Id of the (non-special) token standing for exactly these bytes, if any."""
        return self._by_text.get(text)

    @cached_property
    def max_token_bytes(self) -> int:
        return max((len(t) for t in self._by_text), default=1)

    def decode_canonical(self, ids: Iterable[int]) -> bytes:
        """Concatenate the canonical bytes of `ids` (special tokens contribute nothing)."""
        return b"".join(self.tokens[i].text for i in ids if self.tokens[i].kind != SPECIAL)

    def document_separator(self) -> int | None:
        """The special token a model of this tokenizer saw between documents in pre-training: the
        one spelled as an end of text (`<|endoftext|>`, `</s>`, ...), else the declared eos. An
        instruct model's declared eos is its turn end (SmolLM2-Instruct: `<|im_end|>`), which is
        why the spelling comes first.

        Example:
            >>> vocab = load_tokenizer(model_dir).vocabulary()
            >>> vocab.tokens[vocab.document_separator()].text
            b'<|endoftext|>'
        """
        specials = {t.text.decode("utf-8", "replace"): i for i, t in enumerate(self.tokens) if t.kind == SPECIAL}
        for spelling in _ROLE_SPELLINGS["eos"]:
            if spelling in specials:
                return specials[spelling]
        return self.roles.get("eos")

    def roles_of(self, idx: int) -> list[str]:
        """Roles of a token: its sequence roles (bos/eos/pad/unk) first, then the chat role its
        spelling names. SmolLM2-Instruct's `<|im_start|>` is both its bos and a turn marker;
        starting from Gemma's `<bos>` row rather than `<start_of_turn>`'s measured 1.052 instead
        of 1.290 bits per byte (Gemma-3-270M onto SmolLM2's tokenizer, 20 kB of en/dev.txt):
        the first position's row is the model's attention sink."""
        content = self.tokens[idx].text.decode("utf-8", "replace")
        core = [role for role in CORE_ROLES if self.roles.get(role) == idx]
        spelled = [role for role, spellings in _ROLE_SPELLINGS.items() if content in spellings and role not in core]
        return core + spelled + [r for r, rid in self.roles.items() if rid == idx and r not in core + spelled]


def check_unique_ids(vocab: dict[str, int], where: str = "the tokenizer") -> None:
    """Refuse a vocabulary that gives one id to two tokens: `tokenizers` loads it, keeps one of
    them for decoding, and fails only when the tokenizer is saved again (after a whole transplant).

    Example:
        >>> check_unique_ids({"a": 0, "b": 1, "c": 1}, "tokenizer t.json")
        Traceback (most recent call last):
        ...
        transplant.common.errors.TransplantError: tokenizer t.json gives id 1 to two tokens, 'b' and 'c' (each token needs an id of its own: fix the vocabulary of its tokenizer.json)
    """
    if len(set(vocab.values())) == len(vocab):
        return
    seen: dict[int, str] = {}
    for piece, idx in sorted(vocab.items(), key=lambda item: (item[1], item[0])):
        if idx in seen:
            raise TransplantError(f"{where} gives id {idx} to two tokens, {seen[idx]!r} and {piece!r} (each token "
                                  "needs an id of its own: fix the vocabulary of its tokenizer.json)")
        seen[idx] = piece


def check_not_only_added(tokenizer: Tokenizer, path: str | Path) -> None:
    """Refuse a tokenizer whose every id is a special or added token: its model has no piece of
    text of its own, so every text encodes to nothing (or to its unknown token), as with an empty
    vocabulary.

    Example:
        >>> from tokenizers import models
        >>> tok = Tokenizer(models.WordLevel({"<s>": 0, "</s>": 1, "<unk>": 2}, unk_token="<unk>"))
        >>> _ = tok.add_special_tokens(["<s>", "</s>", "<unk>"])
        >>> check_not_only_added(tok, "specials.json")
        Traceback (most recent call last):
        ...
        transplant.common.errors.TransplantError: tokenizer specials.json has only special or added tokens (3: '<s>', '</s>', '<unk>'): every text encodes to nothing but them (pass a trained tokenizer, whose vocabulary covers text)
    """
    added = tokenizer.get_added_tokens_decoder()
    ids = set(tokenizer.get_vocab(with_added_tokens=True).values())
    if ids and ids <= set(added):
        names = [added[i].content for i in sorted(ids)]
        shown = ", ".join(repr(n) for n in names[:5]) + (", ..." if len(names) > 5 else "")
        raise TransplantError(f"tokenizer {path} has only special or added tokens ({len(names)}: {shown}): every "
                              "text encodes to nothing but them (pass a trained tokenizer, whose vocabulary covers "
                              "text)")


def _canonical(piece: str, idx: int, added: dict, family: str, marker: str, prefix: str,
               alphabet: dict[str, int]) -> CanonicalToken:
    info = added.get(idx)
    if info is not None and info.get("special"):
        return CanonicalToken(piece.encode("utf-8"), SPECIAL)
    if info is not None:
        # Non-special added tokens are matched on their literal content.
        return CanonicalToken(piece.encode("utf-8"), ADDED)
    if family == "byte_level":
        if all(c in alphabet for c in piece):
            return CanonicalToken(bytes(alphabet[c] for c in piece), NORMAL)
        return CanonicalToken(piece.encode("utf-8"), NORMAL)
    if family == "sentencepiece":
        m = _BYTE_FALLBACK.match(piece)
        if m:
            return CanonicalToken(bytes([int(m.group(1), 16)]), BYTE)
        return CanonicalToken(piece.replace(marker, " ").encode("utf-8"), NORMAL)
    if family == "wordpiece":
        if piece.startswith(prefix) and len(piece) > len(prefix):
            return CanonicalToken(piece[len(prefix):].encode("utf-8"), NORMAL)
        return CanonicalToken(b" " + piece.encode("utf-8"), NORMAL)
    return CanonicalToken(piece.encode("utf-8"), NORMAL)


def _content(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _find_roles(vocab: dict[str, int], tokens: list[CanonicalToken], config: dict) -> dict[str, int]:
    roles: dict[str, int] = {}
    for role in CORE_ROLES:
        content = _content(config.get(f"{role}_token"))
        if content is not None and content in vocab:
            roles[role] = vocab[content]
    specials = {t.text.decode("utf-8", "replace"): i for i, t in enumerate(tokens) if t.kind == SPECIAL}
    for role, spellings in _ROLE_SPELLINGS.items():
        if role in roles:
            continue
        for s in spellings:
            if s in specials:
                roles[role] = specials[s]
                break
    return roles


@dataclass
class TokenizerSource:
    """A tokenizer as loaded from disk: the fast tokenizer plus its folder's configuration."""

    tokenizer: Tokenizer
    path: Path
    folder: Path | None
    config: dict
    chat_template: str | None

    def vocabulary(self) -> Vocabulary:
        """The canonical vocabulary (built once: 0.5-1 s for a 49k-262k vocabulary)."""
        cached = self.__dict__.get("_vocabulary")
        if cached is None:
            cached = self.__dict__["_vocabulary"] = Vocabulary.from_tokenizer(self.tokenizer, self.config,
                                                                              f"tokenizer {self.path}")
        return cached


def load_tokenizer(spec: str | Path) -> TokenizerSource:
    """Load a `tokenizer.json` file or a folder holding one (with its tokenizer_config.json).

    Example:
        >>> src = load_tokenizer(model_dir)
        >>> src.vocabulary().family, len(src.vocabulary())
        ('byte_level', 500)
        >>> load_tokenizer("no-such-tokenizer.json")
        Traceback (most recent call last):
        ...
        transplant.common.errors.TransplantError: tokenizer not found: no-such-tokenizer.json (pass a tokenizer.json file or a folder holding one)
    """
    path = Path(spec)
    folder = None
    if path.is_dir():
        folder = path
        path = path / "tokenizer.json"
        if not path.exists():
            raise TransplantError(
                f"no tokenizer.json in {folder} (save the tokenizer with a fast tokenizer, e.g. "
                "AutoTokenizer.from_pretrained(...).save_pretrained(folder))")
    elif not path.exists():
        raise TransplantError(f"tokenizer not found: {path} (pass a tokenizer.json file or a folder holding one)")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises plain Exceptions with long messages
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TransplantError(f"malformed tokenizer file {path}: {first} (pass a valid tokenizer.json)") from None
    if tokenizer.get_vocab_size(with_added_tokens=True) == 0:
        raise TransplantError(f"tokenizer {path} has an empty vocabulary (pass a trained tokenizer)")
    check_not_only_added(tokenizer, path)
    config: dict = {}
    chat_template = None
    if folder is not None:
        cfg_path = folder / "tokenizer_config.json"
        if cfg_path.exists():
            try:
                config = json.loads(cfg_path.read_bytes().decode("utf-8"))
            except UnicodeDecodeError:
                raise TransplantError(f"malformed {cfg_path}: not UTF-8 text (fix or delete the file)") from None
            except (ValueError, RecursionError) as exc:
                raise TransplantError(f"malformed {cfg_path}: {exc} (fix or delete the file)") from None
            if not isinstance(config, dict):
                raise TransplantError(f"malformed {cfg_path}: not a JSON object (fix or delete the file)")
        chat_template = config.get("chat_template")
        jinja = folder / "chat_template.jinja"
        if chat_template is None and jinja.exists():
            try:
                chat_template = jinja.read_bytes().decode("utf-8")
            except UnicodeDecodeError:
                raise TransplantError(f"malformed {jinja}: not UTF-8 text (fix or delete the file)") from None
    return TokenizerSource(tokenizer, path, folder, config, chat_template)


def vocab_fingerprint(vocab: Vocabulary) -> str:
    """Hash of (canonical bytes, kind) per id: two tokenizers with equal fingerprints align identically."""
    h = hashlib.sha256()
    for tok in vocab.tokens:
        h.update(tok.kind.encode() + b"\0" + tok.text + b"\0")
    return h.hexdigest()[:16]
