"""Model types whose tokenizer class transformers forces (issue 17), over the whole list it declares.

transformers loads the tokenizer of every model type in its `MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS`
with the class registered for that type; where that class is a specific one (Qwen2Tokenizer, ...)
it rebuilds the tokenizer and ignores the written tokenizer.json. For every type of the list that
this transformers can build a tiny causal LM for, a tiny untied model on a byte-level BPE is moved
onto a foreign tokenizer:

* without the option, a forced type is refused in one line naming the cause and the ways through,
  before any heavy work, and nothing is written; any other type is written and loads as written;
* with `allow_forced_tokenizer_class`, a forced type is written, its card explains it, and the
  card's own loading snippet round-trips;
* a target trained with `train_tokenizer(like=MODEL)` loads right with plain AutoTokenizer.

The expectation (forced or not) comes from what transformers declares (the list and its
registered class for the saved config's model_type), not from the code under test.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer
from transformers.models.auto.configuration_auto import CONFIG_MAPPING, CONFIG_MAPPING_NAMES
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
)
from transformers.models.auto.tokenization_auto import MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS as LISTED
from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING_NAMES

import builders as B
from conftest import ROLES
from transplant.api import transplant
from transplant.common.errors import TransplantError

GENERIC = {None, "TokenizersBackend", "PreTrainedTokenizerFast", "PythonBackend"}
TYPES = sorted(LISTED)
TEXTS = ["In the beginning God created the heaven and the earth.", "Hola, ¿qué tal?\n  x = 1\t# ok",
         "Line one.\n\n  Two  spaces\tand a tab.\r\nÉté: naïve café — 東京 😀 x=1234;",
         "Cafe\u0301 cre\u0300me au lait, 98765 + 4321"]  # decomposed accents: an NFC normalizer composes them

# A tiny model of any architecture: the shared decoder sizes, plus the size knobs a config has
# among these (experts, linear attention heads, low-rank projections, Mamba state, ...).
_TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=512, head_dim=8)
_SMALL = {"moe_intermediate_size": 16, "shared_expert_intermediate_size": 16, "num_experts": 4, "num_local_experts": 4,
          "n_routed_experts": 4, "num_experts_per_tok": 2, "linear_key_head_dim": 8, "linear_value_head_dim": 8,
          "linear_num_key_heads": 2, "linear_num_value_heads": 4, "kv_lora_rank": 16, "q_lora_rank": 16,
          "qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "v_head_dim": 8, "qk_head_dim": 16, "dim_model_base": 32,
          "hc_lowrank": 8, "ngram_vocab_size_base": 64, "split_ngram_parts": 4,
          "make_ngram_vocab_size_divisible_by": 4, "mamba_d_state": 8, "mamba_dt_rank": 4}
_VISION = dict(depth=1, num_hidden_layers=1, hidden_size=16, intermediate_size=32, num_heads=2, num_attention_heads=2,
               out_hidden_size=32)
_MAX_PARAMS = 2_000_000


def _buildable(model_type: str) -> str | None:
    """Why this transformers cannot build a tiny causal LM of `model_type` (None: it can)."""
    if model_type not in CONFIG_MAPPING_NAMES:
        return f"{model_type}: this transformers has no config class for it (remote code only)"
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return f"{model_type}: this transformers has no causal-LM class for it (not a text generator)"
    return None


def _tiny_config(model_type: str, vocab: int, bos: int, eos: int):
    cls = CONFIG_MAPPING[model_type]
    composite = "text_config" in getattr(cls, "sub_configs", {})
    defaults = cls().to_dict()
    text_defaults = (defaults.get("text_config") or {}) if composite else defaults
    text = dict(_TINY, **{k: v for k, v in _SMALL.items() if k in text_defaults}, vocab_size=vocab, bos_token_id=bos,
                eos_token_id=eos, pad_token_id=None)
    vision = {k: v for k, v in _VISION.items() if k in (defaults.get("vision_config") or {})}
    parts = dict(text_config=text, **({"vision_config": vision} if vision else {}))

    def make():
        return cls(**parts, tie_word_embeddings=False) if composite else cls(tie_word_embeddings=False, **text)

    try:
        return make()
    except Exception:  # a config that insists on an integer pad id (ModernBERT decoder)
        text["pad_token_id"] = eos
        return make()


@pytest.fixture(scope="module")
def model_of(toks, tmp_path_factory):
    """model type -> a saved tiny untied model of it on the byte-level tokenizer (built once)."""
    root, built = tmp_path_factory.mktemp("forced-models"), {}

    def get(model_type: str) -> Path:
        if model_type not in built:
            tok = toks["bl"]
            vocab = tok.get_vocab()
            cfg = _tiny_config(model_type, tok.get_vocab_size(with_added_tokens=True), vocab[ROLES["bl"]["bos"]],
                               vocab[ROLES["bl"]["eos"]])
            # A causal LM of a composite config saves its text type (qwen3_5_text); the checkpoints
            # of the listed type itself are the image-text-to-text model, built here when there is one.
            auto = AutoModelForImageTextToText if hasattr(cfg, "text_config") and (
                model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES) else AutoModelForCausalLM
            with torch.device("meta"):
                size = sum(p.numel() for p in auto.from_config(cfg).parameters())
            if size > _MAX_PARAMS:
                pytest.skip(f"{model_type}: no tiny config found ({size:,} parameters)")
            torch.manual_seed(0)
            model = auto.from_config(cfg).eval()
            built[model_type] = B.save_model(model, tok, root / model_type, **ROLES["bl"])
        return built[model_type]

    return get


def declared_forced(folder: Path) -> str | None:
    """The class transformers declares it forces on this saved model's type (None: it reads tokenizer.json)."""
    model_type = json.loads((folder / "config.json").read_text())["model_type"]
    name = TOKENIZER_MAPPING_NAMES.get(model_type)
    return name if model_type in LISTED and name not in GENERIC else None


