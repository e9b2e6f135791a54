"""Calibration's one forward pass: the model reads the calibration text and gives its final hidden
states (without the LM head), which the fit then scores against the new head.

The text is the leading whole documents of the calibration files, packed into chunks read after
a start token, as in the bits-per-byte protocol (`transplant.measure.lm.start_token_batches`).
A model given as a loader reads the text through the new input rows of only the ids it uses
(`hidden_states_through_rows`): no new_vocab x dim copy of the embedding matrix.

Example:
    >>> chunks = calibration_chunks(encode, [open("de/train.txt").read()], 4096, 512)  # doctest: +SKIP
    >>> h, y = final_hidden_states(model, chunks, start_id=1)  # doctest: +SKIP
    >>> h.shape[0] == len(y) == sum(map(len, chunks))  # doctest: +SKIP
    True
"""

from __future__ import annotations

import gc
from collections.abc import Callable

import numpy as np
import torch

from transplant.common.errors import TransplantError
from transplant.common.memory import trim_heap
from transplant.common.progress import bar
from transplant.common.texts import BYTES_PER_TOKEN_BOUND, split_documents
from transplant.measure.evaluate import pack
from transplant.measure.lm import LogitRule, start_token_batches

RowsOf = Callable[[np.ndarray], torch.Tensor]  # sorted ids -> their new input rows (len(ids) x dim)


@torch.inference_mode()
def final_hidden_states(model, chunks: list[list[int]], start_id: int, batch_tokens: int = 2048
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden states (N, dim) float32, next-token targets (N,)) for every text token of `chunks`.

    Example:
        >>> h, y = final_hidden_states(model, [[5, 6, 7]], start_id=1)  # doctest: +SKIP
        >>> y.tolist()  # doctest: +SKIP
        [5, 6, 7]
    """
    base = model.base_model
    device = model.get_input_embeddings().weight.device  # a streamed model's other weights are on meta
    hs, ys = [], []
    per_batch = max(1, batch_tokens // max(len(c) + 1 for c in chunks))
    pbar = bar(total=sum(len(c) for c in chunks), desc="calibrating: reading", unit="tok", unit_scale=True)
    for n_read, ids, mask in start_token_batches(chunks, start_id, per_batch):
        out = base(input_ids=ids.to(device), attention_mask=mask.to(device),
                   use_cache=False).last_hidden_state[:, :-1]  # no key/value cache to build: one pass
        keep = mask[:, 1:].bool()
        hs.append(out[keep.to(out.device)].float().cpu())
        ys.append(ids[:, 1:][keep])
        pbar.update(n_read)
    pbar.close()
    return torch.cat(hs), torch.cat(ys)


def hidden_states_through_rows(model: torch.nn.Module, input_rows: RowsOf, chunks: list[list[int]],
                               start_id: int, new_size: int, batch_tokens: int = 2048
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """`final_hidden_states` with the new input rows of only the ids the text uses.

    The model keeps its own embedding matrix; for the read, its embedding module gets a small
    one of those rows and the ids are renumbered into it (the module still runs, so a scale it
    applies, e.g. Gemma's sqrt(hidden), still applies). No new_vocab x dim copy: on Gemma's 262k
    vocabulary that is 600 MB at SmolLM2's width.

    Example:
        >>> h, y = hidden_states_through_rows(model, rows_of, [[399, 5]], 1, new_size=400)  # doctest: +SKIP
    """
    emb = model.get_input_embeddings()
    if not isinstance(emb, torch.nn.Embedding):  # a custom module: the whole new matrix, as before
        model.resize_token_embeddings(new_size, mean_resizing=False)
        with torch.no_grad():
            model.get_input_embeddings().weight.copy_(input_rows(np.arange(new_size)))
        return final_hidden_states(model, chunks, start_id)
    used = np.unique(np.concatenate([np.asarray(c, dtype=np.int64) for c in chunks] + [[start_id]]))
    saved = emb.weight, emb.num_embeddings, emb.padding_idx
    device = saved[0].device if saved[0].device.type != "meta" else torch.device("cpu")
    emb.weight = torch.nn.Parameter(input_rows(used).to(saved[0].dtype).to(device), requires_grad=False)
    emb.num_embeddings, emb.padding_idx = len(used), None
    try:
        local = [np.searchsorted(used, c).tolist() for c in chunks]
        h, y = final_hidden_states(model, local, int(np.searchsorted(used, start_id)), batch_tokens)
    finally:
        emb.weight, emb.num_embeddings, emb.padding_idx = saved  # a tied head shares the old matrix again
    return h, torch.from_numpy(used)[y]


_ENCODE_BATCH = 64  # documents encoded at a time while the budget is not met


def calibration_chunks(encode, texts: list[str], max_tokens: int, ctx: int) -> list[list[int]]:
    """The leading `max_tokens` tokens of the texts' documents, packed into chunks of `ctx`.

    Example:
        >>> calibration_chunks(lambda docs: [[1, 2, 3] for _ in docs], ["a\\n\\nb"], 4, 2)
        [[1, 2], [3, 1]]
    """
    # Encoded a few documents at a time until the budget is met, each text cut to what the budget
    # can span: a 50 MB text (or one 50 MB line) costs what its head does.
    limit = max_tokens * BYTES_PER_TOKEN_BOUND
    docs = [d for t in texts for d in split_documents(t[:limit])]
    if not docs:
        raise TransplantError("the calibration text is empty (pass a UTF-8 text file in the target language)")
    taken, used = [], 0
    for start in range(0, len(docs), _ENCODE_BATCH):
        for doc in encode(docs[start:start + _ENCODE_BATCH]):
            if used >= max_tokens:
                break
            taken.append(doc[: max_tokens - used])
            used += len(taken[-1])
        if used >= max_tokens:
            break
    return [c for c in pack(taken, ctx) if c]


def read_hidden_states(model: torch.nn.Module | Callable[[], tuple[torch.nn.Module, RowsOf]],
                       chunks: list[list[int]], start_id: int, new_size: int
                       ) -> tuple[torch.Tensor, torch.Tensor, float, float | None]:
    """(hidden states, next tokens, logit multiplier, soft cap) of the text; a model given as a
    loader is let go here, once it has read the text.

    Example:
        >>> h, y, mult, cap = read_hidden_states(model, chunks, start_id=1, new_size=len(made))  # doctest: +SKIP
    """
    input_rows, batch_tokens = None, 2048
    if not isinstance(model, torch.nn.Module):
        model, input_rows, *rest = model()  # (model, input_rows[, tokens per batch])
        batch_tokens = rest[0] if rest else batch_tokens
    rule = LogitRule.of(model.config)  # the fit applies it to its own head's product
    mult, cap = rule.multiplier, rule.softcap
    if input_rows is None:
        h, y = final_hidden_states(model, chunks, start_id)
    else:
        h, y = hidden_states_through_rows(model, input_rows, chunks, start_id, new_size, batch_tokens)
        del model, input_rows
        gc.collect()  # the loaded model (its layer hooks make cycles) before the head is built
        trim_heap()
    return h, y, mult, cap
