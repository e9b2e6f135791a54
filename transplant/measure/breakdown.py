"""Where the loss is: bits per byte split by the provenance of the tokens (issue 18).

A transplanted folder's plan says where each new id's row came from (`exact`, `special`, `byte`,
a method such as `fvt` or `hypernet`, a fallback such as `mean`). In the same forward pass that
scores bits per byte (`transplant.measure.evaluate.score`, through its `observe` hook), every
scored position gives its loss and the probability mass the model puts on each kind; the
softmax is reduced to per-kind masses batch by batch, so memory stays that of the logits.

Per kind: its share of the text's tokens, its share of the loss, nats per token and bits per
byte of its tokens, and its mean mass against its share of next tokens (the calibration gap:
a made row that is over-predicted shows a mass above its share, and the copied tokens it steals
from a mass below theirs). A model without a plan has one kind, `all`.

`compare_on_bytes` aligns two tokenizations of the same text by bytes: each token's loss is
spread evenly over the bytes it covers, so the reference's loss on any byte span is defined, and
each token of the model is charged its loss minus the reference's loss on its bytes (its
excess). The excesses add up to the difference of the two models' total losses.

Example:
    >>> text = open(text_file).read()[:3000]
    >>> bd = breakdown_bpb(model_dir, [text])  # a model without a plan: one kind
    >>> [row.kind for row in bd.kinds], bd.kinds[0].token_share, round(bd.kinds[0].mass, 6)
    (['all'], 1.0, 1.0)
    >>> bd.result.bpb == evaluate_bpb(model_dir, [text]).bpb  # the same bits per byte, to the last bit
    True
    >>> itself = compare_on_bytes(bd, breakdown_bpb(model_dir, [text]), top=3)
    >>> abs(itself.nats) < 1e-6, all(abs(t.nats) < 1e-6 for t in itself.tokens)
    (True, True)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from transplant.common.errors import TransplantError
from transplant.common.texts import split_documents
from transplant.core.plan import Plan
from transplant.core.plan.storage import PLAN_JSON
from transplant.core.vocab import Vocabulary, load_tokenizer
from transplant.io.sources import resolve_model
from transplant.measure.evaluate import EvalResult, evaluate_bpb

# Kinds that copy a row of the old model, listed first (in this order); the others were made.
COPIED_ORDER = ("exact", "byte", "special", "special-mean", "pad")
# Logit elements reduced at once (32 MB as float32, 64 MB more as float64 for the sums): bounds
# the softmax's working memory beside the logits themselves.
SLICE_ELEMENTS = 1 << 23


class KindTally:
    """The `observe` hook of `score`: per scored position its target id and loss (nats), and the
    summed probability mass on each kind of id.

    Args:
        kind_of: the kind index of each id (ids past its end, e.g. padded head rows, get `extra`).
        names: the kind names, indexed by `kind_of`.
        extra: the name of the kind of ids past the end of `kind_of`.

    Example:
        >>> tally = KindTally(np.array([0, 0, 1]), ["exact", "fvt"])
        >>> tally(torch.tensor([[[0.0, 0.0, math.log(2.0)], [0.0, 0.0, 0.0]]]), torch.tensor([[2, -100]]))
        >>> tally.mass.tolist(), [round(x, 4) for x in tally.nll_nats().tolist()], tally.target_ids().tolist()
        ([0.5, 0.5], [0.6931], [2])
    """

    def __init__(self, kind_of: np.ndarray, names: list[str], extra: str = "pad") -> None:
        self.kind_of = torch.as_tensor(np.asarray(kind_of, dtype=np.int64))
        self.names = list(names)
        self.extra = extra
        self.mass = torch.zeros(len(self.names), dtype=torch.float64)
        self.row_kinds = self.kind_of  # the kind of each output row, once the logits' width is known
        self._onehot: torch.Tensor | None = None
        self._ids: list[torch.Tensor] = []
        self._nll: list[torch.Tensor] = []

    def _kinds_for(self, rows: int, device: torch.device) -> torch.Tensor:
        """A (rows, kinds) 0/1 matrix: the softmax times it is the mass on each kind."""
        if self._onehot is None or self._onehot.shape[0] != rows:
            kind_of = self.kind_of[:rows]
            if rows > len(kind_of):
                if self.extra not in self.names:
                    self.names.append(self.extra)
                    self.mass = torch.cat([self.mass, torch.zeros(1, dtype=torch.float64)])
                pad = torch.full((rows - len(kind_of),), self.names.index(self.extra), dtype=torch.long)
                kind_of = torch.cat([kind_of, pad])
            self.row_kinds = kind_of
            onehot = torch.zeros(rows, len(self.names), dtype=torch.float64)
            onehot[torch.arange(rows), kind_of] = 1.0
            self._onehot = onehot.to(device)
        return self._onehot

    @torch.inference_mode()
    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        rows = logits.shape[-1]
        onehot = self._kinds_for(rows, logits.device)
        flat, wanted = logits.flatten(0, -2), targets.flatten()
        step = max(1, SLICE_ELEMENTS // rows)
        for s in range(0, len(wanted), step):
            t = wanted[s:s + step]
            keep = t != -100
            if not bool(keep.any()):
                continue
            t = t[keep]
            x = flat[s:s + step][keep].float()
            lse = torch.logsumexp(x, dim=-1)
            self._nll.append((lse - x.gather(1, t[:, None]).squeeze(1)).double().cpu())
            self._ids.append(t.cpu())
            # exp(x - lse) is the softmax; (positions x kinds) is all that is kept of it. Summed in
            # float64: float32 sums over a 49k vocabulary drift by 1e-5.
            self.mass += (torch.exp(x.sub_(lse[:, None])).double() @ onehot).sum(0).cpu()

    def target_ids(self) -> torch.Tensor:
        """Every scored position's target id, in text order."""
        return torch.cat(self._ids) if self._ids else torch.zeros(0, dtype=torch.long)

    def nll_nats(self) -> torch.Tensor:
        """Every scored position's loss in nats (float64), in text order."""
        return torch.cat(self._nll) if self._nll else torch.zeros(0, dtype=torch.float64)


