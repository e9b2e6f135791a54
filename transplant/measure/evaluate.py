"""Bits per byte (BPB): the quality measure that compares models across tokenizers.

Protocol (shared by every benchmark here): split the text into documents on blank lines; each
document is scored as its text plus the blank line that ends it, so every tokenizer sees and is
charged for exactly the same bytes; whole documents are packed into chunks of at most `ctx`
tokens (a longer document is cut into `ctx`-token pieces); one start token (bos, else eos) goes
before each chunk so every text token is predicted; BPB = summed NLL of the text tokens /
ln 2 / UTF-8 bytes. Bytes per token = those bytes / text tokens.

Example:
    >>> result = evaluate_bpb("out/", texts=[open("dev.txt").read()])  # doctest: +SKIP
    >>> round(result.bpb, 3), round(result.bytes_per_token, 2)  # doctest: +SKIP
    (1.762, 3.1)
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from transplant.common.errors import TransplantError
from transplant.common.progress import bar
from transplant.common.texts import split_documents, take_bytes  # noqa: F401  (take_bytes re-exported)
from transplant.io.sources import refuse_custom_code
from transplant.measure.lm import start_token, start_token_batches, text_config


@dataclass
class EvalResult:
    """Bits per byte of a text and what they were counted over (`as_dict()` for a JSON report)."""

    bpb: float
    bytes_per_token: float
    nll_bits: float
    bytes: int
    tokens: int
    documents: int
    seconds: float
    # False when the tokenizer does not reproduce the scored text (decode(encode(doc)) != doc,
    # e.g. WordPiece drops newlines): it was charged for bytes it never predicted, so its bits
    # per byte are not comparable with another tokenizer's.
    lossless: bool = True

    def as_dict(self) -> dict:
        return asdict(self)


def pack(doc_ids: list[list[int]], ctx: int) -> list[list[int]]:
    """Whole documents packed into chunks of at most `ctx` tokens; a longer one is cut into
    `ctx`-token pieces first.

    Example:
        >>> pack([[1, 2], [3], [4, 5, 6, 7]], 3)
        [[1, 2, 3], [4, 5, 6], [7]]
    """
    chunks: list[list[int]] = []
    current: list[int] = []
    for ids in doc_ids:
        pieces = [ids[i:i + ctx] for i in range(0, len(ids), ctx)] or [[]]
        for piece in pieces:
            if current and len(current) + len(piece) > ctx:
                chunks.append(current)
                current = []
            current = current + piece
    if current:
        chunks.append(current)
    return chunks


@torch.inference_mode()
def score(model, encode, start_id: int, texts: list[str], ctx: int = 1024, batch_size: int | None = None,
          desc: str = "scoring", observe: Callable[[torch.Tensor, torch.Tensor], None] | None = None) -> EvalResult:
    """Score an in-memory model; `encode(list[str]) -> list[list[int]]` without special tokens.

    `batch_size` defaults to what keeps the float32 logits near 1 GB (1 for a 262k vocabulary).
    A progress bar over the batches (counted in tokens) is labelled `desc` (see `transplant.common.progress`).
    `observe(logits, targets)` sees each batch's logits (batch, positions, rows) and targets (-100:
    not scored), in text order, so more can be measured in the same pass
    (`transplant.measure.breakdown`); it must not keep the logits.
    """
    started = time.perf_counter()
    docs = [d for t in texts for d in split_documents(t)]
    if not docs:
        raise TransplantError("no text to score (the evaluation text is empty)")
    total_bytes = sum(len(d.encode("utf-8")) for d in docs)
    doc_ids = encode(docs)
    n_tokens = sum(len(x) for x in doc_ids)
    if n_tokens == 0:  # nothing predicted: 0 bits on its bytes would read as a perfect score
        raise TransplantError(f"nothing to score: the evaluation text ({total_bytes:,} bytes) encodes to no tokens "
                              "with this tokenizer (pass text it encodes: at least one token)")
    positions = getattr(text_config(model.config), "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 1:
        # The start token takes one position: a GPT-2 (1024 positions) scores 1023-token chunks.
        ctx = min(ctx, positions - 1)
    chunks = pack(doc_ids, ctx)
    vocab_rows = model.get_output_embeddings().weight.shape[0]
    if batch_size is None:
        batch_size = max(1, int(2.5e8 // ((ctx + 1) * vocab_rows)))
    device = next(model.parameters()).device
    nll = 0.0
    pbar = bar(total=sum(len(c) for c in chunks), desc=desc, unit="tok", unit_scale=True)
    for batch_tokens, ids, mask in start_token_batches(chunks, start_id, batch_size):
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]  # no cache to build
        targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        nll += float(torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                                                       ignore_index=-100, reduction="sum"))
        if observe is not None:
            observe(logits, targets)
        del logits
        pbar.update(batch_tokens)
    pbar.close()
    bits = nll / math.log(2)
    return EvalResult(bits / total_bytes, total_bytes / max(n_tokens, 1), bits, total_bytes, n_tokens, len(docs),
                      round(time.perf_counter() - started, 2))


def _label(folder: Path) -> str:
    """A readable name for a model folder: an unfinished output `.name.partial-xyz` reads `name`, a
    cached GGUF conversion `name-<16 hex>` reads `name`."""
    name = folder.name
    if name.startswith(".") and ".partial-" in name:
        name = name[1:].split(".partial-")[0]
    name = re.sub(r"-[0-9a-f]{16}$", "", name)
    return name or str(folder)


def evaluate_bpb(model_dir: str | Path, texts: list[str], tokenizer: str | Path | None = None, ctx: int = 1024,
                 batch_size: int | None = None, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False,
                 label: str | None = None,
                 observe: Callable[[torch.Tensor, torch.Tensor], None] | None = None) -> EvalResult:
    """Load a checkpoint folder (and its tokenizer, or `tokenizer`) and score `texts`.

    A folder whose config.json asks for custom code (`auto_map`) is refused unless
    `trust_remote_code=True`. `label` names the progress bar ("scoring <label>"; default: the folder's name).
    `observe` is passed to `score`.
    """
    from transformers import AutoModelForCausalLM

    from transplant.core.vocab import load_tokenizer
    from transplant.io.sources import resolve_model

    folder = resolve_model(model_dir)
    refuse_custom_code(folder, trust_remote_code)
    src = load_tokenizer(tokenizer or folder)
    vocab = src.vocabulary()
    start = start_token(vocab.roles)
    if start is None:
        raise TransplantError(f"tokenizer {src.path} has neither bos nor eos; cannot start a chunk "
                              "(add a special start token)")
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, trust_remote_code=trust_remote_code)
    model.eval()
    rows = model.get_input_embeddings().weight.shape[0]
    if len(vocab) > rows:
        raise TransplantError(f"tokenizer has {len(vocab)} ids but the model only {rows} rows "
                              "(pass the tokenizer that belongs to this model)")

    def encode(docs: list[str]) -> list[list[int]]:
        return [e.ids for e in src.tokenizer.encode_batch(docs, add_special_tokens=False)]

    result = score(model, encode, start, texts, ctx=ctx, batch_size=batch_size,
                   desc=f"scoring {label or _label(folder)}", observe=observe)
    docs = [d for t in texts for d in split_documents(t)]
    decoded = [src.tokenizer.decode(e.ids, skip_special_tokens=False)
               for e in src.tokenizer.encode_batch(docs, add_special_tokens=False)]
    result.lossless = all(a == b for a, b in zip(decoded, docs))
    return result
