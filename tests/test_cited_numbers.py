"""The numbers README.md and BENCHMARKS.md cite agree with the raw files in benchmarks/results/ they come
from (the citations are listed in benchmarks/check_numbers.py), and the check notices a changed digit."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"


@pytest.fixture(scope="module")
def checker():
    sys.path.insert(0, str(BENCH))  # check_numbers imports benchmarks/paths.py as `paths`
    try:
        spec = importlib.util.spec_from_file_location("check_numbers", BENCH / "check_numbers.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclass looks the module up while it is built
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


def test_every_cited_number_agrees_with_its_raw_result(checker):
    assert len(checker.citations()) >= 40
    assert checker.check() == []


def test_a_changed_digit_in_a_table_is_reported(checker):
    text = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")
    line = "| de | fvt | 2.5450 | 1.418 | +0.0% |"
    assert text.count(line) == 1
    failures = checker.check(docs={"BENCHMARKS.md": text.replace(line, line.replace("2.5450", "2.5451"))})
    assert len(failures) == 1
    assert failures[0].startswith("MISMATCH") and "'| 2.5450 | 1.418 | +0.0% |'" in failures[0]
    assert "2.5451" in failures[0]  # the document's line, for context


def test_a_changed_digit_in_prose_and_a_lost_line_are_reported(checker):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    prose = "4.18 GB per process against 4.65 GB whole"
    row = "| Gemma → SmolLM2's tokenizer | dev |"
    assert prose in text and row in text
    text = text.replace(prose, prose.replace("4.65", "4.66"))
    text = "\n".join(line for line in text.splitlines() if row not in line)
    failures = checker.check(docs={"README.md": text})
    assert any(f.startswith("MISMATCH") and "4.65 GB" in f for f in failures)
    assert any(f.startswith("MISSING line") and row in f for f in failures)
    assert all("README.md" in f for f in failures)
