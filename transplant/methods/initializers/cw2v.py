"""CW2V, Constrained Word2Vec (Mundra et al., 2024, "An Empirical Comparison of Vocabulary
Expansion and Initialization Approaches for Language Models"): each new token a learned convex mix
of old rows, the mixing weights trained with word2vec's objective on text in the new tokenization.

The paper's argument (the one `hull` follows too) is that a new row inside the convex hull of the
old rows is a safe start; CW2V keeps every row there by construction, a softmax over the old rows,
and learns the mix from how the new tokens are used, needing no cross-lingual vectors.

Here, so that it streams to 262k vocabularies (a mix over every old row would be |new| x |old|
weights, 13 G for Gemma onto itself), each new token mixes a candidate set: its old-tokenizer
pieces (FVT's rows) and its `k` nearest old rows to their mean (cosine in the old input space). The
weights start at FVT's (the pieces equal, the neighbours near zero), so training moves from FVT
inside the hull. Skip-gram with negative sampling: the centre token's row is its mix (exact tokens:
their old row, fixed), context rows are free and dropped after training. The text is `cw2v.text`,
else the new tokenizer's recorded training text (its head only: never the held-out tail the run's
quality line scores). The trained weights are cached by content (text, tokenizer, old matrix,
settings) beside the `vectors` command's cache.

Example:
    >>> transplant("model/", "de-bpe/", "out/", method="cw2v", options={"cw2v.text": "de/train.txt"})  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from transplant.common.errors import TransplantError
from transplant.common.progress import bar
from transplant.core.plan import Made, RowBlock
from transplant.methods.initializers.registry import BaseInitializer, InitContext, Option

_FORMAT = b"cw2v/1"  # bump when the training changes: older cache entries are then ignored
_NEIGHBOUR_LOGIT = -6.0  # a neighbour's starting logit against a piece's 0: about 0.25% of the mix


class CW2VInitializer(BaseInitializer):
    """Each new token = a softmax mix of its candidate old rows (its pieces and k nearest old rows),
    the mix trained by skip-gram with negative sampling on text tokenized with the new tokenizer."""

    name = "cw2v"
    description = "CW2V: convex mixes of old rows learned with word2vec's objective on target-language text"
    options: ClassVar[dict[str, Option]] = {
        "text": Option("text", str, "", "target-language text (default: the new tokenizer's recorded training text)"),
        "k": Option("k", int, 8, "nearest old rows added to each token's pieces as candidates", low=0),
        "steps": Option("steps", int, 1500, "training steps (batches of centre tokens)", low=1),
        "batch": Option("batch", int, 1024, "centre tokens per step", low=1),
        "window": Option("window", int, 5, "context tokens on each side", low=1),
        "negatives": Option("negatives", int, 5, "negative samples per pair", low=1),
        "lr": Option("lr", float, 0.05, "Adam's learning rate", low=0, low_open=True),
        "max_bytes": Option("max_bytes", int, 8_000_000, "leading bytes of the text read", low=1),
    }

    def assign(self, ctx: InitContext, todo: list[int]) -> Made:
        opts = ctx.options_for(self.name)
        res = ctx.need_resources(self.name)
        align = ctx.alignment
        pieces = {i: p for i in todo if (p := align.decomposition(i))}
        ids = np.asarray(sorted(pieces), dtype=np.int64)
        if not len(ids):
            return Made()
        text = _read_text(opts, res)
        E = res.old_input()
        cand, mask, own = _candidates(E, [pieces[int(i)] for i in ids], opts["k"])
        key = _cache_key(opts, text, align.new.tokenizer.to_str(), E, cand)
        weights = _cached(key)
        if weights is None:
            seq = np.asarray([t for e in align.new.tokenizer.encode_batch(text.splitlines(), add_special_tokens=False)
                              for t in e.ids], dtype=np.int64)
            weights = _train(E, ids, (cand, mask, own), seq, dict(align.exact), len(align.new), opts, ctx.seed)
            _store(key, weights)
        res.note("cw2v:text", hashlib.sha256(text.encode("utf-8")).hexdigest()[:16])
        return Made(blocks=[RowBlock(ids, cand.numpy(), weights.numpy(), source=self.name)])


def _read_text(opts: dict, res) -> str:
    """`cw2v.text`, else the new tokenizer's recorded text (head only); up to `max_bytes` bytes."""
    from transplant.common.texts import read_text

    if opts["text"]:
        return read_text(opts["text"], what="cw2v text")[: opts["max_bytes"]]
    text = res.recorded_head(opts["max_bytes"])
    if not text.strip():
        raise TransplantError("method cw2v needs target-language text: set --set cw2v.text=TEXT.txt (or use a "
                              "tokenizer trained with `transplant tokenizer train`, which records its text)")
    return text


