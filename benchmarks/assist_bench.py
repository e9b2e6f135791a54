"""SmolLM2-135M as a draft for Gemma-3-270M: moved onto Gemma's tokenizer by a transplant, against
transformers' universal assisted generation with the original SmolLM2, and against no draft.

Every configuration runs `transplant eval --model DRAFT --assist gemma-3-270m` (greedy assisted
generation, prompts = the first --prompt-tokens Gemma tokens of the report part's documents of
en/dev.txt, `paths.dev_parts`), each in its own process; acceptance rates and tokens per target
pass do not depend on the machine's load, wall times do (the JSON records the load average).

  universal       draft = the original SmolLM2 on its own tokenizer (transformers re-tokenizes)
  default         draft = SmolLM2 moved onto Gemma's tokenizer by `transplant run` (no --method)
  fvt             draft = the same with --method fvt
  default+heal    draft = `default` healed for --heal-minutes on en/train.txt (distilled from SmolLM2)

    python benchmarks/assist_bench.py                       # every configuration
    python benchmarks/assist_bench.py --configs universal fvt
    python benchmarks/assist_bench.py --table
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from paths import CORPORA, HERE, checkout_first, dev_parts

checkout_first()
WORK = HERE / "work" / "assist"
RESULTS = HERE / "results" / "assist.json"
TARGET = "gemma-3-270m"
DRAFT = "smollm2-135m-instruct"
CONFIGS = ["universal", "default", "fvt", "default+heal"]


def transplant_cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "transplant.cli", "-q", *args], check=True)


def draft_for(config: str, heal_minutes: float) -> str:
    """The draft model of a configuration (made here once, then reused)."""
    from transplant.io.sources import resolve_model

    if config == "universal":
        return DRAFT
    out = WORK / f"smollm2-on-gemma-{config.replace('+', '-')}"
    if (out / "config.json").exists():
        return str(out)
    if config == "default+heal":
        base = draft_for("default", heal_minutes)
        transplant_cli("heal", "--model", base, "--teacher", DRAFT, "--text", str(CORPORA / "en" / "train.txt"),
                       "--out", str(out), "--minutes", str(heal_minutes), "--overwrite")
        return str(out)
    method = [] if config == "default" else ["--method", config]
    transplant_cli("run", "--model", DRAFT, "--new-tok", str(resolve_model(TARGET)), "--out", str(out), "--overwrite",
                   *method)
    return str(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", nargs="+", default=CONFIGS, choices=CONFIGS)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--heal-minutes", type=float, default=10)
    ap.add_argument("--table", action="store_true")
    args = ap.parse_args()
    doc = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"results": {}}
    if not args.table:
        WORK.mkdir(parents=True, exist_ok=True)
        text = WORK / "en-dev-report.txt"
        text.write_text(dev_parts(CORPORA / "en" / "dev.txt", 10**9)["report"], encoding="utf-8")
        for config in args.configs:
            draft = draft_for(config, args.heal_minutes)
            load = os.getloadavg()[0]
            proc = subprocess.run([sys.executable, "-m", "transplant.cli", "-q", "eval", "--model", draft, "--assist",
                                   TARGET, "--text", str(text), "--max-bytes", "0", "--prompts", str(args.prompts),
                                   "--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens),
                                   "--json"], capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"{config}: {proc.stderr.strip().splitlines()[-1:]}")
            row = json.loads(proc.stdout[proc.stdout.index("{"):])
            row.update(config=config, load_before=round(load, 2), load_after=round(os.getloadavg()[0], 2))
            if config == "default+heal":
                row["heal_minutes"] = args.heal_minutes
            doc["results"][config] = row
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(json.dumps(doc, indent=1) + "\n")
            a = row["assist"]
            print(f"{config}: acceptance {a['acceptance_rate']:.3f}, {a['tokens_per_step']:.2f} tokens per target "
                  f"pass, x{a['speedup']:.2f}, identical {a['identical']}/{a['prompts']}", flush=True)
    print(table(doc))


def table(doc: dict) -> str:
    lines = ["| draft for Gemma-3-270M | mode | acceptance rate | tokens per target pass | wall s assisted | "
             "wall s target alone | speedup | identical outputs |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    names = {"universal": "SmolLM2, own tokenizer (universal assisted generation)",
             "default": "SmolLM2 on Gemma's tokenizer, default method", "fvt": "SmolLM2 on Gemma's tokenizer, fvt",
             "default+heal": "SmolLM2 on Gemma's tokenizer, default + heal"}
    for config in CONFIGS:
        row = doc["results"].get(config)
        if not row:
            continue
        a = row["assist"]
        name = names[config] + (f" {row['heal_minutes']:g} min" if "heal_minutes" in row else "")
        lines.append(f"| {name} | {a['mode']} | {a['acceptance_rate']:.3f} ({a['accepted']}/{a['proposed']}) | "
                     f"{a['tokens_per_step']:.2f} | {a['seconds_assisted']:.1f} | {a['seconds_target']:.1f} | "
                     f"x{a['speedup']:.2f} | {a['identical']}/{a['prompts']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
