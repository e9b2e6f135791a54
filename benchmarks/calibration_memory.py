"""Calibration at 7B widths: the layer-by-layer read against the whole-model read, side by side.

Every contender is a fresh process of the same command,
`transplant run --model SRC --new-tok TOK --calibrate-text TEXT --out OUT --method fvt` (`--method
auto`: what `transplant run` does with none; FVT too, as no network matches a synthetic model), timed with `/usr/bin/time -v` (peak RSS)
after an untimed `sync`, the source already in the page cache (a warm-up `cp -r` first):

  streamed   this checkout: the source read one decoder layer at a time, in its own dtype
  whole      the code before streaming (`git archive BASELINE`, default 3d6c3f3): the source
             loaded whole in float32
  plain      this checkout with `--no-calibrate`: the floor (what the transplant costs without it)

`--memory-limit 16G` runs every command inside a memory cgroup of that size (root; cgroup v1 or
v2), as a 16 GB machine would: a contender the kernel kills is reported as killed. Each row also
gives the fitted scale(s) from the written plan, so the two reads can be compared. The 32-layer
14.8 GB checkpoint takes about two minutes with `--skip whole` (the whole read would be killed at
16 GB: it needs ~30 GB in float32).

Results: `benchmarks/results/calibration_memory[-NAME].json` and a markdown table on stdout.

Usage:
    python benchmarks/make_synthetic_checkpoint.py --out benchmarks/work/synth-7b-widths
    python benchmarks/calibration_memory.py --src benchmarks/work/synth-7b-widths
    python benchmarks/calibration_memory.py --src benchmarks/work/synth-7b-32l --memory-limit 16G \\
        --results benchmarks/results/calibration_memory-32l.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from paths import CORPORA, HERE, ROOT, checkout_first

checkout_first()

from streaming import git_state, measure, rm  # noqa: E402  (after checkout_first)


def cgroup_prefix(limit: str | None, name: str = "tokentransplant-bench") -> list[str]:
    """A command prefix that runs the rest inside a memory cgroup of `limit` bytes (none: [])."""
    if not limit:
        return []
    from transplant.common.memory import parse_size

    size = parse_size(limit)
    v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
    group = Path("/sys/fs/cgroup") / name if v2 else Path("/sys/fs/cgroup/memory") / name
    group.mkdir(exist_ok=True)
    (group / ("memory.max" if v2 else "memory.limit_in_bytes")).write_text(str(size))
    if v2:
        (group / "memory.swap.max").write_text("0")
    return ["sh", "-c", f'echo $$ > "{group}/cgroup.procs" && exec "$@"', "sh"]


def baseline_tree(commit: str, into: Path) -> Path:
    """The checkout at `commit`, extracted (not checked out): its `transplant` runs from there."""
    rm(into)
    into.mkdir(parents=True)
    with tempfile.TemporaryFile() as fh:
        subprocess.run(["git", "-C", str(ROOT), "archive", commit], stdout=fh, check=True)
        fh.seek(0)
        with tarfile.open(fileobj=fh) as tar:
            tar.extractall(into, filter="data")
    return into


def fitted(out: Path) -> dict | None:
    """The calibration the run recorded in its plan (scale, per-bucket scales, NLL before/after)."""
    try:
        meta = json.loads((out / "transplant_plan.json").read_text())["meta"]
    except (OSError, KeyError, ValueError):
        return None
    cal = meta.get("calibration")
    return None if cal is None else {k: cal.get(k) for k in ("scale", "bucket_scales", "nll_before", "nll_after",
                                                             "tokens")}


def measure_in_tree(label: str, cmd: list[str], tree: Path, prefix: list[str], read_result) -> dict:
    """`measure` the command with the `transplant` of `tree` (`python -P` and PYTHONPATH), adding
    `read_result()`'s value as the row's "result"; a failed or killed command is a row saying so."""
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(tree)
    try:
        row = measure(prefix + cmd, label)
        row["result"] = read_result()
    except SystemExit as exc:  # measure exits on a failed command: a kill at the memory limit is a result
        text = str(exc)
        row = {"label": label, "failed": text[-800:], "killed": "(-9)" in text or "(137)" in text}
        print(f"  {label}: FAILED {'(killed)' if row['killed'] else ''}", flush=True)
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    return row


def run(label: str, cmd: list[str], tree: Path, out: Path, prefix: list[str]) -> dict:
    rm(out)
    row = measure_in_tree(label, cmd, tree, prefix, lambda: fitted(out))
    rm(out)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, default=HERE / "work" / "synth-7b-widths")
    ap.add_argument("--new-tok", type=Path, default=HERE / "work" / "quality_de" / "de-bpe")
    ap.add_argument("--text", type=Path, default=CORPORA / "de" / "train.txt")
    ap.add_argument("--baseline", default="3d6c3f3", help="the commit before streaming calibration")
    ap.add_argument("--method", default="fvt", help="the transplant's method (auto: as `transplant run` with none)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["streamed", "whole", "plain"])
    ap.add_argument("--memory-limit", default=None, help="run every command in a memory cgroup this size (e.g. 16G)")
    ap.add_argument("--work", type=Path, default=HERE / "work" / "calibration_memory")
    ap.add_argument("--results", type=Path, default=HERE / "results" / "calibration_memory.json")
    args = ap.parse_args()
    src, work = args.src.resolve(), args.work.resolve()
    if not (args.new_tok / "tokenizer.json").exists():
        from quality_de import train_tokenizer

        train_tokenizer(CORPORA / "de" / "train.txt", 32000, args.new_tok)
    work.mkdir(parents=True, exist_ok=True)
    prefix = cgroup_prefix(args.memory_limit)
    print("warm-up cp", flush=True)
    measure(["cp", "-r", str(src), str(work / "warm")], "cp -r (warm-up)")
    rm(work / "warm")
    out = work / "out"
    cli = [sys.executable, "-P", "-m", "transplant.cli", "run", "--model", str(src), "--new-tok",
           str(args.new_tok.resolve()), "--out", str(out), "--method", args.method]
    rows = {}
    if "streamed" not in args.skip:
        rows["streamed"] = run("streamed (this checkout)", cli + ["--calibrate-text", str(args.text.resolve())],
                               ROOT, out, prefix)
    if "whole" not in args.skip:
        tree = baseline_tree(args.baseline, work / "baseline")
        rows["whole"] = run(f"whole, float32 ({args.baseline})", cli + ["--calibrate-text", str(args.text.resolve())],
                            tree, out, prefix)
        shutil.rmtree(tree, ignore_errors=True)
    if "plain" not in args.skip:
        rows["plain"] = run("plain (--no-calibrate)", cli + ["--no-calibrate"], ROOT, out, prefix)
    src_bytes = sum(p.stat().st_size for p in src.iterdir() if p.is_file())
    doc = {"source": {"path": str(src), "bytes": src_bytes}, "new_tokenizer": str(args.new_tok),
           "text": str(args.text), "method": args.method, "memory_limit": args.memory_limit, "baseline": args.baseline,
           "git": git_state(), "machine": {"cpus": os.cpu_count(), "load1_at_end": os.getloadavg()[0]}, "rows": rows}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"\nsource {src.name} ({src_bytes / 1e9:.2f} GB){', limit ' + args.memory_limit if args.memory_limit else ''}")
    print("| read | wall s | peak RSS GB | fitted scale(s) |\n|---|---:|---:|---|")
    for r in rows.values():
        if "failed" in r:
            print(f"| {r['label']} | {'killed' if r['killed'] else 'failed'} | | |")
            continue
        cal = r.get("result") or {}
        scales = cal.get("bucket_scales") or cal.get("scale")
        print(f"| {r['label']} | {r['wall_s']:.1f} | {r['peak_rss_mb'] * 1024 * 1024 / 1e9:.2f} | {scales} |")


if __name__ == "__main__":
    main()
