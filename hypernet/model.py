"""The hypernetwork: a small transformer that reads a new token's old-tokenizer pieces (their
source embeddings) and predicts the token's input and LM-head rows.

After ZeTT (Minixhofer et al., 2024, "Zero-Shot Tokenizer Transfer"), in the residual form of
later work: prediction = mean of the pieces' rows (that is FVT) + a correction from the encoder,
whose last layers start at zero, so an untrained network *is* FVT and training can only move
away from it where that lowers the loss. The encoder reads the pieces standardized per
dimension (mean and std of the source matrix) and its correction is scaled back by the same
std (ZeTT's affine rescaler). A source model with a separate LM head gives the encoder both of
each piece's rows, concatenated. The output row is always predicted by its own head, even for
a tied source model: the LM head is where FVT loses most (calibration finding, issue 6).

A network belongs to one base model: it stores a sample of the source embedding rows it was
trained on, and refuses a model whose rows do not match (see `check_source`).

Example:
    >>> from safetensors.torch import load_file
    >>> E_in = load_file(f"{model_dir}/model.safetensors")["model.embed_tokens.weight"]
    >>> net = HyperNet.create(E_in, None, base_model=model_dir, width=16, layers=1, heads=2)
    >>> pred_in, pred_out = net.predict([[12, 40], [7]], E_in, None)  # two new tokens, by their old pieces
    >>> pred_in.shape
    torch.Size([2, 32])
    >>> torch.allclose(pred_in[0], E_in[[12, 40]].mean(0))  # untrained, it is FVT: the mean of the pieces
    True
    >>> round(net.check_source(E_in, None), 3)  # the embeddings it was made for
    1.0
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from transplant.common.errors import TransplantError

FORMAT = "tokentransplant-hypernet/1"
# Rows of the source matrix kept in the saved network to recognise its base model (and fine-tunes).
FINGERPRINT_ROWS = 256
# A fine-tune keeps its base's embeddings close (mean cosine well above this); another model does not.
SAME_BASE_COSINE = 0.8


def fingerprint_cosine(ids: torch.Tensor, rows: torch.Tensor, E_in: torch.Tensor) -> float | None:
    """Mean cosine between a network's fingerprint `rows` and the same `ids` of `E_in`: near 1 for
    its base model and that model's fine-tunes. Ids outside `E_in` (a vocabulary cut short, or
    another model's) are left out of the mean; None when none is left (no match at all). The one
    rule behind `HyperNet.check_source` and the registry's matching.

    Example:
        >>> E = torch.eye(4)
        >>> fingerprint_cosine(torch.tensor([0, 1, 9]), E[[0, 1, 2]], E)  # id 9 is past this vocabulary
        1.0
        >>> fingerprint_cosine(torch.tensor([-1, 9]), E[[0, 1]], E) is None
        True
    """
    keep = (ids >= 0) & (ids < E_in.shape[0])
    if not bool(keep.any()):
        return None
    mine = E_in[ids[keep].long().to(E_in.device)].float()
    return float(torch.nn.functional.cosine_similarity(mine, rows[keep].float().to(mine.device), dim=1).mean())


@dataclass
class HyperNetConfig:
    """Shape of a hypernetwork and the base model it belongs to.

    Args:
        hidden_size: the source model's embedding width.
        untied: the source model has an LM head of its own (the encoder reads both rows per piece).
        width: the encoder's width (ZeTT: the hidden size).
        layers, heads: encoder depth and attention heads (ZeTT: 3 layers).
        ffn_mult: feed-forward width as a multiple of `width` (ZeTT: 2).
        max_pieces: pieces the encoder reads (the FVT mean always uses all of them).
        base_model: how the base model was named when training started (informative).
        vocab_size: rows of the source matrix (checked at apply time).
    """

    hidden_size: int
    untied: bool = False
    width: int = 0
    layers: int = 3
    heads: int = 0
    ffn_mult: float = 2.0
    max_pieces: int = 8
    base_model: str = ""
    vocab_size: int = 0

    def __post_init__(self) -> None:
        if not self.width:
            self.width = self.hidden_size
        if not self.heads:
            self.heads = max(1, self.width // 64)
        if self.width % self.heads:
            raise TransplantError(f"hypernet width {self.width} is not a multiple of heads={self.heads}")


class HyperNet(nn.Module):
    """See the module docstring. Build with `HyperNet.create`, load with `HyperNet.load`."""

    def __init__(self, config: HyperNetConfig) -> None:
        super().__init__()
        self.config = config
        d, w = config.hidden_size, config.width
        sides = 2 if config.untied else 1
        # Per-dimension statistics of the source rows (standardize in, rescale out), and the
        # fingerprint rows; buffers, so they are saved with the weights and follow .to(device).
        self.register_buffer("mean_in", torch.zeros(d))
        self.register_buffer("std_in", torch.ones(d))
        self.register_buffer("mean_out", torch.zeros(d))
        self.register_buffer("std_out", torch.ones(d))
        self.register_buffer("fingerprint_ids", torch.zeros(FINGERPRINT_ROWS, dtype=torch.int64))
        self.register_buffer("fingerprint_rows", torch.zeros(FINGERPRINT_ROWS, d))
        self.proj = nn.Linear(sides * d, w)
        self.position = nn.Parameter(torch.zeros(config.max_pieces, w))
        layer = nn.TransformerEncoderLayer(w, config.heads, dim_feedforward=int(config.ffn_mult * w), dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(w)
        self.head_in = nn.Linear(w, d)
        self.head_out = nn.Linear(w, d)
        nn.init.normal_(self.position, std=0.02)
        for head in (self.head_in, self.head_out):  # zero correction: the untrained network is FVT
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def create(cls, E_in: torch.Tensor, E_out: torch.Tensor | None, *, base_model: str = "", seed: int = 0,
               **shape) -> "HyperNet":
        """A fresh network for a source model with input rows `E_in` and head rows `E_out`
        (None when tied); `shape` sets `HyperNetConfig` fields (width, layers, heads, ...)."""
        torch.manual_seed(seed)
        config = HyperNetConfig(hidden_size=E_in.shape[1], untied=E_out is not None, base_model=base_model,
                                vocab_size=E_in.shape[0], **shape)
        net = cls(config)
        with torch.no_grad():
            E = E_in.float()
            net.mean_in.copy_(E.mean(0))
            net.std_in.copy_(E.std(0).clamp_min(1e-6))
            O = E if E_out is None else E_out.float()
            net.mean_out.copy_(O.mean(0))
            net.std_out.copy_(O.std(0).clamp_min(1e-6))
            ids = torch.linspace(0, E.shape[0] - 1, FINGERPRINT_ROWS).round().long()
            net.fingerprint_ids.copy_(ids)
            net.fingerprint_rows.copy_(E[ids])
        return net

    def save(self, folder: str | Path) -> Path:
        """Write `config.json` and `model.safetensors` into `folder`; each file is written beside
        its final name and moved into place, so a kill never leaves a half-written network."""
        from safetensors.torch import save_file

        from transplant.common.permissions import follow_umask

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        tmp = folder / ".model.safetensors.partial"
        save_file(state, str(tmp), metadata={"format": FORMAT})
        follow_umask(tmp)  # safetensors writes 0600; the network's other files follow the umask
        os.replace(tmp, folder / "model.safetensors")
        tmp = folder / ".config.json.partial"
        tmp.write_text(json.dumps({"format": FORMAT, **asdict(self.config)}, indent=2) + "\n")
        os.replace(tmp, folder / "config.json")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "HyperNet":
        """A network saved by `save` (safetensors only; never a pickle)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        cfg_path = folder / "config.json"
        if not cfg_path.is_file() or not (folder / "model.safetensors").is_file():
            raise TransplantError(f"{folder} is not a hypernetwork folder (expected config.json and "
                                  "model.safetensors, as written by `hypernet train`)")
        raw = json.loads(cfg_path.read_text())
        if raw.pop("format", None) != FORMAT:
            raise TransplantError(f"{cfg_path} is not a {FORMAT} config (train the network with this version)")
        net = cls(HyperNetConfig(**raw))
        net.load_state_dict(load_file(str(folder / "model.safetensors")))
        net.eval()
        return net

    # -- the base model -----------------------------------------------------------------------
    def check_source(self, E_in: torch.Tensor, E_out: torch.Tensor | None) -> float:
        """Mean cosine between the stored fingerprint rows and the same rows of `E_in`: near 1 for
        the base model and its fine-tunes. Raises a one-line error for any other model."""
        cfg = self.config
        if E_in.shape[1] != cfg.hidden_size or (E_out is not None) != cfg.untied:
            got = f"{E_in.shape[0]}x{E_in.shape[1]}, {'untied' if E_out is not None else 'tied'}"
            raise TransplantError(
                f"this hypernetwork belongs to {cfg.base_model or 'another model'} "
                f"({cfg.vocab_size}x{cfg.hidden_size}, {'untied' if cfg.untied else 'tied'}), not to a model with "
                f"embeddings {got}: train one for this model with `hypernet train --model ...`")
        cos = fingerprint_cosine(self.fingerprint_ids, self.fingerprint_rows, E_in)
        if cos is None or not cos >= SAME_BASE_COSINE:
            kept = int(((self.fingerprint_ids >= 0) & (self.fingerprint_ids < E_in.shape[0])).sum())
            raise TransplantError(
                f"this hypernetwork belongs to {cfg.base_model or 'another model'}: the model's embeddings do not "
                f"match it (mean cosine {cos or 0.0:.2f} over {kept} sampled rows, a fine-tune gives > "
                f"{SAME_BASE_COSINE}); train one for this model with `hypernet train --model ...`")
        return cos

    # -- prediction ----------------------------------------------------------------------------
    def forward(self, pieces: torch.Tensor, mask: torch.Tensor, E_in: torch.Tensor,
                E_out: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows for a batch of tokens given as padded old ids `pieces` (n, L) with `mask` (n, L).

        Returns (input rows, output rows), each (n, hidden_size), float32.
        """
        O = E_in if E_out is None else E_out
        x_in = E_in[pieces].float()
        x_out = O[pieces].float() if E_out is not None else x_in
        m = mask.unsqueeze(2).float()
        count = m.sum(1).clamp_min(1.0)
        base_in = (x_in * m).sum(1) / count
        base_out = (x_out * m).sum(1) / count
        L = min(pieces.shape[1], self.config.max_pieces)
        feats = [(x_in[:, :L] - self.mean_in) / self.std_in]
        if self.config.untied:
            feats.append((x_out[:, :L] - self.mean_out) / self.std_out)
        h = self.proj(torch.cat(feats, 2)) + self.position[:L]
        h = self.encoder(h, src_key_padding_mask=~mask[:, :L])
        pooled = self.norm(h[:, 0])  # ZeTT pools the first position
        return base_in + self.head_in(pooled) * self.std_in, base_out + self.head_out(pooled) * self.std_out

    def predict(self, decompositions: list[list[int]], E_in: torch.Tensor, E_out: torch.Tensor | None, *,
                batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows for tokens given by their old-id decompositions (each non-empty), in batches of
        tokens of equal length (no padding work). Returns (input rows, output rows), float32."""
        n, d = len(decompositions), self.config.hidden_size
        out_in, out_out = torch.empty(n, d), torch.empty(n, d)
        was_training = self.training
        self.eval()  # eval mode takes torch's fused encoder path: predictions must not depend on the mode
        try:
            for idx, pieces, mask in length_batches(decompositions, batch_size):
                with torch.no_grad():
                    a, b = self(pieces.to(E_in.device), mask.to(E_in.device), E_in, E_out)
                out_in[idx], out_out[idx] = a.cpu(), b.cpu()
        finally:
            self.train(was_training)
        return out_in, out_out


def pad_pieces(decompositions: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded (n, L) ids and mask for a list of decompositions (padding id 0, masked out)."""
    L = max(len(p) for p in decompositions)
    pieces = torch.zeros(len(decompositions), L, dtype=torch.int64)
    mask = torch.zeros(len(decompositions), L, dtype=torch.bool)
    for r, p in enumerate(decompositions):
        pieces[r, :len(p)] = torch.as_tensor(p, dtype=torch.int64)
        mask[r, :len(p)] = True
    return pieces, mask


def length_batches(decompositions: list[list[int]], batch_size: int):
    """(row indices, pieces, mask) batches, each of decompositions of one length."""
    by_len: dict[int, list[int]] = {}
    for r, p in enumerate(decompositions):
        if not p:
            raise ValueError(f"decomposition {r} is empty")
        by_len.setdefault(len(p), []).append(r)
    for L in sorted(by_len):
        rows = by_len[L]
        for s in range(0, len(rows), batch_size):
            chunk = rows[s:s + batch_size]
            pieces = torch.tensor([decompositions[r] for r in chunk], dtype=torch.int64)
            yield torch.tensor(chunk), pieces, torch.ones_like(pieces, dtype=torch.bool)


def parameter_count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


__all__ = ["HyperNet", "HyperNetConfig", "FORMAT", "fingerprint_cosine", "pad_pieces", "length_batches",
           "parameter_count"]
