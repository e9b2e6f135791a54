"""One harness for every method on every task: BPB, ratio to the original, bytes per token,
transplant wall time and peak RSS, in one table (BENCHMARKS.md) and one JSON file.

Tasks (tokenizers and fastText vectors are trained on `<lang>/train.txt`; text is scored on the
two parts of `<lang>/dev.txt` (`paths.dev_parts`, each up to --eval-bytes of whole documents):
"report", from the second half of the documents, is the reported number, and "tune", the leading
documents every default was chosen on, is kept beside it to show what tuning on it bought):
  de, fr, es   SmolLM2-135M onto a 32k byte-level BPE of that language
  code         SmolLM2-135M onto a 32k byte-level BPE of Python code
  s2g          SmolLM2-135M onto Gemma-3-270M's tokenizer (donor: Gemma), scored on en/dev
  g2s          Gemma-3-270M onto SmolLM2's tokenizer (donor: SmolLM2), scored on en/dev

Methods are named `METHOD` or `METHOD+cal` (+cal: output calibration fitted on the task's
train.txt, which is also the new tokenizer's training text; never on the scored text). Each
transplant runs in its own process (wall time and peak RSS are that process's); the scoring
runs in the same process afterwards. Results are merged into the JSON by (task, method), so
the harness can be run piece by piece:

    python benchmarks/harness.py --tasks de --methods fvt fvt+cal
    python benchmarks/harness.py --table          # print the table of everything measured
    python benchmarks/harness.py --plot           # results/harness.png

Peers (mergekit-tokensurgeon, wechsel, deepfocus) run from `benchmarks/peers.py` into the same
JSON when their packages are installed in their own virtualenv (`--no-deps`; see the
docstring of benchmarks/peers.py: their dependencies conflict with ours).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from paths import CORPORA, HERE, checkout_first, dev_parts

checkout_first()
WORK = HERE / "work" / "harness"
RESULTS = HERE / "results" / "harness.json"

LANG_TASKS = {"de": "de", "fr": "fr", "es": "es", "code": "code"}
CROSS_TASKS = {"s2g": ("smollm2-135m-instruct", "gemma-3-270m"), "g2s": ("gemma-3-270m", "smollm2-135m-instruct")}
ALL_TASKS = list(LANG_TASKS) + list(CROSS_TASKS)


def task_setup(task: str) -> dict:
    """model, new tokenizer, donor (or None), train text, dev text, source language for the task."""
    from transplant.io.sources import resolve_model

    if task in LANG_TASKS:
        lang = LANG_TASKS[task]
        tok = WORK / f"{lang}-bpe"
        if not (tok / "tokenizer.json").exists():
            from quality_de import train_tokenizer

            train_tokenizer(CORPORA / lang / "train.txt", 32000, tok)
        return {"model": "smollm2-135m-instruct", "new_tok": str(tok), "donor": None,
                "train": str(CORPORA / lang / "train.txt"), "dev": str(CORPORA / lang / "dev.txt"), "lang": lang}
    model, donor = CROSS_TASKS[task]
    return {"model": model, "new_tok": str(resolve_model(donor)), "donor": donor,
            "train": str(CORPORA / "en" / "train.txt"), "dev": str(CORPORA / "en" / "dev.txt"), "lang": "en"}


def method_kwargs(method: str, setup: dict) -> dict:
    """transplant() keyword arguments for a harness method name on a task."""
    name, _, suffix = method.partition("+")
    kwargs: dict = {"method": name}
    options: dict = {}
    if name == "omp" and setup["donor"]:
        options["omp.donor"] = setup["donor"]
    if name in ("wechsel", "focus"):
        from transplant.methods.vectors import train_vectors

        if name == "wechsel":
            if setup["lang"] == "en":
                raise SystemExit("wechsel needs a source/target language pair (not on the cross-model tasks)")
            options["wechsel.source_vectors"] = str(train_vectors([CORPORA / "en" / "train.txt"], None))
            options["wechsel.target_vectors"] = str(train_vectors([Path(setup["train"])], None))
            options["wechsel.dictionary"] = str(CORPORA / "dictionaries" / f"en-{setup['lang']}.tsv")
        else:
            options["focus.vectors"] = str(train_vectors([Path(setup["train"])], None, tokenizer=setup["new_tok"]))
    if name == "hypernet":  # the network shipped for the task's base model, or $HARNESS_HYPERNET
        options["hypernet.path"] = os.environ.get("HARNESS_HYPERNET",
                                                  str(HERE.parent / "hypernet" / "networks" / setup["model"]))
    if options:
        kwargs["options"] = options
    if suffix == "cal":
        kwargs["calibrate_texts"] = [Path(setup["train"]).read_text(encoding="utf-8")]
    elif suffix:
        raise SystemExit(f"unknown method suffix +{suffix} (only +cal)")
    return kwargs


def run_one(task: str, method: str, eval_bytes: int, ctx: int) -> dict:
    """Transplant + score both parts of the dev text in this process (called in a child process by `main`)."""
    import resource

    from transplant import transplant
    from transplant.measure.evaluate import evaluate_bpb

    setup = task_setup(task)
    parts = dev_parts(setup["dev"], eval_bytes)

    def scored(folder) -> dict:
        res = {name: evaluate_bpb(folder, [text], ctx=ctx) for name, text in parts.items()}
        return {"bpb": res["report"].bpb, "bytes_per_token": res["report"].bytes_per_token,
                "eval_bytes": res["report"].bytes,
                "tune": {"bpb": res["tune"].bpb, "bytes_per_token": res["tune"].bytes_per_token,
                         "eval_bytes": res["tune"].bytes}}

    if method == "original":
        from transplant.io.sources import resolve_model

        return {"task": task, "method": method, **scored(resolve_model(setup["model"]))}
    kwargs = method_kwargs(method, setup)
    out = WORK / "out" / f"{task}-{method}"
    t0 = time.perf_counter()
    result = transplant(setup["model"], setup["new_tok"], out, overwrite=True, **kwargs)
    seconds = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux reports KiB)
    row = {"task": task, "method": method, **scored(out)}
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    return {**row, "transplant_seconds": round(seconds, 1), "peak_rss_mib": round(rss),
            "counts": result.plan.counts(), "calibration": result.plan.meta.get("calibration"),
            "options": result.plan.meta.get("options")}


def load_results() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {"results": []}


def save_result(row: dict, keep_times: bool = False) -> None:
    """Merge one row into the JSON by (task, method); `keep_times` keeps the old row's wall time and
    peak RSS (for a re-score on a machine that was not idle: BPB does not depend on the load)."""
    doc = load_results()
    old = [r for r in doc["results"] if (r["task"], r["method"]) == (row["task"], row["method"])]
    if keep_times and old and "transplant_seconds" in old[0]:
        row = {**row, "transplant_seconds": old[0]["transplant_seconds"], "peak_rss_mib": old[0].get("peak_rss_mib"),
               "times_from": old[0].get("times_from", "an earlier run on an idle machine")}
    doc["results"] = [r for r in doc["results"] if (r["task"], r["method"]) != (row["task"], row["method"])]
    doc["results"].append(row)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(doc, indent=1) + "\n")


def _fmt(x: float | None, spec: str = ".4f") -> str:
    return "–" if x is None else format(x, spec)


def table() -> str:
    """Markdown table: BPB on the report part (ratio and change against fvt on it), on the tune part beside it.

    Rows measured before the split (peers run from their own virtualenv) have only the tune part."""
    doc = load_results()
    base = {r["task"]: r for r in doc["results"] if r["method"] == "original"}
    fvt = {r["task"]: r for r in doc["results"] if r["method"] == "fvt"}
    lines = ["| task | method | BPB report | ratio | vs fvt | BPB tune | ratio | vs fvt | bytes/token | "
             "bytes scored (report / tune) | transplant s | peak RSS MiB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    order = {t: i for i, t in enumerate(ALL_TASKS)}

    def part(r: dict | None, name: str) -> dict | None:
        if r is None:
            return None
        return r.get("tune") if name == "tune" else (r if r.get("bpb") is not None else None)

    def cols(r: dict, name: str) -> list[str]:
        mine, orig, ref = part(r, name), part(base.get(r["task"]), name), part(fvt.get(r["task"]), name)
        if mine is None:
            return ["–", "", ""]
        ratio = _fmt(mine["bpb"] / orig["bpb"], ".3f") if orig else ""
        vs = f"{100 * (mine['bpb'] / ref['bpb'] - 1):+.1f}%" if ref and r["method"] != "original" else ""
        return [_fmt(mine["bpb"]), ratio, vs]

    def key(r: dict) -> tuple:
        best = part(r, "report") or part(r, "tune")
        return (order.get(r["task"], 99), r["method"] != "original", part(r, "report") is None, best["bpb"])

    for r in sorted(doc["results"], key=key):
        shown = part(r, "report") or part(r, "tune")
        sizes = f"{part(r, 'report')['eval_bytes'] if part(r, 'report') else '–'} / " \
                f"{part(r, 'tune')['eval_bytes'] if part(r, 'tune') else '–'}"
        lines.append("| " + " | ".join([r["task"], r["method"], *cols(r, "report"), *cols(r, "tune"),
                                         f"{shown['bytes_per_token']:.2f}", sizes,
                                         str(r.get("transplant_seconds", "")), str(r.get("peak_rss_mib", "") or "")]) + " |")
    return "\n".join(lines)


def plot(path: Path = HERE / "results" / "harness.png") -> Path:
    """Ratio to the original model per task: fvt, our best other method, the best peer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    doc = load_results()
    # the report part where a row has it (every row but the peers'); the plot says which
    bpb = {(r["task"], r["method"]): r["bpb"] for r in doc["results"] if r.get("bpb") is not None}
    base = {t: v for (t, m), v in bpb.items() if m == "original"}
    tasks = [t for t in ALL_TASKS if t in base]
    series: dict[str, list[float | None]] = {"fvt": [], "ours, best": [], "best peer": []}
    labels: dict[str, list[str]] = {k: [] for k in series}
    for t in tasks:
        rows = [{**r, "bpb": bpb[(t, r["method"])]} for r in doc["results"]
                if r["task"] == t and r["method"] != "original" and (t, r["method"]) in bpb]
        picks = {"fvt": [r for r in rows if r["method"] == "fvt"],
                 "ours, best": [r for r in rows if not r["method"].startswith("peer:") and r["method"] != "fvt"],
                 "best peer": [r for r in rows if r["method"].startswith("peer:")]}
        for k, cand in picks.items():
            best = min(cand, key=lambda r: r["bpb"], default=None)
            series[k].append(best["bpb"] / base[t] if best else None)
            labels[k].append(best["method"].removeprefix("peer:") if best else "")
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.27
    for j, (k, vals) in enumerate(series.items()):
        xs = [i + (j - 1) * width for i in range(len(tasks))]
        bars = ax.bar([x for x, v in zip(xs, vals) if v], [v for v in vals if v], width, label=k)
        for b, name in zip(bars, [n for n, v in zip(labels[k], vals) if v]):
            ax.text(b.get_x() + b.get_width() / 2, b.get_height() + 0.01, name, ha="center", va="bottom",
                    fontsize=6, rotation=90)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel("BPB ratio to the original model")
    ax.set_ylim(0.9, max(v for vals in series.values() for v in vals if v) + 0.35)
    ax.set_title("Transplant quality per task (lower is better; report part of the dev text)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", nargs="+", default=ALL_TASKS, choices=ALL_TASKS)
    ap.add_argument("--methods", nargs="+", default=["original", "fvt", "fvt+cal"])
    ap.add_argument("--eval-bytes", type=int, default=20_000)
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--table", action="store_true", help="print the table of the results so far and stop")
    ap.add_argument("--plot", action="store_true", help="draw results/harness.png from the results so far and stop")
    ap.add_argument("--keep-times", action="store_true",
                    help="keep the wall times and peak RSS already recorded (re-scoring on a busy machine)")
    ap.add_argument("--one", nargs=2, metavar=("TASK", "METHOD"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(*args.one, args.eval_bytes, args.ctx)), flush=True)
        return
    if args.table:
        print(table())
        return
    if args.plot:
        print(plot())
        return
    WORK.mkdir(parents=True, exist_ok=True)
    for task in args.tasks:
        for method in args.methods:
            cmd = [sys.executable, __file__, "--one", task, method, "--eval-bytes", str(args.eval_bytes),
                   "--ctx", str(args.ctx)]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENTRANSPLANT_QUIET": "1"})
            found = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not found:
                err = (proc.stderr.strip().splitlines() or ["?"])[-1]
                print(f"{task} {method}: FAILED ({err})", flush=True)
                continue
            row = json.loads(found[-1][len("RESULT "):])
            row["wall_seconds"] = round(time.perf_counter() - t0, 1)
            save_result(row, keep_times=args.keep_times)
            print(f"{task} {method}: {row['bpb']:.4f} BPB ({row['wall_seconds']} s)", flush=True)
    print(table())


if __name__ == "__main__":
    main()
