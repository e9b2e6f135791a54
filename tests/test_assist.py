"""Draft models for speculative decoding: `measure_assist` and `transplant eval --assist`.

Greedy assisted decoding is exact, so every assisted output must equal the target's own greedy
output, with a draft on the target's tokenizer (a transplant) and with one on another tokenizer
(transformers' universal assisted generation)."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from conftest import TEXT
from transplant import transplant
from transplant.cli import cli
from transplant.common.errors import TransplantError
from transplant.measure.assist import DraftSettings, measure_assist

TEXTS = [TEXT + "\n\n" + TEXT[200:] + "\n\n" + TEXT[400:]]


@pytest.fixture(scope="module")
def target(build_model, tmp_path_factory):
    return build_model(tmp_path_factory.mktemp("assist") / "target", "llama", tied=False, seed=3)


def test_the_target_as_its_own_draft_has_every_token_accepted(target):
    r = measure_assist(target, target, TEXTS, prompts=2, prompt_tokens=12, new_tokens=10)
    assert r.mode == "same tokenizer" and r.prompts == 2
    assert r.identical == 2
    assert r.proposed > 0 and r.accepted == r.proposed and r.acceptance_rate == 1.0
    # every target pass accepts its whole draft plus one token of its own
    assert r.tokens_per_step > 1.0 and r.new_tokens == 20


def test_transplanted_draft_is_exact_and_counted(target, build_model, tmp_path):
    other = build_model(tmp_path / "draft-sp", "llama", tied=True, tok="sp", seed=5)
    draft = tmp_path / "draft-on-target-tok"
    transplant(other, target, draft, method="fvt")
    r = measure_assist(draft, target, TEXTS, prompts=3, prompt_tokens=12, new_tokens=12)
    assert r.mode == "same tokenizer"
    assert r.identical == r.prompts == 3  # greedy assisted decoding equals the target's greedy output
    assert 0 < r.proposed and 0 <= r.accepted < r.proposed  # a random draft is not the target
    assert r.steps > 0 and r.new_tokens == 36


def test_draft_on_another_tokenizer_runs_universal_assisted_generation(target, build_model, tmp_path):
    other = build_model(tmp_path / "draft-sp", "llama", tied=True, tok="sp", seed=5)
    r = measure_assist(other, target, TEXTS, prompts=2, prompt_tokens=12, new_tokens=8)
    assert r.mode.startswith("universal")
    assert r.identical == 2 and r.proposed > 0


def test_a_text_too_short_for_one_prompt_is_refused(target):
    with pytest.raises(TransplantError, match="--prompt-tokens"):
        measure_assist(target, target, ["one two"], prompts=1, prompt_tokens=200, new_tokens=4)


def test_eval_assist_cli_json(target, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(TEXTS[0], encoding="utf-8")
    draft = tmp_path / "draft"
    shutil.copytree(target, draft)
    res = CliRunner().invoke(cli, ["eval", "--model", str(draft), "--assist", str(target), "--text", str(text),
                                   "--prompts", "1", "--prompt-tokens", "10", "--new-tokens", "6", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output[res.output.index("{"):])
    assert doc["assist"]["acceptance_rate"] == 1.0 and doc["assist"]["identical"] == 1
    assert doc["draft"] == "draft" and doc["target"] == "target"
    plain = CliRunner().invoke(cli, ["eval", "--model", str(draft), "--assist", str(target), "--text", str(text),
                                     "--prompts", "1", "--prompt-tokens", "10", "--new-tokens", "6"])
    assert plain.exit_code == 0, plain.output
    assert "acceptance rate" in plain.output and "100.0%" in plain.output


def test_draft_settings_reach_transformers(target, build_model, tmp_path):
    """One draft token per pass with the confidence stop off: every pass proposes exactly one token
    (its acceptance rate is then the draft's greedy agreement with the target)."""
    other = build_model(tmp_path / "draft-sp", "llama", tied=True, tok="sp", seed=5)
    draft = tmp_path / "draft-on-target-tok"
    transplant(other, target, draft, method="fvt")
    r = measure_assist(draft, target, TEXTS, prompts=2, prompt_tokens=12, new_tokens=10,
                       settings=DraftSettings(tokens=1, schedule="constant", confidence=0))
    assert r.identical == 2
    # one proposal per target pass, except a prompt's last pass (one token left: nothing to draft)
    assert r.steps - r.prompts <= r.proposed <= r.steps
    assert r.new_tokens == r.steps + r.accepted
    assert r.assistant_config == {"num_assistant_tokens": 1, "num_assistant_tokens_schedule": "constant",
                                  "assistant_confidence_threshold": 0}
    wide = measure_assist(draft, target, TEXTS, prompts=2, prompt_tokens=12, new_tokens=10,
                          settings=DraftSettings(tokens=4, schedule="constant", confidence=0))
    assert wide.proposed > wide.steps


@pytest.mark.parametrize("settings, message", [
    (dict(tokens=0), "--draft-tokens"), (dict(schedule="sometimes"), "--draft-schedule"),
    (dict(confidence=1.5), "--draft-confidence")])
def test_bad_draft_settings_are_one_line_errors(settings, message):
    with pytest.raises(TransplantError, match=message):
        DraftSettings(**settings)


def test_draft_flags_without_assist_are_refused(target, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(TEXTS[0], encoding="utf-8")
    res = CliRunner().invoke(cli, ["eval", "--model", str(target), "--text", str(text), "--draft-tokens", "2"])
    assert isinstance(res.exception, TransplantError) and "--assist TARGET" in str(res.exception)


def test_eval_assist_cli_takes_draft_settings(target, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(TEXTS[0], encoding="utf-8")
    res = CliRunner().invoke(cli, ["eval", "--model", str(target), "--assist", str(target), "--text", str(text),
                                   "--prompts", "1", "--prompt-tokens", "10", "--new-tokens", "6", "--draft-tokens",
                                   "2", "--draft-schedule", "constant", "--draft-confidence", "0", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output[res.output.index("{"):])
    assert doc["assist"]["assistant_config"]["num_assistant_tokens"] == 2
    # a perfect draft at 2 tokens per pass: 6 new tokens in 2 passes (2 accepted + 1 own token each)
    assert doc["assist"]["steps"] == 2 and doc["assist"]["accepted"] == 4


class _Cache:
    """The two calls the rollback makes on a transformers cache."""

    def __init__(self, length: int) -> None:
        self.length = length

    def get_seq_length(self) -> int:
        return self.length

    def crop(self, count: int) -> None:
        assert count < 0, "transformers 5.25 refuses a positive crop"
        self.length += count


@pytest.mark.parametrize("cached_ids, next_input, kept", [
    ([5, 6, 7, 8, 9], [5, 6, 7, 8, 9, 3], 4),   # the target accepted everything: keep what was cached
    ([5, 6, 7, 8, 9], [5, 6, 4, 8, 9, 3], 2),   # re-tokenized differently at 2: nothing from there on
    ([5, 6, 7, 8, 9], [5, 6, 7], 2),            # shorter than the cache: leave one token to read
    ([5, 6, 7, 8, 9], [1, 6, 7, 8, 9, 3], 0),   # nothing in common
])
def test_universal_draft_cache_keeps_only_positions_its_next_input_holds(cached_ids, next_input, kept):
    """The rule whatever transformers' own rollback arithmetic says (5.25's mixes the target's and
    the draft's token counts and left a cache as long as the next input: an empty forward)."""
    import torch

    from transplant.measure.assist import roll_back_draft_cache_by_content

    class Generator:  # what the rollback reads of transformers' universal candidate generator
        assistant_kwargs: dict = {}
        prev_assistant_ids = None

    gen = Generator()
    rounds = []

    def transformers_get_candidates(ids):
        had_cache = gen._update_past_and_masks(ids, 3)  # the wrong count a broken version would pass
        rounds.append(gen.assistant_kwargs["cache"].length if had_cache else None)
        gen.prev_assistant_ids = torch.tensor([cached_ids])  # what the draft generated
        gen.assistant_kwargs = {"cache": _Cache(len(cached_ids) - 1)}
        return ids, None

    get = roll_back_draft_cache_by_content(gen, transformers_get_candidates)
    get(torch.tensor([cached_ids[:2]]))
    gen.prev_assistant_ids[0, 0] = -1  # transformers edits its copy in place: the rule must not read it
    get(torch.tensor([next_input]))
    assert rounds == [None, kept]


def test_a_padded_draft_of_the_same_vocabulary_runs(target, build_model, tmp_path):
    """transformers tells tokenizers apart by `vocab_size` only: a draft on the target's
    vocabulary whose matrix is padded goes the universal way (it raised "different tokenizers")."""
    other = build_model(tmp_path / "draft-sp", "llama", tied=True, tok="sp", seed=5)
    draft = tmp_path / "padded"
    transplant(other, target, draft, method="fvt", pad_to_multiple_of=64)
    r = measure_assist(draft, target, TEXTS, prompts=2, prompt_tokens=12, new_tokens=8)
    assert r.mode.startswith("universal (the same tokenizer, vocab_size")
    assert r.identical == 2 and r.proposed > 0


@pytest.mark.parametrize("config,phrase", [("{}", "names no model_type"), ("[]", "not an object"),
                                           ('{"model_type": "no-such-arch"}', "does not know"),
                                           (None, "no config.json")])
def test_eval_assist_refuses_a_model_it_cannot_build_before_loading(config, phrase, target, tmp_path, monkeypatch):
    import transplant.measure.assist as A

    monkeypatch.setattr(A, "_load_weights", None)  # any load would fail otherwise
    broken = tmp_path / "broken"
    shutil.copytree(target, broken)
    if config is None:
        (broken / "config.json").unlink()
    else:
        (broken / "config.json").write_text(config)
    text = tmp_path / "t.txt"
    text.write_text(TEXTS[0])
    for args in (["--model", broken, "--assist", target], ["--model", target, "--assist", broken],
                 ["--model", broken], ["--model", target, "--compare", broken]):
        res = CliRunner().invoke(cli, ["eval", *map(str, args), "--text", str(text)])
        err = str(res.exception)
        assert isinstance(res.exception, TransplantError) and phrase in err and "\n" not in err, res.output


def test_eval_assist_on_empty_text_refused_before_loading(target, tmp_path, monkeypatch):
    import transplant.measure.assist as A

    monkeypatch.setattr(A, "_load_weights", None)
    text = tmp_path / "empty.txt"
    text.write_text("\n\n")
    res = CliRunner().invoke(cli, ["eval", "--model", str(target), "--assist", str(target), "--text", str(text)])
    assert isinstance(res.exception, TransplantError) and "\n" not in str(res.exception), res.output