@dataclass
class KindRow:
    """One kind of token: its share of the text and of the loss, and the mass the model gives it."""

    kind: str
    made: bool  # rows a method made (not copied from the old model)
    rows: int  # ids of this kind in the vocabulary
    tokens: int  # of the scored text
    token_share: float
    nats: float
    loss_share: float
    nats_per_token: float | None
    bytes: int
    bits_per_byte: float | None  # of this kind's own bytes
    bpb: float  # its part of the model's bits per byte (the parts add up to it)
    mass: float  # mean probability on this kind over the scored positions
    gap: float  # mass - token_share: above 0 over-predicted, below 0 under-predicted


@dataclass
class Breakdown:
    """A model's bits per byte (`result`) with its per-kind rows and what `compare_on_bytes` needs."""

    result: EvalResult
    kinds: list[KindRow]
    ids: np.ndarray = field(repr=False)  # scored token ids, in text order
    nll: np.ndarray = field(repr=False)  # their losses (nats)
    ends: np.ndarray = field(repr=False)  # each token's end in the documents' concatenated bytes
    doc_bytes: list[int] = field(repr=False)
    kind_of: np.ndarray = field(repr=False)  # kind index of each id (KindRow order)
    vocab: Vocabulary = field(repr=False)

    def as_dict(self) -> list[dict]:
        """The per-kind rows for a JSON report."""
        return [asdict(row) for row in self.kinds]

    def token_text(self, idx: int) -> str:
        """What token `idx` stands for, readable."""
        text = self.vocab.tokens[idx].text if 0 <= idx < len(self.vocab) else b""
        return text.decode("utf-8", "backslashreplace")


