"""Bad files a hostile pass found getting through: damaged fastText vectors, a tokenizer of special
tokens only, a full disk, out-of-range training settings, links out of a model folder, texts too
short to measure, and text that is not UTF-8.

Every refusal is one `error: ...` line, no traceback, nothing left behind; the crashing cases
run the real command line in a subprocess (the old failure killed the process).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import builders as B
import pytest
import torch
from cli_helpers import HN, TEXT, assert_refused, model, run_hn, run_tt, snapshot, text  # noqa: F401 (fixtures)

from transplant.common.errors import TransplantError


def assert_one_line(proc, phrase: str, out: Path | None = None) -> None:
    """A failure told in one `error:` line holding `phrase`, no traceback, no output or stage left."""
    assert proc.returncode not in (0, None), (proc.returncode, proc.stdout, proc.stderr)
    assert proc.returncode > 0, f"killed by signal {-proc.returncode}: {proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("WARNING")]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert phrase in lines[0], lines[0]
    if out is not None:
        assert not out.exists() and not list(out.parent.glob(f".{out.name}.partial-*"))


def cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    root = str(Path(__file__).resolve().parents[1])  # this checkout, whatever the installed one
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=path)
    return subprocess.run([sys.executable, "-m", "transplant.cli", "-q", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=600)


# --------------------------------------------------------------------------------------------
# 1. fastText `.bin` files: walked and sized before the fasttext library reads them.

@pytest.fixture(scope="module")
def vectors(tmp_path_factory):
    """Tiny fastText word vectors trained by `train_vectors` (fixture settings: about a second)."""
    pytest.importorskip("fasttext")
    from vector_fixtures import TINY

    from transplant.methods.vectors import train_vectors

    root = tmp_path_factory.mktemp("ft")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOKENTRANSPLANT_CACHE", str(root / "cache"))
        return train_vectors([TEXT], root / "en.bin", **TINY)


def _layout(raw: bytes) -> dict[str, int]:
    """Offsets in a dense fastText file, walked here independently of the code under test."""
    size, nwords, nlabels = struct.unpack_from("<iii", raw, 64)
    pos = 64 + 28
    for _ in range(size):
        pos = raw.index(b"\0", pos) + 1 + 9
    words_end = pos
    m, n = struct.unpack_from("<qq", raw, pos + 1)
    output = pos + 1 + 16 + m * n * 4
    return {"dictionary": 92 + (words_end - 92) // 2, "words_end": words_end, "input": pos + 1 + 16 + 4 * n * 7,
            "output": output + 1 + 16 + 40, "end": len(raw)}


def _set_int(raw: bytes, field: int, value: int) -> bytes:
    """The file with its `field`-th int32 argument (0: dim ... 8: bucket) replaced."""
    out = bytearray(raw)
    struct.pack_into("<i", out, 8 + 4 * field, value)
    return bytes(out)


DAMAGED = {
    "negative_bucket": (lambda raw: _set_int(raw, 8, -5), "bucket is -5"),
    "zero_bucket_with_ngrams": (lambda raw: _set_int(raw, 8, 0), "bucket is 0 but the model hashes n-grams"),
    "bucket_larger_than_the_matrix": (lambda raw: _set_int(raw, 8, 10 ** 6), "rows but the dictionary and buckets"),
    "zero_dim": (lambda raw: _set_int(raw, 0, 0), "dim is 0"),
    "other_dim": (lambda raw: _set_int(raw, 0, 17), "but the vectors have 17 dimensions"),
    "unknown_loss": (lambda raw: _set_int(raw, 6, 9), "unknown loss 9"),
    "not_fasttext": (lambda raw: b"\x00" * 8 + raw[8:], "no fastText header"),
    "future_version": (lambda raw: raw[:4] + struct.pack("<i", 13) + raw[8:], "fastText format version 13"),
    "word_count_too_large": (lambda raw: raw[:64] + struct.pack("<iii", 10 ** 6, 10 ** 6, 0) + raw[76:],
                             "are (damaged|truncated)"),
    "no_words": (lambda raw: raw[:64] + struct.pack("<iii", 0, 0, 0) + raw[76:], "holds no words"),
    "bytes_after_the_end": (lambda raw: raw + b"\x00" * 12, "12 bytes follow the end"),
    "empty": (lambda raw: b"", "shorter than any fastText header"),
}
CUTS = ["dictionary", "words_end", "input", "output"]


def test_real_fasttext_files_pass(vectors):
    import fasttext

    from transplant.io.fasttext_file import check_fasttext_file

    check_fasttext_file(vectors)
    assert fasttext.load_model(str(vectors)).get_dimension() == 16


@pytest.mark.parametrize("name", list(DAMAGED))
def test_damaged_fasttext_file_is_refused(name, vectors, tmp_path):
    from transplant.io.fasttext_file import check_fasttext_file

    damage, phrase = DAMAGED[name]
    bad = tmp_path / "bad.bin"
    bad.write_bytes(damage(vectors.read_bytes()))
    with pytest.raises(TransplantError, match=phrase) as info:
        check_fasttext_file(bad)
    assert "\n" not in str(info.value) and str(bad) in str(info.value)


@pytest.mark.parametrize("where", [*CUTS, "one_byte"])
def test_truncated_fasttext_file_is_refused(where, vectors, tmp_path):
    from transplant.io.fasttext_file import check_fasttext_file

    raw = vectors.read_bytes()
    cut = len(raw) - 1 if where == "one_byte" else _layout(raw)[where]
    bad = tmp_path / "cut.bin"
    bad.write_bytes(raw[:cut])
    with pytest.raises(TransplantError, match=f"are truncated: .* but the file has {cut:,} bytes"):
        check_fasttext_file(bad)


def test_quantized_fasttext_file_passes(tmp_path):
    """A quantized supervised model (`.ftz`: product-quantized matrices, norms) is walked too."""
    fasttext = pytest.importorskip("fasttext")
    from transplant.io.fasttext_file import check_fasttext_file

    lines = [f"__label__{'ab'[i % 2]} {line}" for i, line in enumerate(B.lines("en")) if line.strip()]
    (tmp_path / "s.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    # In a process of its own, tried a few times: fastText's trainer stops with "Encountered NaN" now
    # and then on a busy machine (its progress check can read the loss before any example).
    script = ("import fasttext, sys\n"
              "for attempt in range(5):\n"
              "    try:\n"
              "        m = fasttext.train_supervised(sys.argv[1], dim=8, epoch=1, minCount=1, bucket=2000, "
              "wordNgrams=2, thread=1, verbose=0)\n"
              "        break\n"
              "    except RuntimeError:\n"
              "        if attempt == 4:\n"
              "            raise\n"
              "m.quantize(input=None, qout=False, cutoff=0, retrain=False, dsub=2, qnorm=True, verbose=0)\n"
              "m.save_model(sys.argv[2])\n")
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "s.txt"), str(tmp_path / "s.ftz")],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:  # fastText's trainer diverges now and then on tiny text
        pytest.skip(f"fastText could not train the tiny model: {proc.stderr.strip().splitlines()[-1:]}")
    check_fasttext_file(tmp_path / "s.ftz")
    assert fasttext.load_model(str(tmp_path / "s.ftz")).get_dimension() == 8
    raw = (tmp_path / "s.ftz").read_bytes()
    (tmp_path / "cut.ftz").write_bytes(raw[:-100])
    with pytest.raises(TransplantError, match="are truncated"):
        check_fasttext_file(tmp_path / "cut.ftz")


@pytest.mark.parametrize("name", ["negative_bucket", "zero_bucket_with_ngrams"])
def test_run_with_a_crashing_fasttext_header_is_one_line(name, vectors, llama_bl, tok_dirs, tmp_path):
    # fastText itself dies of SIGSEGV (negative bucket) or SIGFPE (zero bucket) on these.
    damage, phrase = DAMAGED[name]
    bad = tmp_path / "bad.bin"
    bad.write_bytes(damage(vectors.read_bytes()))
    out = tmp_path / "out"
    proc = cli("run", "--model", llama_bl, "--new-tok", tok_dirs["sp"], "--out", out, "--method", "focus+fvt",
               "--set", f"focus.vectors={bad}", cwd=tmp_path)
    assert_one_line(proc, phrase, out)


def test_run_with_truncated_vectors_is_one_line(vectors, llama_bl, tok_dirs, tmp_path, monkeypatch, capsys):
    # fastText reads a truncated file without a word, the missing floats left as they were.
    from vector_fixtures import identity_dictionary

    bad = tmp_path / "cut.bin"
    bad.write_bytes(vectors.read_bytes()[:-4000])
    out = tmp_path / "out"
    proc = run_tt(["--quiet", "run", "--model", llama_bl, "--new-tok", tok_dirs["sp"], "--out", out, "--method",
                   "wechsel+fvt", "--set", f"wechsel.source_vectors={vectors}", "--set",
                   f"wechsel.target_vectors={bad}", "--set",
                   f"wechsel.dictionary={identity_dictionary(tmp_path / 'en-en.tsv')}"], monkeypatch, capsys)
    assert_refused(proc, "are truncated", out)


def test_a_damaged_cache_entry_is_trained_again(tmp_path, monkeypatch):
    pytest.importorskip("fasttext")
    from vector_fixtures import TINY

    from transplant.io.fasttext_file import check_fasttext_file
    from transplant.methods.vectors import train_vectors

    monkeypatch.setenv("TOKENTRANSPLANT_CACHE", str(tmp_path / "cache"))
    cached = train_vectors([TEXT], None, **TINY)
    whole = cached.read_bytes()
    cached.write_bytes(whole[:-1000])  # a copy killed half-way, a full disk
    assert train_vectors([TEXT], None, **TINY) == cached
    check_fasttext_file(cached)
    assert len(cached.read_bytes()) == len(whole)


# --------------------------------------------------------------------------------------------
# 2. A tokenizer of special (added) tokens only encodes every text to nothing.

def _specials_only(folder: Path, kind: str) -> Path:
    from tokenizers import Tokenizer, models

    if kind == "wordlevel":
        tok = Tokenizer(models.WordLevel({"<s>": 0, "</s>": 1, "<unk>": 2}, unk_token="<unk>"))
        tok.add_special_tokens(["<s>", "</s>", "<unk>"])
    else:  # an empty BPE with specials added
        tok = Tokenizer(models.BPE())
        tok.add_special_tokens(["<s>", "</s>"])
    return B.save_tokenizer(tok, folder, bos="<s>", eos="</s>")


@pytest.mark.parametrize("kind", ["wordlevel", "empty_bpe"])
def test_run_refuses_a_tokenizer_of_special_tokens_only(kind, llama_bl, tmp_path, monkeypatch, capsys):
    tok = _specials_only(tmp_path / "tok", kind)
    out = tmp_path / "out"
    proc = run_tt(["--quiet", "run", "--model", llama_bl, "--new-tok", tok, "--out", out, "--method", "fvt"],
                  monkeypatch, capsys)
    assert_refused(proc, "has only special or added tokens", out, snapshot(tok))


# --------------------------------------------------------------------------------------------
# 3. A full disk: one line naming it and the fix, nothing left behind.

def _tokenizers_full_disk(self, *args, **kwargs):
    # What `tokenizers` raises when its write fails: a plain Exception in Rust's words.
    raise Exception("No space left on device (os error 28)")


def _os_full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_tokenizers_words_a_failed_write_as_we_parse_it(tmp_path):
    from tokenizers import Tokenizer, models

    with pytest.raises(Exception, match=r"\(os error 2\)"):
        Tokenizer(models.BPE()).save(str(tmp_path / "missing" / "tokenizer.json"))


@pytest.mark.parametrize("failure", [_tokenizers_full_disk, _os_full_disk], ids=["tokenizers", "oserror"])
def test_tokenizer_train_on_a_full_disk(failure, text, tmp_path, monkeypatch, capsys):
    from transformers import PreTrainedTokenizerFast

    monkeypatch.setattr(PreTrainedTokenizerFast, "save_pretrained", failure)
    out = tmp_path / "tok"
    proc = run_tt(["--quiet", "tokenizer", "train", "--text", text, "--vocab-size", "400", "--out", out],
                  monkeypatch, capsys)
    assert_one_line(proc, "No space left on device", out)
    assert "free some disk space" in proc.stderr


def test_run_on_a_full_disk_while_saving_the_tokenizer(llama_bl, tok_dirs, tmp_path, monkeypatch, capsys):
    from transformers import PreTrainedTokenizerFast

    monkeypatch.setattr(PreTrainedTokenizerFast, "save_pretrained", _tokenizers_full_disk)
    out = tmp_path / "out"
    proc = run_tt(["--quiet", "run", "--model", llama_bl, "--new-tok", tok_dirs["sp"], "--out", out, "--method",
                   "fvt"], monkeypatch, capsys)
    assert_one_line(proc, "No space left on device", out)


class _SavesOnAFullDisk:
    """A `tokenizers.Tokenizer` whose `save` fails as on a full disk (the Rust class cannot be patched)."""

    def __init__(self, tok):
        self._tok = tok

    def save(self, *args, **kwargs):
        _tokenizers_full_disk(self)

    def __getattr__(self, name):
        return getattr(self._tok, name)


def test_extend_on_a_full_disk_while_saving_the_tokenizer(model, text, tmp_path, monkeypatch, capsys):
    import transplant.train.tokenizer_train as tt

    real = tt.append_merges
    monkeypatch.setattr(tt, "append_merges", lambda *a, **k: (lambda tok, new: (_SavesOnAFullDisk(tok), new))(
        *real(*a, **k)))
    out = tmp_path / "ext"
    proc = run_tt(["--quiet", "extend", "--model", model, "--text", text, "--add", "50", "--out", out,
                   "--method", "fvt"], monkeypatch, capsys)
    assert_one_line(proc, "No space left on device", out)


def _torch_full_disk(*args, **kwargs):
    # What torch's zip writer raises when a write fails (it never says why).
    raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                       "data/0: file write failed")


@pytest.mark.parametrize("failure", [_torch_full_disk, _os_full_disk], ids=["torch", "oserror"])
def test_hypernet_train_on_a_full_disk(failure, model, text, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch, "save", failure)
    out = tmp_path / "hn"
    proc = run_hn(["--quiet", "train", "--model", model, "--text", text, "--out", out, *HN], monkeypatch, capsys)
    assert_one_line(proc, "full" if failure is _torch_full_disk else "No space left on device")
    assert "--resume" in proc.stderr
    assert not list((out / "checkpoints").glob(".step-*")), "a half-written checkpoint was left"


# --------------------------------------------------------------------------------------------
# 4. `hypernet train` numbers out of range: refused before any work, naming the flag.

FLAGS = [("--lr", "nan"), ("--lr", "-1"), ("--lr", "0"), ("--lr", "inf"), ("--stage2-lr", "nan"),
         ("--stage2-lr", "-1e-4"), ("--stage2-lr", "inf"), ("--aux-weight", "nan"), ("--aux-weight", "-1"),
         ("--seed", "-1"), ("--seed", str(2 ** 64)), ("--stage1-minutes", "nan"), ("--minutes", "inf"),
         ("--stage1-steps", "-1"), ("--width", "-4"), ("--seq-len", "4"), ("--negatives", "-1")]


@pytest.mark.parametrize("flag,value", FLAGS, ids=[f"{f}={v}" for f, v in FLAGS])
def test_hypernet_train_flags_out_of_range(flag, value, model, text, tmp_path, monkeypatch, capsys):
    before = snapshot(model, text)
    out = tmp_path / "hn"
    proc = run_hn(["--quiet", "train", "--model", model, "--text", text, "--out", out, *HN, flag, value],
                  monkeypatch, capsys)
    assert_refused(proc, flag, out, before)


# --------------------------------------------------------------------------------------------
# 5. Links out of a model folder are never followed into the output.

def test_run_skips_a_side_file_linked_out_of_the_model(model, tok_dirs, tmp_path, monkeypatch, capsys, caplog):
    secret = tmp_path / "secret.txt"
    secret.write_text("not the model's to publish\n")
    (model / "notes.txt").symlink_to(secret)
    (model / "inside.txt").write_text("the model's own\n")
    (model / "alias.txt").symlink_to("inside.txt")  # a link inside the folder is fine
    out = tmp_path / "out"
    caplog.set_level(logging.WARNING)
    proc = run_tt(["run", "--model", model, "--new-tok", tok_dirs["sp"], "--out", out, "--method", "fvt"],
                  monkeypatch, capsys)
    assert proc.returncode == 0, proc.stderr
    assert not (out / "notes.txt").exists()
    assert (out / "alias.txt").read_text() == (out / "inside.txt").read_text() == "the model's own\n"
    warned = [r.getMessage() for r in caplog.records if "not copied" in r.getMessage()]
    assert len(warned) == 1 and str(model / "notes.txt") in warned[0] and str(secret) in warned[0]


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_run_refuses_a_needed_file_linked_out_of_the_model(name, model, tok_dirs, tmp_path, monkeypatch, capsys):
    elsewhere = tmp_path / f"elsewhere-{name}"
    shutil.move(model / name, elsewhere)
    (model / name).symlink_to(elsewhere)
    out = tmp_path / "out"
    proc = run_tt(["--quiet", "run", "--model", model, "--new-tok", tok_dirs["sp"], "--out", out, "--method",
                   "fvt"], monkeypatch, capsys)
    assert_refused(proc, f"{model / name} is a link to {elsewhere}, outside the model folder", out)


def test_hub_cache_links_into_blobs_are_followed(llama_bl, tok_dirs, tmp_path, monkeypatch, capsys):
    """A Hugging Face cache snapshot is a folder of links into the repository's `blobs/`."""
    repo = tmp_path / "hub" / "models--org--tiny"
    snap = repo / "snapshots" / ("0" * 40)
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    files = [p for p in llama_bl.iterdir()] + [tmp_path / "notes.txt"]
    (tmp_path / "notes.txt").write_text("preprocessing notes\n")
    for i, path in enumerate(files):
        blob = repo / "blobs" / f"{i:040d}"
        shutil.copyfile(path, blob)
        (snap / path.name).symlink_to(Path("..", "..", "blobs", blob.name))
    out = tmp_path / "out"
    proc = run_tt(["--quiet", "run", "--model", snap, "--new-tok", tok_dirs["sp"], "--out", out, "--method", "fvt"],
                  monkeypatch, capsys)
    assert proc.returncode == 0, proc.stderr
    assert (out / "notes.txt").read_text() == "preprocessing notes\n"


