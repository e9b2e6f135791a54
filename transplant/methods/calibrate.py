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

Cost: one forward pass over `max_tokens` tokens without the LM head (the model keeps its own
embedding matrix and reads the text through the new rows of the ids it uses, no new_vocab x dim
copy), then two passes of the hidden states against the head, a few positions at a time. The
first scores the start point exactly and condenses each position's made logits into a few
hundred weighted points per group of rows (a histogram whose bins keep their members' count,
mean and spread: right to ~1e-6 of the made mass, no sampling); Newton's method (or the soft-cap
grid) then runs on those points alone, and the second pass scores the fitted scales exactly.
SmolLM2 onto Gemma's 262k vocabulary on 2 CPU cores: see benchmarks/calibration_speed.py (757 s
and 6 GB when every Newton step recomputed the logits).

The module's parts: `calibrate_read` (the forward pass), `calibrate_compact` (the passes over
the head and the compact form), `calibrate_fit` (Newton's method, the grid, `CalibrationFit`).

Example:
    >>> fit = fit_output_scale(model, head, made, encode, start_id, [open("de/train.txt").read()])  # doctest: +SKIP
    >>> round(fit.scale, 3), fit.nll_after < fit.nll_before  # doctest: +SKIP
    (0.875, True)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from copy import deepcopy

import numpy as np
import torch

from transplant.common.errors import TransplantError
from transplant.methods.calibrate_fit import CalibrationFit, fit_scale
from transplant.methods.calibrate_read import RowsOf, calibration_chunks, final_hidden_states, read_hidden_states

__all__ = ["CalibrationFit", "apply_scale", "final_hidden_states", "fit_output_scale", "fit_scale", "row_buckets"]


def fit_output_scale(model: torch.nn.Module | Callable[[], tuple[torch.nn.Module, RowsOf]],
                     head: torch.Tensor | Callable[[], torch.Tensor], made: np.ndarray, encode, start_id: int,
                     texts: list[str], max_tokens: int = 4096, ctx: int = 512,
                     buckets: np.ndarray | None = None) -> CalibrationFit:
    """Fit the scale of the made rows' logits by likelihood on `texts` (see the module docstring).

    Args:
        model: the transplanted model (new input embeddings in place), any causal LM; or a
            function that loads the source model and returns `(model, input_rows)`, where
            `input_rows(ids)` gives the new input rows of the sorted `ids`: the model then reads
            the text through those rows alone (`calibrate_read.hidden_states_through_rows`) and
            is let go before `head` is built.
        head: the new LM-head matrix (new_size x dim) before calibration, or a function that
            builds it (called once the text is read: model and head are never held together).
        made: boolean mask of the rows to scale (`Plan.made_rows()` of the head's side).
        encode: `list[str] -> list[list[int]]` with the new tokenizer, no special tokens.
        start_id: the token put before each chunk (bos, else eos), as in the BPB protocol.
        texts: calibration text in the target language or domain (never the evaluation text).
        max_tokens: how many text tokens to read (the leading whole documents).
        buckets: per-row bucket ids (`row_buckets`) to fit one scale per bucket; None: one scale.

    Example:
        >>> from tokenizers import Tokenizer
        >>> from transformers import AutoModelForCausalLM
        >>> model = AutoModelForCausalLM.from_pretrained(model_dir)
        >>> tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
        >>> encode = lambda docs: [e.ids for e in tok.encode_batch(docs, add_special_tokens=False)]
        >>> made = np.arange(model.config.vocab_size) >= 300  # as if a transplant had made the last rows
        >>> fit = fit_output_scale(model, model.lm_head.weight.detach(), made, encode,
        ...                        tok.token_to_id("<|im_start|>"), [open(text_file).read()], max_tokens=512)
        >>> fit.tokens, fit.nll_after <= fit.nll_before
        (512, True)
    """
    chunks = calibration_chunks(encode, texts, max_tokens, ctx)
    if not np.asarray(made, dtype=bool).any():
        raise TransplantError("nothing to calibrate: every row of the new vocabulary was copied")
    h, y, mult, cap = read_hidden_states(model, chunks, start_id, len(made))
    head = head() if callable(head) else head
    made_t = torch.from_numpy(np.asarray(made[: head.shape[0]], dtype=bool))
    digest = hashlib.sha256("\x00".join(texts).encode("utf-8")).hexdigest()[:16]
    transform = (lambda x: cap * torch.tanh(x * mult / cap)) if cap else None
    # The constant multiplier goes on the hidden states (4096 x dim), not on a copy of the head.
    return fit_scale(h if cap or mult == 1.0 else h * mult, y, head, made_t, transform, digest, buckets)


def row_buckets(side, made: np.ndarray) -> np.ndarray:
    """Bucket of every row for per-bucket scales: -1 for rows kept as they are; made linear rows by
    how many old rows they mix (1, 2, 3, 4+ -> 0..3: more pieces, a flatter mean), statistical and
    dense rows 4.

    Example:
        >>> buckets = row_buckets(plan.side("output"), plan.side("output").made_rows())  # doctest: +SKIP
    """
    nnz = np.diff(side.indptr)
    buckets = np.where(side.kinds == 0, np.clip(nnz, 1, 4) - 1, 4).astype(np.int64)
    return np.where(made[: len(buckets)], buckets, -1)


def apply_scale(plan, fit: CalibrationFit | float, output_only: bool, buckets: np.ndarray | None = None) -> str:
    """Record the fitted scale(s) on the made rows of the LM-head side; returns "output" or "both".

    With `output_only` (an untied model, or `--untie`) or a plan whose head already has rows of its
    own, the head's side gets the scales alone; otherwise the shared rows of a tied model do.
    `fit` may be a bare number (one scale for every made row).

    Example:
        >>> apply_scale(plan, 0.9, output_only=True)  # doctest: +SKIP
        'output'
    """
    if output_only and plan.output is None:
        plan.output = deepcopy(plan)
        plan.output.output, plan.output.meta = None, {}
    side = plan.output if plan.output is not None else plan
    made = side.made_rows()
    scales = np.ones(side.new_size, dtype=np.float32) if side.scales is None else side.scales.copy()
    per_bucket = getattr(fit, "bucket_scales", None)
    if per_bucket and buckets is not None:
        table = np.asarray(per_bucket, dtype=np.float32)
        b = np.asarray(buckets[: side.new_size])
        scales[made] *= table[b[made]]
    else:
        scales[made] *= np.float32(getattr(fit, "scale", fit))
    side.scales = scales
    return "output" if plan.output is not None else "both"
