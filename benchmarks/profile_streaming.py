"""Where `transplant run` spends time and memory on the 7B-width synthetic checkpoint.

Companion to `streaming.py` (which only measures end to end). Three parts:
  1. phases: cProfile of one in-process `transplant.transplant(...)` call; prints the cumulative
     seconds of its main steps (import time measured separately before it);
  2. memory: peak RSS of a `transplant run` child (sampled every 20 ms with psutil from outside)
     with the default chunking of `write_weights` and with fixed `chunk_rows` (set through a
     wrapper, transplant/ is not edited);
  3. kernels: the embedding-application step on the real 49152 x 4096 bf16 matrix and the FVT
     plan: current `EmbeddingStats.of` + `Plan.iter_apply` vs candidate replacements, with how
     many bf16 outputs differ from the current ones.

Results: `benchmarks/results/profile_streaming.json` and markdown on stdout.

Usage:
    python benchmarks/make_synthetic_checkpoint.py   # if benchmarks/work/synth-7b-widths is gone
    python benchmarks/profile_streaming.py
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from paths import HERE, ROOT, checkout_first

checkout_first()

WRAPPER = """
import sys
chunk_rows = sys.argv.pop(1)
import transplant.io.checkpoint as c
if chunk_rows != "default":
    c.write_weights.__defaults__ = (False, int(chunk_rows))
