"""How the hypernetwork's transplant quality moves with training, and its training curves.

For each saved checkpoint of a `hypernet train` run (copied aside while it trained, since a run
keeps only its last two), export the network, transplant SmolLM2-135M onto a harness task's
tokenizer with it, and score bits per byte on the task's dev text and on text of another genre
(the verse-aligned Bible, for the languages that have it). Writes
`benchmarks/results/hypernet_curve.json` and two PNGs in `benchmarks/results/`.

    python benchmarks/hypernet_curve.py --run benchmarks/work/hn-smollm2 \\
        --snapshots benchmarks/work/hn-snapshots --task es --steps 0 450 700 1000
    python benchmarks/hypernet_curve.py --run benchmarks/work/hn-smollm2 --plot-only
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from paths import HERE, checkout_first

checkout_first()
RESULTS = HERE / "results" / "hypernet_curve.json"
OTHER_GENRE = {"es": "bible/es.txt", "en": "bible/en.txt"}


def network_at(run: Path, snapshots: Path, step: int, work: Path) -> Path:
    """The network as it was after `step` steps (0: untrained, i.e. FVT)."""
    import torch

    from hypernet import HyperNet
    from hypernet.training import export_checkpoint, load_source

    out = work / f"net-{step:06d}"
    if out.exists():
        return out
    if step == 0:
        base = HyperNet.load(run)
        _, E_in, E_out, _ = load_source(base.config.base_model)
        torch.manual_seed(0)
        shape = {k: getattr(base.config, k) for k in ("width", "layers", "heads", "ffn_mult", "max_pieces")}
        return HyperNet.create(E_in, E_out, base_model=base.config.base_model, **shape).save(out)
    return export_checkpoint(snapshots / f"step-{step:06d}", out, run)


def score(task: str, net: Path, eval_bytes: int, work: Path) -> dict:
    from harness import CORPORA, task_setup

    from transplant import transplant
    from transplant.measure.evaluate import evaluate_bpb, take_bytes

    setup = task_setup(task)
    out = work / f"model-{task}-{net.name}"
    transplant(setup["model"], setup["new_tok"], out, method="hypernet", options={"hypernet.path": str(net)},
               overwrite=True)
    texts = {"dev": Path(setup["dev"])}
    if setup["lang"] in OTHER_GENRE:
        texts["other_genre"] = CORPORA / OTHER_GENRE[setup["lang"]]
    row = {}
    for name, path in texts.items():
        raw = path.read_text(encoding="utf-8")
        if name == "other_genre":  # one verse per line, no blank lines: whole lines up to the budget
            raw = raw[:raw.rfind("\n", 0, eval_bytes) + 1]
        text = take_bytes(raw, eval_bytes)
        row[name] = round(evaluate_bpb(out, [text], ctx=1024).bpb, 4)
    return row


def plot(run: Path, doc: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    held = [(r["step"], r["held_out"]) for r in log if "held_out" in r]
    s2 = [(r["step"], r["lm_loss"]) for r in log if r.get("stage") == 2]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    axes[0].plot(*zip(*held), marker=".")
    axes[0].set(title="stage 1: held-out row error (standardized MSE)", xlabel="step")
    if s2:
        steps, losses = zip(*s2)
        k = 25
        smooth = [sum(losses[max(0, i - k + 1):i + 1]) / len(losses[max(0, i - k + 1):i + 1]) for i in range(len(losses))]
        axes[1].plot(steps, losses, alpha=0.25, label="per step")
        axes[1].plot(steps, smooth, label=f"mean of {k}")
        axes[1].set(title="stage 2: LM loss under sampled tokenizers", xlabel="step")
        axes[1].legend()
    fig.tight_layout()
    fig.savefig(HERE / "results" / "hypernet_training.png", dpi=110)
    rows = doc.get("rows", [])
    if rows:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for task in sorted({r["task"] for r in rows}):
            for text in ("dev", "other_genre"):
                pts = sorted((r["step"], r[text]) for r in rows if r["task"] == task and text in r)
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=f"{task} {text}")
        ax.set(title="transplant BPB vs hypernetwork training step (step 0 = FVT)", xlabel="step", ylabel="bits per byte")
        ax.legend()
        fig.tight_layout()
        fig.savefig(HERE / "results" / "hypernet_bpb_vs_steps.png", dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--snapshots", type=Path)
    ap.add_argument("--task", nargs="+", default=["es"])
    ap.add_argument("--steps", type=int, nargs="+", default=[])
    ap.add_argument("--eval-bytes", type=int, default=20_000)
    ap.add_argument("--plot-only", action="store_true")
    args = ap.parse_args()
    doc = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"rows": []}
    if not args.plot_only:
        work = HERE / "work" / "hypernet-curve"
        work.mkdir(parents=True, exist_ok=True)
        for step in args.steps:
            net = network_at(args.run, args.snapshots, step, work)
            for task in args.task:
                row = {"task": task, "step": step, **score(task, net, args.eval_bytes, work)}
                print(json.dumps(row), flush=True)
                doc["rows"] = [r for r in doc["rows"] if (r["task"], r["step"]) != (task, step)] + [row]
                RESULTS.write_text(json.dumps(doc, indent=1) + "\n")
    plot(args.run, doc)


if __name__ == "__main__":
    main()