def kinds_of_ids(plan: Plan | None, rows: int) -> tuple[np.ndarray, list[str], list[bool]]:
    """(kind index of each id, kind names, made or copied) for a plan (`None`: one kind, `all`);
    copied kinds first, then made kinds by their number of rows.

    Example:
        >>> from types import SimpleNamespace
        >>> plan = SimpleNamespace(provenance=["exact", "fvt", "special", "fvt"],
        ...                        made_rows=lambda: np.array([False, True, False, True]))
        >>> kinds_of_ids(plan, 4)
        (array([0, 2, 1, 2]), ['exact', 'special', 'fvt'], [False, False, True])
        >>> kinds_of_ids(None, 3)
        (array([0, 0, 0]), ['all'], [False])
    """
    if plan is None:
        return np.zeros(rows, dtype=np.int64), ["all"], [False]
    labels = list(plan.provenance)
    made_mask = plan.made_rows()
    made = {p for p, m in zip(labels, made_mask.tolist()) if m}
    counts: dict[str, int] = {}
    for p in labels:
        counts[p] = counts.get(p, 0) + 1
    copied = [k for k in COPIED_ORDER if k in counts and k not in made]
    copied += sorted((k for k in counts if k not in made and k not in copied), key=lambda k: -counts[k])
    names = copied + sorted(made, key=lambda k: (-counts[k], k))
    index = {k: i for i, k in enumerate(names)}
    return np.array([index[p] for p in labels], dtype=np.int64), names, [k in made for k in names]


def token_ends(doc_ids: list[list[int]], doc_bytes: list[int], vocab: Vocabulary) -> np.ndarray:
    """Where each token ends in the documents' concatenated bytes (float64).

    A document whose tokens' bytes do not add up to its own (a tokenizer that normalizes, adds a
    prefix space or drops characters) has its token boundaries stretched to its length, so both
    tokenizations still meet at every document boundary.

    Example:
        >>> vocab = load_tokenizer(model_dir).vocabulary()
        >>> ids = vocab.tokenizer.encode("in the", add_special_tokens=False).ids
        >>> [vocab.tokens[i].text for i in ids], token_ends([ids], [6], vocab).tolist()
        ([b'in', b' the'], [2.0, 6.0])
    """
    lengths = np.array([len(t.text) for t in vocab.tokens], dtype=np.float64)
    out, start = [], 0.0
    for ids, size in zip(doc_ids, doc_bytes):
        spans = lengths[np.asarray(ids, dtype=np.int64)] if ids else np.zeros(0)
        covered = spans.sum()
        if covered != size:
            spans = spans * (size / covered) if covered > 0 else np.full(len(ids), size / max(len(ids), 1))
        out.append(start + np.cumsum(spans))
        start += size
    return np.concatenate(out) if out else np.zeros(0)


def breakdown_bpb(model_dir: str | Path, texts: list[str], tokenizer: str | Path | None = None, ctx: int = 1024,
                  batch_size: int | None = None, dtype: torch.dtype = torch.float32,
                  trust_remote_code: bool = False, label: str | None = None) -> Breakdown:
    """`evaluate_bpb` (same arguments, same number) plus where the loss is, in the same pass.

    The kinds come from the folder's plan (`transplant_plan.json`); a folder without one has the
    single kind `all`.
    """
    folder = resolve_model(model_dir)
    src = load_tokenizer(tokenizer or folder)
    vocab = src.vocabulary()
    plan = Plan.load(folder) if (folder / PLAN_JSON).exists() else None
    kind_of, names, made = kinds_of_ids(plan, len(vocab))
    tally = KindTally(kind_of, names)
    result = evaluate_bpb(folder, texts, tokenizer=tokenizer, ctx=ctx, batch_size=batch_size, dtype=dtype,
                          trust_remote_code=trust_remote_code, label=label, observe=tally)
    names, made = tally.names, made + [False] * (len(tally.names) - len(made))  # + padded head rows
    docs = [d for t in texts for d in split_documents(t)]
    doc_ids = [e.ids for e in src.tokenizer.encode_batch(docs, add_special_tokens=False)]
    ids, nll = tally.target_ids().numpy(), tally.nll_nats().numpy()
    if not np.array_equal(ids, np.fromiter((i for d in doc_ids for i in d), dtype=np.int64)):
        raise TransplantError("the scored tokens are not the text's tokens (a bug: please report it)")
    row_kinds = tally.row_kinds.numpy()
    lengths = np.array([len(t.text) for t in vocab.tokens], dtype=np.int64)
    doc_bytes = [len(d.encode("utf-8")) for d in docs]
    kinds = _rows(names, made, row_kinds, ids, nll, lengths[ids], tally.mass.numpy(), result.bytes)
    return Breakdown(result, kinds, ids, nll, token_ends(doc_ids, doc_bytes, vocab), doc_bytes, row_kinds, vocab)


