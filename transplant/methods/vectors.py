"""fastText vectors trained on the user's own text: word vectors (WECHSEL) or token vectors (FOCUS).

Without a tokenizer the text is split into words and punctuation (fastText itself splits on
whitespace only, so `Haus.` and `Haus` would be two words) and fastText learns one vector per word
plus its character n-grams. With a tokenizer the text is first encoded with it and written as one
*token word* per token (`token_word`: the token's canonical bytes spelled in the GPT-2 byte
alphabet, so a word-initial space is `Ġ` and no token contains whitespace), and fastText learns one
vector per token: the auxiliary space FOCUS needs.

Training runs fastText in a child process (its progress becomes a progress bar; Ctrl-C stops it)
and the result is cached by content: the texts' bytes, the tokenizer and every setting. A second
call with the same inputs returns at once. The `.bin` is written like every output of the tool
(`transplant.io.outdir`): checked before any work, staged beside its name and renamed into place;
an existing file is replaced only with `overwrite` and only when it is fastText vectors itself.

Example:
    >>> path = train_vectors(["de/train.txt"], "de.bin")  # doctest: +SKIP
    >>> path = train_vectors(["de/train.txt"], "de-tok.bin", tokenizer="de-bpe/")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from transplant.common.errors import TransplantError
from transplant.core.vocab import Vocabulary, gpt2_byte_alphabet
from transplant.io.fasttext_file import MAGIC, check_fasttext_file
from transplant.io.outdir import OutputKind, check_output_path, staged_output

log = logging.getLogger(__name__)

# Bump when the prepared text or the training recipe changes: old cache entries are then ignored.
_FORMAT = 1

# Defaults measured on 1 MB of text on 2 CPU cores (en/ and de/train.txt): see `train_vectors`.
DIM, EPOCHS, MIN_COUNT, BUCKET = 100, 20, 3, 500_000

_WORDS = re.compile(r"\w+|[^\w\s]+")


def is_fasttext_file(path: Path) -> bool:
    """Whether `path` starts like a fastText `.bin` (so `--overwrite` may replace it, and nothing else).

    Example:
        >>> is_fasttext_file(Path(model_dir) / "model.safetensors")  # a model's weights: never replaced
        False
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    return len(head) == 4 and struct.unpack("<i", head)[0] == MAGIC  # fastText's first int32


# What `transplant vectors train --out` writes: one file, replaced only by another one.
FASTTEXT_FILE = OutputKind("a fastText vectors file", "no fastText header", is_fasttext_file, folder=False)
_CHAR_OF = {b: c for c, b in gpt2_byte_alphabet().items()}


def token_word(text: bytes) -> str:
    """The whitespace-free word standing for a token's canonical bytes in token-level vectors.

    Every byte becomes its GPT-2 alphabet character (reversible, and the raw piece itself for a
    byte-level BPE), so two distinct tokens never share a word and fastText's whitespace split
    never cuts one.

    Example:
        >>> token_word(b" Haus")
        'ĠHaus'
    """
    return "".join(_CHAR_OF[b] for b in text)


def _sha_of_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(8 << 20):
            h.update(block)
    return h.hexdigest()


def _as_vocabulary(tokenizer) -> Vocabulary:
    if isinstance(tokenizer, Vocabulary):
        return tokenizer
    if hasattr(tokenizer, "vocabulary"):  # a TokenizerSource
        return tokenizer.vocabulary()
    from transplant.core.vocab import load_tokenizer

    return load_tokenizer(tokenizer).vocabulary()


def _check_texts(texts: Sequence[str | Path]) -> list[Path]:
    paths = [Path(t) for t in texts]
    if not paths:
        raise TransplantError("no text to train vectors on (pass at least one --text FILE)")
    for p in paths:
        if not p.is_file():
            raise TransplantError(f"text file not found: {p}")
    return paths


