"""Alignment between two vocabularies: exact overlap, special tokens by role, decomposition.

The decomposition of a new token is the old tokenizer's own encoding of its canonical bytes
(what the model saw in training). When that encoding does not reproduce the bytes exactly
(normalizers, a SentencePiece dummy prefix, a partial UTF-8 sequence) we fall back to the
shortest segmentation into old canonical pieces, which is exact by construction.

Example:
    >>> from transplant.core.vocab import load_tokenizer
    >>> old_vocab = load_tokenizer(model_dir).vocabulary()  # byte-level BPE, 500 ids
    >>> new_vocab = load_tokenizer(new_tok_dir).vocabulary()  # SentencePiece style, 759 ids
    >>> alignment = Alignment.build(old_vocab, new_vocab)
    >>> ids = alignment.decomposition(new_vocab.lookup(b" thing"))
    >>> [old_vocab.tokens[i].text for i in ids]
    [b' th', b'ing']
    >>> old_vocab.decode_canonical(ids)
    b' thing'
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transplant.common.progress import bar
from transplant.core.vocab import ADDED, BYTE, CORE_ROLES, NORMAL, SPECIAL, UNUSED, Vocabulary


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
    never_win: set[int] = field(default_factory=set)
    decompositions: dict[int, list[int]] = field(default_factory=dict)

    @classmethod
    def build(cls, old: Vocabulary, new: Vocabulary, start: int | None = None) -> "Alignment":
        """Align `new` to `old`.

        `start` is the old token the source model saw first in every sequence (the bos its
        tokenizer adds, else its document separator): a new bos that the old vocabulary lacks
        copies that row rather than the row of the old token declaring the bos role
        (`_match_specials`). None matches bos by role like every other special.
        """
        self = cls(old, new)
        self._match_specials(start)
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
    def _match_specials(self, start: int | None = None) -> None:
        """Each new special token takes the row of the old token with the same content, else of
        the old token with the same role (declared roles first, then the chat role its spelling
        names). Two distinct new tokens share an old row only through distinct roles that one old
        token played (GPT-2's `<|endoftext|>` was bos and eos). A pad token gets a row that can
        never win the argmax (the mean, inside the hull of the other rows) unless the old model
        had a pad token of its own: a copy of eos would be picked instead of eos (lower id)."""
        old_by_content = {t.text: i for i, t in enumerate(self.old.tokens) if t.kind == SPECIAL}
        new_specials = [i for i, t in enumerate(self.new.tokens) if t.kind == SPECIAL]
        claimed: set[int] = set()
        for new_id in new_specials:
            old_id = old_by_content.get(self.new.tokens[new_id].text)
            if old_id is not None:
                self.special_rows[new_id] = old_id
                claimed.add(old_id)
        used: set[tuple[int, str]] = set()
        new_core = {idx: role for role, idx in self.new.roles.items() if role in CORE_ROLES}
        # Tokens with a declared role choose first, so `<s>` takes bos before a spelled look-alike.
        for new_id in sorted((i for i in new_specials if i not in self.special_rows),
                             key=lambda i: (i not in new_core, i)):
            roles = self.new.roles_of(new_id)
            if roles and roles[0] == "pad":
                old_pad = self.old.roles.get("pad")
                if old_pad is not None and old_pad not in claimed and self.old.roles_of(old_pad) == ["pad"]:
                    self.special_rows[new_id] = old_pad
                else:
                    self.never_win.add(new_id)
                continue
            for role in roles:
                old_id = self.old.roles.get(role)
                if old_id is None or old_id in claimed or (old_id, role) in used:
                    continue
                self.special_rows[new_id] = old_id
                used.add((old_id, role))
                break
        new_bos = self.new.roles.get("bos")
        # Only a bos matched by role: one the old vocabulary has by content keeps its own row (an
        # identity transplant, an extension, a permuted vocabulary stay exact).
        if start is not None and new_bos in new_specials and self.new.tokens[new_bos].text not in old_by_content:
            # The first position's row is the model's attention sink: what the source model had
            # there, not the token that shares bos's name. SmolLM2-Instruct declares `<|im_start|>`
            # its bos but adds nothing to encodes; a draft fed Gemma's `<bos>` as `<|im_start|>`
            # agreed with Gemma on 59.4% of greedy tokens, as `<|endoftext|>` on 63.0%
            # (benchmarks/assist_bench.py, k1; BENCHMARKS.md).
            self.special_rows[new_bos] = start
            self.never_win.discard(new_bos)
        # Old special ids -> new ids (recorded in the plan): by content, else by the old token's
        # own roles in order (so a bos=eos token maps to the new bos, as the first role it plays).
        new_by_content = {t.text: i for i, t in enumerate(self.new.tokens) if t.kind == SPECIAL}
        for old_id, tok in enumerate(self.old.tokens):
            if tok.kind != SPECIAL:
                continue
            if tok.text in new_by_content:
                self.special_map[old_id] = new_by_content[tok.text]
                continue
            for role in self.old.roles_of(old_id):
                if self.old.roles.get(role) == old_id and role in self.new.roles:
                    self.special_map[old_id] = self.new.roles[role]
                    break

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
        # One step per new token: verified here, or segmented below.
        pbar = bar(total=len(new_ids), desc="aligning", unit="tok", unit_scale=True)
        for i, enc in zip(valid, encodings):
            ids = list(enc.ids)
            if ids and self.old.decode_canonical(ids) == self.new.tokens[i].text and all(
                    self.old.tokens[j].kind != SPECIAL for j in ids):
                self.decompositions[i] = ids
                pbar.update()
        for i in new_ids:
            if i not in self.decompositions:
                seg = shortest_segmentation(self.new.tokens[i].text, self.old)
                if seg is not None:
                    self.decompositions[i] = seg
                pbar.update()
        pbar.close()

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


def shortest_segmentation(text: bytes, vocab: Vocabulary, exclude: int | None = None,
                          max_piece: int | None = None) -> list[int] | None:
    """Fewest old tokens whose canonical bytes concatenate to `text` (ties: longer first piece).

    `exclude` withholds one token (an old token's decomposition into smaller ones) and
    `max_piece` caps piece length in bytes. Returns None when some byte cannot be covered (an
    old vocabulary without byte fallback).

    Example:
        >>> from transplant.core.vocab import load_tokenizer
        >>> vocab = load_tokenizer(model_dir).vocabulary()
        >>> [vocab.tokens[i].text for i in shortest_segmentation(" Straße".encode(), vocab)]
        [b' S', b't', b'ra', b'\\xc3', b'\\x9f', b'e']
    """
    n = len(text)
    max_len = min(vocab.max_token_bytes, n, max_piece or n)
    best: list[tuple[int, int] | None] = [None] * (n + 1)  # (count, piece length) ending at i
    best[0] = (0, 0)
    for end in range(1, n + 1):
        for length in range(min(max_len, end), 0, -1):
            prev = best[end - length]
            piece = vocab.lookup(text[end - length:end])
            if prev is None or piece is None or piece == exclude:
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
