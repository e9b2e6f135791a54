"""Tiny models and tokenizers for the notebooks: built in seconds on a CPU from the public-domain
texts that ship with tokentransplant, so the notebooks run anywhere (CI included) without
downloads. With a real model, skip this module and pass its folder or name instead.

Example:
    >>> model_dir = tiny_english_model("work/tiny-en")  # doctest: +SKIP
    >>> es_tok = train_tokenizer(spanish_text(), 1000, "work/es-tok")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

import transplant

DATA = Path(transplant.__file__).resolve().parent / "data"
SPECIALS = ["<|endoftext|>", "<|im_start|>"]


def english_text() -> str:
    return (DATA / "bible_en.txt").read_text()


def spanish_text() -> str:
    return (DATA / "bible_es.txt").read_text()


def held_out_start() -> int:
    """Where the held-out tenth of the English text begins (models and tokenizers never see it)."""
    text = english_text()
    return text.rfind("\n", 0, int(len(text) * 0.9)) + 1


def held_out_english() -> str:
    return english_text()[held_out_start():]


def train_tokenizer(text: str, vocab_size: int, folder: str | Path) -> Path:
    """A byte-level BPE trained on `text`, saved as a transformers tokenizer folder (bos/eos roles)."""
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([line for line in text.splitlines() if line.strip()], trainer)
    folder = Path(folder)
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIALS[1], eos_token=SPECIALS[0]).save_pretrained(folder)
    return folder


def tiny_english_model(folder: str | Path, steps: int = 300, seed: int = 0) -> Path:
    """A 4-layer Llama (hidden 64) trained for `steps` steps on English text with its own 1k-token
    BPE: small enough to train in about a minute on two CPU cores, trained enough that BPB and
    generations mean something."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    if (folder / "model.safetensors").exists():
        return folder
    text = english_text()[: held_out_start()]
    train_tokenizer(text, 1000, folder)
    tok = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=192, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(cfg)
    ids = torch.tensor(tok(text)["input_ids"])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - 129, (16,), generator=gen)
        batch = torch.stack([torch.cat([torch.tensor([tok.bos_token_id]), ids[s:s + 127]]) for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().save_pretrained(folder)
    return folder
