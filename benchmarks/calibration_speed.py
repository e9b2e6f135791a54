"""Output calibration's cost, today's code against the code before the compact fit, side by side.

Each variant runs in child processes of its own, `--repeat` times (the fastest wall time is
reported, all are kept; peak RSS from `os.wait4`):
  de     SmolLM2-135M onto a 32k German BPE (`transplant tokenizer train --like
         smollm2-135m-instruct` on de/train.txt, made once in benchmarks/work/de-tok),
         `transplant(..., method="fvt")` with and without `calibrate_texts=[de/train.txt]`
  gemma  SmolLM2-135M onto Gemma-3-270M's tokenizer (262k ids), idem, calibrated on en/train.txt
The old code is the `transplant` package of `--ref` (the last commit before the compact fit),
extracted with `git archive` into benchmarks/work/ and put first on the child's PYTHONPATH; it is
never imported here. Every variant writes its checkpoint (as `transplant run` does) into a
scratch folder that is removed afterwards. Results, the fitted scales of both codes and their
relative differences go to benchmarks/results/calibration_speed.json, with the load average and
whether a `hypernet train` ran beside (timings are only valid on an otherwise idle machine).

    python benchmarks/calibration_speed.py                     # everything: ~10 min on 2 idle cores
    python benchmarks/calibration_speed.py --tasks de --no-old
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

# No checkout_first() here: the child that runs the old code imports `transplant` from its
# PYTHONPATH, never from this checkout.
from paths import CORPORA, HERE, ROOT, checkout_first

WORK = HERE / "work"
RESULTS = HERE / "results" / "calibration_speed.json"
REF = "3e960652c6e10cf7519c6bcc7cf0aa7e08d12dbb"  # the last commit with the old calibrate.py
MODEL = "smollm2-135m-instruct"
TASKS = {"de": "de", "gemma": "en"}  # task -> the corpus whose train.txt calibrates


def _tokenizer(task: str) -> str:
    if task == "gemma":
        checkout_first()
        from transplant.io.sources import resolve_model

        return str(resolve_model("gemma-3-270m"))
    tok = WORK / "de-tok"
    if not (tok / "tokenizer.json").exists():
        subprocess.run(["transplant", "tokenizer", "train", "--text", str(CORPORA / "de" / "train.txt"),
                        "--vocab-size", "32000", "--out", str(tok), "--like", MODEL], check=True)
    return str(tok)


def _old_code(ref: str) -> Path:
    """The `transplant` (and `hypernet`) packages of `ref`, extracted once."""
    folder = WORK / f"calibration-ref-{ref[:10]}"
    if not (folder / "transplant" / "calibrate.py").exists():
        folder.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "transplant", "hypernet"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def _others_training() -> bool:
    """True when a `hypernet train` runs on this machine (its timings would be invalid)."""
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if any(c.endswith(b"hypernet") for c in cmd) and b"train" in cmd:
            return True
    return False


def _best_of(repeat: int, *args) -> dict:
    """`_run_child` `repeat` times: the fastest run, with every run's wall time beside it."""
    runs = [_run_child(*args) for _ in range(repeat)]
    best = min(runs, key=lambda r: r["process_s"])
    return dict(best, process_s_all=[r["process_s"] for r in runs],
                peak_rss_mb=max(r["peak_rss_mb"] for r in runs),
                others_training=any(r["others_training"] for r in runs))


def _run_child(task: str, calibrate: bool, code: str, tok: str, ref_dir: Path) -> dict:
    """One transplant in a child process: its wall time, peak RSS and what it reported."""
    out_json = WORK / "calibration-speed" / f"{task}-{code}-{'cal' if calibrate else 'plain'}.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ref_dir if code == "old" else ROOT), HF_HUB_DISABLE_PROGRESS_BARS="1")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", task, tok, str(out_json)]
    if calibrate:
        cmd.append("--calibrate")
    training = _others_training()
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{task} {code} {'calibrated' if calibrate else 'plain'}: the child failed")
    row = json.loads(out_json.read_text())
    row.update(task=task, code=code, calibrate=calibrate, process_s=round(wall, 1),
               peak_rss_mb=round(usage.ru_maxrss / 1024), others_training=training)
    print(json.dumps({k: v for k, v in row.items() if k != "calibration"}), flush=True)
    return row