def _candidates(E: torch.Tensor, pieces: list[list[int]], k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(n, K) old ids, their mask and (n,) how many come first as the token's own distinct pieces,
    then its k nearest old rows to their mean (cosine), chunk by chunk (a chunk's similarities stay
    near 256 MB whatever the vocabulary)."""
    n_old = E.shape[0]
    width = max(len(set(p)) for p in pieces) + k
    cand = torch.zeros(len(pieces), width, dtype=torch.int64)
    mask = torch.zeros(len(pieces), width, dtype=torch.bool)
    own_count = torch.zeros(len(pieces), dtype=torch.int64)
    En = torch.nn.functional.normalize(E, dim=1)
    chunk = max(1, (1 << 26) // n_old)
    for start in range(0, len(pieces), chunk):
        part = pieces[start:start + chunk]
        means = torch.stack([E[list(p)].mean(0) for p in part])
        near = (torch.nn.functional.normalize(means, dim=1) @ En.T).topk(min(n_old, k + width), dim=1).indices \
            if k else torch.zeros(len(part), 0, dtype=torch.int64)
        for r, p in enumerate(part):
            own = list(dict.fromkeys(p))
            extra = [int(j) for j in near[r] if int(j) not in own][:k]
            row = own + extra
            cand[start + r, :len(row)] = torch.tensor(row)
            mask[start + r, :len(row)] = True
            own_count[start + r] = len(own)
    return cand, mask, own_count


def _train(E: torch.Tensor, ids: np.ndarray, candidates: tuple, seq: np.ndarray, exact: dict[int, int], n_new: int,
           opts: dict, seed: int) -> torch.Tensor:
    """Skip-gram with negative sampling; returns the (n, K) convex weights (zero where masked).
    `candidates`: (old ids, mask, own-piece counts) from `_candidates`."""
    cand, mask, own = candidates
    slot = torch.full((n_new,), -1, dtype=torch.int64)  # new id -> row of `ids` (a learned mix)
    slot[torch.from_numpy(ids)] = torch.arange(len(ids))
    fixed = torch.full((n_new,), -1, dtype=torch.int64)  # new id -> old id (an exact token's own row)
    for new_id, old_id in exact.items():
        if new_id < n_new:
            fixed[new_id] = old_id
    seq_t = torch.from_numpy(seq)
    usable = (slot[seq_t] >= 0) | (fixed[seq_t] >= 0) if len(seq) else torch.zeros(0, dtype=torch.bool)
    start = torch.where(torch.arange(mask.shape[1]) < own.unsqueeze(1), 0.0, _NEIGHBOUR_LOGIT)
    logits = torch.nn.Parameter(start.masked_fill(~mask, -math.inf))
    if int(usable.sum()) < 2 * opts["window"] + 2:  # too little text for any pair: the mix training starts from
        return torch.softmax(logits.detach(), 1).masked_fill(~mask, 0.0)
    context = torch.nn.Embedding(n_new, E.shape[1], sparse=True)
    torch.nn.init.zeros_(context.weight)
    opt_mix = torch.optim.Adam([logits], lr=opts["lr"])
    opt_ctx = torch.optim.SparseAdam(list(context.parameters()), lr=opts["lr"])
    counts = torch.bincount(seq_t[usable], minlength=n_new).float()
    noise = counts.pow(0.75)
    gen = torch.Generator().manual_seed(seed)
    positions = torch.nonzero(usable).squeeze(1)
    for _ in bar(range(opts["steps"]), desc="cw2v", unit="step"):
        centre_pos = positions[torch.randint(len(positions), (opts["batch"],), generator=gen)]
        offset = torch.randint(1, opts["window"] + 1, (opts["batch"],), generator=gen)
        offset = torch.where(torch.rand(opts["batch"], generator=gen) < 0.5, -offset, offset)
        ctx_pos = (centre_pos + offset).clamp(0, len(seq) - 1)
        keep = usable[ctx_pos] & (ctx_pos != centre_pos)
        centre, ctx_tok = seq_t[centre_pos[keep]], seq_t[ctx_pos[keep]]
        negs = torch.multinomial(noise, len(centre) * opts["negatives"], replacement=True,
                                 generator=gen).view(len(centre), -1)
        v = _centre_rows(E, centre, slot, fixed, cand, logits)
        pos_score = (context(ctx_tok) * v).sum(1)
        neg_score = torch.bmm(context(negs), v.unsqueeze(2)).squeeze(2)
        loss = -(torch.nn.functional.logsigmoid(pos_score).mean()
                 + torch.nn.functional.logsigmoid(-neg_score).sum(1).mean())
        opt_mix.zero_grad(set_to_none=True)
        opt_ctx.zero_grad(set_to_none=True)
        loss.backward()
        opt_mix.step()
        opt_ctx.step()
    return torch.softmax(logits.detach(), 1).masked_fill(~mask, 0.0)


def _centre_rows(E, centre, slot, fixed, cand, logits) -> torch.Tensor:
    """The rows of the centre tokens: a learned token's softmax mix, an exact token's old row."""
    v = torch.zeros(len(centre), E.shape[1])
    learned = slot[centre] >= 0
    if bool(learned.any()):
        rows = slot[centre[learned]]
        w = torch.softmax(logits[rows], 1)
        v[learned] = torch.bmm(w.unsqueeze(1), E[cand[rows]]).squeeze(1)
    v[~learned] = E[fixed[centre[~learned]]]
    return v


def _cache_key(opts: dict, text: str, tokenizer: str, E: torch.Tensor, cand: torch.Tensor) -> str:
    h = hashlib.sha256(_FORMAT)
    # The matrices through their buffers: no copy of a 262k-row matrix just to hash it.
    for part in (text.encode("utf-8"), tokenizer.encode("utf-8"), E.contiguous().numpy().data,
                 cand.contiguous().numpy().data,
                 repr(sorted((k, v) for k, v in opts.items() if k != "text")).encode()):
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:24]


def _cache_file(key: str) -> Path:
    from transplant.io.sources import cache_dir

    return cache_dir() / "cw2v" / f"{key}.safetensors"


def _cached(key: str) -> torch.Tensor | None:
    from safetensors.torch import load_file

    path = _cache_file(key)
    try:
        return load_file(str(path))["weights"] if path.is_file() else None
    except Exception:  # a damaged entry (a full disk, a killed write): trained again
        return None


def _store(key: str, weights: torch.Tensor) -> None:
    import os
    import tempfile

    from safetensors.torch import save_file

    path = _cache_file(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".partial")
        os.close(fd)
        save_file({"weights": weights.contiguous()}, tmp)
        os.replace(tmp, path)
    except OSError:  # the cache is a convenience: a read-only or full disk only costs the next run a retrain
        pass
