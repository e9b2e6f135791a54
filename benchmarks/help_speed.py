"""How fast the commands answer when no model is loaded: `--help` of each program and a bad
input refused before the model is read, each a fresh process (the console scripts' Python),
minimum and median of `--repeats`. Results: `benchmarks/results/help_speed.json`.

Usage:
    python benchmarks/help_speed.py      # under a minute
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from paths import HERE, checkout_first

checkout_first()

CASES = {
    "transplant --help": ["-m", "transplant.cli", "--help"],
    "transplant run --help": ["-m", "transplant.cli", "run", "--help"],
    "transplant hypernet --help": ["-m", "transplant.cli", "hypernet", "--help"],
    "transplant run (missing --model)": ["-m", "transplant.cli", "run", "--new-tok", "x.json", "--out", "o"],
    "transplant run --model /nonexistent": ["-m", "transplant.cli", "run", "--model", "/nonexistent",
                                            "--new-tok", "x.json", "--out", "o"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--results", default=str(HERE / "results" / "help_speed.json"))
    args = ap.parse_args()
    rows = {}
    for name, argv in CASES.items():
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            done = subprocess.run([sys.executable, *argv], capture_output=True, text=True)
            times.append(time.perf_counter() - started)
        rows[name] = {"min_s": round(min(times), 3), "median_s": round(statistics.median(times), 3),
                      "exit": done.returncode, "last_line": (done.stderr or done.stdout).strip().splitlines()[-1]}
        print(f"{name:<40} {rows[name]['min_s']:.2f} s (median {rows[name]['median_s']:.2f})", flush=True)
    with open(args.results, "w") as fh:
        json.dump({"repeats": args.repeats, "load_1min": os.getloadavg()[0], "rows": rows}, fh, indent=2)
        fh.write("\n")


if __name__ == "__main__":
    main()
