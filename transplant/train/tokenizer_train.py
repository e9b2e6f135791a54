"""Train the target tokenizer: byte-level BPE or Unigram with byte fallback, optionally with
supertokens (multi-word tokens) and the conventions of an existing model (`like=`).

- **Lossless on any UTF-8.** Byte-level BPE maps every byte to a symbol; Unigram keeps the 256
  `<0xNN>` byte pieces as a fallback and no normalizer, so decode(encode(x)) == x (property-tested),
  except for a literal `▁` (U+2581): Unigram writes a space as `▁` (SentencePiece's convention,
  Gemma's too), so that one character decodes as a space.
- **Deterministic**: the same texts and settings give the same tokenizer.
- **`like=MODEL`** copies the model's special tokens (content and roles: bos, eos, pad, unk),
  its chat template and, for BPE, its normalizer, pre-tokenizer and decoder (digits split or
  not, byte-level or not), so the result transplants cleanly and chat works on day one. When
  transformers forces a tokenizer class on the model's type (`io/forced_class.py`: Qwen2Tokenizer
  for qwen2, ...), the pipeline is that class's own instead, so the transplanted model's
  tokenizer loads as written with plain `AutoTokenizer` (checked before the folder is published).
- **Supertokens** (BPE only), after SuperBPE (Liu et al., 2025): stage 1 learns ordinary
  subwords, with pre-tokens that end at spaces, up to `vocab_size - n_super`; stage 2 learns
  `n_super` more merges over pre-tokens that span runs of words (`" of the"`, `" in the
  following"`), so superwords build on the subwords. Both stages use `tokenizers`' trainer:
  stage 2 trains on the stage-1 tokenization with each stage-1 token written as one private-use
  character, and its merges are mapped back. Stage-2 merges rank after every stage-1 merge, so
  inside a word the tokenizer acts exactly as the stage-1 one.

Example:
    >>> summary = train_tokenizer([text_file], 1000, "my-tok", like=model_dir)  # the model's specials and roles
    >>> print("\\n".join(summary.lines()))
    tokenizer: .../my-tok (bpe, 1,000 tokens of 1,000 asked)
    held-out bytes per token: 3.239 (on 651 bytes)
    shared with the model's vocabulary: 48.1% of tokens
    >>> from transplant.core.vocab import load_tokenizer
    >>> load_tokenizer("my-tok").vocabulary().roles == load_tokenizer(model_dir).vocabulary().roles
    True
    >>> summary = train_tokenizer([text_file], 1000, "super-tok", supertokens=True)
    >>> summary.algorithm, summary.supertokens, round(summary.bytes_per_token, 3)
    ('bpe+supertokens', 118, 3.5)

    On real text (a German tokenizer for SmolLM2, as in BENCHMARKS.md):

    >>> summary = train_tokenizer(["de/train.txt"], 32000, "de-tok", like="smollm2-135m-instruct",
    ...                           supertokens=True)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from transplant.common.errors import TransplantError
from transplant.common.texts import read_texts
from transplant.common.progress import bar, native_bars, stage
from transplant.io.forced_class import ForcedClass, forced_class, forced_pipeline, model_config, supports_like

# GPT-2's pre-tokenization, and the same with runs of space-separated words kept together (stage 2).
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
SUPER_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+(?: \p{L}+)*| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
DEFAULT_SPECIALS = ["<|endoftext|>"]
PRIVATE_USE = 0xF0000  # stage-2 symbols: planes 15-16, 131,068 code points
MAX_SUPER_TOKENS = 6  # stage-1 tokens in one supertoken (about 2-4 words)


@dataclass
class TrainSummary:
    """What `train_tokenizer` made, measured on a held-out slice of the text."""

    out: str
    algorithm: str
    vocab_size_requested: int
    vocab_size: int
    supertokens: int
    held_out_bytes: int
    bytes_per_token: float | None  # None when nothing was held out (`held_out=0`)
    old_vocab_overlap: float | None  # share of this vocabulary's tokens also in `like`'s vocabulary
    seconds: float
    notes: list[str] = field(default_factory=list)
    # Where the training text is and a fingerprint of it (never the text: tokenizer folders get
    # published): `transplant run --method auto` calibrates on its head while it is there and
    # unchanged, and scores the transplant on its held-out tail (`held_out_tail_bytes`).
    training_texts: list[dict] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"tokenizer: {self.out} ({self.algorithm}, {self.vocab_size:,} tokens of {self.vocab_size_requested:,} "
               f"asked{f', {self.supertokens:,} supertokens' if self.supertokens else ''})",
               f"held-out bytes per token: {self.bytes_per_token:.3f} (on {self.held_out_bytes:,} bytes)"
               if self.bytes_per_token is not None else "held-out bytes per token: not measured (--held-out 0)"]
        if self.old_vocab_overlap is not None:
            out.append(f"shared with the model's vocabulary: {self.old_vocab_overlap:.1%} of tokens")
        return out + [f"note: {n}" for n in self.notes]


@dataclass
class _Like:
    tokenizer: Tokenizer | None
    specials: list[str]
    roles: dict[str, str]
    chat_template: str | None
    config: dict = field(default_factory=dict)  # the model's config.json (its type decides the class)
    forced: ForcedClass | None = None
    pipeline: Tokenizer | None = None  # the forced class's own normalizer, pre-tokenizer, decoder


def _read_texts(texts: list[str | Path]) -> list[str]:
    out = read_texts(texts, what="training text", fix=" (pass UTF-8 text files with --text)")
    if not any(t.strip() for t in out):
        raise TransplantError("the training texts are empty (pass real text with --text)")
    return out


def split_held_out(texts: list[str], share: float) -> tuple[list[str], list[str]]:
    """Training lines and each text's held-out tail: its last `share`, cut at a line start (a
    text of one line keeps nothing back)."""
    train_lines, held = [], []
    for t in texts:
        cut = t.rfind("\n", 0, int(len(t) * (1 - share))) + 1 if share > 0 else len(t)
        cut = cut or len(t)
        train_lines += [line for line in t[:cut].splitlines() if line.strip()]
        held.append(t[cut:])
    return train_lines, held


def _load_like(like: str | None) -> _Like:
    if like is None:
        return _Like(None, list(DEFAULT_SPECIALS), {"bos": DEFAULT_SPECIALS[0], "eos": DEFAULT_SPECIALS[0]}, None)
    from transplant.io.sources import resolve_model
    from transplant.core.vocab import load_tokenizer

    try:
        src = load_tokenizer(like)
    except TransplantError:
        src = load_tokenizer(resolve_model(like))
    spec = json.loads(src.tokenizer.to_str())
    specials = [a["content"] for a in sorted(spec.get("added_tokens") or [], key=lambda a: a["id"]) if a.get("special")]
    roles = {}
    for role in ("bos", "eos", "pad", "unk"):
        value = src.config.get(f"{role}_token")
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str) and value:
            roles[role] = value
            if value not in specials:
                specials.append(value)
    config = model_config(src.folder)
    forced = forced_class(config)
    pipeline = forced_pipeline(config) if forced else None
    if pipeline is not None and not supports_like(pipeline):
        raise TransplantError(f"--like {like}: transformers loads every `{forced.model_type}` model's tokenizer as "
                              f"{forced.loaded}, which no trained byte-level BPE matches (transplant onto "
                              f"another tokenizer with --allow-forced-tokenizer-class instead)")
    return _Like(src.tokenizer, specials, roles, src.chat_template, config, forced, pipeline)


def _bpe_pipeline(tok: Tokenizer, like: _Like, pattern: str) -> None:
    """Normalizer, pre-tokenizer and decoder: `like`'s own for BPE, else byte-level GPT-2 splitting."""
    own = like.pipeline or like.tokenizer  # a forced class rebuilds with its own pipeline: learn with that one
    if own is not None and own.pre_tokenizer is not None and pattern == GPT2_PATTERN:
        tok.normalizer = own.normalizer
        tok.pre_tokenizer = own.pre_tokenizer
        tok.decoder = own.decoder
        return
    if like.tokenizer is not None and like.tokenizer.normalizer is not None:
        tok.normalizer = like.tokenizer.normalizer
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()


