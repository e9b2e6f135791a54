"""Healing at 7B widths: the frozen body in its checkpoint's dtype against float32, side by side.

The source is the synthetic bf16 checkpoint of `make_synthetic_checkpoint.py` moved onto the
German BPE with `--method fvt` (made once into the work folder); the healing text is the leading
`--text-bytes` of de/train.txt. Every contender is a fresh process of the same command,
`transplant heal --model T --text TXT --out OUT --steps 3 --batch-size 1 --seq-len 128
--eval-every 3 --checkpoint-every 3`, timed with `/usr/bin/time -v` (peak RSS) after an untimed
`sync`:

  this       this checkout (`--optimizer` as given, default: the command's own default)
  float32    the code before (`git archive BASELINE`, default 3d6c3f3): student and teacher in float32

Each row gives the held-out bits per byte the run reports (`heal.json`), so a change of precision
that moved quality shows. `--extra` adds flags to this checkout's command (e.g. `--optimizer adam`).

`--launch 2` runs this checkout's command as two processes (`accelerate launch` with the shipped
`recipes/accelerate/cpu-2-processes.yaml`); with `--extra=--shard-body` they shard the frozen
body. Peak RSS is then the largest process's (`/usr/bin/time` reports the largest descendant).

Results: `benchmarks/results/heal_memory.json` and a markdown table on stdout.

Usage:
    python benchmarks/heal_memory.py --src benchmarks/work/synth-7b-widths
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from paths import CORPORA, HERE, ROOT, checkout_first

checkout_first()

from calibration_memory import baseline_tree, cgroup_prefix, measure_in_tree  # noqa: E402
from streaming import git_state, rm  # noqa: E402


def summary_of(out: Path) -> dict:
    summary = json.loads((out / "heal.json").read_text())
    return {k: summary.get(k) for k in ("step", "best_bpb", "teacher_bpb", "rows_trained", "setup_seconds", "settings")}


def run(label: str, cmd: list[str], tree: Path, out: Path, prefix: list[str]) -> dict:
    for path in (out, out.with_name(out.name + ".heal-run")):
        rm(path)
    row = measure_in_tree(label, cmd, tree, prefix, lambda: summary_of(out))
    for path in (out, out.with_name(out.name + ".heal-run")):
        rm(path)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, default=HERE / "work" / "synth-7b-widths")
    ap.add_argument("--new-tok", type=Path, default=HERE / "work" / "quality_de" / "de-bpe")
    ap.add_argument("--text", type=Path, default=CORPORA / "de" / "train.txt")
    ap.add_argument("--text-bytes", type=int, default=60_000)
    ap.add_argument("--baseline", default="3d6c3f3")
    ap.add_argument("--skip", nargs="*", default=[], choices=["this", "float32"])
    ap.add_argument("--extra", nargs="*", default=[], help="more flags for this checkout's heal")
    ap.add_argument("--memory-limit", default=None)
    ap.add_argument("--launch", type=int, default=1,
                    help="processes: above 1, this checkout's heal runs under `accelerate launch` with "
                         "recipes/accelerate/cpu-2-processes.yaml (peak RSS is then the largest process's)")
    ap.add_argument("--work", type=Path, default=HERE / "work" / "heal_memory")
    ap.add_argument("--results", type=Path, default=HERE / "results" / "heal_memory.json")
    args = ap.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    moved = work / "moved"
    if not (moved / "transplant_plan.json").exists():
        subprocess.run([sys.executable, "-m", "transplant.cli", "-q", "run", "--model", str(args.src.resolve()),
                        "--new-tok", str(args.new_tok.resolve()), "--out", str(moved), "--method", "fvt",
                        "--overwrite"], check=True, cwd=ROOT)
    from transplant.common.texts import split_documents, take_bytes

    text = work / "heal.txt"
    text.write_text(take_bytes("".join(split_documents(args.text.read_text(encoding="utf-8"))), args.text_bytes),
                    encoding="utf-8")
    prefix = cgroup_prefix(args.memory_limit)
    out = work / "out"
    launch = [] if args.launch == 1 else [
        "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "recipes" / "accelerate" / "cpu-2-processes.yaml"),
        "--num_processes", str(args.launch)]
    cli = [sys.executable, "-P", *launch, "-m", "transplant.cli", "heal", "--model", str(moved), "--text", str(text),
           "--out", str(out), "--steps", "3", "--batch-size", "1", "--seq-len", "128", "--eval-every", "3",
           "--checkpoint-every", "3", "--patience", "0"]
    rows = {}
    if "this" not in args.skip:
        rows["this"] = run("this checkout " + " ".join(args.extra), cli + args.extra, ROOT, out, prefix)
    if "float32" not in args.skip:
        tree = baseline_tree(args.baseline, work / "baseline")
        rows["float32"] = run(f"float32 ({args.baseline})", cli, tree, out, prefix)
        shutil.rmtree(tree, ignore_errors=True)
    doc = {"source": str(args.src), "moved": str(moved), "text": str(args.text), "text_bytes": args.text_bytes,
           "memory_limit": args.memory_limit, "baseline": args.baseline, "processes": args.launch, "git": git_state(),
           "machine": {"cpus": os.cpu_count()}, "rows": rows}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(doc, indent=1) + "\n")
    print("| heal | wall s | peak RSS GB | held-out BPB (best) | rows trained |\n|---|---:|---:|---:|---:|")
    for r in rows.values():
        if "failed" in r:
            print(f"| {r['label']} | {'killed' if r['killed'] else 'failed'} | | | |")
            continue
        s = r["result"]
        print(f"| {r['label']} | {r['wall_s']:.1f} | {r['peak_rss_mb'] * 1024 * 1024 / 1e9:.2f} | "
              f"{s['best_bpb']:.4f} | {s['rows_trained']} |")


if __name__ == "__main__":
    main()