def _prepare(paths: list[Path], target: Path, vocab: Vocabulary | None) -> int:
    """Write the training text fastText reads (one output line per input line); returns its words."""
    encode = None
    if vocab is not None:
        tokens = vocab.tokens
        words_of = [token_word(t.text) if t.text else "" for t in tokens]

        def encode(lines: list[str]) -> list[str]:
            encs = vocab.tokenizer.encode_batch(lines, add_special_tokens=False)
            return [" ".join(w for w in (words_of[i] for i in e.ids) if w) for e in encs]

    count = 0
    with open(target, "w", encoding="utf-8") as out:
        for path in paths:
            with open(path, encoding="utf-8") as fh:
                try:
                    while lines := fh.readlines(1 << 20):
                        lines = [line.rstrip("\n") for line in lines]
                        done = encode(lines) if encode else [" ".join(_WORDS.findall(line)) for line in lines]
                        count += sum(len(d.split()) for d in done)
                        out.write("\n".join(done) + "\n")
                except UnicodeDecodeError:
                    raise TransplantError(f"{path} is not UTF-8 text (convert it with iconv first)") from None
    return count


# The child process: import fastText only, train with verbose progress on stderr, save.
_CHILD = ("import json, sys, fasttext\n"
          "a = json.loads(sys.argv[1])\n"
          "fasttext.train_unsupervised(**a['args']).save_model(a['out'])\n")
_PROGRESS = re.compile(r"Progress:\s*([\d.]+)%")


def _run_fasttext(args: dict, out: Path, quiet: bool) -> None:
    """Train in a child process, turning fastText's `Progress: x%` lines into a progress bar."""
    from transplant.common.progress import bar

    cmd = [sys.executable, "-c", _CHILD, json.dumps({"args": args, "out": str(out)})]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last, tail = 0.0, b""
    pbar = None if quiet else bar(total=100.0, desc="training vectors", unit="%",
                                  bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}")
    try:
        while chunk := proc.stderr.read1(4096):
            tail = (tail + chunk)[-4096:]
            found = _PROGRESS.findall(chunk.decode("utf-8", "replace"))
            if found and pbar is not None:
                now = float(found[-1])
                pbar.update(max(0.0, now - last))
                last = now
        code = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        if pbar is not None:
            pbar.close()
    if code != 0 or not out.is_file():
        lines = [ln.strip() for ln in re.split(r"[\r\n]", tail.decode("utf-8", "replace")) if ln.strip()]
        detail = lines[-1] if lines else f"exit status {code}"
        hint = " (fastText diverged: try more text, fewer --epochs or another --dim)" if "NaN" in detail else ""
        raise TransplantError(f"fastText training failed: {detail}{hint}")


