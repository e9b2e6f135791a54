"""Canonical token forms: round trips (hypothesis), the GPT-2 byte alphabet, byte fallback, alignment."""

from __future__ import annotations

import string

import builders as B
import pytest
from builders import MIXED
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transplant.core.align import Alignment, shortest_segmentation
from transplant.core.vocab import BYTE, NORMAL, SPECIAL, Vocabulary, detect_family, gpt2_byte_alphabet, load_tokenizer

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def vocabs(toks):
    return {name: Vocabulary.from_tokenizer(tok) for name, tok in toks.items()}


def test_families(vocabs):
    assert vocabs["bl"].family == "byte_level"
    assert vocabs["sp"].family == "sentencepiece"
    assert vocabs["wp"].family == "wordpiece"


@SETTINGS
@given(text=MIXED)
def test_byte_level_round_trip(bl_tok, vocabs, text):
    ids = bl_tok.encode(text, add_special_tokens=False).ids
    assert vocabs["bl"].decode_canonical(ids) == text.encode("utf-8")


@SETTINGS
@given(text=MIXED)
def test_sentencepiece_round_trip(sp_tok, vocabs, text):
    # The tiny SentencePiece-style tokenizer has no dummy prefix and byte fallback for every
    # character it was not trained on, so its canonical bytes are exactly the input.
    enc = sp_tok.encode(text, add_special_tokens=False)
    assert "<unk>" not in enc.tokens
    assert vocabs["sp"].decode_canonical(enc.ids) == text.encode("utf-8")


def _wordpiece_alphabet(tok) -> list[str]:
    vocab = tok.get_vocab()
    # Letters WordPiece can spell both at the start and inside a word (others become [UNK]).
    return [c for c in string.ascii_letters if c in vocab and "##" + c in vocab]


@pytest.fixture(scope="module")
def wp_alphabet(wp_tok):
    letters = _wordpiece_alphabet(wp_tok)
    assert set(string.ascii_lowercase) <= set(letters)
    return letters


@SETTINGS
@given(data=st.data())
def test_wordpiece_round_trip_up_to_spacing(wp_tok, vocabs, wp_alphabet, data):
    text = data.draw(st.text(alphabet=st.sampled_from(wp_alphabet + list("  \n\t")), max_size=80))
    ids = wp_tok.encode(text, add_special_tokens=False).ids
    # WordPiece drops the spacing: each word comes back with exactly one leading space.
    assert vocabs["wp"].decode_canonical(ids) == "".join(" " + w for w in text.split()).encode()


def test_wordpiece_punctuation_is_its_own_word(wp_tok, vocabs):
    ids = wp_tok.encode("And God said, Let there be light.", add_special_tokens=False).ids
    assert vocabs["wp"].decode_canonical(ids) == b" And God said , Let there be light ."


def test_gpt2_byte_alphabet():
    alphabet = gpt2_byte_alphabet()
    assert len(alphabet) == 256
    assert sorted(alphabet.values()) == list(range(256))
    assert all(len(c) == 1 and not c.isspace() and c.isprintable() for c in alphabet)
    assert alphabet["Ġ"] == 0x20 and alphabet["Ċ"] == 0x0A and alphabet["ĉ"] == 0x09
    assert alphabet["A"] == 0x41 and alphabet["é"] == 0xE9
    # Byte 0x80 is stood for by a shifted code point, never by the look-alike Latin-1 letter.
    assert alphabet["Ģ"] == 0x80
    # It agrees with the tokenizers library's own alphabet.
    from tokenizers import pre_tokenizers

    assert set(pre_tokenizers.ByteLevel.alphabet()) == set(alphabet)


def test_byte_level_canonical_forms(bl_tok, vocabs):
    vocab, v = bl_tok.get_vocab(), vocabs["bl"]
    assert v.tokens[vocab["Ġ"]].text == b" "
    assert v.tokens[vocab["Ċ"]].text == b"\n"
    assert v.tokens[vocab["Ã"]].text == b"\xc3"
    word = next(p for p in vocab if p.startswith("Ġ") and len(p) > 3)
    assert v.tokens[vocab[word]].text == b" " + word[1:].encode()
    assert v.tokens[vocab[word]].word_initial
    assert v.tokens[vocab["<|endoftext|>"]].kind == SPECIAL


