"""Quality benchmark: SmolLM2-135M-Instruct moved onto a German byte-level BPE.

What it measures
----------------
* Trains a GPT-2-style byte-level BPE (HF `tokenizers`, vocab_size asked 32000, special tokens
  `<|endoftext|>`, `<|im_start|>`, `<|im_end|>` first, ByteLevel(add_prefix_space=False)
  pre-tokenizer + ByteLevel decoder) on `de/train.txt` and saves it with
  `PreTrainedTokenizerFast(..., bos_token='<|im_start|>', eos_token='<|im_end|>',
  unk_token='<|endoftext|>')`.
* Scores, with the shared BPB protocol (`transplant.measure.evaluate`), the leading whole documents of
  `de/dev.txt` up to 50,000 bytes at ctx 1024: the original model with its own tokenizer, and the
  transplanted model for each initializer (mean, multivariate, fvt, random).
* Records each transplant's wall time (plan + streamed checkpoint write, no evaluation) and its
  plan counts (special / exact / byte / fvt / mean / ...).

Results go to `benchmarks/results/quality_de.json`; a markdown table is printed.

Usage:
    python benchmarks/quality_de.py                      # everything, defaults as above
    python benchmarks/quality_de.py --methods fvt mean   # a subset
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from paths import CORPORA, HERE, ROOT, checkout_first

checkout_first()

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
REFERENCE = {"original": 1.762, "fvt": 2.388, "mean": 3.185}  # outside quick FVT, same setup


def git_state() -> dict:
    """HEAD commit and whether transplant/ has uncommitted changes (numbers belong to that code)."""
    import subprocess

    def git(*a):
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {"commit": git("rev-parse", "HEAD"), "transplant_dirty": bool(git("status", "--porcelain", "transplant/"))}


def train_tokenizer(train_path: Path, vocab_size: int, folder: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([str(train_path)], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>")
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(folder))
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--train", type=Path, default=CORPORA / "de" / "train.txt")
    ap.add_argument("--dev", type=Path, default=CORPORA / "de" / "dev.txt")
    ap.add_argument("--vocab-size", type=int, default=32000)
    ap.add_argument("--eval-bytes", type=int, default=50_000)
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--methods", nargs="+", default=["mean", "multivariate", "fvt", "random"])
    ap.add_argument("--work", type=Path, default=HERE / "work" / "quality_de")
    ap.add_argument("--results", type=Path, default=HERE / "results" / "quality_de.json")
    ap.add_argument("--keep", action="store_true", help="keep the transplanted checkpoints in --work")
    args = ap.parse_args()

    import shutil

    import torch

    from transplant import transplant
    from transplant.measure.evaluate import evaluate_bpb, take_bytes
    from transplant.io.sources import resolve_model

    git = git_state()  # the code this run imports
    torch.manual_seed(0)
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tok_dir = train_tokenizer(args.train, args.vocab_size, args.work / "de-bpe")
    tok_seconds = time.perf_counter() - t0
    from tokenizers import Tokenizer
    vocab_got = Tokenizer.from_file(str(tok_dir / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    print(f"tokenizer: {vocab_got} ids (asked {args.vocab_size}), trained in {tok_seconds:.1f}s", flush=True)

    text = take_bytes(args.dev.read_text(encoding="utf-8"), args.eval_bytes)
    folder = resolve_model(args.model)
    rows = []
    res = evaluate_bpb(folder, [text], ctx=args.ctx)
    rows.append({"name": "original", "bpb": res.bpb, "bytes_per_token": res.bytes_per_token,
                 "eval": res.as_dict(), "transplant_seconds": None, "counts": None})
    print(f"original: {res.bpb:.4f} BPB, {res.bytes_per_token:.2f} B/tok ({res.seconds}s)", flush=True)
    for method in args.methods:
        out = args.work / f"smollm2-de-{method}"
        t0 = time.perf_counter()
        result = transplant(args.model, tok_dir, out, method=method, overwrite=True)
        seconds = time.perf_counter() - t0
        res = evaluate_bpb(out, [text], ctx=args.ctx)
        rows.append({"name": method, "bpb": res.bpb, "bytes_per_token": res.bytes_per_token, "eval": res.as_dict(),
                     "transplant_seconds": round(seconds, 2), "counts": result.plan.counts(),
                     "alignment": result.plan.meta.get("alignment")})
        print(f"{method}: {res.bpb:.4f} BPB, {res.bytes_per_token:.2f} B/tok, transplant {seconds:.1f}s, "
              f"counts {result.plan.counts()}", flush=True)
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)

    doc = {
        "benchmark": "quality_de",
        "model": args.model, "model_folder": str(folder),
        "tokenizer": {"vocab_size_asked": args.vocab_size, "vocab_size": vocab_got, "train": str(args.train),
                      "train_seconds": round(tok_seconds, 2), "specials": SPECIALS},
        "eval": {"text": str(args.dev), "bytes": len(text.encode("utf-8")), "ctx": args.ctx,
                 "max_bytes": args.eval_bytes},
        "reference_bpb": REFERENCE,
        "results": rows,
        "git": git,
        "env": {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
                "date": time.strftime("%Y-%m-%d %H:%M:%S")},
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(doc, indent=2) + "\n")

    base = rows[0]["bpb"]
    print("\n| model | BPB | ratio vs original | reference BPB | bytes/token | transplant s | plan counts |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ref = REFERENCE.get(r["name"])
        counts = ", ".join(f"{k} {v}" for k, v in sorted((r["counts"] or {}).items(), key=lambda kv: -kv[1]))
        print(f"| {r['name']} | {r['bpb']:.4f} | {r['bpb'] / base:.3f} | {ref if ref else '–'} | "
              f"{r['bytes_per_token']:.2f} | {r['transplant_seconds'] if r['transplant_seconds'] is not None else '–'} "
              f"| {counts or '–'} |")
    print(f"\nwrote {args.results}")


if __name__ == "__main__":
    main()