# --------------------------------------------------------------------------------------------
# 6. Texts too short to measure on: refused, never reported as a number.

def test_tokenizer_train_refuses_a_text_too_short_to_hold_out(tmp_path, monkeypatch, capsys):
    one = tmp_path / "one.txt"
    one.write_text("In the beginning was the Word, and the Word was with God.\n", encoding="utf-8")
    out = tmp_path / "tok"
    proc = run_tt(["--quiet", "tokenizer", "train", "--text", one, "--vocab-size", "300", "--out", out],
                  monkeypatch, capsys)
    assert_refused(proc, "too short to measure bytes per token on", out)
    assert "at least two lines" in proc.stderr and "--held-out 0" in proc.stderr


def test_tokenizer_train_held_out_zero_reports_no_number(tmp_path, monkeypatch, capsys):
    one = tmp_path / "one.txt"
    one.write_text("In the beginning was the Word, and the Word was with God.\n", encoding="utf-8")
    out = tmp_path / "tok"
    proc = run_tt(["--quiet", "tokenizer", "train", "--text", one, "--vocab-size", "300", "--out", out,
                   "--held-out", "0"], monkeypatch, capsys)
    assert proc.returncode == 0, proc.stderr
    assert "held-out bytes per token: not measured (--held-out 0)" in proc.stdout
    assert "0.000" not in proc.stdout
    assert json.loads((out / "training_summary.json").read_text())["bytes_per_token"] is None


