"""Shared fixtures: the three tiny tokenizers (trained once per session) and tiny model folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import builders as B

# The default suite never touches the network (a stray hub lookup fails fast instead of hanging).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

# Role spellings the tiny tokenizers are saved with (tokenizer_config.json).
ROLES = {
    "bl": {"bos": "<|im_start|>", "eos": "<|endoftext|>"},
    "sp": {"bos": "<s>", "eos": "</s>"},
    "wp": {"bos": "[CLS]", "eos": "[SEP]"},
}

# A short English passage: fits the tiny models' 512 positions with every tokenizer.
TEXT = B.sample_text("en")[:700]


@pytest.fixture(scope="session")
def bl_tok():
    """Byte-level BPE (GPT-2 alphabet), 500 ids, specials <|endoftext|> <|im_start|> <|im_end|>."""
    return B.byte_level_bpe()


@pytest.fixture(scope="session")
def sp_tok():
    """SentencePiece-style BPE with `<0xNN>` byte fallback; <unk> <s> </s>."""
    return B.sentencepiece_bpe()


@pytest.fixture(scope="session")
def wp_tok():
    """WordPiece; [UNK] [CLS] [SEP] [PAD]."""
    return B.wordpiece()


@pytest.fixture(scope="session")
def toks(bl_tok, sp_tok, wp_tok):
    return {"bl": bl_tok, "sp": sp_tok, "wp": wp_tok}


@pytest.fixture(scope="session")
def tok_dirs(toks, tmp_path_factory):
    """Each tiny tokenizer saved as a transformers tokenizer folder (with its bos/eos roles)."""
    root = tmp_path_factory.mktemp("tokenizers")
    return {name: B.save_tokenizer(tok, root / name, **ROLES[name]) for name, tok in toks.items()}


def _ids(tok, name: str) -> tuple[int, int]:
    vocab = tok.get_vocab()
    return vocab[ROLES[name]["bos"]], vocab[ROLES[name]["eos"]]


@pytest.fixture(scope="session")
def build_model(toks):
    """Factory: save a tiny model for tokenizer `tok` ("bl"/"sp"/"wp") into `folder`, return the folder."""

    def build(folder: Path, kind: str = "llama", tied: bool = True, tok: str = "bl",
              dtype: torch.dtype = torch.float32, seed: int = 0, shard_size: str | None = None) -> Path:
        tokenizer = toks[tok]
        bos, eos = _ids(tokenizer, tok)
        model = B.tiny_model(kind, tokenizer.get_vocab_size(with_added_tokens=True), tied, bos, eos, dtype, seed)
        return B.save_model(model, tokenizer, folder, shard_size=shard_size, **ROLES[tok])

    return build


@pytest.fixture(scope="session")
def llama_bl(build_model, tmp_path_factory):
    """A read-only tiny untied Llama on the byte-level tokenizer (shared; never write into it)."""
    return build_model(tmp_path_factory.mktemp("models") / "llama-bl", "llama", tied=False)


@pytest.fixture(scope="session")
def hypernet_dir(llama_bl, tmp_path_factory):
    """A small hypernetwork for `llama_bl` with non-zero heads (so it is not plain FVT)."""
    from hypernet import HyperNet
    from hypernet.training import load_source

    _, E_in, E_out, _ = load_source(str(llama_bl))
    net = HyperNet.create(E_in, E_out, base_model=str(llama_bl), width=16, heads=2, layers=1)
    with torch.no_grad():
        for head in (net.head_in, net.head_out):
            head.weight.normal_(0, 0.05)
    return net.save(tmp_path_factory.mktemp("hypernet") / "hn")


@pytest.fixture(scope="session")
def _suite_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tt-cache")


@pytest.fixture(autouse=True)
def _own_network_registry(tmp_path_factory, monkeypatch, request, _suite_cache):
    """Each test sees an empty registry of hypernetworks of its own (never the user's), so
    `method="auto"` depends only on what the test registers (shipped networks belong to the
    real models, whose embeddings no tiny model matches). The default suite also keeps its
    caches (encoder and vector files) in a folder of the session's, never in the user's
    `~/.cache/tokentransplant`; the slow tests use the user's, where the packaged models are
    converted once."""
    monkeypatch.setenv("TOKENTRANSPLANT_HOME", str(tmp_path_factory.mktemp("tt-home")))
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setenv("TOKENTRANSPLANT_CACHE", str(_suite_cache))
