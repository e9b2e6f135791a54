"""Giving a plan its own LM-head side (`untie`) and fitting the made rows' output scale on text,
for a checkpoint on disk (read one layer at a time) or a model already in memory.

Example:
    >>> untie_and_calibrate(prep, tied=True, untie=False, texts=None, max_tokens=4096,
    ...                     load_model=None, new_head=None)  # no text: nothing to fit  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from copy import deepcopy
from pathlib import Path

import numpy as np
import torch

from transplant.common.errors import TransplantError
from transplant.common.progress import stage
from transplant.core.plan import Plan
from transplant.io.checkpoint import EmbeddingLayout, read_embedding
from transplant.prepare import Prepared

log = logging.getLogger(__name__)


def untie_and_calibrate(prep: Prepared, tied: bool, untie: bool, texts: list[str] | None, max_tokens: int,
                        load_model: Callable, new_head: Callable[[], torch.Tensor]) -> None:
    """Give the plan an LM-head side of its own when asked (`untie`), and fit the output scale on
    `texts` (none: no fit). `load_model()` returns `(model, input_rows[, tokens per batch])` as
    `calibrate.fit_output_scale` takes it; `new_head()` the head before the fit."""
    from transplant.methods.calibrate import apply_scale, fit_output_scale, row_buckets

    plan = prep.plan
    if untie and not tied:
        prep.notes.append("--untie has no effect: the model's LM head is already separate")
    if untie and tied and plan.output is None:
        plan.output = deepcopy(plan)
        plan.output.output, plan.output.meta = None, {}
    if not texts:
        return
    ids = prep.ids
    start = ids.bos if ids.bos is not None else (ids.eos[0] if ids.eos else None)
    if start is None:
        raise TransplantError("calibration needs a start token (bos or eos) in the new tokenizer")
    tok = prep.new_tokenizer

    def encode(docs: list[str]) -> list[list[int]]:
        return [e.ids for e in tok.encode_batch(docs, add_special_tokens=False)]

    made = plan.side("output").made_rows()
    buckets = row_buckets(plan.side("output"), made)
    fit = fit_output_scale(load_model, new_head, made, encode, start, texts, max_tokens, buckets=buckets)
    side = apply_scale(plan, fit, output_only=not tied or untie, buckets=buckets)
    plan.meta["calibration"] = dict(fit.as_meta(), side=side)
    scaled = (f"by {fit.scale:.2f}" if not fit.bucket_scales else
              "by " + "/".join(f"{v:.2f}" for v in fit.bucket_scales) + " (rows mixing 1/2/3/4+ old rows, other)")
    prep.card["calibration"] = (
        f"made tokens' output rows scaled {scaled} ({'LM head only' if side == 'output' else 'tied rows'}), "
        f"fitted by likelihood on {fit.tokens} tokens of calibration text: {fit.nll_before:.4f} → "
        f"{fit.nll_after:.4f} nats/token there; probability mass on made tokens {fit.made_mass_before:.2f} → "
        f"{fit.made_mass_after:.2f} (their share of the text: {fit.made_share:.2f})")
    log.info("calibration: %s", plan.meta["calibration"])


def in_memory_reader(model: torch.nn.Module, plan: Plan) -> Callable:
    """`load_model` for a model in memory: the model itself (left as it was) and the plan's new
    input rows of the ids the text uses."""
    def load():
        weight = model.get_input_embeddings().weight.detach().cpu()

        def input_rows(ids: np.ndarray) -> torch.Tensor:
            return plan.apply(weight)[torch.from_numpy(np.asarray(ids))].to(torch.float32)

        return model, input_rows

    return load


def checkpoint_reader(folder: Path, layout: EmbeddingLayout, plan: Plan, trust_remote_code: bool,
                      tokens: int) -> tuple[torch.nn.Module, Callable, int]:
    """(the source model, `ids -> the plan's new input rows of those ids`, tokens per batch) for calibration.

    The model's decoder layers are read one at a time as the text goes through them, in the
    checkpoint's dtype (`calibrate_stream`): peak memory is one layer and a batch's activations,
    not the model. Where that cannot be set up, the whole model is loaded in float32, as before,
    and a line says why. Either way the expected peak is said first, and a read that would not fit
    is refused in one line. The model is not resized to the new vocabulary: calibration reads its
    text through the rows of the ids it uses (`calibrate.fit_output_scale`), streamed here from
    the plan, so no new_vocab x dim matrix is made beside the head.
    """
    from transformers import AutoModelForCausalLM

    from transplant.common.memory import check_fits
    from transplant.io.shardio import tensor_sizes
    from transplant.methods.calibrate_stream import open_streamed

    fixes = "calibrate on fewer tokens with --calibrate-tokens N, or pass --no-calibrate"
    stored = torch.finfo(layout.dtype).bits // 8
    # the fit, once the model is let go: the new head in float32 beside its stored form, 3 work
    # buffers of 64 MB, the text's hidden states
    fit_peak = plan.side("output").new_size * layout.dim * (4 + stored) + (192 << 20) + tokens * layout.dim * 4
    old_input = layout.rows * layout.dim * stored  # read once to make the text's input rows
    streamed = open_streamed(folder, layout, trust_remote_code)
    if streamed.why_not is None:
        check_fits(max(streamed.peak_bytes(tokens) + old_input, fit_peak),
                   f"calibration (the source read one layer at a time, {str(layout.dtype).removeprefix('torch.')})",
                   fixes)
        model, batch_tokens = streamed.model, streamed.batch_tokens(512)
    else:
        stage(f"calibration: the source cannot be read one layer at a time ({streamed.why_not}); loading it whole")
        whole = sum(sum(tensor_sizes(layout.folder / shard).values())
                    for shard in set(layout.shard_of.values())) * 4 // stored
        check_fits(max(whole + old_input, fit_peak), "calibration (the whole source in float32)", fixes)
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                     trust_remote_code=trust_remote_code)
        batch_tokens = 2048
    model.eval()

    def input_rows(ids: np.ndarray) -> torch.Tensor:
        pieces, first = [], 0
        for chunk in plan.iter_apply(read_embedding(layout, layout.input_key)):
            inside = ids[(ids >= first) & (ids < first + len(chunk))] - first
            pieces.append(chunk[torch.from_numpy(inside)].to(torch.float32))
            first += len(chunk)
        return torch.cat(pieces)

    return model, input_rows, batch_tokens


__all__ = ["checkpoint_reader", "in_memory_reader", "untie_and_calibrate"]