def test_scoring_a_text_that_encodes_to_no_tokens_is_refused(llama_bl):
    from transformers import AutoModelForCausalLM

    from transplant.measure.evaluate import score

    model = AutoModelForCausalLM.from_pretrained(str(llama_bl))
    with pytest.raises(TransplantError, match=r"nothing to score: the evaluation text \(8 bytes\) encodes to no"):
        score(model, lambda docs: [[] for _ in docs], 1, ["\u200b\u200b"])


# --------------------------------------------------------------------------------------------
# 7. Text that is not UTF-8 is refused by every command that reads text, naming the file.

@pytest.fixture
def latin1(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(("Café crème, déjà vu.\n" * 400).encode("latin-1"))
    return path


def test_tokenizer_train_refuses_latin1(latin1, tmp_path, monkeypatch, capsys):
    out = tmp_path / "tok"
    proc = run_tt(["--quiet", "tokenizer", "train", "--text", latin1, "--vocab-size", "300", "--out", out],
                  monkeypatch, capsys)
    assert_refused(proc, f"{latin1} is not UTF-8 text", out)


@pytest.mark.parametrize("flag", ["--text", "--eval-text"])
def test_extend_refuses_latin1(flag, latin1, model, text, tmp_path, monkeypatch, capsys):
    out = tmp_path / "ext"
    texts = ["--text", latin1] if flag == "--text" else ["--text", text, "--eval-text", latin1]
    proc = run_tt(["--quiet", "extend", "--model", model, *texts, "--add", "10", "--out", out, "--method", "fvt"],
                  monkeypatch, capsys)
    assert_refused(proc, f"{latin1} is not UTF-8 text", out, snapshot(model))


def test_hypernet_train_refuses_latin1(latin1, model, tmp_path, monkeypatch, capsys):
    out = tmp_path / "hn"
    proc = run_hn(["--quiet", "train", "--model", model, "--text", latin1, "--out", out, *HN], monkeypatch, capsys)
    assert_refused(proc, f"{latin1} is not UTF-8 text", out, snapshot(model))
