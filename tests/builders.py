"""Tiny tokenizers and models built from the public-domain Bible samples the package ships.

Three tokenizer families (byte-level BPE, SentencePiece-style BPE with byte fallback,
WordPiece) and tiny Llama / GPT-2 checkpoints, so every test runs offline in seconds.
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

import torch
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

DATA = Path(__file__).resolve().parents[1] / "transplant" / "data"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


# Text hypothesis draws for round trips: letters, whitespace, accents, emoji (with a skin-tone
# modifier, a variation selector and a flag) and punctuation.
ACCENTED = "áéíóúñüçÁÉÑÜàèßøå"
EMOJI = "😀🎉👍🏽❤️🇪🇸"
MIXED = st.text(alphabet=st.sampled_from(list(string.ascii_letters + "  \n\t" + ACCENTED + EMOJI + ".,;!?'")),
                max_size=80)

def sample_text(lang: str = "en") -> str:
    return (DATA / f"bible_{lang}.txt").read_text()


def lines(lang: str = "en") -> list[str]:
    return [line for line in sample_text(lang).splitlines() if line.strip()]


def byte_level_bpe(vocab_size: int = 500, lang: str = "en", specials: list[str] = SPECIALS) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(lines(lang), trainer)
    return tok


def sentencepiece_bpe(vocab_size: int = 500, lang: str = "en") -> Tokenizer:
    """A Llama/Gemma-style tokenizer: `▁` marker, `<0xNN>` byte-fallback pieces in the vocab."""
    base = Tokenizer(models.BPE())
    base.normalizer = normalizers.Replace(" ", "▁")
    base.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False)
    base.train_from_iterator(lines(lang), trainer)
    spec = json.loads(base.to_str())
    trained_vocab = spec["model"]["vocab"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["model"]["merges"]]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece in sorted(trained_vocab, key=trained_vocab.get):
        if piece not in vocab:
            vocab[piece] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    return tok


def wordpiece(vocab_size: int = 500, lang: str = "en") -> Tokenizer:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=["[UNK]", "[CLS]", "[SEP]", "[PAD]"],
                                        show_progress=False)
    tok.train_from_iterator(lines(lang), trainer)
    return tok


def shuffled_copy(tok: Tokenizer, seed: int = 0) -> Tokenizer:
    """Same byte-level BPE, ids permuted (special tokens included)."""
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    pieces = list(vocab)
    order = list(range(len(pieces)))
    random.Random(seed).shuffle(order)
    spec["model"]["vocab"] = {p: order[vocab[p]] for p in pieces}
    for added in spec["added_tokens"]:
        added["id"] = spec["model"]["vocab"][added["content"]]
    return Tokenizer.from_str(json.dumps(spec))


def with_extra_tokens(tok: Tokenizer, words: list[str]) -> Tokenizer:
    """A superset: the same vocabulary plus new tokens appended at the end (merges-free entries).

    `words` are plain text (a leading space marks a word-initial token) and are spelled in the
    tokenizer's own alphabet: GPT-2 byte characters for byte-level BPE (`" kingdom"` ->
    `Ġkingdom`, `"é"` -> `Ã©`), `▁` for SentencePiece style, `##` continuations for WordPiece.
    BPE never produces merges-free entries, so text that does not already encode to them
    tokenizes exactly as before. New ids start after every existing id (added tokens included);
    words already in the vocabulary are skipped.
    """
    from transplant.core.vocab import detect_family, gpt2_byte_alphabet

    spec = json.loads(tok.to_str())
    family, marker = detect_family(spec)
    model = spec["model"]
    vocab = model["vocab"]
    byte_char = {b: c for c, b in gpt2_byte_alphabet().items()}
    next_id = max([*vocab.values(), *(a["id"] for a in spec.get("added_tokens") or [])], default=-1) + 1
    for w in words:
        if family == "byte_level":
            piece = "".join(byte_char[b] for b in w.encode("utf-8"))
        elif family == "sentencepiece":
            piece = w.replace(" ", marker)
        elif family == "wordpiece":
            prefix = model.get("continuing_subword_prefix") or "##"
            piece = w[1:] if w.startswith(" ") else prefix + w
        else:
            piece = w
        if piece not in vocab:
            vocab[piece] = next_id
            next_id += 1
    # Specials live in `added_tokens` too; their ids are unchanged.
    return Tokenizer.from_str(json.dumps(spec))


def save_tokenizer(tok: Tokenizer, folder: Path, bos: str | None = "<|im_start|>", eos: str | None = "<|endoftext|>",
                   chat_template: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    kwargs = {k: v for k, v in (("bos_token", bos), ("eos_token", eos)) if v}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)
    if chat_template:
        fast.chat_template = chat_template
    fast.save_pretrained(str(folder))
    return folder


def tiny_model(kind: str, vocab: int, tied: bool, bos: int, eos: int, dtype: torch.dtype = torch.float32, seed: int = 0):
    torch.manual_seed(seed)
    if kind == "llama":
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                          tie_word_embeddings=tied, bos_token_id=bos, eos_token_id=eos)
        model = LlamaForCausalLM(cfg)
    else:
        cfg = GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=512,
                         tie_word_embeddings=tied, bos_token_id=bos, eos_token_id=eos)
        model = GPT2LMHeadModel(cfg)
    with torch.no_grad():
        # Spread embedding rows so logits differ clearly between tokens.
        model.get_input_embeddings().weight.normal_(0, 1.0)
        if not tied:
            model.get_output_embeddings().weight.normal_(0, 1.0)
    return model.to(dtype).eval()


def save_model(model, tok: Tokenizer, folder: Path, shard_size: str | None = None, **tok_kwargs) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    kwargs = {"max_shard_size": shard_size} if shard_size else {}
    model.save_pretrained(str(folder), **kwargs)
    save_tokenizer(tok, folder, **tok_kwargs)
    return folder


def logits_for(folder: Path, text: str, tokenizer_folder: Path | None = None,
               dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(token ids, logits) of `text` without special tokens, the model loaded in `dtype`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_folder or folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype).eval()
    ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    # Compare token-by-token in the ids' own order (a shuffled vocabulary permutes columns).
    return ids[0], logits


def unigram(vocab_size: int = 400, lang: str = "en") -> Tokenizer:
    """A T5/XLM-R-style Unigram (Metaspace); specials in T5 order, pad first: <pad> </s> <s> <unk>.

    The pad id is below the eos id on purpose: a pad row that copies eos wins greedy ties."""
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<s>", "<unk>"],
                                      unk_token="<unk>", show_progress=False)
    tok.train_from_iterator(lines(lang), trainer)
    return tok


def save_tokenizer_roles(tok: Tokenizer, folder: Path, chat_template: str | None = None, **roles: str) -> Path:
    """Save with any of bos/eos/pad/unk given as `bos="<s>"`... (tokenizer_config.json roles)."""
    folder.mkdir(parents=True, exist_ok=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **{f"{k}_token": v for k, v in roles.items() if v})
    if chat_template:
        fast.chat_template = chat_template
    fast.save_pretrained(str(folder))
    return folder


def always_eos_llama(vocab: int, eos: int, bos: int | list[int] | None = None, pad: int | None = None,
                     hidden: int = 32):
    """An untied tiny Llama that predicts `eos` after every input (a stand-in for a trained model).

    The layers add nothing to the residual stream (zero output projections), every embedding has
    a large first coordinate, the final norm keeps only that coordinate, and only the eos row of
    the head reads it."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=False, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb.normal_(0, 1.0)
        emb[:, 0] = 10.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.norm.weight.zero_()
        model.model.norm.weight[0] = 1.0
        head = model.get_output_embeddings().weight
        head.normal_(0, 1.0)
        head[:, 0] = 0.0
        head[eos, 0] = 5.0
    return model.eval()
