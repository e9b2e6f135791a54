"""Special tokens of the written model: roles agree in config, generation config and tokenizer;
generation stops where the original would; encodes add what the source model saw; the chat
template keeps the source's format in the target's markers."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from tokenizers import processors
from transformers import AutoModelForCausalLM, AutoTokenizer

import builders as B
from transplant import transplant, transplant_model

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


# -- sources -------------------------------------------------------------------------------------
def _gpt2_style(root, toks):
    """bos = eos = pad = <|endoftext|> (GPT-2 and its fine-tunes)."""
    tok = toks["bl"]
    eot = tok.token_to_id("<|endoftext|>")
    model = B.always_eos_llama(tok.get_vocab_size(), eos=eot, bos=eot, pad=eot)
    folder = root / "gpt2-style"
    model.save_pretrained(str(folder))
    B.save_tokenizer_roles(tok, folder, bos="<|endoftext|>", eos="<|endoftext|>", pad="<|endoftext|>")
    return folder


def _llama_style(root, toks):
    """<s> bos (added to every encode), </s> eos, <unk>; no pad."""
    tok = B.sentencepiece_bpe()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B:1",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    model = B.always_eos_llama(tok.get_vocab_size(), eos=tok.token_to_id("</s>"), bos=tok.token_to_id("<s>"))
    folder = root / "llama-style"
    model.save_pretrained(str(folder))
    B.save_tokenizer_roles(tok, folder, bos="<s>", eos="</s>", unk="<unk>")
    return folder


SOURCES = {"gpt2_style": _gpt2_style, "llama_style": _llama_style}


# -- targets -------------------------------------------------------------------------------------
def _bl_target(root):
    return B.save_tokenizer_roles(B.byte_level_bpe(lang="es"), root / "t-bl", eos="<|endoftext|>")


def _unigram_target(root):
    return B.save_tokenizer_roles(B.unigram(), root / "t-uni", bos="<s>", eos="</s>", pad="<pad>", unk="<unk>")


def _wordpiece_target(root):
    tok = B.wordpiece()
    return B.save_tokenizer_roles(tok, root / "t-wp", bos="[CLS]", eos="[SEP]", pad="[PAD]", unk="[UNK]")


TARGETS = {"byte_level": _bl_target, "unigram": _unigram_target, "wordpiece": _wordpiece_target}


@pytest.fixture(scope="module")
def sources(toks, tmp_path_factory):
    root = tmp_path_factory.mktemp("special-sources")
    return {name: make(root, toks) for name, make in SOURCES.items()}


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    root = tmp_path_factory.mktemp("special-targets")
    return {name: make(root) for name, make in TARGETS.items()}


def _ids(value):
    return [] if value is None else (list(value) if isinstance(value, list) else [value])


def _rows(folder):
    weights = load_file(str(folder / "model.safetensors"))
    return weights["model.embed_tokens.weight"], weights["lm_head.weight"]


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("source", list(SOURCES))
def test_roles_agree_everywhere_and_generation_stops(source, target, sources, targets, tmp_path):
    out = tmp_path / "out"
    result = transplant(sources[source], targets[target], out)
    cfg = json.loads((out / "config.json").read_text())
    gen = json.loads((out / "generation_config.json").read_text())
    tok = AutoTokenizer.from_pretrained(str(out))
    # bos, pad and unk agree by role in all three places (None where the tokenizer has none).
    for role in ("bos", "pad"):
        want = getattr(tok, f"{role}_token_id")
        assert cfg.get(f"{role}_token_id") == want, (role, cfg, want)
        assert gen.get(f"{role}_token_id") == want, (role, gen, want)
    if "unk_token_id" in cfg:
        assert cfg["unk_token_id"] == tok.unk_token_id
    # eos: the tokenizer's eos first, then every id that carries an old eos row.
    assert _ids(cfg["eos_token_id"])[0] == tok.eos_token_id
    assert _ids(gen["eos_token_id"])[0] == tok.eos_token_id
    assert result.special_ids.eos == _ids(gen["eos_token_id"])
    assert max(_ids(gen["eos_token_id"]) + [tok.bos_token_id or 0, tok.pad_token_id or 0]) < cfg["vocab_size"]
    # A pad token of its own is neither an end of sequence nor a copy of an eos row (a tied head
    # would pick the lower id); only a pad that *is* the eos token may be one.
    inp, head = _rows(out)
    if tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id:
        assert tok.pad_token_id not in _ids(gen["eos_token_id"]), (tok.pad_token_id, gen)
        for e in _ids(gen["eos_token_id"]):
            assert not torch.equal(head[tok.pad_token_id], head[e])
            assert not torch.equal(inp[tok.pad_token_id], inp[e])
    # The source always predicts eos: the transplanted model must stop at once, on an eos id.
    model = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    enc = tok("In the beginning God created", return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**enc, max_new_tokens=8, do_sample=False)
    new_tokens = generated[0, enc.input_ids.shape[1]:].tolist()
    assert len(new_tokens) == 1 and new_tokens[0] in _ids(gen["eos_token_id"]), (new_tokens, gen)


def test_gpt2_style_source_eos_is_the_targets_eos_not_its_bos(sources, targets, tmp_path):
    transplant(sources["gpt2_style"], targets["unigram"], tmp_path / "out")
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    uni = B.unigram()
    assert cfg["eos_token_id"] == uni.token_to_id("</s>")
    assert cfg["bos_token_id"] == uni.token_to_id("<s>")
    assert cfg["pad_token_id"] == uni.token_to_id("<pad>")


def test_in_memory_transplant_updates_the_generation_config(sources, targets, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(str(sources["llama_style"]))
    transplant_model(model, sources["llama_style"], targets["wordpiece"])
    wp = AutoTokenizer.from_pretrained(str(targets["wordpiece"]))
    assert _ids(model.generation_config.eos_token_id)[0] == wp.eos_token_id
    assert model.config.eos_token_id == wp.eos_token_id and model.config.pad_token_id == wp.pad_token_id
    model.save_pretrained(str(tmp_path / "saved"))
    gen = json.loads((tmp_path / "saved" / "generation_config.json").read_text())
    assert _ids(gen["eos_token_id"])[0] == wp.eos_token_id


# -- what a plain tokenizer(text) adds -------------------------------------------------------------
def test_bos_always_source_onto_a_no_bos_target_adds_the_mapped_start_token(sources, targets, tmp_path):
    # Like Gemma (always <bos> first) onto SmolLM2's tokenizer (adds nothing by itself).
    result = transplant(sources["llama_style"], targets["unigram"], tmp_path / "out")
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    ids = tok("In the beginning").input_ids
    assert ids[0] == tok.bos_token_id == result.special_ids.bos
    assert ids[1:] == tok("In the beginning", add_special_tokens=False).input_ids
    card = (tmp_path / "out" / "README.md").read_text()
    assert "source model's convention" in card
    # ... unless the caller keeps the target's own convention.
    transplant(sources["llama_style"], targets["unigram"], tmp_path / "as-target", encode_like="target")
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "as-target"))
    assert tok("In the beginning").input_ids == tok("In the beginning", add_special_tokens=False).input_ids


def test_no_bos_source_onto_a_bos_adding_target_adds_nothing(sources, tmp_path):
    uni = B.unigram()
    uni.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> $B:1 </s>",
                                                       special_tokens=[("<s>", uni.token_to_id("<s>")),
                                                                       ("</s>", uni.token_to_id("</s>"))])
    target = B.save_tokenizer_roles(uni, tmp_path / "t", bos="<s>", eos="</s>", pad="<pad>", unk="<unk>")
    transplant(sources["gpt2_style"], target, tmp_path / "out")
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    assert tok("In the beginning").input_ids == tok("In the beginning", add_special_tokens=False).input_ids
    # Keeping the target's convention: it appends eos to every encode, which the notes warn about.
    result = transplant(sources["gpt2_style"], target, tmp_path / "as-target", encode_like="target")
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "as-target"))
    assert tok("In the beginning").input_ids[-1] == tok.eos_token_id
    assert any("end of sequence" in n for n in result.notes)


def test_lossy_target_is_named(sources, targets, tmp_path):
    result = transplant(sources["llama_style"], targets["wordpiece"], tmp_path / "out")
    assert any("lossy" in n for n in result.notes)
    assert "lossy" in (tmp_path / "out" / "README.md").read_text()
    result = transplant(sources["llama_style"], targets["byte_level"], tmp_path / "bl")
    assert not any("lossy" in n for n in result.notes)


# -- chat template ------------------------------------------------------------------------------
def test_chat_template_reexpressed_in_the_targets_markers(toks, tmp_path):
    bl = toks["bl"]
    model = B.always_eos_llama(bl.get_vocab_size(), eos=bl.token_to_id("<|im_end|>"),
                               bos=bl.token_to_id("<|im_start|>"))
    src = tmp_path / "chat-src"
    model.save_pretrained(str(src))
    B.save_tokenizer_roles(bl, src, chat_template=CHATML, bos="<|im_start|>", eos="<|im_end|>",
                           unk="<|endoftext|>")
    # A Gemma-like target: its own markers, spelled differently.
    sp = B.sentencepiece_bpe()
    sp.add_special_tokens(["<start_of_turn>", "<end_of_turn>"])
    target = B.save_tokenizer_roles(sp, tmp_path / "gemma-like", bos="<s>", eos="</s>", unk="<unk>")
    out = tmp_path / "out"
    transplant(src, target, out)
    tok = AutoTokenizer.from_pretrained(str(out))
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text == "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>assistant\nHello.<end_of_turn>\n"
    # The new markers carry the source markers' rows, and the turn end stops generation.
    old_in = load_file(str(src / "model.safetensors"))["model.embed_tokens.weight"]
    new_in, _ = _rows(out)
    assert torch.equal(new_in[sp.token_to_id("<start_of_turn>")], old_in[bl.token_to_id("<|im_start|>")])
    assert torch.equal(new_in[sp.token_to_id("<end_of_turn>")], old_in[bl.token_to_id("<|im_end|>")])
    gen = json.loads((out / "generation_config.json").read_text())
    assert sp.token_to_id("<end_of_turn>") in _ids(gen["eos_token_id"])
    assert "re-expressed" in (out / "README.md").read_text()


def test_chat_template_refused_only_when_no_role_matches(toks, tok_dirs, tmp_path):
    src = tmp_path / "chat-src"
    B.save_model(B.tiny_model("llama", toks["bl"].get_vocab_size(), True, 1, 0), toks["bl"], src,
                 chat_template="{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}")
    result = transplant(src, tok_dirs["wp"], tmp_path / "out")
    assert not AutoTokenizer.from_pretrained(str(tmp_path / "out")).chat_template
    assert "NOT carried over" in (tmp_path / "out" / "README.md").read_text()
    assert result.output_dir is not None


def test_eval_says_when_bits_per_byte_are_not_comparable(sources, targets, tmp_path):
    from click.testing import CliRunner

    from transplant.cli import cli

    transplant(sources["llama_style"], targets["wordpiece"], tmp_path / "wp")
    text = tmp_path / "t.txt"
    text.write_text("In the beginning God created the heaven and the earth.\n\nAnd the earth was without form.\n")
    res = CliRunner().invoke(cli, ["-q", "eval", "--model", str(tmp_path / "wp"), "--text", str(text)])
    assert res.exit_code == 0, res.output
    assert "not comparable" in res.output
    transplant(sources["llama_style"], targets["byte_level"], tmp_path / "bl")
    res = CliRunner().invoke(cli, ["-q", "eval", "--model", str(tmp_path / "bl"), "--text", str(text)])
    assert res.exit_code == 0 and "not comparable" not in res.output, res.output


def _smollm2_style(root, toks):
    """Declares <|im_start|> its bos and <|im_end|> its eos, adds nothing to encodes; its pre-training
    put <|endoftext|> between documents (SmolLM2-Instruct, Qwen2-Instruct)."""
    tok = toks["bl"]
    model = B.always_eos_llama(tok.get_vocab_size(), eos=tok.token_to_id("<|im_end|>"),
                               bos=tok.token_to_id("<|im_start|>"))
    folder = root / "smollm2-style"
    model.save_pretrained(str(folder))
    B.save_tokenizer_roles(tok, folder, bos="<|im_start|>", eos="<|im_end|>", unk="<|endoftext|>")
    return folder


@pytest.mark.parametrize("source, first", [("smollm2_style", "<|endoftext|>"), ("llama_style", "<s>"),
                                           ("gpt2_style", "<|endoftext|>")])
def test_the_new_bos_row_is_what_the_source_saw_first(source, first, sources, targets, toks, tmp_path):
    """The target's bos row (what a draft reads first when its target adds bos, and every encode with
    --encode-like target) copies the row of the token the source model had at the start of its
    sequences: the bos its encodes add, else its document separator, not a token that only shares
    the name bos (SmolLM2's <|im_start|> opens chat turns)."""
    folder = sources[source] if source in sources else _smollm2_style(tmp_path, toks)
    out = tmp_path / "out"
    result = transplant(folder, targets["unigram"], out)
    src_tok = AutoTokenizer.from_pretrained(str(folder))
    old_emb = load_file(str(folder / "model.safetensors"))["model.embed_tokens.weight"]
    new_emb, _ = _rows(out)
    new_bos = result.special_ids.bos
    assert torch.equal(new_emb[new_bos], old_emb[src_tok.convert_tokens_to_ids(first)])
