"""What dynamic tokenization saves and costs: `transplant eval --dynamic --json` per packaged model
and language, on the report part of each dev text (`paths.dev_parts`: the static tail and the
other defaults were looked at on the tune part only).

Each run: the static prefix and each merge budget, the same continuations scored after them;
prefix tokens saved, the continuation's bits per byte (and its ratio to the static prefix's), and
prefill wall time (one prompt at a time, the budgets interleaved batch by batch).
Results: `benchmarks/results/dynamic_tokens.json` (one entry per model and language, the eval's
JSON as printed, plus the command's wall time).

Usage:
    python benchmarks/dynamic_tokens.py                                   # SmolLM2, 5 languages
    python benchmarks/dynamic_tokens.py --models gemma-3-270m --langs de code --samples 16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from paths import CORPORA, HERE, checkout_first, dev_parts

checkout_first()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["smollm2-135m-instruct"])
    ap.add_argument("--langs", nargs="+", default=["de", "fr", "es", "it", "code"])
    ap.add_argument("--merges", default="100,200,400")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--out", default=str(HERE / "results" / "dynamic_tokens.json"))
    args = ap.parse_args()
    work = HERE / "work" / "dynamic_tokens"
    work.mkdir(parents=True, exist_ok=True)
    out = json.loads(open(args.out).read()) if os.path.exists(args.out) else {}
    for model in args.models:
        for lang in args.langs:
            text = work / f"{lang}-report.txt"
            text.write_text(dev_parts(CORPORA / lang / "dev.txt", 10**6)["report"], encoding="utf-8")
            cmd = [sys.executable, "-m", "transplant.cli", "--quiet", "eval", "--model", model, "--text", str(text),
                   "--dynamic", "--merges", args.merges, "--samples", str(args.samples), "--json"]
            began = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"{' '.join(cmd)} failed: {done.stderr.strip()[-500:]}")
            doc = json.loads(done.stdout)
            doc["wall_seconds"] = round(time.perf_counter() - began, 1)
            static = doc["rows"][0]
            for row in doc["rows"]:
                row["bpb_ratio"] = round(row["continuation_bits_per_byte"] / static["continuation_bits_per_byte"], 4)
                row["prefill_saved"] = round(1 - row["prefill_seconds"] / static["prefill_seconds"], 4)
            out[f"{model}/{lang}"] = doc
            print(model, lang, [(r["budget"], r["tokens_saved"], r["bpb_ratio"], r["prefill_saved"])
                                for r in doc["rows"]], flush=True)
            with open(args.out, "w") as fh:
                json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
