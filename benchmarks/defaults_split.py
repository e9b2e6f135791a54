"""Were the defaults tuned to the slice they were reported on? Each default against the settings it
was chosen over, scored on both parts of the dev text (`paths.dev_parts`): "tune", the leading
documents every default was chosen on, and "report", documents of the second half no choice
looked at. A default that is still the best (or within noise) on "report" was not overfitted.

Defaults checked (each variant is one transplant in its own process, scored on both parts):
  word_start   auxspace.WORD_START, the word-start coordinate of the text spaces (tokenadapt, de)
  tokenadapt   local temperature, global k, minimum similarity, local weight (de)
  focus        focus.temperature (de; fastText vectors trained on de/train.txt, cached)
  omp          omp.max_norm: median / atoms / none (s2g: SmolLM2 onto Gemma's tokenizer)
  knn_space, tokenadapt_space   the space neighbours are found in: the English sentence encoder
               (minilm) or the model's own input embeddings (de)
  roles        sequence roles before chat roles when a token has both (g2s: Gemma onto SmolLM2's
               tokenizer, where `<|im_start|>` is both SmolLM2's bos and its turn marker)

    python benchmarks/defaults_split.py                      # every group (about 40 min on 2 cores)
    python benchmarks/defaults_split.py --groups focus roles
    python benchmarks/defaults_split.py --table
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from paths import HERE, checkout_first, dev_parts

checkout_first()
RESULTS = HERE / "results" / "defaults_split.json"

# group -> (task, method, [(variant, options, patch)]); the first variant is the shipped default.
GROUPS: dict[str, tuple[str, str, list[tuple[str, dict, str | None]]]] = {
    "word_start": ("de", "tokenadapt", [
        ("WORD_START 0.2 (default)", {}, None),
        ("WORD_START 0", {}, "word_start=0.0"),
        ("WORD_START 0.1", {}, "word_start=0.1"),
        ("WORD_START 0.3", {}, "word_start=0.3")]),
    "tokenadapt": ("de", "tokenadapt", [
        ("defaults (T 0.3, k 3, sim 0.6, weight 0.7)", {}, None),
        ("local_temperature 0.1", {"tokenadapt.local_temperature": 0.1}, None),
        ("local_temperature 1.0", {"tokenadapt.local_temperature": 1.0}, None),
        ("global_k 10", {"tokenadapt.global_k": 10}, None),
        ("min_similarity 0.4", {"tokenadapt.min_similarity": 0.4}, None),
        ("local_weight 0.5", {"tokenadapt.local_weight": 0.5}, None),
        ("local_weight 1.0", {"tokenadapt.local_weight": 1.0}, None)]),
    "focus": ("de", "focus", [
        ("temperature 0.1 (default)", {}, None),
        ("temperature 0.05", {"focus.temperature": 0.05}, None),
        ("temperature 0.3", {"focus.temperature": 0.3}, None),
        ("temperature 1.0 (the paper's)", {"focus.temperature": 1.0}, None)]),
    "omp": ("s2g", "omp", [
        ("max_norm median (default)", {}, None),
        ("max_norm atoms", {"omp.max_norm": "atoms"}, None),
        ("max_norm none", {"omp.max_norm": "none"}, None)]),
    "knn_space": ("de", "knn", [
        ("space minilm (default)", {}, None),
        ("space model", {"knn.space": "model"}, None)]),
    "tokenadapt_space": ("de", "tokenadapt", [
        ("space minilm (default)", {}, None),
        ("space model", {"tokenadapt.space": "model"}, None)]),
    "roles": ("g2s", "fvt", [
        ("sequence roles first (default)", {}, None),
        ("chat roles first", {}, "chat_roles_first")]),
}


def apply_patch(patch: str | None) -> None:
    """Swap a module-level rule for the variant (in this child process only)."""
    if patch is None:
        return
    if patch.startswith("word_start="):
        from transplant.methods import auxspace

        auxspace.WORD_START = float(patch.split("=", 1)[1])
    elif patch == "chat_roles_first":
        from transplant.core import vocab

        plain = vocab.Vocabulary.roles_of

        def chat_first(self, idx: int) -> list[str]:
            roles = plain(self, idx)
            chat = [r for r in roles if r in ("turn_start", "turn_end")]
            return chat + [r for r in roles if r not in chat]

        vocab.Vocabulary.roles_of = chat_first
    else:
        raise SystemExit(f"unknown patch {patch}")


def run_one(group: str, index: int, eval_bytes: int) -> dict:
    import shutil

    from harness import WORK, method_kwargs, task_setup

    from transplant import transplant
    from transplant.measure.evaluate import evaluate_bpb

    task, method, variants = GROUPS[group]
    name, options, patch = variants[index]
    apply_patch(patch)
    setup = task_setup(task)
    kwargs = method_kwargs(method, setup)
    kwargs["options"] = {**kwargs.get("options", {}), **options}
    out = WORK / "out" / f"defaults-{group}-{index}"
    transplant(setup["model"], setup["new_tok"], out, overwrite=True, **kwargs)
    row = {"group": group, "variant": name, "task": task, "method": method, "options": options, "patch": patch}
    for part, text in dev_parts(setup["dev"], eval_bytes).items():
        res = evaluate_bpb(out, [text], ctx=1024)
        row[part] = {"bpb": res.bpb, "bytes": res.bytes}
    shutil.rmtree(out, ignore_errors=True)
    return row


def load() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {"results": []}


def save(row: dict) -> None:
    doc = load()
    doc["results"] = [r for r in doc["results"] if (r["group"], r["variant"]) != (row["group"], row["variant"])]
    doc["results"].append(row)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(doc, indent=1) + "\n")


def table() -> str:
    rows = {(r["group"], r["variant"]): r for r in load()["results"]}
    lines = ["| default | task | variant | BPB tune | rank | BPB report | rank |", "|---|---|---|---:|---:|---:|---:|"]
    for group, (task, _, variants) in GROUPS.items():
        got = [rows[(group, v[0])] for v in variants if (group, v[0]) in rows]
        if not got:
            continue
        rank = {part: {r["variant"]: 1 + sorted(x[part]["bpb"] for x in got).index(r[part]["bpb"]) for r in got}
                for part in ("tune", "report")}
        for r in got:
            lines.append(f"| {group} | {task} | {r['variant']} | {r['tune']['bpb']:.4f} | {rank['tune'][r['variant']]} | "
                         f"{r['report']['bpb']:.4f} | {rank['report'][r['variant']]} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--groups", nargs="+", default=list(GROUPS), choices=list(GROUPS))
    ap.add_argument("--eval-bytes", type=int, default=20_000)
    ap.add_argument("--table", action="store_true")
    ap.add_argument("--one", nargs=2, metavar=("GROUP", "INDEX"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one[0], int(args.one[1]), args.eval_bytes)), flush=True)
        return
    if not args.table:
        for group in args.groups:
            for index, (name, _, _) in enumerate(GROUPS[group][2]):
                t0 = time.perf_counter()
                proc = subprocess.run([sys.executable, __file__, "--one", group, str(index), "--eval-bytes",
                                       str(args.eval_bytes)], capture_output=True, text=True,
                                      env={**os.environ, "TOKENTRANSPLANT_QUIET": "1"})
                found = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                if proc.returncode or not found:
                    print(f"{group} {name}: FAILED ({(proc.stderr.strip().splitlines() or ['?'])[-1]})", flush=True)
                    continue
                row = json.loads(found[-1][len("RESULT "):])
                save(row)
                print(f"{group} {name}: tune {row['tune']['bpb']:.4f}, report {row['report']['bpb']:.4f} "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
    print(table())


if __name__ == "__main__":
    main()
