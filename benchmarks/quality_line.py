"""What the quality line of a plain `transplant run` costs: the same run with and without it
(`--no-eval`), side by side, each a fresh `transplant run` process, on SmolLM2-135M-Instruct onto a
German BPE trained `--like` it (so the tokenizer records its text and `auto` calibrates on it).

Per language (`--langs`): one tokenizer trained on `CORPORA/LANG/train.txt` (asked for 32k,
cached in benchmarks/work/quality_line/), then `--repeats` pairs of runs alternating the order.
Reports wall seconds of each run, the overhead (share of the run without the check) and the
quality line itself. Results: `benchmarks/results/quality_line.json`.

Usage:
    python benchmarks/quality_line.py                  # de, 2 pairs: about 4 minutes on 2 cores
    python benchmarks/quality_line.py --langs de fr code --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from paths import CORPORA, HERE, checkout_first

checkout_first()


def _run(args: list[str]) -> tuple[float, str]:
    env = dict(os.environ, HF_HUB_DISABLE_PROGRESS_BARS="1")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "transplant.cli", *args], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"transplant {' '.join(args)} failed: {done.stderr.strip().splitlines()[-1]}")
    return round(seconds, 2), done.stdout.strip().splitlines()[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--langs", nargs="+", default=["de"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--results", default=str(HERE / "results" / "quality_line.json"))
    args = ap.parse_args()

    from transplant.train.tokenizer_train import train_tokenizer

    work = HERE / "work" / "quality_line"
    rows = []
    for lang in args.langs:
        tok = work / f"{lang}-bpe"
        if not (tok / "training_summary.json").is_file():
            train_tokenizer([CORPORA / lang / "train.txt"], 32_000, tok, like=args.model, overwrite=True)
        base = ["run", "--model", args.model, "--new-tok", str(tok), "--overwrite"]
        times = {"with": [], "without": []}
        line = ""
        for i in range(args.repeats):
            order = ["with", "without"] if i % 2 == 0 else ["without", "with"]
            for kind in order:
                extra = [] if kind == "with" else ["--no-eval"]
                seconds, last = _run([*base, "--out", str(work / f"out-{lang}-{kind}"), *extra])
                times[kind].append(seconds)
                if kind == "with":
                    line = last
        best = {k: min(v) for k, v in times.items()}
        rows.append({"lang": lang, "seconds": times, "best_with": best["with"], "best_without": best["without"],
                     "overhead": round(best["with"] / best["without"] - 1, 3), "quality_line": line})
        print(json.dumps(rows[-1]), flush=True)
    out = {"model": args.model, "repeats": args.repeats, "cpu_count": os.cpu_count(), "rows": rows}
    with open(args.results, "w") as fh:
        json.dump(out, fh, indent=2)
        fh.write("\n")


if __name__ == "__main__":
    main()
