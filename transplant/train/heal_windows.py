"""Healing's data: the training text cut into windows that both tokenizers read alike.

Healing compares the student (the transplant) with its teacher (the model before it) on the
same characters. Each document is tokenized once by each tokenizer; wherever both end a token at
the same character (a *common cut*: almost every word boundary), the text between two cuts is a
*chunk* whose probability both models give comparably. Windows begin and end at common cuts and
hold at most a few hundred tokens of each side; `chunk_logprobs` turns a window's token
log-probabilities into its chunks' log-probabilities.

Example:
    >>> from tokenizers import Tokenizer
    >>> tok = Tokenizer.from_file(tok_json)
    >>> windows = aligned_windows(["In the beginning was the Word."], tok, tok, 8, 8)
    >>> [len(w.student) for w in windows], windows[0].cuts[-1] == (len(windows[0].student),) * 2
    ([8, 7], True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# Held-out windows: this share of the text, at most this many windows (each scored every eval).
MAX_HELD_OUT_WINDOWS = 48


def clean_cuts(offsets: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(character position, tokens consumed) after every token that ends cleanly: the next token
    starts at or after its end. Tokens that share a character (byte pieces of one character,
    byte-fallback pieces) end no cut until the last of them.

    Example:
        >>> clean_cuts([(0, 3), (3, 4), (3, 4), (4, 8)])
        [(3, 1), (4, 3), (8, 4)]
    """
    cuts = []
    last = -1
    for i, (_, end) in enumerate(offsets):
        nxt = offsets[i + 1][0] if i + 1 < len(offsets) else None
        if (nxt is None or nxt >= end) and end > last:
            cuts.append((end, i + 1))
            last = end
    return cuts


@dataclass
class Window:
    """A span of one document, tokenized by both models, cut where both tokenizations agree.

    `student`, `teacher`: the token ids of the span (as in the whole document's encoding).
    `cuts`: for each common cut inside the span, (student tokens, teacher tokens) consumed from
    the span's start; the chunk between two cuts is one unit of the distillation loss.
    `chunk_bytes`: UTF-8 bytes of each chunk.
    """

    student: list[int]
    teacher: list[int]
    cuts: list[tuple[int, int]]
    chunk_bytes: list[int]


def aligned_windows(docs: list[str], student_tok, teacher_tok, seq_len: int, teacher_len: int) -> list[Window]:
    """Cut every document into windows of at most `seq_len` student and `teacher_len` teacher tokens.

    Windows begin and end at common cuts, so both models read exactly the same characters, and
    they take their tokens from the whole document's encoding: what the model sees in use, not a
    window encoded on its own (which would change the first word's tokens).
    """
    windows: list[Window] = []
    s_enc = student_tok.encode_batch(docs, add_special_tokens=False)
    t_enc = teacher_tok.encode_batch(docs, add_special_tokens=False)
    for doc, se, te in zip(docs, s_enc, t_enc):
        t_at = {pos: n for pos, n in clean_cuts(te.offsets)}
        common = [(pos, n, t_at[pos]) for pos, n in clean_cuts(se.offsets) if pos in t_at]
        if not common:
            continue
        byte_at = _byte_positions(doc)
        start = (0, 0, 0)
        inside: list[tuple[int, int, int]] = []
        for cut in common:
            fits = cut[1] - start[1] <= seq_len and cut[2] - start[2] <= teacher_len
            if not fits and inside:
                windows.append(_window(se.ids, te.ids, start, inside, byte_at))
                start, inside = inside[-1], []
                fits = cut[1] - start[1] <= seq_len and cut[2] - start[2] <= teacher_len
            if fits:
                inside.append(cut)
            else:  # one chunk longer than a window (a very long token run): skip past it
                start, inside = cut, []
        if inside:
            windows.append(_window(se.ids, te.ids, start, inside, byte_at))
    return windows


def _byte_positions(text: str) -> np.ndarray:
    """UTF-8 byte offset of every character position (length len(text) + 1)."""
    sizes = np.fromiter((len(c.encode("utf-8")) for c in text), dtype=np.int64, count=len(text))
    return np.concatenate([[0], np.cumsum(sizes)])


def _window(s_ids, t_ids, start, inside, byte_at) -> Window:
    pos0, s0, t0 = start
    cuts = [(s - s0, t - t0) for _, s, t in inside]
    positions = [pos0] + [p for p, _, _ in inside]
    chunk_bytes = [int(byte_at[b] - byte_at[a]) for a, b in zip(positions, positions[1:])]
    return Window(list(s_ids[s0:inside[-1][1]]), list(t_ids[t0:inside[-1][2]]), cuts, chunk_bytes)


def chunk_logprobs(token_logprobs: torch.Tensor, cut_index: torch.Tensor) -> torch.Tensor:
    """Log-probability of each chunk: differences of the running sum at the cuts.

    `token_logprobs`: (n,) log-probabilities of a window's tokens; `cut_index`: (k,) tokens consumed
    at each cut (increasing). Returns (k,).

    Example:
        >>> chunk_logprobs(torch.tensor([-1., -2., -3.]), torch.tensor([1, 3]))
        tensor([-1., -5.])
    """
    total = torch.cat([token_logprobs.new_zeros(1), token_logprobs.cumsum(0)])
    at = total[cut_index]
    return at - torch.cat([at.new_zeros(1), at[:-1]])


def split_held_out(n_windows: int, share: float) -> tuple[list[int], list[int]]:
    """(held-out window indices, training window indices): a fixed shuffle, the first `share` of
    it (at least 1, at most MAX_HELD_OUT_WINDOWS windows) held out and never trained on; at least
    one window is always left to train on (`n_windows` >= 2).

    Example:
        >>> held, train = split_held_out(40, 0.05)
        >>> len(held), len(train), sorted(held + train) == list(range(40))
        (2, 38, True)
        >>> [len(part) for part in split_held_out(2, 0.99)]
        [1, 1]
    """
    perm = torch.randperm(n_windows, generator=torch.Generator().manual_seed(1234)).tolist()
    n_held = min(MAX_HELD_OUT_WINDOWS, n_windows - 1, max(1, round(share * n_windows)))
    return sorted(perm[:n_held]), perm[n_held:]