def assert_reads_as_written(tokenizer, folder: Path) -> None:
    raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
    for text in TEXTS:
        assert list(tokenizer(text, add_special_tokens=False)["input_ids"]) == raw.encode(
            text, add_special_tokens=False).ids, text
    assert set(tokenizer.get_vocab()) == set(raw.get_vocab(with_added_tokens=True))


def assert_refused(exc: TransplantError, folder: Path, out: Path) -> None:
    message, forced = str(exc), declared_forced(folder)
    model_type = json.loads((folder / "config.json").read_text())["model_type"]
    assert "\n" not in message
    for phrase in (f"`{model_type}`", forced, "tokenizer.json", "--allow-forced-tokenizer-class", "--like"):
        assert phrase in message, (phrase, message)
    assert "report this" not in message
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.*"))


def _model(model_type: str, model_of) -> Path:
    reason = _buildable(model_type)
    if reason:
        pytest.skip(reason)
    return model_of(model_type)


# -- (a) without the option: forced types refused, the others written as they are -----------------

@pytest.mark.parametrize("model_type", TYPES)
def test_every_listed_type_is_refused_only_where_the_class_is_forced(model_type, model_of, tok_dirs, tmp_path):
    folder, out = _model(model_type, model_of), tmp_path / "out"
    if declared_forced(folder):
        with pytest.raises(TransplantError) as caught:
            transplant(folder, tok_dirs["sp"], out, method="fvt")
        assert_refused(caught.value, folder, out)
    else:
        transplant(folder, tok_dirs["sp"], out, method="fvt")
        assert_reads_as_written(AutoTokenizer.from_pretrained(str(out)), out)
        assert "## Loading the tokenizer" not in (out / "README.md").read_text()


# -- (b) with the option: written, explained, and the card's snippet loads it right ---------------

