"""Method options: declared per initializer, set as `--set METHOD.OPTION=VALUE`, typed, recorded in plan and card.

The shipped initializers declare no options yet, so the machinery is exercised with `knob`, a test-only
initializer registered for each test by the `knob` fixture.
"""

from __future__ import annotations

import json

import pytest
from cli_helpers import assert_clean_failure, run_inproc

from transplant.common.errors import TransplantError
from transplant.core.plan import MEAN, Made, Row
from transplant.methods.initializers import (
    InitContext,
    Option,
    declared_options,
    format_options,
    registry,
    resolve_options,
)
from transplant.methods.planner import method_chain


class KnobInitializer(registry.BaseInitializer):
    """Test-only: the mean row for the first `k` tokens it is asked for, labelled `label`."""

    name = "knob"
    description = "test-only initializer with options"
    options = {
        "k": Option("k", int, 3, "tokens made"),
        "temperature": Option("temperature", float, 1.0, "unused"),
        "label": Option("label", str, "knob", "provenance label"),
        "flag": Option("flag", bool, False),
    }

    def assign(self, ctx: InitContext, todo: list[int]) -> Made:
        opts = ctx.options_for(self.name)
        return Made(rows={i: Row(opts["label"], kind=MEAN) for i in todo[:opts["k"]]})


DEFAULTS = {"k": 3, "temperature": 1.0, "label": "knob", "flag": False}
CHAIN = method_chain("knob", "mean")


@pytest.fixture
def knob(monkeypatch):
    monkeypatch.setitem(registry._REGISTRY, "knob", KnobInitializer)
    return KnobInitializer


# -- typing -------------------------------------------------------------------------------------

@pytest.mark.parametrize("typ, raw, expected", [
    (int, "20", 20), (int, " 7 ", 7), (int, 5, 5), (float, "0.5", 0.5), (float, "2", 2.0), (float, 3, 3.0),
    (str, "abc", "abc"), (str, "", ""), (bool, "true", True), (bool, "Yes", True), (bool, "0", False),
    (bool, "off", False), (bool, True, True),
])
def test_option_parses(typ, raw, expected):
    value = Option("x", typ, None).parse(raw)
    assert value == expected and type(value) is typ


@pytest.mark.parametrize("typ, raw", [
    (int, "2.5"), (int, "x"), (int, 2.5), (int, True), (float, "nan"), (float, "inf"), (float, "abc"),
    (bool, "maybe"), (bool, 1), (str, 3), (int, None),
])
def test_option_refuses(typ, raw):
    with pytest.raises(ValueError, match="expects"):
        Option("x", typ, None).parse(raw)


# -- resolve_options ---------------------------------------------------------------------------

def test_defaults_filled(knob):
    assert resolve_options(CHAIN, None) == {"knob": DEFAULTS}
    assert resolve_options(CHAIN, {"knob.k": "20", "knob.flag": "yes"}) == {"knob": {**DEFAULTS, "k": 20, "flag": True}}
    assert resolve_options(CHAIN, {"knob": {"temperature": 0.25}}) == {"knob": {**DEFAULTS, "temperature": 0.25}}


def test_no_options_in_shipped_chain():
    assert resolve_options(method_chain("fvt", "mean"), {}) == {}
    assert declared_options("random") == {}


def test_context_and_format(knob):
    resolved = resolve_options(CHAIN, {"knob.k": "9"})
    ctx = InitContext(alignment=None, options=resolved)
    assert ctx.options_for("knob")["k"] == 9 and ctx.options_for("mean") == {}
    assert InitContext(alignment=None).options_for("knob") == DEFAULTS
    assert format_options(resolved) == "knob.k=9, knob.temperature=1.0, knob.label=knob, knob.flag=false"
    assert format_options({}) == ""


@pytest.mark.parametrize("raw, chain, message", [
    ({"knob": "1"}, CHAIN, "malformed option 'knob' (expected METHOD.OPTION"),
    ({"nope.k": "1"}, CHAIN, "unknown method 'nope' in option nope.k (choose one of:"),
    ({"knob.k": "1"}, method_chain("fvt", "mean"), "option knob.k is for method knob, which this run does not use "
                                                    "(chain: special, exact, fvt, mean)"),
    ({"knob.kk": "1"}, CHAIN, "unknown option knob.kk (valid: knob.k, knob.temperature, knob.label, knob.flag)"),
    ({"mean.k": "1"}, CHAIN, "unknown option mean.k (method mean has no options)"),
    ({"knob.k": "many"}, CHAIN, "option knob.k expects an integer, not 'many' (knob.k: int, default 3)"),
])
def test_resolve_refuses(knob, raw, chain, message):
    with pytest.raises(TransplantError) as info:
        resolve_options(chain, raw)
    assert message in str(info.value) and "\n" not in str(info.value)


# -- command line ------------------------------------------------------------------------------