def _check_forced_options(like: _Like, algorithm: str, supertokens: bool) -> None:
    """Refuse what a forced class would rebuild differently (its pipeline is a byte-level BPE's)."""
    if like.forced is None:
        return
    why = f"transformers rebuilds every `{like.forced.model_type}` model's tokenizer as {like.forced.loaded}"
    if algorithm != "bpe":
        raise TransplantError(f"--algorithm {algorithm} cannot load as written next to this --like model: {why}, "
                              "a byte-level BPE (use --algorithm bpe)")
    if supertokens:
        raise TransplantError(f"--supertokens cannot load as written next to this --like model: {why}, whose "
                              "pre-tokenizer splits multi-word tokens apart (train without --supertokens)")


def _check_loads_like(like: _Like, folder: Path) -> None:
    """The trained folder, next to a model of `like`'s type, loads with AutoTokenizer as written."""
    from transplant.core.vocab import load_tokenizer
    from transplant.io.tokenizer_out import check_target_reloads

    if check_target_reloads(like.config, load_tokenizer(folder), allow_forced_class=True) is not None:
        raise TransplantError(f"the trained tokenizer does not load as written next to a `{like.forced.model_type}` "
                              f"model ({like.forced.loaded} re-tokenizes it); nothing was written (report this "
                              "with the --like model named)")


