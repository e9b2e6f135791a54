"""Output-side calibration: one scale for the LM-head rows of made tokens, fitted by likelihood.

Why: a made row (FVT, kNN, OMP, ...) is a mix of old rows, and the transplanted model gives made
tokens far more probability than they get in text (measured on SmolLM2 onto a German BPE: 0.79 of
the mass against 0.28 of the next tokens), taking it from the tokens copied exactly. A fit on the
source vocabulary cannot see this (it has no made tokens); text in the target language or domain
that the user already has (e.g. the new tokenizer's training text) can. So: read that text with
the new tokenizer, take the model's final hidden states once, and choose the scale `a` of the made
rows' logits that minimises the negative log-likelihood of the text. Only the LM head matters
(scaling the input side moved BPB by < 1%); a tied model keeps its head tied and the scale is
applied to the shared rows, an untied one (or `--untie`) scales the head's rows only.

Cost: one forward pass over `max_tokens` tokens without the LM head, then two matrix products of
the hidden states with the made rows (a coarse grid, then a fine one around its best point; the
logits of all grid points come from one product, so a 262k vocabulary stays cheap).

Example:
    >>> fit = fit_output_scale(model, head, made, encode, start_id, [open("de/train.txt").read()])  # doctest: +SKIP
    >>> round(fit.scale, 3), fit.nll_after < fit.nll_before  # doctest: +SKIP
    (0.875, True)
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .errors import TransplantError
from .evaluate import pack, split_documents
from .progress import bar

COARSE = np.round(np.arange(0.40, 1.3001, 0.05), 4)


@dataclass
class CalibrationFit:
    """The fitted scale and what it changed on the calibration text (nats per token)."""

    scale: float
    tokens: int
    nll_before: float
    nll_after: float
    made_share: float  # share of the text's tokens that are made tokens
    made_mass_before: float  # mean probability the model gives made tokens, before calibration
    made_mass_after: float
    text_fingerprint: str

    def as_meta(self) -> dict:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _logit_transform(config):
    """The map transformers applies to `lm_head(h)` for this architecture (scale, softcap)."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    cap = getattr(cfg, "final_logit_softcapping", None)
    mult = float(getattr(cfg, "logit_scale", None) or 1.0)
    div = float(getattr(cfg, "logits_scaling", None) or 1.0)  # Granite divides

    def transform(x: torch.Tensor) -> torch.Tensor:
        x = x * (mult / div)
        return cap * torch.tanh(x / cap) if cap else x

    return transform


@torch.inference_mode()
def final_hidden_states(model, chunks: list[list[int]], start_id: int, batch_tokens: int = 2048
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden states (N, dim) float32, next-token targets (N,)) for every text token of `chunks`."""
    base = model.base_model
    device = next(model.parameters()).device
    hs, ys = [], []
    per_batch = max(1, batch_tokens // max(len(c) + 1 for c in chunks))
    pbar = bar(total=sum(len(c) for c in chunks), desc="calibrating: reading", unit="tok", unit_scale=True)
    for b in range(0, len(chunks), per_batch):
        batch = chunks[b:b + per_batch]
        width = max(len(c) for c in batch) + 1
        ids = torch.full((len(batch), width), start_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, c in enumerate(batch):
            ids[r, 1:len(c) + 1] = torch.tensor(c, dtype=torch.long)
            mask[r, :len(c) + 1] = 1
        out = base(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state[:, :-1]
        keep = mask[:, 1:].bool()
        hs.append(out[keep.to(out.device)].float().cpu())
        ys.append(ids[:, 1:][keep])
        pbar.update(sum(len(c) for c in batch))
    pbar.close()
    return torch.cat(hs), torch.cat(ys)


def _nll_grid(h: torch.Tensor, y: torch.Tensor, head: torch.Tensor, made: torch.Tensor, scales: np.ndarray,
              transform, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Summed NLL and summed made-token probability mass for every scale in `scales`."""
    made_ids = torch.nonzero(made).squeeze(1)
    kept_ids = torch.nonzero(~made).squeeze(1)
    w_made, w_kept = head[made_ids], head[kept_ids]
    is_made = made[y]
    # Position of each target among the made / kept rows.
    pos = torch.full((head.shape[0],), -1, dtype=torch.long)
    pos[made_ids] = torch.arange(len(made_ids))
    pos[kept_ids] = torch.arange(len(kept_ids))
    a = torch.tensor(scales, dtype=torch.float32)
    nll = torch.zeros(len(scales), dtype=torch.float64)
    mass = torch.zeros(len(scales), dtype=torch.float64)
    for s in range(0, len(y), chunk):
        hc, yc, mc = h[s:s + chunk], y[s:s + chunk], is_made[s:s + chunk]
        kept = transform(hc @ w_kept.T)  # (t, kept)
        lse_kept = torch.logsumexp(kept, dim=1)  # (t,)
        raw = hc @ w_made.T  # (t, made)
        p = pos[yc]
        tgt_kept = kept.gather(1, torch.where(mc, 0, p).unsqueeze(1)).squeeze(1)
        tgt_raw = raw.gather(1, torch.where(mc, p, 0).unsqueeze(1)).squeeze(1)
        del kept
        for k, alpha in enumerate(a):
            lse_made = torch.logsumexp(transform(raw * alpha), dim=1)
            lse = torch.logaddexp(lse_kept, lse_made)
            tgt = torch.where(mc, transform(tgt_raw * alpha), tgt_kept)
            nll[k] += float((lse - tgt).sum())
            mass[k] += float(torch.exp(lse_made - lse).sum())
    return nll.numpy(), mass.numpy()