@pytest.mark.parametrize("sets, phrase", [
    (["x"], "malformed --set 'x' (expected METHOD.OPTION=VALUE"),
    (["knob=3"], "malformed --set 'knob=3'"),
    (["=3"], "malformed --set '=3'"),
    (["knob.k"], "malformed --set 'knob.k'"),
    (["nope.k=1"], "unknown method 'nope' in option nope.k"),
    (["knob.kk=1"], "unknown option knob.kk (valid: knob.k, knob.temperature, knob.label, knob.flag)"),
    (["knob.k=abc"], "option knob.k expects an integer, not 'abc'"),
    (["knob.flag=maybe"], "option knob.flag expects true or false"),
    (["fvt.k=2"], "option fvt.k is for method fvt, which this run does not use"),
    (["mean.k=2"], "unknown option mean.k (method mean has no options)"),
    (["knob.k=1", "knob.k=2"], "option knob.k is set twice"),
])
def test_cli_refuses_bad_set(knob, sets, phrase, llama_bl, tok_dirs, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    args = ["run", "--model", llama_bl, "--new-tok", tok_dirs["sp"], "--out", out, "--method", "knob"]
    proc = run_inproc([*args, *[a for s in sets for a in ("--set", s)]], monkeypatch, capsys, cwd=tmp_path)
    assert_clean_failure(proc, phrase, out)


def test_run_help_mentions_set(monkeypatch, capsys):
    proc = run_inproc(["run", "--help"], monkeypatch, capsys)
    assert "--set METHOD.OPTION=VALUE" in proc.stdout


def test_methods_lists_options(knob, monkeypatch, capsys):
    proc = run_inproc(["methods"], monkeypatch, capsys)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("knob "))
    assert [line.strip() for line in lines[at + 1:at + 5]] == [
        "knob.k (int, default 3): tokens made", "knob.temperature (float, default 1.0): unused",
        "knob.label (str, default knob): provenance label", "knob.flag (bool, default false)"]
    assert "--set METHOD.OPTION=VALUE" in proc.stdout


def _plan_and_card(out):
    doc = json.loads((out / "transplant_plan.json").read_text())
    return doc, (out / "README.md").read_text()


def test_run_records_options(knob, llama_bl, tok_dirs, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    proc = run_inproc(["run", "--model", llama_bl, "--new-tok", tok_dirs["sp"], "--out", out, "--method", "knob",
                       "--set", "knob.k=5", "--set", "knob.label=knobbed"], monkeypatch, capsys, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc, card = _plan_and_card(out)
    assert doc["meta"]["options"] == {"knob": {**DEFAULTS, "k": 5, "label": "knobbed"}}
    assert doc["counts"]["knobbed"] == 5  # the options reached the initializer
    assert ("make it).\n\nOptions: knob.k=5, knob.temperature=1.0, knob.label=knobbed, knob.flag=false.\n\n"
            "| provenance") in card


def test_run_without_set_unchanged(llama_bl, tok_dirs, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    proc = run_inproc(["run", "--model", llama_bl, "--new-tok", tok_dirs["sp"], "--out", out, "--method", "fvt"],
                      monkeypatch, capsys, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc, card = _plan_and_card(out)
    assert doc["meta"]["options"] == {}
    assert "Options:" not in card
    assert "make it).\n\n| provenance" in card  # the card's layout as before options existed


# -- declared ranges, choices and required options (every shipped method) ------------------------

@pytest.mark.parametrize("method, sets, phrase", [
    ("knn", ["knn.k=0"], "option knn.k must be at least 1, not 0"),
    ("knn", ["knn.k=-3"], "option knn.k must be at least 1, not -3"),
    ("knn", ["knn.temperature=0"], "option knn.temperature must be above 0"),
    ("knn", ["knn.min_similarity=2"], "option knn.min_similarity must be at most 1"),
    ("hull", ["hull.k=0"], "option hull.k must be at least 1"),
    ("tokenadapt", ["tokenadapt.local_weight=1.5"], "option tokenadapt.local_weight must be at most 1"),
    ("tokenadapt", ["tokenadapt.global_temperature=-1"], "must be above 0"),
    ("omp", ["omp.explore=1"], "option omp.explore must be below 1"),
    ("omp", ["omp.max_norm=huge"], "option omp.max_norm must be one of atoms, median, none"),
    ("hypernet", [], "method hypernet needs option hypernet.path (--set hypernet.path=DIR"),
])
def test_out_of_range_options_are_refused_before_any_work(method, sets, phrase, llama_bl, tok_dirs, tmp_path,
                                                         monkeypatch, capsys):
    """A value an option declares meaningless is one line, and refused before the model is read."""
    import transplant.planned

    def too_late(*args, **kwargs):
        raise AssertionError("the model was read before the options were checked")

    monkeypatch.setattr(transplant.planned, "locate_embeddings", too_late)
    out = tmp_path / "out"
    args = ["run", "--model", llama_bl, "--new-tok", tok_dirs["sp"], "--out", out, "--method", method]
    proc = run_inproc([*args, *[a for s in sets for a in ("--set", s)]], monkeypatch, capsys, cwd=tmp_path)
    assert_clean_failure(proc, phrase, out)


def test_every_numeric_option_of_a_shipped_method_declares_a_range():
    """Counts, temperatures and shares all have values that mean nothing; each declares its range."""
    from transplant.methods.initializers import available

    loose = [f"{m}.{name}" for m in available() for name, opt in declared_options(m).items()
             if opt.type in (int, float) and opt.low is None and opt.high is None and opt.choices is None]
    assert not loose, loose
