"""Vocabulary extension benchmark: SmolLM2-135M extended with N = 1k, 4k, 16k tokens learned on
de/train.txt, scored on the leading 20 kB of whole documents of de/dev.txt (bits per byte and
bytes per token), against Hugging Face's own way: the same extended tokenizer with
`resize_token_embeddings(mean_resizing=True)` (new rows drawn around the mean of the old ones).

    python benchmarks/extend_bench.py                 # fvt (and hypernet when a network exists)
    python benchmarks/extend_bench.py --table
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from paths import CORPORA, HERE, ROOT, checkout_first

checkout_first()
WORK = HERE / "work" / "extend"
RESULTS = HERE / "results" / "extend.json"
BASE = "smollm2-135m-instruct"
# The network shipped for SmolLM2 (what `auto` uses); HARNESS_HYPERNET names another one.
HYPERNET = Path(os.environ.get("HARNESS_HYPERNET", ROOT / "hypernet" / "networks" / BASE))


def hf_mean_resized(ext: Path, out: Path) -> Path:
    """The base model resized by transformers to the extended tokenizer (mean_resizing=True)."""
    import torch
    from transformers import AutoModelForCausalLM

    from transplant.io.sources import resolve_model

    if (out / "config.json").exists():
        return out
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(resolve_model(BASE)), dtype=torch.float32)
    rows = json.loads((ext / "config.json").read_text())["vocab_size"]
    model.resize_token_embeddings(rows, mean_resizing=True)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (ext / name).is_file():
            shutil.copy2(ext / name, tmp / name)
    os.replace(tmp, out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="*", default=[1000, 4000, 16000])
    ap.add_argument("--table", action="store_true")
    args = ap.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if args.table:
        print_table(results)
        return
    from transplant.measure.evaluate import evaluate_bpb, take_bytes
    from transplant.extend import extend

    text = take_bytes((CORPORA / "de" / "dev.txt").read_text(encoding="utf-8"), 20_000)
    WORK.mkdir(parents=True, exist_ok=True)

    def score(name: str, folder) -> None:
        if name in results:
            return
        r = evaluate_bpb(folder, [text])
        results[name] = {"bpb": round(r.bpb, 4), "bytes_per_token": round(r.bytes_per_token, 3)}
        print(f"{name:>20} {r.bpb:.4f} {r.bytes_per_token:.3f}", flush=True)
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")

    score("original", BASE)
    methods = ["fvt"] + (["hypernet"] if (HYPERNET / "config.json").exists() else [])
    for n in args.sizes:
        for method in methods:
            out = WORK / f"ext-{n}-{method}"
            if not (out / "config.json").exists():
                options = {"hypernet.path": str(HYPERNET)} if method == "hypernet" else None
                res = extend(BASE, [CORPORA / "de" / "train.txt"], n, out, method=method, options=options)
                results.setdefault("added", {})[str(n)] = len(res.new_tokens)
            score(f"{n}-{method}", out)
            if method == "hypernet":
                results["hypernet_network"] = str(HYPERNET.relative_to(ROOT) if HYPERNET.is_relative_to(ROOT)
                                                  else HYPERNET)
        score(f"{n}-hf-mean-resizing", hf_mean_resized(WORK / f"ext-{n}-fvt", WORK / f"ext-{n}-hf"))
    print_table(results)


def print_table(results: dict) -> None:
    orig = results["original"]
    print("| tokens added | initializer | bytes/token | BPB (ratio to original) |")
    print("|---|---|---|---|")
    print(f"| 0 | (original) | {orig['bytes_per_token']:.3f} | {orig['bpb']:.4f} |")
    for name, row in results.items():
        if name in ("original", "added", "hypernet_network"):
            continue
        n, _, method = name.partition("-")
        added = results.get("added", {}).get(n, n)
        print(f"| {added} | {method} | {row['bytes_per_token']:.3f} | {row['bpb']:.4f} ({row['bpb'] / orig['bpb']:.3f}) |")


if __name__ == "__main__":
    main()