def test_sentencepiece_prefers_real_token_over_byte_fallback(sp_tok, vocabs):
    vocab, v = sp_tok.get_vocab(), vocabs["sp"]
    real, fallback = vocab["a"], vocab["<0x61>"]
    assert real != fallback
    assert v.tokens[fallback] == v.tokens[fallback].__class__(b"a", BYTE)
    assert v.tokens[real].text == b"a" and v.tokens[real].kind == NORMAL
    assert v.lookup(b"a") == real
    # A byte with no trained token resolves to its fallback piece.
    assert v.lookup(b"\n") == vocab["<0x0A>"]
    assert v.lookup(b"\xc3") == vocab["<0xC3>"]
    assert v.tokens[vocab["▁the"]].text == b" the"


def test_sentencepiece_lookup_does_not_depend_on_id_order(sp_tok):
    """Even when the byte piece has the higher id, the trained token wins."""
    import json

    from tokenizers import Tokenizer

    spec = json.loads(sp_tok.to_str())
    vocab = spec["model"]["vocab"]
    real, fallback = vocab["a"], vocab["<0x61>"]
    vocab["a"], vocab["<0x61>"] = fallback, real
    v = Vocabulary.from_tokenizer(Tokenizer.from_str(json.dumps(spec)))
    assert v.lookup(b"a") == fallback  # now the id of the real token "a"
    assert v.tokens[fallback].kind == NORMAL


def test_wordpiece_canonical_forms(wp_tok, vocabs):
    vocab, v = wp_tok.get_vocab(), vocabs["wp"]
    cont = next(p for p in vocab if p.startswith("##") and len(p) > 3)
    assert v.tokens[vocab[cont]].text == cont[2:].encode()
    assert v.tokens[vocab["the"]].text == b" the"
    assert v.tokens[vocab["[SEP]"]].kind == SPECIAL


@pytest.fixture(scope="module")
def with_double_space(toks):
    """The tiny vocabularies have `\\n` and `\\t` (byte alphabet / byte fallback) but no `  `; add it."""
    return {name: B.with_extra_tokens(toks[name], ["  "]) for name in ("bl", "sp")}


@pytest.mark.parametrize("direction", ["bl->sp", "sp->bl"])
def test_whitespace_tokens_align_exactly(with_double_space, direction):
    old_name, new_name = direction.split("->")
    old = Vocabulary.from_tokenizer(with_double_space[old_name])
    new = Vocabulary.from_tokenizer(with_double_space[new_name])
    alignment = Alignment.build(old, new)
    for ws in (b"\n", b"\t", b"  ", b" "):
        new_id, old_id = new.lookup(ws), old.lookup(ws)
        assert new_id is not None and old_id is not None, ws
        assert alignment.exact[new_id] == old_id, ws
    raw_bl = with_double_space["bl"].get_vocab()
    raw_sp = with_double_space["sp"].get_vocab()
    pairs = [("Ċ", "<0x0A>"), ("ĉ", "<0x09>"), ("ĠĠ", "▁▁"), ("Ġ", "▁")]
    for bl_piece, sp_piece in pairs:
        if direction == "bl->sp":
            assert alignment.exact[raw_sp[sp_piece]] == raw_bl[bl_piece]
        else:
            assert alignment.exact[raw_bl[bl_piece]] == raw_sp[sp_piece]


