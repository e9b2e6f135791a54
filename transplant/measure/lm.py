"""What `transformers` does around a causal LM's body, in one place: the scale its embedding
module puts on input rows, what it does to the logits after the head, the start token a text
is read after, and batches that put that start token first.

Code that feeds a model its own rows (`inputs_embeds`, as healing and the hypernetwork do) or
takes its final hidden states against a head of its own (calibration) must do what the model's
`forward` would: Gemma multiplies input rows by sqrt(hidden) inside its embedding module, Gemma 2
soft-caps the logits (cap * tanh(logits / cap)), Cohere multiplies them and Granite divides them.
Every text is read after one start token (bos, else eos), as in the bits-per-byte protocol
(`transplant.measure.evaluate`), so that every text token is predicted.

Example:
    >>> embed_scale(gemma)  # doctest: +SKIP
    22.627416997969522
    >>> logit_softcap(gemma2.config), logit_multiplier(cohere.config)  # doctest: +SKIP
    (30.0, 0.0625)
    >>> ids, mask = with_start_token([[5, 6], [7]], start_id=1)
    >>> ids.tolist(), mask.tolist()
    ([[1, 5, 6], [1, 7, 1]], [[1, 1, 1], [1, 1, 0]])
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch


def embed_scale(lm) -> float:
    """The factor the model's embedding module multiplies rows by (Gemma: sqrt(hidden)); 1 otherwise.

    A model fed `inputs_embeds` skips that module, so the caller multiplies by this itself.
    """
    scale = getattr(lm.get_input_embeddings(), "embed_scale", None)
    if scale is None:
        return 1.0
    return float(scale.item() if torch.is_tensor(scale) else scale)


def text_config(config):
    """The text model's config (a multimodal config holds it as a sub-config; others are their own)."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def logit_softcap(config) -> float | None:
    """The soft cap transformers applies to the logits (Gemma 2: cap * tanh(logits / cap)); None: none."""
    return getattr(text_config(config), "final_logit_softcapping", None)


def logit_multiplier(config) -> float:
    """The constant transformers multiplies `lm_head(h)` by before any soft cap (Cohere's
    `logit_scale`; Granite divides by `logits_scaling`); 1 for most models."""
    cfg = text_config(config)
    mult = float(getattr(cfg, "logit_scale", None) or 1.0)
    div = float(getattr(cfg, "logits_scaling", None) or 1.0)
    return mult / div


@dataclass(frozen=True)
class LogitRule:
    """What a model does to `lm_head(hidden)` to make its logits, as transformers' own forward
    does: multiply by a constant (Cohere's `logit_scale`, Granite's 1 / `logits_scaling`), then a
    soft cap (Gemma 2/3: cap * tanh(logits / cap)). Every path that computes logits from hidden
    states itself (calibration, heal, hypernetwork training) goes through it; eval and drafts run
    the model's own forward.

    Example:
        >>> rule = LogitRule(multiplier=0.5, softcap=2.0)
        >>> rule(torch.tensor([4.0, -4.0]))  # 2 * tanh(0.5 * x / 2)
        tensor([ 1.5232, -1.5232])
        >>> LogitRule(multiplier=2.0)(torch.tensor([4.0]), offset=torch.tensor([1.0]))  # offset after the multiplier
        tensor([9.])
    """

    multiplier: float = 1.0
    softcap: float | None = None

    @classmethod
    def of(cls, config) -> LogitRule:
        return cls(logit_multiplier(config), logit_softcap(config) or None)

    def __call__(self, logits: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
        """`logits` (the head's product) as the model's forward returns them; `offset` (e.g. a
        sampled softmax's log-count correction) is added after the multiplier, before the cap."""
        if self.multiplier != 1.0:
            logits = logits * self.multiplier
        if offset is not None:
            logits = logits + offset
        if self.softcap:
            logits = self.softcap * torch.tanh(logits / self.softcap)
        return logits


def start_token(roles: Mapping[str, int]) -> int | None:
    """The id a text is read after: the tokenizer's bos, else its eos; None when it has neither.

    Example:
        >>> start_token({"eos": 2}), start_token({"bos": 1, "eos": 2}), start_token({})
        (2, 1, None)
    """
    return roles.get("bos", roles.get("eos"))


def with_start_token(seqs: list[list[int]], start_id: int, pad: int | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask), both int64 (len(seqs), longest + 1): the start token, then each
    sequence, then `pad` (default: the start token; the mask is 0 there).

    Example:
        >>> with_start_token([[5]], 1, pad=-1)[0].tolist()
        [[1, 5]]
    """
    width = max(len(s) for s in seqs) + 1
    ids = torch.full((len(seqs), width), start_id if pad is None else pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, 0] = start_id
        ids[r, 1:len(s) + 1] = torch.tensor(s, dtype=torch.long)
        mask[r, :len(s) + 1] = 1
    return ids, mask


def start_token_batches(chunks: list[list[int]], start_id: int, batch_size: int
                        ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Batches of `batch_size` chunks, each as (its text tokens, ids, mask) from `with_start_token`
    (on the CPU: the caller moves them to the model's device).

    Example:
        >>> [(n, ids.tolist()) for n, ids, _ in start_token_batches([[5, 6], [7]], 1, 1)]
        [(2, [[1, 5, 6]]), (1, [[1, 7]])]
    """
    for b in range(0, len(chunks), batch_size):
        batch = chunks[b:b + batch_size]
        ids, mask = with_start_token(batch, start_id)
        yield sum(len(c) for c in batch), ids, mask
