"""What a user gets: `transplant run` with no --method (the default, `auto`) against `--method fvt`,
run through the command line exactly as a user would, scored on the task's dev text and on text
of a genre that no network, tokenizer or calibration ever saw.

Tasks:
  de fr es it code  SmolLM2-135M onto a 32k BPE trained by `transplant tokenizer train --like
                    smollm2-135m-instruct` on `<lang>/train.txt` (which records that text, so the
                    default calibrates on it)
  s2g               SmolLM2-135M onto Gemma-3-270M's tokenizer (no recorded text: no calibration)
  g2s               Gemma-3-270M onto SmolLM2's tokenizer (idem)
Texts scored (whole documents up to --eval-bytes, 20 kB as the harness):
  dev      the report part of `<lang>/dev.txt` (en/dev.txt for s2g, g2s; code/dev.txt for code):
           documents of its second half, which no default was chosen on (`paths.dev_parts`)
  dev-tune its leading documents, the slice the defaults were chosen on (kept to show the gap)
  other    user-interface messages of this machine's gettext catalogs in the task's language
           (English: their msgids), or, for code, Python files of installed packages (not the
           standard library the code corpus comes from)

    python benchmarks/default_vs_fvt.py                       # every task
    python benchmarks/default_vs_fvt.py --tasks de g2s        # some; results merge by (task, method)
    python benchmarks/default_vs_fvt.py --table
"""

from __future__ import annotations

import argparse
import gettext
import json
import subprocess
import sys
import time
from pathlib import Path

from paths import CORPORA, HERE, checkout_first, dev_parts

checkout_first()
WORK = HERE / "work" / "default"
RESULTS = HERE / "results" / "default_vs_fvt.json"

LANGS = ("de", "fr", "es", "it", "code")
CROSS = {"s2g": ("smollm2-135m-instruct", "gemma-3-270m"), "g2s": ("gemma-3-270m", "smollm2-135m-instruct")}
TASKS = list(LANGS) + list(CROSS)
METHODS = {"fvt": ["--method", "fvt"], "default": [],
           # the default when the user also has English text to give (the cross-model tasks' targets
           # are model tokenizers, which record no training text)
           "default+text": ["--calibrate-text", str(CORPORA / "en" / "train.txt")]}


def ui_text(lang: str, out: Path) -> Path:
    """Gettext messages of this machine in `lang` (en: the msgids of the German catalogs), one
    catalog per document, every 7th message of at least 40 characters."""
    docs = []
    for mo in sorted(Path(f"/usr/share/locale/{'de' if lang == 'en' else lang}/LC_MESSAGES").glob("*.mo")):
        try:
            with open(mo, "rb") as fh:
                catalog = gettext.GNUTranslations(fh)._catalog
        except (OSError, UnicodeDecodeError):
            continue
        pick = (lambda k, v: k) if lang == "en" else (lambda k, v: v)
        msgs = sorted({" ".join(pick(k, v).split()) for k, v in catalog.items()
                       if k and isinstance(k, str) and isinstance(v, str) and len(pick(k, v)) >= 40})
        if msgs[::7]:
            docs.append("\n".join(msgs[::7]))
    out.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return out


def other_code(out: Path) -> Path:
    """Python files of installed third-party packages (click, yaml, tqdm): code of other authors."""
    import click
    import tqdm
    import yaml

    docs = []
    for pkg in (click, yaml, tqdm):
        for f in sorted(Path(pkg.__file__).parent.glob("*.py")):
            docs.append(f"# ===== file: {pkg.__name__}/{f.name} =====\n" + f.read_text(encoding="utf-8"))
    out.write_text("\n\n".join(docs), encoding="utf-8")
    return out


def setup(task: str) -> dict:
    """model, new tokenizer (trained here when needed) and the texts of a task."""
    WORK.mkdir(parents=True, exist_ok=True)
    if task in LANGS:
        tok = WORK / f"{task}-tok"
        if not (tok / "tokenizer.json").exists():
            subprocess.run(["transplant", "-q", "tokenizer", "train", "--text", str(CORPORA / task / "train.txt"),
                            "--vocab-size", "32000", "--out", str(tok), "--like", "smollm2-135m-instruct"],
                           check=True)
        other = WORK / f"{task}-other.txt"
        if not other.exists():
            other_code(other) if task == "code" else ui_text(task, other)
        return {"model": "smollm2-135m-instruct", "new_tok": str(tok), "dev": CORPORA / task / "dev.txt",
                "other": other}
    from transplant.io.sources import resolve_model

    model, donor = CROSS[task]
    other = WORK / "en-other.txt"
    if not other.exists():
        ui_text("en", other)
    return {"model": model, "new_tok": str(resolve_model(donor)), "dev": CORPORA / "en" / "dev.txt", "other": other}