from transplant.cli import main
main()
"""


def git_state() -> dict:
    """HEAD commit and whether transplant/ has uncommitted changes (numbers belong to that code)."""
    import subprocess

    def git(*a):
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {"commit": git("rev-parse", "HEAD"), "transplant_dirty": bool(git("status", "--porcelain", "transplant/"))}


def peak_rss(cmd: list[str]) -> dict:
    import psutil

    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ps, trace = psutil.Process(proc.pid), []
    while proc.poll() is None:
        try:
            trace.append((time.perf_counter() - started, ps.memory_info().rss))
        except psutil.Error:
            break
        time.sleep(0.02)
    if proc.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}")
    t, rss = max(trace, key=lambda x: x[1])
    return {"peak_rss_mib": round(rss / 2**20), "at_s": round(t, 1), "wall_s": round(time.perf_counter() - started, 2)}


def phases(src: Path, tok: Path, out: Path) -> dict:
    import cProfile
    import pstats

    t0 = time.perf_counter()
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from transplant import transplant
    imports = time.perf_counter() - t0
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.runcall(transplant, str(src), str(tok), str(out), method="fvt", overwrite=True)
    total = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    stats = pstats.Stats(prof).stats
    wanted = {
        "locate_embeddings (AutoConfig + meta model build, imports modeling code)": ("checkpoint.py", "locate_embeddings"),
        "  of which importing transformers' modeling_llama": ("modeling_llama.py", "<module>"),
        "  of which AutoConfig.from_pretrained": ("configuration_auto.py", "from_pretrained"),
        "load tokenizers + Vocabulary.from_tokenizer (x2)": ("vocab.py", "vocabulary"),
        "Alignment.build": ("align.py", "build"),
        "build_plan": ("planner.py", "build_plan"),
        "write_weights (all shards)": ("checkpoint.py", "write_weights"),
        "  EmbeddingStats.of (x2 matrices)": ("plan/apply.py", "of"),
        "  Plan.iter_apply (x2 matrices)": ("plan/apply.py", "iter_apply"),
        "  read_embedding (x2)": ("checkpoint.py", "read_embedding"),
        "  copy_or_link untouched shards": ("shardio.py", "copy_or_link"),
        "write_tokenizer": ("tokenizer_out.py", "write_tokenizer"),
        "Plan.save": ("plan/storage.py", "save"),
    }
    out_rows = {"imports (torch, transformers, transplant)": round(imports, 2), "transplant() total": round(total, 2)}
    for label, (fname, func) in wanted.items():
        cum = sum(v[3] for k, v in stats.items() if k[0].endswith(fname) and k[2] == func)
        out_rows[label] = round(cum, 2)
    return out_rows


def kernels(src: Path, plan_dir: Path) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from safetensors import safe_open

    from transplant.core.plan import LINEAR, Plan

    plan = Plan.load(plan_dir)
    index = json.loads((src / "model.safetensors.index.json").read_text())["weight_map"]
    with safe_open(str(src / index["model.embed_tokens.weight"]), "pt") as fh:
        old = fh.get_tensor("model.embed_tokens.weight")

    def timed(fn):
        t0 = time.perf_counter()
        r = fn()
        return r, round(time.perf_counter() - t0, 2)

    res = {"matrix": list(old.shape), "dtype": str(old.dtype), "plan_nnz": int(len(plan.indices)),
           "threads": torch.get_num_threads()}
    stats, res["stats_current_s"] = timed(lambda: plan.stats_of(old))
    mean, res["mean_only_sum_dtype_f32_s"] = timed(lambda: old[:plan.old_size].sum(0, dtype=torch.float32) / plan.old_size)
    res["mean_only_max_abs_diff"] = float((mean - stats.mean).abs().max())
    ref, res["iter_apply_current_s"] = timed(lambda: torch.cat(list(plan.iter_apply(old, stats=stats))))

    def fused(chunk=4096):
        outs = []
        for s in range(0, plan.new_size, chunk):
            e = min(plan.new_size, s + chunk)
            lo, hi = int(plan.indptr[s]), int(plan.indptr[e])
            gathered = old[torch.from_numpy(plan.indices[lo:hi])].float()
            out = F.embedding_bag(torch.arange(hi - lo), gathered, torch.from_numpy(plan.indptr[s:e] - lo),
                                  mode="sum", per_sample_weights=torch.from_numpy(plan.weights[lo:hi]))
            for local in np.nonzero(plan.kinds[s:e] != LINEAR)[0]:
                out[local] = stats.mean
            outs.append(out.to(old.dtype))
        return torch.cat(outs)

    new, res["embedding_bag_f32_s"] = timed(fused)
    res["embedding_bag_f32_bf16_outputs_differing"] = float((new != ref).float().mean())
    res["embedding_bag_f32_max_abs_diff"] = float((new.float() - ref.float()).abs().max())
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, default=HERE / "work" / "synth-7b-widths")
    ap.add_argument("--new-tok", type=Path, default=HERE / "work" / "quality_de" / "de-bpe")
    ap.add_argument("--work", type=Path, default=HERE / "work" / "profile")
    ap.add_argument("--chunk-rows", nargs="+", default=["default", "4096", "1024", "256"])
    ap.add_argument("--results", type=Path, default=HERE / "results" / "profile_streaming.json")
    args = ap.parse_args()
    if not (args.src / "model.safetensors.index.json").exists():
        sys.exit(f"{args.src} missing: run python benchmarks/make_synthetic_checkpoint.py --out {args.src}")
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    out = args.work / "out"

    doc: dict = {"git": git_state(), "phases_s": phases(args.src, args.new_tok, out), "memory": {}}
    for cr in args.chunk_rows:
        shutil.rmtree(out, ignore_errors=True)
        doc["memory"][f"chunk_rows={cr}"] = peak_rss([sys.executable, "-c", WRAPPER, str(cr), "run", "--model",
                                                     str(args.src), "--new-tok", str(args.new_tok), "--out", str(out)])
        print(f"chunk_rows={cr}: {doc['memory'][f'chunk_rows={cr}']}", flush=True)
    doc["kernels"] = kernels(args.src, out)  # the last run's plan
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(doc, indent=2) + "\n")

    print("\n| phase | seconds |\n|---|---|")
    for k, v in doc["phases_s"].items():
        print(f"| {k} | {v} |")
    print("\n| write_weights chunk_rows | peak RSS MiB | wall s |\n|---|---|---|")
    for k, v in doc["memory"].items():
        print(f"| {k.split('=')[1]} | {v['peak_rss_mib']} | {v['wall_s']} |")
    print("\n(kernels: `iter_apply` with its default chunking)")
    print("\n| kernel (one 49152x4096 bf16 matrix) | value |\n|---|---|")
    for k, v in doc["kernels"].items():
        print(f"| {k} | {v} |")
    shutil.rmtree(args.work, ignore_errors=True)
    print(f"\nwrote {args.results}")


if __name__ == "__main__":
    main()
