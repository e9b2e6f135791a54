"""Healing's model side: the frozen student and teacher seen as rows in -> hidden states ->
logits, the trained offsets of the healed rows, and loading both models.

Only the offsets are parameters (`RowOffsets`): the LMs are frozen and held outside the module,
so `accelerate`/DDP only ever sees (and synchronizes) the offsets. When the transplant kept the
teacher's body (the usual case), the teacher is a view of the student's body with its own
embedding rows (`TeacherView`): one body in memory, not two.

Example:
    >>> from transformers import AutoModelForCausalLM
    >>> lm = FrozenLM(AutoModelForCausalLM.from_pretrained(model_dir))
    >>> ids, mask = window_batch([[5, 6, 7]], start=1, device="cpu")
    >>> lm.token_logprobs(ids, mask).shape
    torch.Size([1, 3])
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from transplant.common.errors import TransplantError
from transplant.core.plan import Plan
from transplant.core.vocab import load_tokenizer
from transplant.io.checkpoint import locate_embeddings, read_embedding
from transplant.io.frozen_linear import frozen_linear, route_frozen_linears
from transplant.io.shardio import shard_map
from transplant.measure.lm import LogitRule, embed_scale, start_token, with_start_token
from transplant.train.heal_windows import Window


class FrozenLM:
    """A frozen causal LM seen as: rows in -> hidden states -> logits, as its own forward makes them
    (Gemma's input scale; the logit rule: Cohere's and Granite's multiplier, Gemma's soft cap)."""

    def __init__(self, lm) -> None:
        self.lm = lm
        self.decoder = getattr(lm, lm.base_model_prefix)
        self.embed_scale = embed_scale(lm)
        self.rule = LogitRule.of(lm.config)
        self.E_in = lm.get_input_embeddings().weight.detach()
        head = lm.get_output_embeddings()
        self.W_out = head.weight.detach()
        self.bias = head.bias.detach() if getattr(head, "bias", None) is not None else None
        self.tied = self.W_out.data_ptr() == self.E_in.data_ptr()
        self.dtype = self.E_in.dtype  # the frozen body's: the checkpoint's own (bf16 stays bf16)

    def hidden(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Final hidden states of input rows `x` (B, T, dim), scaled as the embedding module would;
        `x` may be float32 (rows plus trained offsets): the body reads it in its own dtype."""
        return self.decoder(inputs_embeds=(x * self.embed_scale).to(self.dtype),
                            attention_mask=mask.long(), use_cache=False).last_hidden_state

    def logits(self, hidden: torch.Tensor, extra: torch.Tensor | None = None, rows: torch.Tensor | None = None):
        """The head's logits of `hidden` in float32, plus `hidden @ extra.T` on the columns `rows`
        (float32 offsets of the head's rows), then the model's logit rule."""
        out = frozen_linear(hidden, self.W_out, self.bias).float()
        if extra is not None:
            out = out.index_add(-1, rows, hidden.float() @ extra.T)
        return self.rule(out)

    def token_logprobs(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """log p of every next token of `ids` (from `window_batch`) with the model's own rows, (B, T-1)."""
        return token_logprobs(self.logits(self.hidden(self.E_in[ids.clamp_min(0)], mask)), ids)


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log p(ids[:, t+1] | ids[:, :t+1]) for every position: (B, T-1).

    Example:
        >>> token_logprobs(torch.zeros(1, 3, 4), torch.tensor([[0, 1, 2]])).exp()
        tensor([[0.2500, 0.2500]])
    """
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return logp.gather(-1, ids[:, 1:].clamp_min(0).unsqueeze(-1)).squeeze(-1)


def window_batch(seqs: list[list[int]], start: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) on `device` with the start token first and -1 padding; the mask is boolean.

    Example:
        >>> ids, mask = window_batch([[5, 6], [7]], 1, "cpu")
        >>> ids.tolist(), mask.tolist()
        ([[1, 5, 6], [1, 7, -1]], [[True, True, True], [True, True, False]])
    """
    ids, mask = with_start_token(seqs, start, pad=-1)
    return ids.to(device), mask.bool().to(device)


class RowOffsets(torch.nn.Module):
    """The trained offsets of the healed rows (in units of `std`), and the student's loss.

    The frozen LM is held outside the module's parameters, so `accelerate`/DDP only ever sees
    (and synchronizes) the offsets.
    """

    def __init__(self, student: FrozenLM, rows: torch.Tensor, std_in: float, std_out: float, untied: bool) -> None:
        super().__init__()
        n, dim = len(rows), student.E_in.shape[1]
        self.d_in = torch.nn.Parameter(torch.zeros(n, dim))
        self.d_out = torch.nn.Parameter(torch.zeros(n, dim)) if untied else None
        self.register_buffer("rows", rows.clone(), persistent=False)
        slot = torch.zeros(student.E_in.shape[0], dtype=torch.int64)
        slot[rows] = torch.arange(1, n + 1)
        self.register_buffer("slot", slot, persistent=False)
        self.std_in, self.std_out = std_in, std_out
        self._student = [student]  # a list: not a submodule

    def deltas(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(input offsets, head offsets) in the matrices' own units."""
        d_in = self.d_in * self.std_in
        d_out = d_in if self.d_out is None else self.d_out * self.std_out
        return d_in, d_out

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Student log-probabilities of every next token, (B, T-1)."""
        st = self._student[0]
        safe = ids.clamp_min(0)
        slot = self.slot[safe]
        # Only the batch's rows are gathered and scaled (not every trained row: at 7B widths a
        # full-size scaled copy and its gradient were 0.4 GB a step); the same numbers as scaling
        # first, since a gather commutes with the multiplication.
        picked = self.d_in[(slot - 1).clamp_min(0)] * self.std_in
        x = st.E_in[safe] + torch.where((slot > 0).unsqueeze(-1), picked, 0.0)
        hidden = st.hidden(x, mask)
        d_out = self.d_in * self.std_in if self.d_out is None else self.d_out * self.std_out
        return token_logprobs(st.logits(hidden, d_out, self.rows), ids)


def rows_to_heal(plan: Plan, windows: list[Window], train_idx: list[int], n_rows: int, min_count: int
                 ) -> tuple[torch.Tensor, np.ndarray]:
    """(the rows to train, the made-row mask): the rows the transplant made (not exact copies,
    specials or padding) that the training windows use at least `min_count` times."""
    counts = np.bincount(np.concatenate([np.asarray(windows[i].student, dtype=np.int64) for i in train_idx]),
                         minlength=n_rows)[:n_rows]
    made = plan.made_rows()
    made = np.pad(made, (0, max(0, len(counts) - len(made))))[:len(counts)]
    rows = torch.from_numpy(np.nonzero(made & (counts >= min_count))[0])
    if len(rows) == 0:
        raise TransplantError("the healing text uses none of the rows the transplant made (pass text in the new "
                              "tokenizer's language or domain)")
    return rows, made


def load_tokenizers(folder: Path, teacher_folder: Path):
    """(student tokenizer, teacher tokenizer, student start id, teacher start id): all a run needs
    to cut its text into windows, read before any model is loaded (a bad text fails in a second)."""
    s_src, t_src = load_tokenizer(folder), load_tokenizer(teacher_folder)
    return (s_src.tokenizer, t_src.tokenizer,
            _start_id(s_src.vocabulary(), folder), _start_id(t_src.vocabulary(), teacher_folder))


def load_models(folder: Path, teacher_folder: Path, device, mesh=None):
    """(student LM, teacher LM), frozen in their checkpoints' own dtype (bf16 stays bf16: what
    trains, the row offsets, is float32 and so is the loss); one shared body when the transplant
    kept the teacher's. With a device `mesh` the decoder layers are sharded over its processes
    (`io.sharded_load`)."""
    from transplant.io.frozen_load import load_frozen  # a heavy import, only when a run starts

    def load(path: Path):
        if mesh is not None:
            from transplant.io.sharded_load import load_sharded

            lm = load_sharded(path, mesh, device)
        else:
            lm = load_frozen(path).to(device)
        route_frozen_linears(lm)  # a bf16 body's backward on the CPU: as fast as its forward
        return lm

    student = load(folder)
    if same_body(folder, teacher_folder):
        # The teacher differs only in its embedding rows: read those, share the rest (half the memory).
        layout = locate_embeddings(teacher_folder)
        dtype = student.get_input_embeddings().weight.dtype
        emb = torch.nn.Embedding.from_pretrained(read_embedding(layout, layout.input_key).to(dtype).to(device))
        scale = getattr(student.get_input_embeddings(), "embed_scale", None)
        if scale is not None:
            emb.embed_scale = scale
        head = torch.nn.Linear(emb.weight.shape[1], emb.weight.shape[0], bias=False)
        head.weight = emb.weight if layout.output_key is None else torch.nn.Parameter(
            read_embedding(layout, layout.output_key).to(dtype).to(device), requires_grad=False)
        teacher = TeacherView(student, emb, head)
    else:
        teacher = load(teacher_folder)
    return student, teacher


def expected_peak(cfg, folder: Path, teacher_folder: Path, n_rows: int, shards: int = 1) -> int:
    """Bytes a heal run adds to this process: the student in its dtype, the teacher's own rows
    (or the whole teacher when its body differs), the float32 offsets with their gradients and
    the optimizer's state (Adam's two float32 moments, or RowAdam's bfloat16 one), and one batch's activations (the teacher's windows are up to twice as long,
    but read without gradients). With the body sharded over `shards` processes, each holds the
    embedding rows, 1/`shards` of the layers and one whole layer at a time."""
    from transplant.common.memory import checkpoint_bytes, sharded_body_bytes, training_activation_bytes

    student, teacher = locate_embeddings(folder), locate_embeddings(teacher_folder)
    stored = torch.finfo(student.dtype).bits // 8

    def held(layout, path: Path) -> int:
        whole = checkpoint_bytes(path)
        if shards == 1:
            return whole
        rows = layout.rows * layout.dim * stored * (1 if layout.output_key is None else 2)
        return sharded_body_bytes(whole, rows, layout.config, shards)

    if same_body(folder, teacher_folder):
        teacher_bytes = teacher.rows * teacher.dim * stored * (1 if teacher.output_key is None else 2)
    else:
        teacher_bytes = held(teacher, teacher_folder)
    trainable = n_rows * student.dim * (1 if student.tied else 2)
    per_element = 10 if cfg.optimizer == "row-adam" else 16  # offsets, gradients, the optimizer's state
    tokens = cfg.batch_size * cfg.seq_len
    return (held(student, folder) + teacher_bytes + per_element * trainable
            + training_activation_bytes(student.config, tokens, max(student.rows, teacher.rows), stored,
                                        cfg.checkpoint_layers))


def _start_id(vocab, where: Path) -> int:
    start = start_token(vocab.roles)
    if start is None:
        raise TransplantError(f"{where}'s tokenizer has neither bos nor eos to start a window with")
    return start


class TeacherView:
    """The student's body with the teacher's own embedding rows (what `FrozenLM` needs of an LM)."""

    def __init__(self, lm, embedding, head) -> None:
        self.base_model_prefix = lm.base_model_prefix
        setattr(self, lm.base_model_prefix, getattr(lm, lm.base_model_prefix))
        self.config = lm.config
        self._emb, self._head = embedding, head

    def get_input_embeddings(self):
        return self._emb

    def get_output_embeddings(self):
        return self._head


def same_body(a: Path, b: Path) -> bool:
    """True when two checkpoints hold the same non-embedding weights (three sampled tensors compared)."""
    try:
        la, lb = locate_embeddings(a), locate_embeddings(b)
        ma, mb = shard_map(a), shard_map(b)
    except TransplantError:
        return False
    skip = set(la.row_keys) | set(lb.row_keys) | {la.head_key, lb.head_key}
    names = sorted(k for k in set(ma) & set(mb) if k not in skip)
    # (The transplant's own plan arrays may be listed on its side; every teacher tensor must be on both.)
    if not names or len(names) != len([k for k in mb if k not in skip]):
        return False
    for name in {names[0], names[len(names) // 2], names[-1]}:
        with safe_open(str(a / ma[name]), "pt") as fa, safe_open(str(b / mb[name]), "pt") as fb:
            if not torch.equal(fa.get_tensor(name), fb.get_tensor(name)):
                return False
    return True
