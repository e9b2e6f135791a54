"""`transplant demo` timed as a user runs it: a fresh process, its printed table kept, and the
time of each stage (from the stage lines' arrival). Run it once with an empty cache
(`--cold`: the GGUF conversion and the tokenizer training included) and once warm.
Results: `benchmarks/results/demo_time.json` (the README's demo table and times come from it).

Usage:
    python benchmarks/demo_time.py            # warm: about 3 minutes on 2 idle cores
    python benchmarks/demo_time.py --cold     # also converts the GGUF and trains the tokenizer
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from paths import HERE, checkout_first

checkout_first()


def run_demo(env: dict) -> dict:
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "transplant.cli", "demo", "--out",
                             str(Path(tempfile.mkdtemp()) / "demo")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    stages = []
    for line in proc.stderr:  # stage lines, in order, with the second they arrived
        line = line.strip()
        if line and "%|" not in line and not line.startswith(("Loading", "scoring", "writing")):
            stages.append([round(time.perf_counter() - started, 1), line[:160]])
    out = proc.stdout.read()
    code = proc.wait()
    return {"seconds": round(time.perf_counter() - started, 1), "exit": code, "stdout": out.splitlines(),
            "stages": stages, "load_1min_after": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cold", action="store_true", help="also a run with an empty TOKENTRANSPLANT_HOME")
    ap.add_argument("--results", default=str(HERE / "results" / "demo_time.json"))
    args = ap.parse_args()
    env = dict(os.environ, HF_HUB_DISABLE_PROGRESS_BARS="1")
    load_before = os.getloadavg()[0]
    runs = {}
    if args.cold:
        with tempfile.TemporaryDirectory() as home:
            runs["cold"] = run_demo(dict(env, TOKENTRANSPLANT_HOME=home))
            print(json.dumps({"cold": runs["cold"]["seconds"]}), flush=True)
    runs["warm"] = run_demo(env)
    print(json.dumps({"warm": runs["warm"]["seconds"]}), flush=True)
    print("\n".join(runs["warm"]["stdout"]))
    with open(args.results, "w") as fh:
        json.dump({"load_1min_before": load_before, "cpu_count": os.cpu_count(), "runs": runs}, fh, indent=2)
        fh.write("\n")


if __name__ == "__main__":
    main()
