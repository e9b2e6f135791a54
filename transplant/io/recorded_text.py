"""The text a tokenizer was trained on, as `transplant tokenizer train` records it, split in two
parts that never meet: the head, which calibration may read, and the held-out tail, which the
tokenizer's training left out and the run's quality check scores.

`training_summary.json` lists each training text with its path, content fingerprint, size and
`held_out_tail_bytes` (the UTF-8 size of the tail the trainer kept back, `--held-out`). A text is
used only while it is still there and unchanged. The tail is read from the file's end, so a
1 GB text costs what its last kilobytes do; a text with CRLF line ends only makes the tail longer
on disk than recorded, so the bytes read are still inside it.

Example:
    >>> from transplant.core.vocab import load_tokenizer
    >>> from transplant.train.tokenizer_train import train_tokenizer
    >>> _ = train_tokenizer([text_file], 1000, "my-tok")
    >>> texts, why = recorded_texts(load_tokenizer("my-tok"))
    >>> texts[0].path.name, texts[0].held_out_tail_bytes > 0
    ('text.txt', True)
    >>> tail = held_out_text(texts, 2_000)  # whole lines from the tail, at most 2,000 bytes
    >>> 0 < len(tail.encode()) <= 2_000
    True
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from transplant.core.vocab import TokenizerSource

# Where `transplant tokenizer train` records its training texts, inside the tokenizer folder.
TRAINING_SUMMARY = "training_summary.json"


@dataclass(frozen=True)
class RecordedText:
    """One training text of a tokenizer: where it is and how much of its end training left out
    (None: recorded before tails were, so nothing is known to be held out)."""

    path: Path
    held_out_tail_bytes: int | None

    def head_limit(self, limit: int) -> int:
        """How many leading bytes calibration may read: `limit`, never into the held-out tail."""
        if not self.held_out_tail_bytes:
            return limit
        return max(0, min(limit, self.path.stat().st_size - self.held_out_tail_bytes))


def recorded_texts(new_src: TokenizerSource) -> tuple[list[RecordedText], str]:
    """The training texts recorded for this tokenizer, when every one is still there and
    unchanged; else ([], why not)."""
    folder = new_src.folder or new_src.path.parent
    path = folder / TRAINING_SUMMARY
    try:
        record = json.loads(path.read_text(encoding="utf-8")).get("training_texts")
    except (OSError, ValueError, AttributeError):
        record = None
    if not record or not isinstance(record, list):
        return [], "the target tokenizer records no training text"
    found = []
    for entry in record:
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or not entry["path"]:
            return [], f"{path} has a malformed training_texts entry"
        p = Path(entry["path"])
        if not p.is_file():
            return [], f"its training text {p} is gone"
        if _fingerprint(str(p.resolve()), *_stamp(p)) != entry.get("sha256"):
            return [], f"its training text {p} changed since the tokenizer was trained"
        tail = entry.get("held_out_tail_bytes")
        ok_tail = isinstance(tail, int) and not isinstance(tail, bool) and 0 < tail <= p.stat().st_size
        found.append(RecordedText(p, tail if ok_tail else None))
    return found, ""


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


@functools.lru_cache(maxsize=64)
def _fingerprint(path: str, size: int, mtime_ns: int) -> str:
    """A text's content fingerprint, hashed once per version of the file in a process: `auto`
    and the quality check both ask for it, and a 1 GB text takes seconds to hash."""
    from transplant.common.fingerprint import file_fingerprint

    return file_fingerprint(path)


def held_out_text(texts: list[RecordedText], max_bytes: int) -> str:
    """Whole lines from the held-out tails of `texts`, at most `max_bytes` UTF-8 bytes in all
    (shared evenly between the texts), each read from the file's end; "" when none is recorded.

    Example:
        >>> held_out_text([], 1_000)
        ''
    """
    with_tail = [t for t in texts if t.held_out_tail_bytes]
    parts = []
    for i, t in enumerate(with_tail):
        share = (max_bytes - sum(len(p.encode("utf-8")) for p in parts)) // (len(with_tail) - i)
        parts.append(_tail_lines(t, share))
    return "".join(p if p.endswith("\n") or not p else p + "\n" for p in parts)


def _tail_lines(text: RecordedText, max_bytes: int) -> str:
    """The first whole lines of `text`'s held-out tail, up to `max_bytes` bytes."""
    size = text.path.stat().st_size
    tail = int(text.held_out_tail_bytes or 0)
    with open(text.path, "rb") as fh:
        fh.seek(max(0, size - tail - 1))
        raw = fh.read(tail + 1)  # the byte before the tail says whether it starts at a line start
    if size <= tail:  # the whole file was held out: it starts at a line start
        start = 0
    else:
        start = 1 if raw[:1] in (b"\n", b"\r") else raw.find(b"\n") + 1
    if start < 0 or (start == 0 and size > tail):
        return ""
    body = raw[start:].replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    cut = body.rfind(b"\n", 0, max_bytes + 1)  # whole lines within the budget
    return body[:cut + 1].decode("utf-8", errors="replace") if cut >= 0 else ""


__all__ = ["RecordedText", "TRAINING_SUMMARY", "held_out_text", "recorded_texts"]