def _rows(names: list[str], made: list[bool], kind_of: np.ndarray, ids: np.ndarray, nll: np.ndarray,
          token_bytes: np.ndarray, mass: np.ndarray, total_bytes: int) -> list[KindRow]:
    k = len(names)
    kinds = kind_of[ids]
    count = np.bincount(kinds, minlength=k)
    nats = np.bincount(kinds, weights=nll, minlength=k)
    nbytes = np.bincount(kinds, weights=token_bytes, minlength=k).astype(np.int64)
    n_rows = np.bincount(kind_of, minlength=k)
    n, total = max(len(ids), 1), float(nll.sum()) or 1.0
    return [KindRow(kind=names[i], made=made[i], rows=int(n_rows[i]), tokens=int(count[i]),
                    token_share=float(count[i] / n), nats=float(nats[i]), loss_share=float(nats[i] / total),
                    nats_per_token=float(nats[i] / count[i]) if count[i] else None, bytes=int(nbytes[i]),
                    bits_per_byte=float(nats[i] / math.log(2) / nbytes[i]) if nbytes[i] else None,
                    bpb=float(nats[i] / math.log(2) / max(total_bytes, 1)), mass=float(mass[i] / n),
                    gap=float(mass[i] / n - count[i] / n)) for i in range(k)]


@dataclass
class TokenExcess:
    """One token of the model: how much more it cost, in all, than the reference on its bytes."""

    token: str
    id: int
    kind: str
    count: int
    nats: float  # summed over its occurrences
    per_occurrence: float


@dataclass
class Comparison:
    """The model's loss against the reference's on the same bytes: in all, per kind, top tokens."""

    nats: float
    by_kind: dict[str, float]
    tokens: list[TokenExcess]

    def as_dict(self) -> dict:
        return {"nats": self.nats, "by_kind": self.by_kind, "top_tokens": [asdict(t) for t in self.tokens]}


def excess_per_token(model: Breakdown, reference: Breakdown) -> np.ndarray:
    """Each scored token's loss minus the reference's loss on the same bytes (nats)."""
    if model.doc_bytes != reference.doc_bytes:
        raise TransplantError("the two models were scored on different texts (score both on the same text)")
    # The reference's cumulative loss at its token ends; linear in between (loss spread evenly
    # over a token's bytes). Tokens ending at one byte keep the last cumulative value there.
    ends, cum = reference.ends, np.cumsum(reference.nll)
    last = np.append(ends[1:] != ends[:-1], True) if len(ends) else np.zeros(0, dtype=bool)
    xp, fp = np.concatenate([[0.0], ends[last]]), np.concatenate([[0.0], cum[last]])
    starts = np.concatenate([[0.0], model.ends[:-1]])
    return model.nll - (np.interp(model.ends, xp, fp) - np.interp(starts, xp, fp))


def compare_on_bytes(model: Breakdown, reference: Breakdown, top: int = 10) -> Comparison:
    """Where the model loses against `reference` on the same bytes: per kind and the `top` tokens
    by summed excess (see the module docstring)."""
    excess = excess_per_token(model, reference)
    names = [row.kind for row in model.kinds]
    by_kind = np.bincount(model.kind_of[model.ids], weights=excess, minlength=len(names))
    per_id = np.bincount(model.ids, weights=excess, minlength=len(model.kind_of))
    counts = np.bincount(model.ids, minlength=len(model.kind_of))
    order = [int(i) for i in np.argsort(-per_id, kind="stable") if counts[i]][:max(top, 0)]
    tokens = [TokenExcess(model.token_text(i), i, names[model.kind_of[i]], int(counts[i]), float(per_id[i]),
                          float(per_id[i] / counts[i])) for i in order]
    return Comparison(float(excess.sum()), {n: float(v) for n, v in zip(names, by_kind)}, tokens)
