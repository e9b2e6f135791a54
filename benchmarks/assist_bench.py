"""SmolLM2-135M as a draft for Gemma-3-270M: moved onto Gemma's tokenizer by a transplant, against
transformers' universal assisted generation with the original SmolLM2, and against no draft.

Every configuration runs `transplant eval --model DRAFT --assist gemma-3-270m` (greedy assisted
generation, prompts = the first --prompt-tokens Gemma tokens of the report part's documents of
en/dev.txt, `paths.dev_parts`), each in its own process; acceptance rates and tokens per target
pass do not depend on the machine's load, wall times do (the JSON records the load average).

  universal            draft = the original SmolLM2 on its own tokenizer (transformers re-tokenizes)
  default              draft = SmolLM2 moved onto Gemma's tokenizer by `transplant run` (no --method)
  default+cal          the same with --calibrate-text en/train.txt (the made rows' output scale fitted
                       on English text of the kind the draft will see; the default cannot calibrate
                       here: Gemma's tokenizer records no training text)
  fvt                  draft = the same with --method fvt
  default+heal         draft = `default` healed for --heal-minutes on en/train.txt, distilled from
                       SmolLM2 (the model it was moved from: `heal`'s default teacher)
  default+heal-target  the same, distilled from the target, Gemma-3-270M (`heal --teacher`)

and each under draft settings (`--settings`):

  defaults  the draft's generation config as written (transformers' 20 tokens, confidence 0.4,
            moved as it goes on a same-tokenizer draft): the plain `generate(assistant_model=)`
  k1        one draft token per pass, no confidence stop: acceptance = greedy agreement
  k3        three draft tokens per pass, no confidence stop

    python benchmarks/assist_bench.py                       # every configuration, default settings
    python benchmarks/assist_bench.py --configs universal fvt --settings k1 k3
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
CONFIGS = ["universal", "default", "default+cal", "fvt", "default+heal", "default+heal-target"]
SETTINGS = {"defaults": [], "k1": ["--draft-tokens", "1", "--draft-schedule", "constant", "--draft-confidence", "0"],
            "k3": ["--draft-tokens", "3", "--draft-schedule", "constant", "--draft-confidence", "0"]}


def key(config: str, setting: str) -> str:
    """A result's name in assist.json (the plain config name under the defaults)."""
    return config if setting == "defaults" else f"{config}@{setting}"


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
    if config.startswith("default+heal"):
        base = draft_for("default", heal_minutes)
        teacher = TARGET if config.endswith("-target") else DRAFT
        transplant_cli("heal", "--model", base, "--teacher", teacher, "--text", str(CORPORA / "en" / "train.txt"),
                       "--out", str(out), "--minutes", str(heal_minutes), "--overwrite")
        return str(out)
    method = {"default": [], "default+cal": ["--calibrate-text", str(CORPORA / "en" / "train.txt")]}.get(
        config, ["--method", config])
    transplant_cli("run", "--model", DRAFT, "--new-tok", str(resolve_model(TARGET)), "--out", str(out), "--overwrite",
                   *method)
    return str(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", nargs="+", default=CONFIGS, choices=CONFIGS)
    ap.add_argument("--settings", nargs="+", default=["defaults"], choices=list(SETTINGS))
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
            for setting in args.settings:
                row = measure(draft, text, args, SETTINGS[setting])
                row.update(config=config, settings=setting)
                if config.startswith("default+heal"):
                    row["heal_minutes"] = args.heal_minutes
                doc["results"][key(config, setting)] = row
                RESULTS.parent.mkdir(parents=True, exist_ok=True)
                RESULTS.write_text(json.dumps(doc, indent=1) + "\n")
                a = row["assist"]
                print(f"{key(config, setting)}: acceptance {a['acceptance_rate']:.3f}, {a['tokens_per_step']:.2f} "
                      f"tokens per target pass, x{a['speedup']:.2f}, identical {a['identical']}/{a['prompts']}",
                      flush=True)
    print(table(doc))


def measure(draft: str, text, args, flags: list[str]) -> dict:
    """One `transplant eval --assist` run in its own process, as its JSON (plus the load average)."""
    load = os.getloadavg()[0]
    proc = subprocess.run([sys.executable, "-m", "transplant.cli", "-q", "eval", "--model", draft, "--assist", TARGET,
                           "--text", str(text), "--max-bytes", "0", "--prompts", str(args.prompts), "--prompt-tokens",
                           str(args.prompt_tokens), "--new-tokens", str(args.new_tokens), *flags, "--json"],
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{draft}: {proc.stderr.strip().splitlines()[-1:]}")
    row = json.loads(proc.stdout[proc.stdout.index("{"):])
    row.update(load_before=round(load, 2), load_after=round(os.getloadavg()[0], 2))
    return row


def table(doc: dict) -> str:
    lines = ["| draft for Gemma-3-270M | draft settings | acceptance rate | proposed per target pass | "
             "tokens per target pass | wall s assisted | wall s target alone | speedup | identical outputs |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    names = {"universal": "SmolLM2, own tokenizer (universal assisted generation)",
             "default": "SmolLM2 on Gemma's tokenizer, default method",
             "default+cal": "SmolLM2 on Gemma's tokenizer, default method calibrated on English",
             "fvt": "SmolLM2 on Gemma's tokenizer, fvt",
             "default+heal": "default + heal (teacher SmolLM2)",
             "default+heal-target": "default + heal (teacher Gemma-3-270M)"}
    for setting in SETTINGS:
        for config in CONFIGS:
            row = doc["results"].get(key(config, setting))
            if not row:
                continue
            a = row["assist"]
            name = names[config] + (f", {row['heal_minutes']:g} min" if "heal_minutes" in row else "")
            lines.append(f"| {name} | {setting} | {a['acceptance_rate']:.3f} ({a['accepted']}/{a['proposed']}) | "
                         f"{a['proposed'] / max(1, a['steps']):.2f} | {a['tokens_per_step']:.2f} | "
                         f"{a['seconds_assisted']:.1f} | {a['seconds_target']:.1f} | x{a['speedup']:.2f} | "
                         f"{a['identical']}/{a['prompts']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
