"""Alignment between two vocabularies: exact overlap, special tokens by role, decomposition.

The decomposition of a new token is the old tokenizer's own encoding of its canonical bytes
(what the model saw in training). When that encoding does not reproduce the bytes exactly
(normalizers, a SentencePiece dummy prefix, a partial UTF-8 sequence) we fall back to the
shortest segmentation into old canonical pieces, which is exact by construction.

Example:
    >>> alignment = Alignment.build(old_vocab, new_vocab)  # doctest: +SKIP
    >>> alignment.decomposition(new_vocab.lookup(b" Straße"))  # doctest: +SKIP
    [4312, 7781]
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .vocab import ADDED, BYTE, NORMAL, SPECIAL, UNUSED, Vocabulary


@dataclass
class Alignment:
    """What the old vocabulary knows about each new token.

    Attributes:
        exact: new id -> old id standing for the same bytes (or the same special role).
        special_map: old special id -> new id, used to remap config/generation ids.
        decompositions: new id -> list of old ids whose bytes concatenate to the new token's.
    """

    old: Vocabulary
    new: Vocabulary
    exact: dict[int, int] = field(default_factory=dict)
    special_map: dict[int, int] = field(default_factory=dict)
    special_rows: dict[int, int] = field(default_factory=dict)
    decompositions: dict[int, list[int]] = field(default_factory=dict)

    @classmethod
    def build(cls, old: Vocabulary, new: Vocabulary) -> "Alignment":
        self = cls(old, new)
        self._match_specials()
        for idx, tok in enumerate(new.tokens):
            if tok.kind in (NORMAL, ADDED, BYTE) and tok.text:
                hit = old.lookup(tok.text)
                if hit is not None:
                    self.exact[idx] = hit
        self._decompose([i for i, t in enumerate(new.tokens)
                         if t.kind in (NORMAL, ADDED, BYTE) and t.text and i not in self.exact])
        return self

    def decomposition(self, new_id: int) -> list[int] | None:
        return self.decompositions.get(new_id)

    # -- special tokens ------------------------------------------------------------------
    def _match_specials(self) -> None:
        old_by_content = {t.text: i for i, t in enumerate(self.old.tokens) if t.kind == SPECIAL}
        for new_id, tok in enumerate(self.new.tokens):
            if tok.kind != SPECIAL:
                continue
            old_id = old_by_content.get(tok.text)
            if old_id is None:
                old_id = next((self.old.roles[r] for r in self.new.roles_of(new_id) if r in self.old.roles), None)
            if old_id is not None:
                self.special_rows[new_id] = old_id
        # Old special ids (as named in config.json / generation_config.json) -> new ids.
        new_by_content = {t.text: i for i, t in enumerate(self.new.tokens) if t.kind == SPECIAL}
        for old_id, tok in enumerate(self.old.tokens):
            if tok.kind != SPECIAL:
                continue
            if tok.text in new_by_content:
                self.special_map[old_id] = new_by_content[tok.text]
        for role, old_id in self.old.roles.items():
            if old_id not in self.special_map and role in self.new.roles:
                self.special_map[old_id] = self.new.roles[role]

    # -- decomposition -------------------------------------------------------------------
    def _decompose(self, new_ids: list[int]) -> None:
        texts, valid = [], []
        for i in new_ids:
            try:
                texts.append(self.new.tokens[i].text.decode("utf-8"))
                valid.append(i)
            except UnicodeDecodeError:
                pass
        encodings = self.old.tokenizer.encode_batch(texts, add_special_tokens=False) if texts else []
        for i, enc in zip(valid, encodings):
            ids = list(enc.ids)
            if ids and self.old.decode_canonical(ids) == self.new.tokens[i].text and all(
                    self.old.tokens[j].kind != SPECIAL for j in ids):
                self.decompositions[i] = ids
        for i in new_ids:
            if i not in self.decompositions:
                seg = shortest_segmentation(self.new.tokens[i].text, self.old)
                if seg is not None:
                    self.decompositions[i] = seg

    def stats(self) -> dict[str, int]:
        kinds = [t.kind for t in self.new.tokens]
        return {
            "new_vocab": len(self.new),
            "old_vocab": len(self.old),
            "exact": len(self.exact),
            "special_matched": len(self.special_rows),
            "decomposable": len(self.decompositions),
            "unused_ids": kinds.count(UNUSED),
        }


def shortest_segmentation(text: bytes, vocab: Vocabulary) -> list[int] | None:
    """Fewest old tokens whose canonical bytes concatenate to `text` (ties: longer first piece).

    Returns None when some byte cannot be covered (an old vocabulary without byte fallback).
    """
    n = len(text)
    max_len = min(vocab.max_token_bytes, n)
    best: list[tuple[int, int] | None] = [None] * (n + 1)  # (count, piece length) ending at i
    best[0] = (0, 0)
    for end in range(1, n + 1):
        for length in range(min(max_len, end), 0, -1):
            prev = best[end - length]
            if prev is None or vocab.lookup(text[end - length:end]) is None:
                continue
            if best[end] is None or prev[0] + 1 < best[end][0]:
                best[end] = (prev[0] + 1, length)
    if best[n] is None:
        return None
    pieces, end = [], n
    while end > 0:
        length = best[end][1]
        pieces.append(vocab.lookup(text[end - length:end]))
        end -= length
    return pieces[::-1]