def test_special_tokens_matched_by_role(toks, tmp_path):
    # Old: ChatML-style, with <|im_end|> as its eos. New: SentencePiece style with </s> as eos.
    old_dir = B.save_tokenizer(toks["bl"], tmp_path / "old", bos="<|im_start|>", eos="<|im_end|>")
    new_dir = B.save_tokenizer(toks["sp"], tmp_path / "new", bos="<s>", eos="</s>")
    old, new = load_tokenizer(old_dir).vocabulary(), load_tokenizer(new_dir).vocabulary()
    ob, nb = toks["bl"].get_vocab(), toks["sp"].get_vocab()
    assert old.roles["eos"] == ob["<|im_end|>"] and new.roles["eos"] == nb["</s>"]
    alignment = Alignment.build(old, new)
    assert alignment.special_map[ob["<|im_end|>"]] == nb["</s>"]
    assert alignment.special_map[ob["<|im_start|>"]] == nb["<s>"]
    assert alignment.special_rows[nb["</s>"]] == ob["<|im_end|>"]
    assert alignment.special_rows[nb["<s>"]] == ob["<|im_start|>"]
    # <|endoftext|> has no role here and no same-content token in the new vocabulary.
    assert ob["<|endoftext|>"] not in alignment.special_map
    # Special tokens are never matched by their bytes as ordinary text.
    assert all(new.tokens[i].kind != SPECIAL for i in alignment.exact)


def test_special_tokens_matched_by_content_first(toks, tmp_path):
    shuffled = B.shuffled_copy(toks["bl"], seed=1)
    old = Vocabulary.from_tokenizer(toks["bl"])
    new = Vocabulary.from_tokenizer(shuffled)
    alignment = Alignment.build(old, new)
    for s in B.SPECIALS:
        assert alignment.special_map[toks["bl"].token_to_id(s)] == shuffled.token_to_id(s)
        assert alignment.special_rows[shuffled.token_to_id(s)] == toks["bl"].token_to_id(s)


@SETTINGS
@given(text=MIXED.filter(bool))
def test_shortest_segmentation_is_exact(vocabs, text):
    data = text.encode()
    for name in ("bl", "sp"):  # both cover every byte
        seg = shortest_segmentation(data, vocabs[name])
        assert seg is not None and vocabs[name].decode_canonical(seg) == data


def test_decompositions_spell_the_new_token(vocabs):
    for old_name, new_name in [("bl", "sp"), ("sp", "wp"), ("wp", "bl"), ("bl", "wp")]:
        old, new = vocabs[old_name], vocabs[new_name]
        alignment = Alignment.build(old, new)
        for i, pieces in alignment.decompositions.items():
            assert old.decode_canonical(pieces) == new.tokens[i].text
        assert not set(alignment.exact) & set(alignment.decompositions)


def test_detect_family_of_nested_sequences():
    spec = {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Split"}, {"type": "ByteLevel"}]}}
    assert detect_family(spec) == ("byte_level", "Ġ")
    spec = {"normalizer": {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}}
    assert detect_family(spec) == ("sentencepiece", "▁")


def test_declared_bos_outranks_chat_spelling(toks, tmp_path):
    # New: <|im_start|> is both the declared bos and (by spelling) a chat turn start. Old has a
    # distinct bos (<s>) and turn start (<start_of_turn>): the sequence role must win, because the
    # first position's row is what the model attends to as its sink.
    sp = B.sentencepiece_bpe()
    sp.add_special_tokens(["<start_of_turn>"])
    old_dir = B.save_tokenizer(sp, tmp_path / "old", bos="<s>", eos="</s>")
    new_dir = B.save_tokenizer(toks["bl"], tmp_path / "new", bos="<|im_start|>", eos="<|im_end|>")
    old, new = load_tokenizer(old_dir).vocabulary(), load_tokenizer(new_dir).vocabulary()
    assert old.roles["turn_start"] == sp.token_to_id("<start_of_turn>")
    alignment = Alignment.build(old, new)
    assert alignment.special_rows[toks["bl"].token_to_id("<|im_start|>")] == sp.token_to_id("<s>")
    # Without a declared role, the spelling decides: a new <start_of_turn> starts from the old one.
    new2 = Vocabulary.from_tokenizer(sp)
    old2 = load_tokenizer(new_dir).vocabulary()
    alignment2 = Alignment.build(old2, new2)
    assert alignment2.special_rows[sp.token_to_id("<start_of_turn>")] == toks["bl"].token_to_id("<|im_start|>")