def train_vectors(texts: Sequence[str | Path], out: str | Path | None = None, *, dim: int = DIM,
                  epochs: int = EPOCHS, min_count: int = MIN_COUNT, tokenizer=None, model: str = "skipgram",
                  bucket: int = BUCKET, threads: int = 2, quiet: bool = False, overwrite: bool = False) -> Path:
    """Train fastText vectors on `texts` (cached by content) and return the `.bin` path.

    Defaults: skipgram, 100 dimensions, 20 epochs, words seen at least 3 times, 500k n-gram
    buckets (a 200 MB file; fastText's own 2M buckets would make it 800 MB for text this size).
    Small corpora need many epochs: en→de vectors trained on 1 MB each (`{en,de}/train.txt`)
    and aligned on `en-de.tsv` translate held-out dictionary words with precision@1 0.00 after
    5 epochs, 0.04 after 10, 0.10 after 20. 20 epochs on 1 MB take 4 min on 2 busy cores.

    Args:
        texts: UTF-8 text files (one document per line or paragraph; lines are kept).
        out: where to write the `.bin` (a copy of the cache entry); None returns the cache entry.
        dim, epochs, min_count, bucket: fastText's `dim`, `epoch`, `minCount`, `bucket`.
        tokenizer: a `tokenizer.json`, tokenizer folder, `TokenizerSource` or `Vocabulary`: learn
            one vector per token of it (see `token_word`) instead of per word.
        model: "skipgram" or "cbow".
        threads: fastText threads.
        quiet: no progress bar.
        overwrite: replace an existing `out` (only when it is fastText vectors itself).

    Returns:
        The path of the vectors (`out` when given).

    Raises:
        TransplantError: (one line) a missing or non-UTF-8 text file, fastText not installed, a
            failed training run, an `out` that exists (without `overwrite`), is not fastText
            vectors or is one of the inputs.

    Example:
        >>> train_vectors(["de/train.txt"], "de.bin", dim=100, epochs=10)  # doctest: +SKIP
        PosixPath('de.bin')
    """
    from transplant.common.progress import bars_disabled, stage
    from transplant.common.optional import require
    from transplant.io.sources import cache_dir

    require("fasttext", "training vectors")
    if model not in ("skipgram", "cbow"):
        raise TransplantError(f"unknown fastText model {model!r} (choose skipgram or cbow)")
    for name, value in (("dim", dim), ("epochs", epochs), ("min_count", min_count), ("bucket", bucket),
                        ("threads", threads)):
        if int(value) < 1:
            raise TransplantError(f"{name} must be at least 1, not {value}")
    paths = _check_texts(texts)
    vocab = _as_vocabulary(tokenizer) if tokenizer is not None else None
    target = _check_out(out, paths, tokenizer, overwrite) if out is not None else None
    settings = {"format": _FORMAT, "dim": int(dim), "epoch": int(epochs), "minCount": int(min_count),
                "bucket": int(bucket), "model": model, "neg": 10}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    if vocab is not None:
        key.update(b"tokenizer\0" + vocab.tokenizer.to_str().encode())
    for p in paths:
        key.update(b"text\0" + _sha_of_file(p).encode())
    folder = cache_dir() / "vectors"
    cached = folder / f"{key.hexdigest()[:24]}.bin"
    quiet = quiet or bars_disabled()
    if cached.is_file() and not _intact(cached):
        log.warning("damaged vectors in the cache (a full disk or a killed copy?): training them again: %s", cached)
        cached.unlink()
    if not cached.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".train-", dir=folder))
        try:
            if not quiet:
                stage(f"preparing {'tokenized ' if vocab is not None else ''}text for fastText")
            words = _prepare(paths, work / "text.txt", vocab)
            if words == 0:
                raise TransplantError(f"no words to train vectors on in {', '.join(map(str, paths))}")
            args = {"input": str(work / "text.txt"), "dim": settings["dim"], "epoch": settings["epoch"],
                    "minCount": settings["minCount"], "bucket": settings["bucket"], "model": model,
                    "neg": settings["neg"], "thread": int(threads), "verbose": 2}
            _run_fasttext(args, work / "vectors.bin", quiet)
            os.replace(work / "vectors.bin", cached)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    else:
        log.info("vectors found in the cache: %s", cached)
    if target is None:
        return cached
    with staged_output(target, overwrite, FASTTEXT_FILE) as stage:
        shutil.copyfile(cached, stage.path)
    return Path(out)


def _intact(path: Path) -> bool:
    """Whether a cache entry is a whole fastText file (see `transplant.io.fasttext_file`)."""
    try:
        check_fasttext_file(path)
    except TransplantError:
        return False
    return True


def _check_out(out: str | Path, texts: list[Path], tokenizer, overwrite: bool) -> Path:
    """The output file, checked before any training: never a folder, an input, or another kind of file."""
    out = Path(out)
    if out.is_dir() and not out.is_symlink():
        raise TransplantError(f"{out} is a folder; pass a file name for the vectors (e.g. {out / 'vectors.bin'})")
    inputs = [*texts, *([Path(tokenizer)] if isinstance(tokenizer, (str, Path)) else [])]
    return check_output_path(out, inputs, overwrite, FASTTEXT_FILE)