def fit_output_scale(model, head: torch.Tensor, made: np.ndarray, encode, start_id: int, texts: list[str],
                     max_tokens: int = 8192, ctx: int = 512) -> CalibrationFit:
    """Fit the scale of the made rows' logits by likelihood on `texts` (see the module docstring).

    Args:
        model: the transplanted model (new input embeddings in place), any causal LM.
        head: the new LM-head matrix (new_size x dim) before calibration.
        made: boolean mask of the rows to scale (`Plan.made_rows()` of the head's side).
        encode: `list[str] -> list[list[int]]` with the new tokenizer, no special tokens.
        start_id: the token put before each chunk (bos, else eos), as in the BPB protocol.
        texts: calibration text in the target language or domain (never the evaluation text).
        max_tokens: how many text tokens to read (the leading whole documents).
    """
    docs = [d for t in texts for d in split_documents(t)]
    if not docs:
        raise TransplantError("the calibration text is empty (pass a UTF-8 text file in the target language)")
    ids = encode(docs)
    taken, used = [], 0
    for doc in ids:
        if used >= max_tokens:
            break
        taken.append(doc[: max_tokens - used])
        used += len(taken[-1])
    chunks = [c for c in pack(taken, ctx) if c]
    made_t = torch.from_numpy(np.asarray(made[: head.shape[0]], dtype=bool))
    if not made_t.any():
        raise TransplantError("nothing to calibrate: every row of the new vocabulary was copied")
    h, y = final_hidden_states(model, chunks, start_id)
    digest = hashlib.sha256("\x00".join(texts).encode("utf-8")).hexdigest()[:16]
    return fit_scale(h, y, head, made_t, _logit_transform(model.config), digest)


def fit_scale(h: torch.Tensor, y: torch.Tensor, head: torch.Tensor, made: torch.Tensor, transform=None,
              text_fingerprint: str = "") -> CalibrationFit:
    """The likelihood-optimal scale of the made rows' logits, given final hidden states `h` (N, dim),
    next tokens `y` (N,), the head (V, dim) and the made-row mask (V,): a coarse grid over
    0.40..1.30, then a fine one (step 0.01) around its best point. Never worse than no scale.

    Example:
        >>> fit = fit_scale(h, y, head, made)  # doctest: +SKIP
    """
    transform = transform or (lambda x: x)
    head = head.to(torch.float32)
    coarse_nll, coarse_mass = _nll_grid(h, y, head, made, COARSE, transform)
    best = float(COARSE[int(np.argmin(coarse_nll))])
    fine = np.round(np.arange(best - 0.05, best + 0.0501, 0.01), 4)
    fine_nll, fine_mass = _nll_grid(h, y, head, made, fine, transform)
    k = int(np.argmin(fine_nll))
    one = int(np.argmin(np.abs(COARSE - 1.0)))
    n = len(y)
    fit = CalibrationFit(float(fine[k]), n, float(coarse_nll[one]) / n, float(fine_nll[k]) / n,
                         float(made[y].float().mean()), float(coarse_mass[one]) / n, float(fine_mass[k]) / n,
                         text_fingerprint)
    if not math.isfinite(fit.nll_after) or fit.nll_after > fit.nll_before:
        # Never make the text less likely than no calibration at all.
        fit.scale, fit.nll_after, fit.made_mass_after = 1.0, fit.nll_before, fit.made_mass_before
    return fit


def apply_scale(plan, scale: float, output_only: bool) -> str:
    """Record `scale` on the made rows of the LM-head side; returns "output" or "both" (tied).

    With `output_only` (an untied model, or `--untie`) or a plan whose head already has rows of its
    own, the head's side gets the scale alone; otherwise the shared rows of a tied model do.
    """
    from copy import deepcopy

    if output_only and plan.output is None:
        plan.output = deepcopy(plan)
        plan.output.output, plan.output.meta = None, {}
    side = plan.output if plan.output is not None else plan
    made = side.made_rows()
    scales = np.ones(side.new_size, dtype=np.float32) if side.scales is None else side.scales.copy()
    scales[made] *= np.float32(scale)
    side.scales = scales
    return "output" if plan.output is not None else "both"
