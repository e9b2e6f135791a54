"""Where the fixed cost of `transplant run` goes, phase by phase, for two versions side by side.

Each version (this checkout, and any git revision, checked out into a temporary worktree) runs
the same `transplant run` in fresh child processes, alternated, `--repeats` times each; the
minimum of every phase is kept. A child:
  1. times its imports (the CLI module, then `transplant.api`, i.e. torch and transformers);
  2. runs the command's `main()` under cProfile and reports the cumulative seconds of each phase,
     found by source file name and function name, so a module that moved between versions
     (`transplant/checkpoint.py` -> `transplant/io/checkpoint.py`) is still found;
  3. prints the time `main()` returned; the parent's clock at the child's exit gives the cost of
     leaving the interpreter (the console script's exit path: `entry()` where the version has it).
The wall time of `cp -r MODEL` runs between them as the floor. cProfile adds overhead to the
phases (not to imports, exit or the wall times of the unprofiled runs, which are measured apart).

Results: `benchmarks/results/profile_phases.json` and a markdown table on stdout.

Usage:
    python benchmarks/profile_phases.py --base b7c9b27
    python benchmarks/profile_phases.py --base b7c9b27 --model benchmarks/work/synth-7b-widths --new-tok TOK
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from paths import HERE, ROOT

# phase label -> (source file name, function name); the first match's cumulative time counts.
PHASES = {
    "locate the embeddings": ("checkpoint.py", "locate_embeddings"),
    "vocabularies": ("vocab.py", "from_tokenizer"),
    "alignment": ("align.py", "build"),
    "plan (methods)": ("planner.py", "build_plan"),
    "write weights": ("checkpoint.py", "write_weights"),
    "write tokenizer": ("tokenizer_out.py", "write_tokenizer"),
    "validate output": ("validate.py", "validate_output"),
}

CHILD = r"""
import cProfile, importlib, json, pstats, sys, time
phases = json.loads(sys.argv[1]); profile = sys.argv[2] == "1"; args = sys.argv[3:]
t0 = time.perf_counter()
try:
    cli = importlib.import_module("transplant.cli.commands")
except ImportError:
    cli = importlib.import_module("transplant.cli")
t1 = time.perf_counter()
import transplant.api  # torch, transformers: what a run needs anyway
t2 = time.perf_counter()
sys.argv = ["transplant", "-q", *args]
prof = cProfile.Profile() if profile else None
start = time.perf_counter()
if prof: prof.enable()
try:
    cli.main()
finally:
    if prof: prof.disable()
    end = time.perf_counter()
    out = {"import cli": t1 - t0, "import api (torch, transformers)": t2 - t1, "main()": end - start}
    if prof:
        stats = pstats.Stats(prof).stats
        for label, (fname, func) in phases.items():
            hits = [v[3] for k, v in stats.items() if k[0].endswith("/" + fname) and k[2] == func]
            out[label] = max(hits) if hits else 0.0
    print("PHASES " + json.dumps(out), file=sys.stderr, flush=True)
    print("RETURNED " + repr(time.time()), file=sys.stderr, flush=True)
# The console script's exit: `entry()` (flush, then os._exit) where this version has one.
if hasattr(cli, "entry"):
    import os
    sys.stdout.flush(); sys.stderr.flush(); os._exit(0)
"""


def run_child(tree: Path, args: list[str], profile: bool) -> dict:
    """One run in a fresh process of `tree`'s code: its phases, and the wall and exit seconds."""
    env = dict(os.environ, PYTHONPATH=str(tree), HF_HUB_OFFLINE="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(PHASES), "1" if profile else "0", *args],
                          cwd=tree, env=env, capture_output=True, text=True)
    end = time.time()
    if proc.returncode:
        raise SystemExit(f"{tree}: run failed:\n{proc.stderr[-2000:]}")
    lines = {l.split(" ", 1)[0]: l.split(" ", 1)[1] for l in proc.stderr.splitlines() if l.startswith(("PHASES", "RETURNED"))}
    out = json.loads(lines["PHASES"])
    out["exit after main()"] = end - float(lines["RETURNED"])
    out["wall (process)"] = end - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="git revision to compare with (checked out into a worktree)")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--new-tok", type=Path, default=HERE / "work" / "de-tok")
    ap.add_argument("--method", default="fvt")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--results", type=Path, default=HERE / "results" / "profile_phases.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="profile-phases-"))
    base_tree = work / "base"
    subprocess.run(["git", "worktree", "add", "-f", "--detach", str(base_tree), args.base], cwd=ROOT, check=True,
                   capture_output=True)
    trees = {args.base: base_tree, "this checkout": ROOT}
    model = args.model if not Path(args.model).exists() else str(Path(args.model).resolve())
    folder = None
    try:
        results: dict = {name: {"profiled": [], "plain": []} for name in trees}
        cp_times = []
        for rep in range(args.repeats):
            for name, tree in trees.items():
                for profile in (False, True):
                    out = work / "out"
                    shutil.rmtree(out, ignore_errors=True)
                    cmd = ["run", "--model", model, "--new-tok", str(args.new_tok.resolve()), "--out", str(out),
                           "--method", args.method]
                    res = run_child(tree, cmd, profile)
                    results[name]["profiled" if profile else "plain"].append(res)
                    print(f"rep {rep} {name} {'profiled' if profile else 'plain'}: wall {res['wall (process)']:.2f} s",
                          flush=True)
                    if folder is None:
                        from transplant.io.sources import resolve_model
                        folder = resolve_model(model)
            shutil.rmtree(work / "cp", ignore_errors=True)
            t0 = time.perf_counter()
            subprocess.run(["cp", "-r", str(folder), str(work / "cp")], check=True)
            cp_times.append(time.perf_counter() - t0)
        table: dict = {}
        for name, runs in results.items():
            row = {}
            for key in runs["profiled"][0]:
                source = "profiled" if key in PHASES else "plain"
                row[key] = round(min(r[key] for r in runs[source]), 3)
            table[name] = row
        doc = {"base": args.base, "model": model, "new_tok": str(args.new_tok), "method": args.method,
               "repeats": args.repeats, "cp_r_s": round(min(cp_times), 3), "load_1min": os.getloadavg()[0],
               "phases_s": table}
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(doc, indent=2) + "\n")
        names = list(table)
        print(f"\n| phase (s, min of {args.repeats}) | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
        for key in table[names[-1]]:
            print(f"| {key} | " + " | ".join(str(table[n].get(key, '')) for n in names) + " |")
        print(f"| `cp -r` of the model folder | {doc['cp_r_s']} | {doc['cp_r_s']} |")
        print(f"\nwrote {args.results}")
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
