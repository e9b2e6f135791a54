"""The quality line of a plain `run`: original and transplant scored on the held-out tail of the
tokenizer's recorded training text, which neither the tokenizer's training nor calibration reads."""

from __future__ import annotations

import json
import shutil

import pytest

from transplant import transplant
from transplant.core.vocab import load_tokenizer
from transplant.io.recorded_text import held_out_text, recorded_texts
from transplant.measure import quality_check
from transplant.methods.auto import choose
from transplant.methods.resources import Resources
from transplant.train.tokenizer_train import train_tokenizer

import builders as B
from cli_helpers import run_inproc


def _numbered_text(lines: int = 600, crlf: bool = False) -> str:
    end = "\r\n" if crlf else "\n"
    words = (B.DATA / "bible_es.txt").read_text(encoding="utf-8").split()
    return "".join(f"línea {i:04d}: {' '.join(words[i * 9:i * 9 + 9])}{end}" for i in range(lines))


@pytest.fixture(scope="module")
def recorded_tok(llama_bl, tmp_path_factory):
    root = tmp_path_factory.mktemp("quality-tok")
    text = root / "train.txt"
    text.write_text(_numbered_text(), encoding="utf-8")
    train_tokenizer([text], 900, root / "tok", like=str(llama_bl), held_out=0.1)
    return root / "tok", text


def _held_out(text: str, share: float) -> str:
    return text[text.rfind("\n", 0, int(len(text) * (1 - share))) + 1:]


def _held_out_lines(text: str, share: float) -> set[str]:
    return set(_held_out(text, share).splitlines())


@pytest.mark.parametrize("crlf", [False, True])
def test_the_held_out_text_lies_inside_the_tail_training_left_out(tmp_path, crlf):
    text = _numbered_text(crlf=crlf)
    path = tmp_path / "train.txt"
    path.write_bytes(text.encode("utf-8"))
    train_tokenizer([path], 300, tmp_path / "tok", held_out=0.1)
    record = json.loads((tmp_path / "tok" / "training_summary.json").read_text())["training_texts"][0]
    normalized = text.replace("\r\n", "\n")
    tail = _held_out_lines(normalized, 0.1)
    assert record["held_out_tail_bytes"] == len(_held_out(normalized, 0.1).encode())
    files, why = recorded_texts(load_tokenizer(tmp_path / "tok"))
    assert why == "" and files[0].held_out_tail_bytes == record["held_out_tail_bytes"]
    scored = held_out_text(files, 1_000)
    assert 500 < len(scored.encode()) <= 1_000 and scored.endswith("\n")
    assert set(scored.splitlines()) <= tail  # whole lines, none the tokenizer trained on
    # Calibration reads the head only: never what is scored (with LF ends, nothing of the tail).
    head_limit = files[0].head_limit(10**9)
    assert head_limit == path.stat().st_size - record["held_out_tail_bytes"]
    head = set(path.read_bytes()[:head_limit].decode().replace("\r\n", "\n").splitlines())
    assert not head & set(scored.splitlines())
    assert crlf or not head & tail


def test_calibration_never_reads_the_held_out_tail(llama_bl, recorded_tok):
    from safetensors.torch import load_file

    tok, text = recorded_tok
    weights = load_file(f"{llama_bl}/model.safetensors")
    resources = Resources(lambda: weights["model.embed_tokens.weight"], lambda: weights["lm_head.weight"],
                          old_rows=500)
    choice = choose(resources, load_tokenizer(tok), calibrate_texts=None, calibrate_tokens=10**6)
    read = set(choice.calibration.texts[0].splitlines())
    tail = _held_out_lines(text.read_text(encoding="utf-8"), 0.1)
    assert read and tail and not read & tail


def test_a_plain_run_ends_with_the_quality_line_and_puts_the_ratio_in_the_card(llama_bl, recorded_tok, monkeypatch,
                                                                                capsys, tmp_path):
    tok, _ = recorded_tok
    res = run_inproc(["run", "--model", llama_bl, "--new-tok", tok, "--out", tmp_path / "out", "--method", "fvt"],
                     monkeypatch, capsys)
    assert res.returncode == 0, res.stderr
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith("quality: ") and "x the original's bits per byte" in last and "train.txt" in last
    card = (tmp_path / "out" / "README.md").read_text()
    ratio = last.split("quality: ")[1].split("x")[0]
    assert f"bits per byte are {ratio}× the original's" in card
    assert "which the tokenizer's training left out and calibration never reads" in card
    # --no-eval skips it; with --eval-text that text is scored instead and named.
    off = transplant(llama_bl, tok, tmp_path / "off", method="fvt", quality_check=False)
    assert off.evaluation is None and off.quality is None
    given = transplant(llama_bl, tok, tmp_path / "given", method="fvt", eval_texts=["uno dos tres\n"],
                       eval_name="mine.txt")
    assert given.quality.startswith("quality: ") and "of mine.txt" in given.quality
    bad = run_inproc(["run", "--model", llama_bl, "--new-tok", tok, "--out", tmp_path / "x", "--no-eval",
                      "--eval-text", B.DATA / "bible_es.txt"], monkeypatch, capsys)
    assert bad.returncode == 2 and "--no-eval and --eval-text contradict" in bad.stderr
    assert not (tmp_path / "x").exists()


def test_no_quality_check_says_why_in_one_line(llama_bl, recorded_tok, tok_dirs, monkeypatch, tmp_path):
    tok, _ = recorded_tok
    plain = transplant(llama_bl, tok_dirs["sp"], tmp_path / "plain", method="fvt")
    assert plain.evaluation is None and plain.quality.startswith("no quality check: the target tokenizer records "
                                                                 "no training text")
    monkeypatch.setattr(quality_check, "MAX_FLOAT32_BYTES", 1)
    big = transplant(llama_bl, tok, tmp_path / "big", method="fvt")
    assert big.evaluation is None and big.quality.startswith("quality check skipped: scoring loads the model whole")
    assert "transplant eval --model OUT --compare MODEL --text FILE" in big.quality
    # A summary written before tails were recorded: no quality check, calibration as before.
    old = tmp_path / "old-tok"
    shutil.copytree(tok, old)
    summary = json.loads((old / "training_summary.json").read_text())
    for entry in summary["training_texts"]:
        del entry["held_out_tail_bytes"]
    (old / "training_summary.json").write_text(json.dumps(summary))
    monkeypatch.undo()
    res = transplant(llama_bl, old, tmp_path / "old")
    assert res.evaluation is None and "has no held-out tail" in res.quality
    assert res.plan.meta["calibration"]["tokens"] > 0
