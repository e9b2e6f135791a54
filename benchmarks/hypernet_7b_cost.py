"""What a step of the 7B-class hypernetwork recipe costs: measured here at the recipe's widths,
counted in floating-point operations, and the arithmetic for a full 7B model on GPUs.

The network is `hypernet/recipes/7b-class.yaml`'s (three transformer layers at the model's width,
4,096: 0.67 G parameters); the frozen model is the 4-layer synthetic checkpoint of Mistral-7B
widths (`make_synthetic_checkpoint.py`, bf16). Batches are cut down so a step finishes on two CPU
cores (`--stage1-batch`, `--negatives`, `--aux-batch`, `--batch-size`); each step's work is
counted from its log (`predicted` rows, `pieces` read, `tokens` through the body), so the
achieved FLOP rate of each stage is measured, and the recipe's full-size step is counted the
same way. Peak RSS comes from `/usr/bin/time -v`.

Counting (multiply-adds x 2):
  network   2 x (params) per piece position forward, x 3 with its backward (weights trained)
  body      2 x (body params) per token forward, x 2 with the backward to its inputs only (frozen);
            the head: 2 x vocab x width per token, x 2

Results: `benchmarks/results/hypernet_7b_cost.json` and a summary on stdout.

Usage:
    python benchmarks/hypernet_7b_cost.py --model benchmarks/work/synth-7b-widths
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from paths import CORPORA, HERE, ROOT, checkout_first

checkout_first()

from streaming import git_state  # noqa: E402


def network_params(width: int, dim: int, layers: int) -> int:
    """The hypernetwork's parameters (hypernet.source.expected_peak's count): `layers` pre-norm
    blocks at `width` (attention 4 w^2, MLP 8 w^2) and the projections from and to the model's width."""
    return layers * 12 * width * width + 4 * dim * width


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=HERE / "work" / "synth-7b-widths")
    ap.add_argument("--texts", nargs="+", type=Path, default=[CORPORA / "de" / "train.txt", CORPORA / "code" / "train.txt"])
    ap.add_argument("--stage1-steps", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--stage1-batch", type=int, default=64)
    ap.add_argument("--negatives", type=int, default=64)
    ap.add_argument("--aux-batch", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--train-chars", type=int, default=200_000)
    ap.add_argument("--results", type=Path, default=HERE / "results" / "hypernet_7b_cost.json")
    args = ap.parse_args()

    config = json.loads((args.model / "config.json").read_text())
    dim, layers_body, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    inner = config["intermediate_size"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    layer_params = dim * dim * 2 + 2 * dim * (dim * kv // heads) + 3 * dim * inner
    recipe_layers = 3
    net = network_params(dim, dim, recipe_layers)

    work = Path(tempfile.mkdtemp(prefix="hn7b-"))
    out = work / "hn"
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "hypernet.cli", "--quiet", "train", "--model", str(args.model),
           *[a for t in args.texts for a in ("--text", str(t))], "--out", str(out), "--width", "0",
           "--layers", str(recipe_layers), "--stage1-steps", str(args.stage1_steps), "--steps", str(args.steps),
           "--stage1-batch", str(args.stage1_batch), "--negatives", str(args.negatives),
           "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len), "--checkpoint-every", "1000"]
    # aux_batch and train_chars have no flag: a recipe carries them.
    recipe = work / "r.yaml"
    recipe.write_text(f"aux_batch: {args.aux_batch}\ntrain_chars: {args.train_chars}\n")
    cmd += ["--recipe", str(recipe)]
    print("uptime:", os.popen("uptime").read().strip(), flush=True)
    # A registry of its own: `hypernet train` registers what it trains, and this 4-step network
    # would then be `auto`'s choice for the synthetic checkpoint in every later benchmark.
    env = {**os.environ, "TOKENTRANSPLANT_HOME": str(work / "home")}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    peak_kb = int(next(line.split(":")[1] for line in proc.stderr.splitlines() if "Maximum resident" in line))
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    s1 = [r for r in log if r.get("stage") == 1 and "loss" in r]
    s2 = [r for r in log if r.get("stage") == 2]
    shutil.rmtree(work, ignore_errors=True)

    def per_step(rows: list[dict]) -> list[float]:
        secs = [r["seconds"] for r in rows]
        return [b - a for a, b in zip([0.0] + secs, secs)]

    # Stage 1: every target is read from its pieces; the pieces per row are not logged there, so
    # stage 2's aux rows (the same kind of rows) give the mean.
    s2_pieces_per_row = sum(r["pieces"] for r in s2) / max(1, sum(r["predicted"] for r in s2))
    s1_flops = 6 * net * args.stage1_batch * s2_pieces_per_row
    rows = []
    for r, sec in zip(s2, per_step(s2)):
        body = 4 * (layers_body * layer_params + vocab * dim) * r["tokens"]
        network = 6 * net * r["pieces"]
        rows.append({"seconds": sec, "tokens": r["tokens"], "predicted": r["predicted"], "pieces": r["pieces"],
                     "body_tflop": body / 1e12, "network_tflop": network / 1e12})
    doc = {"model": str(args.model), "git": git_state(), "machine": {"cpus": os.cpu_count()},
           "settings": vars(args) | {"model": str(args.model), "texts": [str(t) for t in args.texts],
                                     "results": str(args.results)},
           "network_params": net, "body_layer_params": layer_params, "peak_rss_gb": peak_kb * 1024 / 1e9,
           "stage1": {"seconds_per_step": per_step(s1), "tflop_per_step": s1_flops / 1e12,
                      "pieces_per_row": s2_pieces_per_row},
           "stage2": rows}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
