"""Scoring dynamic tokenization fairly: the same continuation, in base tokens, read after a prefix
tokenized statically and dynamically at several merge budgets.

Each sample is a prefix of about `prefix_tokens` base tokens (cut at whitespace) and the next
`continuation_tokens` base tokens of the text. The continuation's bits per byte are what the
prefix's tokenization costs the model's understanding; the prefix's token count is what it saves;
the prefill's wall time (tokenizing, merging, predicting rows, and one forward over the prefix
with a KV cache, as `generate` starts) is what it saves in time. The static row is budget None.

Example:
    >>> dyn = DynamicTokenizer.load("smollm2-135m-instruct")  # doctest: +SKIP
    >>> samples = cut_samples(dyn.tokenizer, [open("de/dev.txt").read()], 256, 64, 32)  # doctest: +SKIP
    >>> table = evaluate_dynamic(dyn, samples, budgets=[100, 200])  # doctest: +SKIP
    >>> [row.tokens_saved for row in table.rows]  # doctest: +SKIP
    [0.0, 0.16, 0.23]
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch

from transplant.common.errors import TransplantError
from transplant.common.progress import bar
from transplant.dynamic import DynamicTokenizer, Unit

BATCH = 16  # samples merged together (the "batch" of batch-level merges) and run in one forward


@dataclass
class Sample:
    """A prefix (text) and the base tokens that follow it, with their bytes."""

    prefix: str
    continuation: list[int]
    continuation_bytes: int


@dataclass
class DynamicRow:
    """One row of the table: the static prefix (budget None) or one merge budget."""

    budget: int | None
    prefix_tokens: int
    tokens_saved: float  # share of the static prefix's tokens
    continuation_bits_per_byte: float
    prefill_seconds: float


@dataclass
class DynamicTable:
    rows: list[DynamicRow]
    samples: int
    continuation_bytes: int
    mean_prefix_tokens: int  # static, per sample
    continuation_tokens: int
    predicted_rows: int  # rows the network predicted over the whole evaluation

    def as_dict(self) -> dict:
        return {**{k: v for k, v in asdict(self).items() if k != "rows"}, "rows": [asdict(r) for r in self.rows]}


def cut_samples(tokenizer, texts: list[str], prefix_tokens: int, continuation_tokens: int,
                max_samples: int) -> list[Sample]:
    """Up to `max_samples` (prefix, continuation) pairs, from consecutive whole lines of each text.

    Example:
        >>> from tokenizers import Tokenizer
        >>> tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
        >>> s = cut_samples(tok, ["In the beginning God created the heaven and the earth.\\n" * 40], 32, 8, 2)
        >>> len(s), len(s[0].continuation), s[0].prefix.endswith("the")
        (2, 8, False)
    """
    samples: list[Sample] = []
    for text in texts:
        lines = text.splitlines(keepends=True)
        i = 0
        while i < len(lines) and len(samples) < max_samples:
            buf, j = "", i
            while j < len(lines) and len(buf) < 16 * (prefix_tokens + continuation_tokens):
                buf += lines[j]
                j += 1
                if len(tokenizer.encode(buf, add_special_tokens=False).ids) >= prefix_tokens + continuation_tokens + 8:
                    break
            i = j
            enc = tokenizer.encode(buf, add_special_tokens=False)
            if len(enc.ids) < prefix_tokens + continuation_tokens + 8:
                continue
            cut = enc.offsets[prefix_tokens][0]
            while cut < len(buf) and not buf[cut].isspace():
                cut += 1  # the prefix ends at whitespace: no word is split between the two
            rest = buf[cut:]
            cont = tokenizer.encode(rest, add_special_tokens=False)
            if len(cont.ids) < continuation_tokens:
                continue
            end = cont.offsets[continuation_tokens - 1][1]
            samples.append(Sample(buf[:cut], cont.ids[:continuation_tokens], len(rest[:end].encode("utf-8"))))
    return samples


def evaluate_dynamic(dyn: DynamicTokenizer, samples: list[Sample], budgets: list[int], start_id: int | None,
                     batch_size: int = BATCH, progress: bool = True) -> DynamicTable:
    """The static row, then one row per merge budget (merges per batch of `batch_size` samples)."""
    if not samples:
        raise TransplantError("no sample to score")
    start: list[Unit] = [] if start_id is None else [(start_id,)]
    batches = [samples[b:b + batch_size] for b in range(0, len(samples), batch_size)]
    _prefill(dyn, [start + [(i,) for i in s.continuation] for s in batches[0][:2]])  # warm-up, not timed
    plan = [None, *budgets]
    tokens, nll, seconds = ([0] * len(plan), [0.0] * len(plan), [0.0] * len(plan))
    pbar = bar(total=len(batches) * len(plan), desc="dynamic eval", unit="batch") if progress else None
    # Batch by batch, every budget in turn: the timings of the rows share the machine's state.
    for batch in batches:
        for k, budget in enumerate(plan):
            began = time.perf_counter()
            units = dyn.tokenize([s.prefix for s in batch], merges=0 if budget is None else budget,
                                 add_special_tokens=False)
            _prefill(dyn, [start + u for u in units])
            seconds[k] += time.perf_counter() - began
            tokens[k] += sum(len(u) for u in units)
            nll[k] += _continuation_nll(dyn, [start + u for u in units], [s.continuation for s in batch])
            if pbar is not None:
                pbar.update()
    if pbar is not None:
        pbar.close()
    n_bytes = sum(s.continuation_bytes for s in samples)
    rows = [DynamicRow(budget, tokens[k], round(1.0 - tokens[k] / tokens[0], 6),
                       round(nll[k] / n_bytes / math.log(2), 6), round(seconds[k], 4))
            for k, budget in enumerate(plan)]
    return DynamicTable(rows, len(samples), sum(s.continuation_bytes for s in samples),
                        round(rows[0].prefix_tokens / len(samples)), len(samples[0].continuation), dyn.predicted)


def _prefill(dyn: DynamicTokenizer, sequences: list[list[Unit]]) -> None:
    """A forward over each prefix with a KV cache, as `generate` begins on one prompt (its output
    unused). One at a time: in a padded batch every row costs the longest row, which hides what a
    shorter sequence saves (engines that pack prompts without padding save it)."""
    for seq in sequences:
        x, mask = dyn.embed([seq])
        with torch.no_grad():
            dyn.model(inputs_embeds=x, attention_mask=mask, use_cache=True, logits_to_keep=1)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded batch: 0 at each row's first real token."""
    return (mask.cumsum(-1) - 1).clamp_min(0)


def _continuation_nll(dyn: DynamicTokenizer, prefixes: list[list[Unit]], continuations: list[list[int]]) -> float:
    """Nats of each continuation after its prefix (left-padded: every continuation ends the row)."""
    n = len(continuations[0])
    x, mask = dyn.embed([p + [(i,) for i in c] for p, c in zip(prefixes, continuations)])
    with torch.no_grad():
        logits = dyn.model(inputs_embeds=x, attention_mask=mask, position_ids=_positions(mask), use_cache=False,
                           logits_to_keep=n + 1).logits[:, :-1].float()
    targets = torch.tensor(continuations, device=logits.device)
    return -float(torch.log_softmax(logits, -1).gather(2, targets.unsqueeze(2)).sum())


__all__ = ["DynamicRow", "DynamicTable", "Sample", "cut_samples", "evaluate_dynamic"]