# `transplant ARGS` that reports its own peak RSS on its last stderr line. VmHWM, not ru_maxrss:
# Linux carries ru_maxrss over fork and exec, so a child of this (large) process would report ours.
_WRAPPED = ("import re, sys\nfrom transplant.cli import main\nsys.argv = ['transplant'] + sys.argv[1:]\n"
            "try:\n    main()\nfinally:\n"
            "    hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
            "    print('PEAK_RSS_KIB', hwm, file=sys.stderr)\n")


def run_cli(args: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB, stderr) of `transplant ARGS` in a child process."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _WRAPPED, *args], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"transplant {' '.join(args)} failed: {(proc.stderr.strip().splitlines() or ['?'])[-2:]}")
    peak = [ln for ln in proc.stderr.splitlines() if ln.startswith("PEAK_RSS_KIB ")]
    return seconds, int(peak[-1].split()[1]) / 1024, proc.stderr


def measure(task: str, method: str, eval_bytes: int) -> dict:
    from transplant.measure.evaluate import evaluate_bpb, take_bytes
    from transplant.io.sources import resolve_model

    s = setup(task)
    parts = dev_parts(s["dev"], eval_bytes)
    texts = {"dev": parts["report"], "dev-tune": parts["tune"],
             "other": take_bytes(Path(s["other"]).read_text(encoding="utf-8"), eval_bytes)}
    row: dict = {"task": task, "method": method}
    if method == "original":
        folder = resolve_model(s["model"])
    else:
        folder = WORK / "out" / f"{task}-{method}"
        seconds, rss, err = run_cli(["run", "--model", s["model"], "--new-tok", s["new_tok"], "--out", str(folder),
                                     "--overwrite", *METHODS[method]])
        row.update(transplant_seconds=round(seconds, 1), peak_rss_mib=round(rss),
                   auto=next((ln for ln in err.splitlines() if ln.startswith("auto:")), None))
    for name, text in texts.items():
        res = evaluate_bpb(folder, [text], ctx=1024)
        row[name] = {"bpb": res.bpb, "bytes_per_token": res.bytes_per_token, "bytes": res.bytes}
    return row


def load() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {"results": []}


def save(row: dict) -> None:
    doc = load()
    doc["results"] = [r for r in doc["results"] if (r["task"], r["method"]) != (row["task"], row["method"])] + [row]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(doc, indent=1) + "\n")


def table() -> str:
    rows = {(r["task"], r["method"]): r for r in load()["results"]}
    lines = ["| task | text | original | `--method fvt` | default | default vs fvt | default / original |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for task in TASKS:
        o, f, d = (rows.get((task, m)) for m in ("original", "fvt", "default"))
        if not (o and f and d):
            continue
        for name, row in (("default", d), ("default + `--calibrate-text en/train.txt`",
                                           rows.get((task, "default+text")))):
            if row is None:
                continue
            for text in ("dev", "dev-tune", "other"):
                if text not in o or text not in f or text not in row:
                    continue
                ob, fb, db = o[text]["bpb"], f[text]["bpb"], row[text]["bpb"]
                label = text if name == "default" else f"{text}, {name}"
                lines.append(f"| {task} | {label} | {ob:.4f} | {fb:.4f} ({fb / ob:.3f}) | {db:.4f} ({db / ob:.3f}) | "
                             f"{100 * (db / fb - 1):+.1f}% | {db / ob:.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", nargs="+", default=TASKS, choices=TASKS)
    ap.add_argument("--methods", nargs="+", default=["original", "fvt", "default"],
                    choices=["original", *METHODS])
    ap.add_argument("--eval-bytes", type=int, default=20_000)
    ap.add_argument("--table", action="store_true")
    args = ap.parse_args()
    if not args.table:
        for task in args.tasks:
            for method in args.methods:
                row = measure(task, method, args.eval_bytes)
                save(row)
                print(f"{task} {method}: dev {row['dev']['bpb']:.4f}, dev-tune {row['dev-tune']['bpb']:.4f}, other {row['other']['bpb']:.4f}"
                      + (f" ({row['transplant_seconds']} s) {row.get('auto') or ''}" if method != "original" else ""),
                      flush=True)
    print(table())


if __name__ == "__main__":
    main()
