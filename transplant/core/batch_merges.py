"""Batch-level merges of dynamic tokenization (`transplant.dynamic`), model-free: a text's base
tokens grouped into words, and BPE merges of the most frequent adjacent pairs inside words across a
batch. Used at run time (`DynamicTokenizer`) and by the hypernetwork's training on dynamically
merged batches (`hypernet train --dynamic-share`).

Example:
    >>> words = [[[(1,), (2,)], [(1,), (2,)]]]
    >>> merge_batch(words, merges=1).pairs, words
    ([((1,), (2,))], [[[(1, 2)], [(1, 2)]]])
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass

Unit = tuple[int, ...]  # a token of the dynamic sequence: the base ids it is made of


def word_units(encoding, text: str, specials: set[int]) -> list[list[Unit]]:
    """The base tokens of one encoded text grouped into words (lists of one-id units): a word
    ends where the pre-tokenizer's word changes, at whitespace on either side, and around every
    special token.

    Example:
        >>> from types import SimpleNamespace as NS
        >>> enc = NS(ids=[5, 6, 7, 8], offsets=[(0, 2), (2, 4), (4, 5), (5, 8)], word_ids=[0, 0, 1, 1])
        >>> word_units(enc, "abcd efg", set())
        [[(5,), (6,)], [(7,)], [(8,)]]
    """
    words: list[list[Unit]] = []
    last_word, last_special = None, True
    for tid, (start, _), word in zip(encoding.ids, encoding.offsets, encoding.word_ids):
        special = tid in specials
        joined = (not special and not last_special and word == last_word
                  and not text[start:start + 1].isspace() and not text[start - 1:start].isspace())
        if joined and words:
            words[-1].append((tid,))
        else:
            words.append([(tid,)])
        last_word, last_special = word, special
    return words


@dataclass
class Merges:
    """What `merge_batch` did: the merges in order and the batch's token counts before and after."""

    pairs: list[tuple[Unit, Unit]]
    tokens_before: int
    tokens_after: int


def merge_batch(texts_words: list[list[list[Unit]]], merges: int | None = None,
                reduction: float | None = None, max_pieces: int | None = None) -> Merges:
    """Merge, in place, the most frequent adjacent pair of units inside words across the whole
    batch, again and again, until `merges` merges, a `reduction` share fewer tokens, or no pair
    occurring twice (a pair seen once would cost a prediction to save one position).

    Example:
        >>> words = [[[(1,), (2,)], [(1,), (2,), (3,)]], [[(1,), (2,)]]]
        >>> m = merge_batch(words, merges=5)
        >>> m.pairs, words[0]
        ([((1,), (2,))], [[(1, 2)], [(1, 2), (3,)]])
    """
    # BPE over word types (a word repeated in the batch counts once per occurrence), with pair
    # counts kept up to date by each merge and a heap of (count, order) candidates.
    types: dict[tuple[Unit, ...], int] = Counter(tuple(w) for words in texts_words for w in words)
    forms = [list(t) for t in types]
    freq = list(types.values())
    before = sum(len(w) for words in texts_words for w in words)
    counts: Counter = Counter()
    where: dict[tuple[Unit, Unit], set[int]] = {}
    order: dict[tuple[Unit, Unit], int] = {}
    heap: list[tuple[int, int, tuple[Unit, Unit]]] = []

    def add(pair, t, n) -> None:
        if max_pieces is not None and len(pair[0]) + len(pair[1]) > max_pieces:
            return  # a longer token than asked for: never a candidate
        counts[pair] += n
        where.setdefault(pair, set()).add(t)
        order.setdefault(pair, len(order))
        heapq.heappush(heap, (-counts[pair], order[pair], pair))

    for t, form in enumerate(forms):
        for pair in zip(form, form[1:]):
            add(pair, t, freq[t])
    done: list[tuple[Unit, Unit]] = []
    tokens = before
    goal = None if reduction is None else before * (1.0 - reduction)
    while heap and (merges is None or len(done) < merges) and (goal is None or tokens > goal):
        neg, _, pair = heapq.heappop(heap)
        if -neg != counts.get(pair, 0):
            continue  # a stale entry: the pair's count changed since it was pushed
        if -neg < 2:
            break
        done.append(pair)
        merged = pair[0] + pair[1]
        for t in list(where.pop(pair, ())):
            form, n = forms[t], freq[t]
            for p in zip(form, form[1:]):
                if p in counts:
                    counts[p] -= n
            new, i = [], 0
            while i < len(form):
                if i + 1 < len(form) and (form[i], form[i + 1]) == pair:
                    new.append(merged)
                    i += 2
                    tokens -= n
                else:
                    new.append(form[i])
                    i += 1
            forms[t] = new
            for p in zip(new, new[1:]):
                add(p, t, n)
        counts.pop(pair, None)
    result = {t: forms[i] for i, t in enumerate(types)}
    for words in texts_words:
        for k, w in enumerate(words):
            words[k] = list(result[tuple(w)])
    return Merges(done, before, tokens)


def split_tail(words: list[list[Unit]], tail: int) -> tuple[list[list[Unit]], list[list[Unit]]]:
    """(the words before, the words holding the last `tail` base tokens): whole words."""
    k, n = len(words), 0
    while k > 0 and n < tail:
        k -= 1
        n += len(words[k])
    return words[:k], words[k:]


__all__ = ["Merges", "Unit", "merge_batch", "split_tail", "word_units"]
