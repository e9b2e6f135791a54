"""Wall time of a semantic method against FVT on one task, side by side, cached and cold.

`transplant run --no-calibrate` of SmolLM2-135M onto the German tokenizer of `quality_de.py`
(benchmarks/work/de-tok), alternated in fresh processes, `--repeats` times each; minimum wall and
maximum peak RSS (`/usr/bin/time -v`) per command:
  - `fvt`;
  - `METHOD` with its encodings in the disk cache (the common case after the first run);
  - `METHOD` cold: an empty `TOKENTRANSPLANT_CACHE`, so both vocabularies are encoded again (the
    model is passed as its converted folder, so nothing else is redone).
The issue's bar: tokenadapt at most 2x FVT's wall time cached, 4x cold.

Results: `benchmarks/results/semantic_speed.json` and a markdown table on stdout.

Usage:
    python benchmarks/semantic_speed.py [--method tokenadapt] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from paths import HERE, ROOT, checkout_first

checkout_first()


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, int]:
    """(wall seconds, peak RSS MiB) of one command, from /usr/bin/time -v."""
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], env=env, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", proc.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    h, m, s = wall.groups()
    return int(h or 0) * 3600 + int(m) * 60 + float(s), int(rss.group(1)) // 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--new-tok", type=Path, default=HERE / "work" / "de-tok")
    ap.add_argument("--method", default="tokenadapt")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--results", type=Path, default=HERE / "results" / "semantic_speed.json")
    args = ap.parse_args()

    from transplant.io.sources import resolve_model

    folder = resolve_model(args.model)  # converted once, outside the timed runs
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs: dict[str, list[tuple[float, int]]] = {}
    with tempfile.TemporaryDirectory(prefix="semantic-speed-") as tmp:
        tmp = Path(tmp)

        def run(label: str, method: str, cache: Path | None) -> None:
            out = tmp / "out"
            shutil.rmtree(out, ignore_errors=True)
            run_env = dict(env)
            if cache is not None:
                shutil.rmtree(cache, ignore_errors=True)
                run_env["TOKENTRANSPLANT_CACHE"] = str(cache)
            cmd = [sys.executable, "-m", "transplant.cli", "-q", "run", "--model", str(folder),
                   "--new-tok", str(args.new_tok), "--method", method, "--no-calibrate", "--out", str(out)]
            runs.setdefault(label, []).append(timed(cmd, run_env))
            print(f"{label}: {runs[label][-1][0]:.2f} s, {runs[label][-1][1]} MiB", flush=True)

        run("warm-up", args.method, None)  # fills the disk cache of encodings for the cached runs
        for _ in range(args.repeats):
            run("fvt", "fvt", None)
            run(f"{args.method} (cached)", args.method, None)
            run(f"{args.method} (cold)", args.method, tmp / "cold-cache")
    runs.pop("warm-up")
    fvt = min(w for w, _ in runs["fvt"])
    rows = [{"command": label, "wall_s": round(min(w for w, _ in r), 2), "x_fvt": round(min(w for w, _ in r) / fvt, 2),
             "peak_rss_mib": max(m for _, m in r), "walls": [round(w, 2) for w, _ in r]} for label, r in runs.items()]
    load = os.getloadavg()
    doc = {"task": f"{args.model} -> {args.new_tok.name}", "repeats": args.repeats, "rows": rows,
           "load_after": [round(x, 2) for x in load]}
    args.results.write_text(json.dumps(doc, indent=1))
    print("\n| command | wall s (min) | x fvt | peak RSS MiB |\n|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['command']} | {r['wall_s']} | {r['x_fvt']} | {r['peak_rss_mib']} |")


if __name__ == "__main__":
    main()
