"""Wall time of a semantic method against FVT on one task, side by side, cached and cold.

`transplant run --no-calibrate` of SmolLM2-135M onto the German tokenizer of `quality_de.py`
(benchmarks/work/de-tok), alternated in fresh processes, `--repeats` times each; minimum wall and
maximum peak RSS per command (`streaming.measure`: `/usr/bin/time -v`, run from the checkout):
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
import shutil
import sys
import tempfile
from pathlib import Path

from paths import HERE, checkout_first

checkout_first()

from streaming import measure  # noqa: E402  (after checkout_first: this checkout's benchmarks)


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
    runs: dict[str, list[tuple[float, int]]] = {}
    with tempfile.TemporaryDirectory(prefix="semantic-speed-") as tmp:
        tmp = Path(tmp)

        def run(label: str, method: str, cache: Path | None) -> None:
            out = tmp / "out"
            shutil.rmtree(out, ignore_errors=True)
            cold = []
            if cache is not None:  # `env` execs the interpreter: the measured process is still Python
                shutil.rmtree(cache, ignore_errors=True)
                cold = ["env", f"TOKENTRANSPLANT_CACHE={cache}"]
            cmd = [*cold, sys.executable, "-m", "transplant.cli", "-q", "run", "--model", str(folder),
                   "--new-tok", str(args.new_tok), "--method", method, "--no-calibrate", "--out", str(out)]
            row = measure(cmd, label)  # streaming.py's: wall and peak RSS of the child
            runs.setdefault(label, []).append((row["wall_s"], round(row["peak_rss_mb"])))

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
