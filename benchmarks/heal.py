"""Healing benchmark: SmolLM2-135M's German FVT transplant, healed on de/train.txt (Debian
handbook) for 5, 15 and 60 minutes of wall time (one run, resumed with a larger budget each
time), scored on de/dev.txt (Debian reference) and on text of other genres:

  de-ui   German user-interface messages: the msgstr strings of the German gettext catalogs
          installed on this machine (/usr/share/locale/de/LC_MESSAGES/*.mo: coreutils, apt, git,
          bash, glib, ...), every 7th message of 40+ characters, one catalog per document.
          Terse software messages with placeholders, not book prose.
  en      English prose (en/dev.txt), which the German tokenizer also has to carry.

Every text is the leading 20 kB of whole documents (as the harness scores; for de-dev the tune
part of `paths.dev_parts`), and de-dev-report is the report part of de/dev.txt (documents of its
second half). Results land in benchmarks/results/heal.json; `--table` prints them.

--start picks the model that is healed: `fvt` (`--method fvt`), or `default`, what
`transplant run` gives with no --method (the shipped SmolLM2 network, calibrated on
de/train.txt, the healing text), or `extend`: SmolLM2's own tokenizer extended by 4,000 German
tokens learned on de/train.txt (`transplant extend`, default method: the shipped network's rows
for the new tokens, calibrated on that text).

    python benchmarks/heal.py --phases 5 15 60
    python benchmarks/heal.py --start default --tag heal-default --phases 15 60
    python benchmarks/heal.py --start extend --tag heal-extend --phases 15
    python benchmarks/heal.py --table
"""

from __future__ import annotations

import argparse
import gettext
import json
import time
from pathlib import Path

from paths import CORPORA, HERE, checkout_first, dev_parts

checkout_first()
WORK = HERE / "work" / "heal"
RESULTS = HERE / "results" / "heal.json"
BASE = "smollm2-135m-instruct"
EVAL_BYTES = 20_000
EXTEND_TOKENS = 4000


def ui_messages(out: Path) -> Path:
    """German gettext messages as a text file (one catalog per document)."""
    docs = []
    for mo in sorted(Path("/usr/share/locale/de/LC_MESSAGES").glob("*.mo")):
        try:
            with open(mo, "rb") as fh:
                catalog = gettext.GNUTranslations(fh)._catalog
        except (OSError, UnicodeDecodeError):
            continue
        msgs = sorted({" ".join(v.split()) for k, v in catalog.items() if k and isinstance(v, str) and len(v) >= 40})
        if msgs[::7]:
            docs.append("\n".join(msgs[::7]))
    out.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return out


def eval_texts() -> dict[str, str]:
    from transplant.measure.evaluate import take_bytes

    WORK.mkdir(parents=True, exist_ok=True)
    ui = WORK / "de-ui.txt"
    if not ui.exists():
        ui_messages(ui)
    files = {"de-dev": CORPORA / "de" / "dev.txt", "de-ui": ui, "en-dev": CORPORA / "en" / "dev.txt"}
    texts = {name: take_bytes(path.read_text(encoding="utf-8"), EVAL_BYTES) for name, path in files.items()}
    texts["de-dev-report"] = dev_parts(CORPORA / "de" / "dev.txt", EVAL_BYTES)["report"]
    return texts


def transplanted(start: str = "fvt") -> Path:
    """The German model that is healed: the transplant by `fvt`, or by the default method (`auto`)
    calibrated on the healing text, or SmolLM2 extended by 4,000 German tokens learned on the
    healing text (`transplant extend`, its default method)."""
    from transplant import transplant

    out = WORK / f"de-{start}"
    if not (out / "config.json").exists():
        if start == "extend":
            from transplant.extend import extend

            extend(BASE, [CORPORA / "de" / "train.txt"], EXTEND_TOKENS, out)
        elif start == "fvt":
            transplant(BASE, HERE / "work" / "harness" / "de-bpe", out, method="fvt")
        else:
            transplant(BASE, HERE / "work" / "harness" / "de-bpe", out,
                       calibrate_texts=[(CORPORA / "de" / "train.txt").read_text(encoding="utf-8")])
    return out


def score(name: str, folder, texts: dict[str, str], results: dict) -> None:
    from transplant.measure.evaluate import evaluate_bpb

    row = results.setdefault(name, {})
    for text_name, text in texts.items():
        if text_name in row:
            continue
        r = evaluate_bpb(folder, [text])
        row[text_name] = {"bpb": round(r.bpb, 4), "bytes_per_token": round(r.bytes_per_token, 3)}
        print(f"{name:>12} {text_name:>7} {r.bpb:.4f}", flush=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--phases", type=float, nargs="*", default=[5, 15, 60], help="cumulative minutes")
    ap.add_argument("--table", action="store_true")
    ap.add_argument("--tag", default="heal", help="name of the run (its settings below)")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--lm-weight", type=float, default=None)
    ap.add_argument("--anchor-weight", type=float, default=None)
    ap.add_argument("--patience", type=int, default=None)
    ap.add_argument("--start", choices=["fvt", "default", "extend"], default="fvt",
                    help="the model that is healed")
    args = ap.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if args.table:
        print_table(results)
        return
    from transplant.train.heal import HealConfig, heal

    texts = eval_texts()
    model = transplanted(args.start)
    score("original", BASE, texts, results)  # only the texts not scored yet
    score(args.start, model, texts, results)
    settings = {k: v for k, v in {"lr": args.lr, "lm_weight": args.lm_weight, "anchor_weight": args.anchor_weight,
                                  "patience": args.patience}.items() if v is not None}
    run = WORK / f"{args.tag}-run"
    for minutes in args.phases:
        name = f"{args.tag}-{minutes:g}min"
        out = WORK / name
        started = time.perf_counter()
        res = heal(HealConfig(model=str(model), texts=[str(CORPORA / "de" / "train.txt")], out=str(out),
                              run=str(run), minutes=minutes, resume=run.exists(), overwrite=True, **settings))
        results.setdefault(name, {})["heal"] = {
            "minutes": minutes, "steps": res.summary["step"], "best_step": res.summary["best_step"],
            "held_out_start": round(res.summary["start_bpb"], 4), "held_out_best": round(res.summary["best_bpb"], 4),
            "held_out_teacher": round(res.summary["teacher_bpb"], 4), "rows": res.summary["rows_trained"],
            "settings": settings, "start": args.start, "wall_s": round(time.perf_counter() - started, 1)}
        score(name, out, texts, results)
    print_table(results)


def print_table(results: dict) -> None:
    orig = results.get("original", {})
    names = [n for n in results if n != "original"]
    cols = ["de-dev", "de-dev-report", "de-ui", "en-dev"]
    print("| model | steps | " + " | ".join(f"{c} BPB (ratio)" for c in cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    print("| original | | " + " | ".join(f"{orig[c]['bpb']:.4f}" if c in orig else "" for c in cols) + " |")
    for n in names:
        row = results[n]
        steps = row.get("heal", {}).get("steps", "")
        cells = [f"{row[c]['bpb']:.4f} ({row[c]['bpb'] / orig[c]['bpb']:.3f})" if c in row and c in orig else ""
                 for c in cols]
        print(f"| {n} | {steps} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