def _byte_level(tok: Tokenizer) -> bool:
    return "ByteLevel" in json.dumps(json.loads(tok.to_str()).get("pre_tokenizer"))


def _most_tokens(lines: list[str], algorithm: str, specials: int) -> int:
    """More tokens than the text can give (cheap): the 256 bytes, the specials and, per distinct
    word or run of spaces with a space before it, one merge per byte (BPE) or each of its
    substrings of up to 16 bytes (Unigram). A request above it is trained at it: asked for
    10**12, the trainer aborted the process allocating room for them.

    Example:
        >>> _most_tokens(["a rose is a rose", "an iris"], "bpe", 1)  # a, rose, is, an, iris, " " with a space each
        277
    """
    pieces = {w for line in lines for w in re.findall(r"\S+|\s+", line)}  # words and runs of spaces
    sizes = [len(w.encode("utf-8")) + 1 for w in pieces]
    return 256 + specials + sum(n if algorithm == "bpe" else n * min(n, 16) for n in sizes)


def _train_bpe(lines: list[str], vocab_size: int, like: _Like) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    _bpe_pipeline(tok, like, GPT2_PATTERN)
    alphabet = pre_tokenizers.ByteLevel.alphabet() if _byte_level(tok) else []
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=like.specials, initial_alphabet=alphabet,
                                  show_progress=native_bars())
    tok.train_from_iterator(lines, trainer=trainer)
    return tok


def _train_unigram(lines: list[str], vocab_size: int, like: _Like) -> Tokenizer:
    byte_pieces = [f"<0x{b:02X}>" for b in range(256)]
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    # tokenizers' Unigram needs an unk piece even when byte fallback covers every character.
    unk = like.roles.get("unk", "<unk>")
    specials = like.specials + ([unk] if unk not in like.specials else [])
    trainer = trainers.UnigramTrainer(vocab_size=max(1, vocab_size - 256), special_tokens=specials,
                                      unk_token=unk, show_progress=native_bars(), max_piece_length=16)
    tok.train_from_iterator(lines, trainer=trainer)
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    have = {p for p, _ in vocab}
    floor = min((s for _, s in vocab), default=0.0) - 10.0
    vocab += [[p, floor] for p in byte_pieces if p not in have]
    spec["model"]["byte_fallback"] = True
    spec["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "never", "split": True},
        {"type": "ByteFallback"}, {"type": "Fuse"}]}
    return Tokenizer.from_str(json.dumps(spec))