def child(task: str, tok: str, out_json: Path, calibrate: bool) -> None:
    """Run in the child: one `transplant(..., method="fvt")` writing its checkpoint."""
    import transplant.api as api
    import transplant.methods.calibrate as cal_module
    from transplant import transplant

    text = (CORPORA / TASKS[task] / "train.txt").read_text(encoding="utf-8")
    spent = {"calibration_s": 0.0}
    inner = api._untie_and_calibrate

    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            spent["calibration_s"] += time.perf_counter() - started

    api._untie_and_calibrate = timed
    raw = {}
    inner_apply = cal_module.apply_scale  # imported by _untie_and_calibrate when it runs

    def recorded(plan, fit, *args, **kwargs):
        raw.update({k: getattr(fit, k) for k in ("scale", "nll_before", "nll_after", "made_mass_before",
                                                  "made_mass_after")})
        return inner_apply(plan, fit, *args, **kwargs)

    cal_module.apply_scale = recorded
    scratch = WORK / "calibration-speed" / f"out-{os.getpid()}"
    started = time.perf_counter()
    try:
        result = transplant(MODEL, tok, scratch, method="fvt", overwrite=True,
                            calibrate_texts=[text] if calibrate else None)
        call = time.perf_counter() - started
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    out_json.write_text(json.dumps({"call_s": round(call, 1), "calibration_s": round(spent["calibration_s"], 1),
                                    "calibration": result.plan.meta.get("calibration"), "fit_unrounded": raw,
                                    "code_from": str(Path(api.__file__).parent)}))


def _scales(row: dict) -> list[float]:
    """The fitted scales: per bucket (4 decimals, as the fit records them), else the one unrounded."""
    return row["calibration"]["bucket_scales"] or [row["fit_unrounded"]["scale"]]


def _compare(rows: list[dict]) -> dict:
    """Per task: new/old time and memory, and the largest relative difference of the scales."""
    out = {}
    for task in sorted({r["task"] for r in rows}):
        by = {(r["code"], r["calibrate"]): r for r in rows if r["task"] == task}
        entry = {}
        new, old, plain = by.get(("new", True)), by.get(("old", True)), by.get(("new", False))
        if new and plain:
            entry["new_calibrated_over_plain_fvt"] = round(new["process_s"] / plain["process_s"], 2)
        if new and old:
            a, b = _scales(new), _scales(old)
            entry.update(scales_new=a, scales_old=b,
                         max_rel_scale_diff=max(abs(x - y) / abs(y) for x, y in zip(a, b)) if len(a) == len(b)
                         else None,
                         speedup_process=round(old["process_s"] / new["process_s"], 1),
                         speedup_calibration=round(old["calibration_s"] / max(new["calibration_s"], 1e-9), 1),
                         peak_rss_mb_new_old=[new["peak_rss_mb"], old["peak_rss_mb"]])
            for key in ("nll_before", "nll_after", "made_mass_before", "made_mass_after"):
                entry[key + "_new_old"] = [new["fit_unrounded"][key], old["fit_unrounded"][key]]
        out[task] = entry
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--no-old", action="store_true", help="skip the old code (its gemma run takes ~13 min)")
    ap.add_argument("--ref", default=REF, help="commit whose code is 'old'")
    ap.add_argument("--repeat", type=int, default=2, help="runs per variant; the fastest is reported")
    ap.add_argument("--child", nargs=3, metavar=("TASK", "TOKENIZER", "OUT_JSON"), help=argparse.SUPPRESS)
    ap.add_argument("--calibrate", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        task, tok, out_json = args.child
        return child(task, tok, Path(out_json), args.calibrate)
    ref_dir = _old_code(args.ref)
    for _ in range(60):  # up to 5 minutes for the load of whatever ran before to die down
        if os.getloadavg()[0] < 0.5:
            break
        time.sleep(5)
    load = os.getloadavg()[0]  # before the first child (each child then keeps both cores busy)
    rows = []
    for task in args.tasks:
        tok = _tokenizer(task)
        rows.append(_best_of(args.repeat, task, False, "new", tok, ref_dir))
        rows.append(_best_of(args.repeat, task, True, "new", tok, ref_dir))
        if not args.no_old:
            rows.append(_best_of(args.repeat, task, True, "old", tok, ref_dir))
    doc = {"ref": args.ref, "machine": {"cpus": os.cpu_count()}, "load_at_start": round(load, 2), "runs": rows,
           "compare": _compare(rows), "valid_timings": load < 0.5 and not any(r["others_training"] for r in rows)}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc["compare"], indent=1))
    note = "" if doc["valid_timings"] else " (timings taken under load: rerun on an idle machine)"
    print(f"wrote {RESULTS}{note}")


if __name__ == "__main__":
    main()
