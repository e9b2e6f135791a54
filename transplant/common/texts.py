"""Reading text files: the one reader every command uses (evaluation, calibration, training, healing).

Every text is UTF-8: a file that is not is refused with one line naming it and the fix, never
silently repaired (a replaced byte would change what a tokenizer learns or what is scored).
Documents are separated by blank lines; scoring and healing cut texts at document boundaries.

Example:
    >>> split_documents("one\\n\\ntwo\\n")
    ['one\\n\\n', 'two\\n\\n']
    >>> take_bytes("one\\n\\ntwo\\n", 6)
    'one\\n\\n'
"""

from __future__ import annotations

from pathlib import Path

from transplant.common.errors import TransplantError


def split_documents(text: str) -> list[str]:
    """Documents are separated by blank lines; each keeps its trailing blank line."""
    docs = [d.strip("\n") for d in text.replace("\r\n", "\n").split("\n\n")]
    return [d + "\n\n" for d in docs if d.strip()]


def take_bytes(text: str, limit: int) -> str:
    """The leading whole documents of `text` totalling at most `limit` UTF-8 bytes (at least one)."""
    out, used = [], 0
    for doc in split_documents(text):
        size = len(doc.encode("utf-8"))
        if out and used + size > limit:
            break
        out.append(doc)
        used += size
    return "".join(out)


def read_text(path: str | Path, what: str = "text file", fix: str = "") -> str:
    """One UTF-8 text file, or a one-line `TransplantError` naming it.

    Args:
        path: the file.
        what: how the error names the file when it is missing ("training text", ...).
        fix: appended to the not-found error, e.g. " (pass UTF-8 text files with --text)".
    """
    path = Path(path)
    if not path.is_file():
        raise TransplantError(f"{what} not found: {path}{fix}")
    try:
        return _refuse_binary(path.read_text(encoding="utf-8"), path, fix)
    except UnicodeDecodeError:
        raise TransplantError(f"{path} is not UTF-8 text (convert it, e.g. with iconv)") from None


def _refuse_binary(text: str, path: Path, fix: str) -> str:
    """`text`, unless it holds NUL bytes: valid UTF-8 but a binary file, which a tokenizer would
    read as words (the one rule for every text the commands read)."""
    if "\0" in text:
        raise TransplantError(f"{path} holds NUL bytes: a binary file, not text{fix}")
    return text


# The most UTF-8 bytes a token of any tokenizer is taken to span, to bound what is read for a
# budget of tokens (long whitespace runs in code stay well under it).
BYTES_PER_TOKEN_BOUND = 256


def read_text_head(path: str | Path, max_bytes: int, what: str = "text file", fix: str = "") -> str:
    """The leading `max_bytes` bytes of a UTF-8 text file (a character cut at the end is left out),
    read without the rest: a 1 GB text costs what its first megabyte does. Errors as `read_text`.

    Example:
        >>> _ = Path("t.txt").write_text("héllo wörld")
        >>> read_text_head("t.txt", 3)  # "h" + the 2 bytes of "é"
        'hé'
    """
    import codecs

    path = Path(path)
    if not path.is_file():
        raise TransplantError(f"{what} not found: {path}{fix}")
    with open(path, "rb") as fh:
        raw = fh.read(max_bytes)
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(raw, final=False)
    except UnicodeDecodeError:
        raise TransplantError(f"{path} is not UTF-8 text (convert it, e.g. with iconv)") from None
    return _refuse_binary(text.replace("\r\n", "\n").replace("\r", "\n"), path, fix)  # as `read_text`


def read_texts(paths, max_bytes: int | None = None, what: str = "text file", fix: str = "") -> list[str]:
    """Each file's text (see `read_text`), cut to its leading whole documents within `max_bytes`.

    Example:
        >>> texts = read_texts([text_file], max_bytes=8000)  # whole documents (chapters) only
        >>> texts[0].splitlines()[0]
        'In the beginning was the Word, and the Word was with God, and the Word was God.'
        >>> len(split_documents(texts[0])), len(texts[0].encode("utf-8"))
        (2, 7870)
        >>> read_texts(["missing.txt"], what="training text", fix=" (pass UTF-8 text files with --text)")
        Traceback (most recent call last):
        ...
        transplant.common.errors.TransplantError: training text not found: missing.txt (pass UTF-8 text files with --text)
    """
    texts = [read_text(p, what, fix) for p in paths]
    return [take_bytes(t, max_bytes) for t in texts] if max_bytes else texts
