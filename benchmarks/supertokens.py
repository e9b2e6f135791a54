"""Supertokens against plain BPE at the same vocabulary size: bytes per token on dev text, and the
bits per byte of SmolLM2-135M transplanted onto each (fewer tokens are only worth it if quality
holds).

Both tokenizers: 32k, `--like smollm2-135m-instruct`, trained on <lang>/train.txt; scored on the
leading 20 kB of whole documents of <lang>/dev.txt. Transplants: fvt, and hypernet when a trained
network exists (benchmarks/work/hn-smollm2-more, or HARNESS_HYPERNET).

    python benchmarks/supertokens.py --langs de en
    python benchmarks/supertokens.py --table
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from paths import CORPORA, HERE, checkout_first

checkout_first()
WORK = HERE / "work" / "supertokens"
RESULTS = HERE / "results" / "supertokens.json"
BASE = "smollm2-135m-instruct"
HYPERNET = Path(os.environ.get("HARNESS_HYPERNET", HERE / "work" / "hn-smollm2-more"))


def whole_file_bytes_per_token(tokenizer_folder: Path, path: Path) -> float:
    """Bytes per token over a whole text file, one line at a time (no special tokens)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_folder / "tokenizer.json"))
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    tokens = sum(len(e.ids) for e in tok.encode_batch(lines, add_special_tokens=False))
    return sum(len(line.encode("utf-8")) for line in lines) / tokens


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--langs", nargs="*", default=["de", "en"])
    ap.add_argument("--vocab-size", type=int, default=32000)
    ap.add_argument("--table", action="store_true")
    args = ap.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if args.table:
        print_table(results)
        return
    from transplant import transplant
    from transplant.measure.evaluate import evaluate_bpb, take_bytes
    from transplant.train.tokenizer_train import train_tokenizer

    WORK.mkdir(parents=True, exist_ok=True)
    methods = ["fvt"] + (["hypernet"] if (HYPERNET / "config.json").exists() else [])
    for lang in args.langs:
        text = take_bytes((CORPORA / lang / "dev.txt").read_text(encoding="utf-8"), 20_000)
        row = results.setdefault(lang, {})
        if "original" not in row:
            r = evaluate_bpb(BASE, [text])
            row["original"] = {"bpb": round(r.bpb, 4), "bytes_per_token": round(r.bytes_per_token, 3)}
        for kind in ("plain", "super"):
            tok = WORK / f"{lang}-{kind}"
            if not (tok / "tokenizer.json").exists():
                s = train_tokenizer([CORPORA / lang / "train.txt"], args.vocab_size, tok, like=BASE,
                                    supertokens=kind == "super")
                row[f"{kind}-tokenizer"] = {"vocab_size": s.vocab_size, "supertokens": s.supertokens,
                                            "held_out_bytes_per_token": round(s.bytes_per_token, 3)}
            info = row.setdefault(f"{kind}-tokenizer", {})
            if "whole_dev_bytes_per_token" not in info:
                info["whole_dev_bytes_per_token"] = round(whole_file_bytes_per_token(tok, CORPORA / lang / "dev.txt"), 3)
            for method in methods:
                key = f"{kind}-{method}"
                if key in row:
                    continue
                out = WORK / f"{lang}-{kind}-{method}"
                if not (out / "config.json").exists():
                    options = {"hypernet.path": str(HYPERNET)} if method == "hypernet" else None
                    transplant(BASE, tok, out, method=method, options=options)
                r = evaluate_bpb(out, [text])
                row[key] = {"bpb": round(r.bpb, 4), "bytes_per_token": round(r.bytes_per_token, 3)}
                print(f"{lang} {key:>16} {r.bpb:.4f} {r.bytes_per_token:.3f}", flush=True)
                RESULTS.write_text(json.dumps(results, indent=1) + "\n")
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print_table(results)


def print_table(results: dict) -> None:
    print("| text | tokenizer | vocab | dev bytes/token | method | BPB (ratio to original) |")
    print("|---|---|---|---|---|---|")
    for lang, row in results.items():
        orig = row["original"]
        print(f"| {lang}/dev | original | 49,152 | {orig['bytes_per_token']:.3f} | | {orig['bpb']:.4f} |")
        for kind in ("plain", "super"):
            info = row.get(f"{kind}-tokenizer", {})
            for key in [k for k in row if k.startswith(kind + "-") and not k.endswith("tokenizer")]:
                r = row[key]
                print(f"| {lang}/dev | {kind} | {info.get('vocab_size', ''):,} | {r['bytes_per_token']:.3f} | "
                      f"{key.split('-', 1)[1]} | {r['bpb']:.4f} ({r['bpb'] / orig['bpb']:.3f}) |")


if __name__ == "__main__":
    main()
