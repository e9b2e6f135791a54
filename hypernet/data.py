"""Training data of the hypernetwork: old tokens with withheld decompositions (stage 1), text
chunks and sampled tokenizers (stage 2).

Every draw takes an explicit `random.Random` / `torch.Generator` seeded from (seed, step,
process), so a resumed run sees exactly the batches an uninterrupted run would have seen.

Sampled tokenizers (stage 2). ZeTT draws a tokenizer per batch from the batch's own substrings
(frequency x length, log-normal noise, top entries as a Unigram vocabulary). A batch of the size
a CPU step affords holds a few thousand words, so its top substrings are whole words and every
word becomes one token, far coarser than any real tokenizer. Here each training text gets one
Unigram vocabulary trained by `tokenizers` (real piece scores, the source tokenizer's own
normalizer and pre-tokenizer, so pieces live in the same space as the old vocabulary); each step
keeps a random-size subset of it, ranked by score plus Gumbel noise (ZeTT's noise, on log
scores), plus every single character, so the batch always tokenizes. Vocabulary sizes are drawn
log-uniformly between `min_vocab` and `max_vocab`.

Example:
    >>> from tokenizers import Tokenizer
    >>> old_tokenizer = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    >>> pool = TextPool.from_files([text_file])  # one source per file: a language or a domain
    >>> pool.chunks(random.Random(0), source=0, count=1, chars=40)
    ['The Jews therefore contended with one an']
    >>> sampler = TokenizerSampler(old_tokenizer, pool, seed_vocab=2000)
    >>> tok = sampler.sample(random.Random(0), source=0)
    >>> tok.tokenizer.get_vocab_size(), tok.tokenizer.encode(" the Word").tokens
    (811, ['Ġthe', 'ĠW', 'ord'])
    >>> all((old >= 0) != bool(pieces) for old, pieces in zip(tok.exact, tok.pieces))  # an old token, or old pieces
    True
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from transplant.common.errors import TransplantError
from transplant.common.texts import read_text
from transplant.core.align import shortest_segmentation
from transplant.core.vocab import NORMAL, Vocabulary

MAX_PIECE_CHARS = 16  # ZeTT's longest substring


# -- stage 1 ---------------------------------------------------------------------------------
def withheld_decompositions(vocab: Vocabulary, *, min_bytes: int = 2) -> tuple[list[int], list[list[int]]]:
    """Old tokens paired with decompositions into *other* old tokens: (target ids, pieces).

    Each normal token of at least `min_bytes` bytes gives up to two examples: its shortest
    segmentation without itself (usually 2 pieces), and one into pieces at most a third of its
    length (3+ pieces, like the decomposition of a long new token).

    Example:
        >>> from transplant.core.vocab import load_tokenizer
        >>> vocab = load_tokenizer(model_dir).vocabulary()
        >>> targets, pieces = withheld_decompositions(vocab)
        >>> [(vocab.tokens[t].text, [vocab.tokens[i].text for i in p]) for t, p in zip(targets[:3], pieces[:3])]
        [(b' t', [b' ', b't']), (b'he', [b'h', b'e']), (b' the', [b' t', b'he'])]
    """
    targets, pieces = [], []
    for i, tok in enumerate(vocab.tokens):
        if tok.kind != NORMAL or len(tok.text) < min_bytes or vocab.lookup(tok.text) != i:
            continue
        coarse = shortest_segmentation(tok.text, vocab, exclude=i)
        if coarse and len(coarse) > 1:
            targets.append(i)
            pieces.append(coarse)
        if len(tok.text) >= 6:
            fine = shortest_segmentation(tok.text, vocab, exclude=i, max_piece=max(1, len(tok.text) // 3))
            if fine and len(fine) > 2 and fine != coarse:
                targets.append(i)
                pieces.append(fine)
    return targets, pieces


# -- stage 2: text -----------------------------------------------------------------------------
@dataclass
class TextPool:
    """Training texts, one entry per file (each file is one source: a language or a domain)."""

    names: list[str]
    texts: list[str]

    @classmethod
    def from_files(cls, paths: list[str | Path], max_chars: int | None = None) -> "TextPool":
        names, texts = [], []
        for p in paths:
            p = Path(p)
            text = read_text(p, "training text", " (pass UTF-8 text files with --text)")  # non-UTF-8: refused
            if max_chars:
                text = text[:max_chars]
            if len(text.strip()) < 100:
                raise TransplantError(f"training text {p} is nearly empty ({len(text)} characters); pass real text")
            names.append(str(p))
            texts.append(text)
        if not texts:
            raise TransplantError("no training text: pass at least one file with --text")
        return cls(names, texts)

    def chunks(self, rng: random.Random, source: int, count: int, chars: int) -> list[str]:
        """`count` chunks of about `chars` characters from source `source`, starting at line starts."""
        text = self.texts[source]
        out = []
        for _ in range(count):
            start = rng.randrange(max(1, len(text) - chars))
            nl = text.find("\n", start)
            start = nl + 1 if 0 <= nl < start + chars // 2 else start
            out.append(text[start:start + chars])
        return out


# -- stage 2: tokenizers ---------------------------------------------------------------------
@dataclass
class SampledTokenizer:
    """A drawn tokenizer and, per id, what the old vocabulary says about that piece."""

    tokenizer: Tokenizer
    exact: list[int]  # old id of the same bytes, or -1
    pieces: list[list[int]]  # old-tokenizer decomposition (empty for exact pieces)


class TokenizerSampler:
    """Draws Unigram tokenizers in the source tokenizer's pre-tokenization space (module docstring).

    Each source's seed vocabulary is aligned with the old vocabulary once (exact matches and
    old-tokenizer decompositions), so a draw costs one tokenizer build.
    """

    def __init__(self, old: Tokenizer, pool: TextPool, *, seed_vocab: int = 48000, min_share: float = 0.3,
                 noise: float = 1.0, train_chars: int = 2_000_000) -> None:
        from tokenizers import models, pre_tokenizers, trainers

        from transplant.common.progress import set_quiet
        from transplant.core.align import Alignment

        self.spec = json.loads(old.to_str())
        self.min_share, self.noise = min_share, noise
        old_vocab = Vocabulary.from_tokenizer(old)
        self.seeds: list[list[tuple[str, float]]] = []
        self.seed_exact: list[list[int]] = []
        self.seed_pieces: list[list[list[int]]] = []
        for text in pool.texts:
            trainer_tok = Tokenizer(models.Unigram())
            if old.normalizer is not None:
                trainer_tok.normalizer = old.normalizer
            if old.pre_tokenizer is not None:
                trainer_tok.pre_tokenizer = old.pre_tokenizer
            # Every character of the text is a piece, so every chunk of it tokenizes.
            alphabet = sorted(self._characters([text]) | set(pre_tokenizers.ByteLevel.alphabet()
                                                             if _byte_level(self.spec) else []))
            trainer = trainers.UnigramTrainer(vocab_size=seed_vocab, show_progress=False, initial_alphabet=alphabet,
                                              max_piece_length=MAX_PIECE_CHARS, unk_token=None, special_tokens=[])
            trainer_tok.train_from_iterator(text[:train_chars].splitlines(), trainer=trainer)
            spec = json.loads(trainer_tok.to_str())
            vocab = [(p, float(sc)) for p, sc in spec["model"]["vocab"]]
            have = {p for p, _ in vocab}
            floor = min((sc for _, sc in vocab), default=-20.0) - 1.0
            vocab += [(c, floor) for c in alphabet if c not in have]
            self.seeds.append(vocab)
            restore = set_quiet(True)
            try:
                align = Alignment.build(old_vocab, Vocabulary.from_tokenizer(self._build(vocab)))
            finally:
                restore()
            self.seed_exact.append([align.exact.get(i, -1) for i in range(len(vocab))])
            self.seed_pieces.append([[] if i in align.exact else list(align.decomposition(i) or [])
                                     for i in range(len(vocab))])

    def sample(self, rng: random.Random, source: int) -> SampledTokenizer:
        """A noisy, random-size cut of the source's seed vocabulary (every character kept)."""
        vocab = self.seeds[source]
        multi = [i for i, (p, _) in enumerate(vocab) if len(p) > 1]
        share = math.exp(rng.uniform(math.log(self.min_share), 0.0))
        size = max(1, int(round(share * len(multi))))
        # Gumbel noise on log scores = sampling without replacement in proportion to exp(score).
        noisy = sorted(((vocab[i][1] + self.noise * -math.log(-math.log(rng.random() or 1e-12)), i) for i in multi),
                       reverse=True)
        keep = sorted({i for _, i in noisy[:size]} | {i for i, (p, _) in enumerate(vocab) if len(p) == 1})
        ex, pc = self.seed_exact[source], self.seed_pieces[source]
        return SampledTokenizer(self._build([vocab[i] for i in keep]), [ex[i] for i in keep], [pc[i] for i in keep])

    def _build(self, vocab: list[tuple[str, float]]) -> Tokenizer:
        spec = dict(self.spec)
        spec["added_tokens"] = []
        spec["post_processor"] = None
        spec["model"] = {"type": "Unigram", "unk_id": None, "byte_fallback": False, "vocab": [list(v) for v in vocab]}
        return Tokenizer.from_str(json.dumps(spec))

    def _characters(self, texts: list[str]) -> set[str]:
        """Every character of the pre-tokenized texts (in the tokenizer's own alphabet)."""
        tok = self._build([("a", 0.0)])
        out: set[str] = set()
        for t in texts:
            if tok.normalizer is not None:
                t = tok.normalizer.normalize_str(t)
            parts = tok.pre_tokenizer.pre_tokenize_str(t) if tok.pre_tokenizer is not None else [(t, None)]
            for piece, _ in parts:
                out.update(piece)
        return out


def _byte_level(spec: dict) -> bool:
    return "ByteLevel" in json.dumps(spec.get("pre_tokenizer")) or "ByteLevel" in json.dumps(spec.get("decoder"))


__all__ = ["withheld_decompositions", "TextPool", "TokenizerSampler", "SampledTokenizer", "MAX_PIECE_CHARS"]