def run_card_snippet(out: Path) -> dict:
    """Execute the model card's loading snippet with this folder's path."""
    card = (out / "README.md").read_text()
    code = card.split("## Loading the tokenizer", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    code = re.sub(r'"path/to/[^"]+"', repr(str(out)), code)
    scope: dict = {}
    exec(code, scope)  # the card's own code, with the real path
    return scope


@pytest.mark.parametrize("model_type", TYPES)
def test_allowed_forced_class_is_written_with_a_snippet_that_round_trips(model_type, model_of, tok_dirs, tmp_path):
    folder, out = _model(model_type, model_of), tmp_path / "out"
    forced = declared_forced(folder)
    result = transplant(folder, tok_dirs["sp"], out, method="fvt", allow_forced_tokenizer_class=True)
    if not forced:  # the option changes nothing where transformers reads tokenizer.json as written
        assert_reads_as_written(AutoTokenizer.from_pretrained(str(out)), out)
        assert "## Loading the tokenizer" not in (out / "README.md").read_text()
        return
    assert type(AutoTokenizer.from_pretrained(str(out))).__name__ == forced  # the section is warranted
    assert any("--allow-forced-tokenizer-class" in n for n in result.notes)
    card = (out / "README.md").read_text()
    assert "## Loading the tokenizer" in card and forced in card
    scope = run_card_snippet(out)
    assert_reads_as_written(scope["tokenizer"], out)
    assert scope["model"].get_input_embeddings().weight.shape[0] == result.plan.new_size
    text = TEXTS[0]
    raw = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert list(scope["tokenizer"](text)["input_ids"]) == raw.encode(text).ids  # the chosen start/end tokens too


# -- qwen2 onto other families; the refusal comes before the work, and from the final guard too ---

@pytest.fixture(scope="module")
def foreign(tok_dirs, tmp_path_factory):
    """Target tokenizers of other families: SentencePiece-style BPE, Unigram, prefix-space byte-level BPE."""
    root = tmp_path_factory.mktemp("foreign")
    prefix_space = Tokenizer(models.BPE())
    prefix_space.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    prefix_space.decoder = decoders.ByteLevel()
    prefix_space.train_from_iterator(B.lines("es"), trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return {"sp": tok_dirs["sp"],
            "unigram": B.save_tokenizer_roles(B.unigram(), root / "unigram", bos="<s>", eos="</s>", unk="<unk>",
                                              pad="<pad>"),
            "prefix-space-bpe": B.save_tokenizer(prefix_space, root / "bl2", bos=None, eos="<|endoftext|>")}


@pytest.mark.parametrize("family", ["sp", "unigram", "prefix-space-bpe"])
def test_qwen2_onto_another_family_is_refused_before_the_work(family, foreign, model_of, tmp_path, monkeypatch):
    import transplant.planned as planned

    def no_work(*args, **kwargs):
        raise AssertionError("planning started before the refusal")

    monkeypatch.setattr(planned, "prepare", no_work)
    folder, out = model_of("qwen2"), tmp_path / "out"
    with pytest.raises(TransplantError) as caught:
        transplant(folder, foreign[family], out, method="fvt")
    assert_refused(caught.value, folder, out)


def test_the_post_write_check_names_the_cause_too(model_of, tok_dirs, tmp_path, monkeypatch):
    """With the early check bypassed, the final guard refuses with the same cause (not "report this")."""
    import transplant.planned as planned

    monkeypatch.setattr(planned, "check_target_reloads", lambda *a, **k: None)  # the one early check
    folder, out = model_of("qwen2"), tmp_path / "out"
    with pytest.raises(TransplantError) as caught:
        transplant(folder, tok_dirs["sp"], out, method="fvt")
    assert_refused(caught.value, folder, out)


def test_a_plan_written_with_the_option_is_re_applied_with_it(model_of, tok_dirs, tmp_path):
    from transplant.output import apply_plan

    folder = model_of("qwen2")
    transplant(folder, tok_dirs["sp"], tmp_path / "first", method="fvt", allow_forced_tokenizer_class=True)
    apply_plan(tmp_path / "first", folder, tmp_path / "again")
    assert "## Loading the tokenizer" in (tmp_path / "again" / "README.md").read_text()
    assert_reads_as_written(run_card_snippet(tmp_path / "again")["tokenizer"], tmp_path / "again")


def test_cli_refuses_in_one_line_and_the_flag_writes(model_of, tok_dirs, tmp_path):
    folder, out = model_of("qwen2"), tmp_path / "out"
    args = ["run", "--model", folder, "--new-tok", tok_dirs["sp"], "--out", out, "--method", "fvt"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "transplant.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Qwen2Tokenizer" in lines[0] and "--allow-forced-tokenizer-class" in lines[0]
    assert not out.exists()

    from click.testing import CliRunner

    from transplant.cli import cli

    res = CliRunner().invoke(cli, [*map(str, args), "--allow-forced-tokenizer-class"])
    assert res.exit_code == 0, res.output
    assert "## Loading the tokenizer" in (out / "README.md").read_text()


# -- (c) a target trained --like the model loads right with plain AutoTokenizer -------------------

FORCED_CAUSAL = [t for t in TYPES if not _buildable(t) and TOKENIZER_MAPPING_NAMES.get(t) not in GENERIC]


@pytest.fixture(scope="module")
def spanish(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "es.txt"
    path.write_text(B.sample_text("es")[:60_000], encoding="utf-8")
    return path


@pytest.mark.parametrize("model_type", FORCED_CAUSAL)
def test_a_tokenizer_trained_like_the_model_round_trips_with_autotokenizer(model_type, model_of, spanish, tmp_path):
    from transplant.train.tokenizer_train import train_tokenizer

    folder = model_of(model_type)
    forced = declared_forced(folder)
    if not forced:
        pytest.skip(f"{model_type}: saved as a type transformers reads tokenizer.json for")
    train_tokenizer([spanish], 600, tmp_path / "tok", like=str(folder))
    out = tmp_path / "out"
    transplant(folder, tmp_path / "tok", out, method="fvt")  # no option needed
    tok = AutoTokenizer.from_pretrained(str(out))
    assert type(tok).__name__ == forced
    assert_reads_as_written(tok, out)
    raw = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert list(tok(TEXTS[0])["input_ids"]) == raw.encode(TEXTS[0]).ids
    assert "## Loading the tokenizer" not in (out / "README.md").read_text()


def test_like_a_forced_class_refuses_what_it_would_rebuild(model_of, spanish, tmp_path):
    from transplant.train.tokenizer_train import train_tokenizer

    folder = model_of("qwen2")
    with pytest.raises(TransplantError, match="--algorithm unigram cannot load as written.*Qwen2Tokenizer"):
        train_tokenizer([spanish], 600, tmp_path / "u", like=str(folder), algorithm="unigram")
    with pytest.raises(TransplantError, match="--supertokens cannot load as written.*Qwen2Tokenizer"):
        train_tokenizer([spanish], 600, tmp_path / "s", like=str(folder), supertokens=True)
    assert not (tmp_path / "u").exists() and not (tmp_path / "s").exists()