def append_merges(base: Tokenizer, pieces, n_new: int, *, max_symbols: int, min_frequency: int = 2,
                  pre_tokenizer: dict | None = None) -> tuple[Tokenizer, list[str]]:
    """`base` (a BPE tokenizer) with up to `n_new` merges learned on `pieces` appended after its own.

    `pieces` are pre-tokenized strings in the model's alphabet. Each is tokenized by `base`, every
    base token is written as one private-use character, and `tokenizers`' BPE trainer learns merges
    over those (a new token spans at most `max_symbols` base tokens); the merges are mapped back
    and appended at the lowest priority, so wherever no new merge applies the encoding is the
    base's. Every existing id is kept; new tokens take the ids after the largest one.
    Returns the tokenizer and the new tokens in id order.
    """
    spec = json.loads(base.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise TransplantError(f"learning new merges needs a BPE tokenizer, not {model.get('type')} "
                              "(retrain one with `transplant tokenizer train`)")
    vocab: dict[str, int] = model["vocab"]
    id_to_tok = {i: t for t, i in vocab.items()}
    if max(id_to_tok, default=0) >= 131_000:
        raise TransplantError("learning new merges supports vocabularies up to 131k tokens")
    corpus: list[str] = []
    line: list[str] = []
    for piece in pieces:
        if piece is None:  # end of a line of text
            if line:
                corpus.append(" ".join(line))
            line = []
            continue
        ids = [t.id for t in base.model.tokenize(piece)]
        if len(ids) > 1:
            line.append("".join(chr(PRIVATE_USE + i) for i in ids))
    if line:
        corpus.append(" ".join(line))
    alphabet = sorted({c for text in corpus for c in text if c != " "})
    if not alphabet:
        return base, []
    # Each merge joins a pair inside at least one distinct word, so the text cannot give more than
    # this; the trainer allocates for what it is asked (a huge request aborted the process).
    n_new = min(n_new, sum(len(w) - 1 for w in {w for text in corpus for w in text.split(" ")}))
    trainer = trainers.BpeTrainer(vocab_size=len(alphabet) + n_new, initial_alphabet=alphabet, show_progress=False,
                                  max_token_length=max_symbols, min_frequency=min_frequency)
    learner = Tokenizer(models.BPE())
    learner.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    learner.train_from_iterator(corpus, trainer=trainer)
    learned = json.loads(learner.to_str())["model"]["merges"]

    def text(symbols: str) -> str:
        return "".join(id_to_tok[ord(c) - PRIVATE_USE] for c in symbols)

    merges = list(model["merges"])
    next_id = max(list(vocab.values()) + [a["id"] for a in spec.get("added_tokens") or []], default=-1) + 1
    new_tokens: list[str] = []
    for m in learned:
        a, b = (m.split(" ", 1) if isinstance(m, str) else m)
        left, right = text(a), text(b)
        merges.append([left, right])
        if left + right not in vocab:
            vocab[left + right] = next_id
            next_id += 1
            new_tokens.append(left + right)
    model["vocab"], model["merges"] = vocab, merges
    if pre_tokenizer is not None:
        spec["pre_tokenizer"] = pre_tokenizer
    return Tokenizer.from_str(json.dumps(spec)), new_tokens


def _supertokens(stage1: Tokenizer, lines: list[str], n_super: int, like: _Like) -> tuple[Tokenizer, int]:
    """Stage 2 of the SuperBPE curriculum (module docstring); returns the tokenizer and how many
    supertokens (tokens spanning a space) it gained."""
    chunker = Tokenizer(models.BPE())
    _bpe_pipeline(chunker, like, SUPER_PATTERN)
    space = "Ġ"

    def pieces():
        for line in bar(lines, desc="supertokens: chunking", unit="line"):
            for piece, _ in chunker.pre_tokenizer.pre_tokenize_str(line):
                if space in piece[1:]:  # one word alone: stage 1 covers it
                    yield piece
            yield None

    stage("supertokens: learning merges across spaces")
    result, new = append_merges(stage1, pieces(), n_super, max_symbols=MAX_SUPER_TOKENS,
                                pre_tokenizer=json.loads(chunker.to_str())["pre_tokenizer"])
    return result, sum(1 for t in new if space in t[1:] and t.strip(space))


def _text_records(texts: list[str | Path], tails: list[str]) -> list[dict]:
    """Absolute path, content fingerprint, size and held-out tail (UTF-8 bytes) of each training
    text (see `TrainSummary`; `transplant.io.recorded_text` reads them back)."""
    from transplant.common.fingerprint import file_fingerprint

    return [{"path": str(Path(t).resolve()), "sha256": file_fingerprint(t), "bytes": Path(t).stat().st_size,
             "held_out_tail_bytes": len(tail.encode("utf-8"))} for t, tail in zip(texts, tails)]


def train_tokenizer(texts: list[str | Path], vocab_size: int, out: str | Path, *, like: str | None = None,
                    algorithm: str = "bpe", supertokens: bool = False, supertoken_share: float = 0.2,
                    held_out: float = 0.02, overwrite: bool = False) -> TrainSummary:
    """Train a tokenizer on `texts` and save it as a transformers tokenizer folder `out`.

    Args:
        texts: UTF-8 text files.
        vocab_size: tokens asked for (a small corpus may saturate below it; the summary says).
        like: a model (any `--model` form) or tokenizer whose conventions to copy (module docstring).
        algorithm: "bpe" (byte-level unless `like` says otherwise) or "unigram" (byte fallback).
        supertokens: learn multi-word tokens in a second stage (BPE only).
        supertoken_share: share of the vocabulary given to stage 2.
        held_out: share of each text (its end) kept out of training to measure bytes per token.
        overwrite: replace an earlier output folder.

    Returns:
        A `TrainSummary` (also written as `training_summary.json` in `out`).
    """
    from transformers import PreTrainedTokenizerFast

    from transplant.io.outdir import check_output_path, staged_output
    from transplant.io.tokenizer_out import save_pretrained

    started = time.perf_counter()
    if algorithm not in ("bpe", "unigram"):
        raise TransplantError(f"unknown algorithm {algorithm!r} (choose bpe or unigram)")
    if supertokens and algorithm != "bpe":
        raise TransplantError("--supertokens needs --algorithm bpe (supertokens are BPE merges across spaces)")
    if not 0 < supertoken_share < 1:
        raise TransplantError(f"supertoken share must be between 0 and 1, not {supertoken_share}")
    if vocab_size < 300:
        raise TransplantError(f"--vocab-size {vocab_size} is too small (at least 300: 256 bytes plus merges)")
    out = check_output_path(Path(out), [Path(t) for t in texts], overwrite)
    like_info = _load_like(like)
    _check_forced_options(like_info, algorithm, supertokens)
    lines, tails = split_held_out(_read_texts(texts), held_out)
    held = "".join(tails)
    if held_out > 0 and not held.strip():
        raise TransplantError(
            f"the training text is too short to measure bytes per token on: --held-out {held_out:g} holds out the "
            f"lines in the last {held_out:.0%} of each text, and a text of one line has none to hold out (pass at "
            "least two lines of text, or --held-out 0 to train on all of it unmeasured)")
    notes = []
    n_super = int(round(vocab_size * supertoken_share)) if supertokens else 0
    stage(f"training a {algorithm} tokenizer ({vocab_size:,} tokens) on {sum(map(len, lines)):,} characters")
    most = _most_tokens(lines, algorithm, len(like_info.specials))  # the trainers allocate what they are asked
    if algorithm == "unigram":
        tok = _train_unigram(lines, min(vocab_size, most), like_info)
    else:
        tok = _train_bpe(lines, min(vocab_size - n_super, most), like_info)
    supers = 0
    if supertokens:
        if not _byte_level(tok) or like_info.tokenizer is not None and "ByteLevel" not in json.dumps(
                json.loads(like_info.tokenizer.to_str()).get("pre_tokenizer")):
            raise TransplantError("--supertokens needs a byte-level BPE (the --like model's tokenizer is not one)")
        # A small text saturates stage 1 below its share: give stage 2 the rest of the vocabulary.
        n_super = max(n_super, vocab_size - tok.get_vocab_size(with_added_tokens=True))
        tok, supers = _supertokens(tok, lines, n_super, like_info)
    size = tok.get_vocab_size(with_added_tokens=True)
    if size < vocab_size * 0.98:
        notes.append(f"the text saturated at {size:,} tokens of the {vocab_size:,} asked (more text gives more tokens)")
    held_bytes = len(held.encode("utf-8"))
    n_tokens = len(tok.encode(held, add_special_tokens=False).ids) if held else 0
    overlap = None
    if like_info.tokenizer is not None:
        from transplant.core.vocab import Vocabulary

        old, new = Vocabulary.from_tokenizer(like_info.tokenizer), Vocabulary.from_tokenizer(tok)
        texts_new = [t.text for t in new.tokens if t.text]
        overlap = sum(1 for t in texts_new if old.lookup(t) is not None) / max(1, len(texts_new))
    summary = TrainSummary(str(out), algorithm + ("+supertokens" if supertokens else ""), vocab_size, size, supers,
                           held_bytes, held_bytes / n_tokens if n_tokens else None, overlap,
                           round(time.perf_counter() - started, 1), notes, _text_records(texts, tails))
    roles = {f"{r}_token": v for r, v in like_info.roles.items()}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **roles)
    if like_info.chat_template:
        fast.chat_template = like_info.chat_template
    with staged_output(out, overwrite) as staged:
        save_pretrained(fast, staged.path)  # a full disk: one line, and the stage is deleted
        if like_info.forced is not None:
            _check_loads_like(like_info, staged.path)
            notes.append(f"pre-tokenizes and normalizes as {like_info.forced.loaded}, the class transformers loads "
                         f"for every `{like_info.forced.model_type}` model: AutoTokenizer keeps it as written")
        (staged.path / "training_summary.json").write_text(json.dumps(asdict(summary), indent=2) + "\n")
    return summary


__all__ = ["train_tokenizer", "TrainSummary", "split_held_out", "append_merges"]
