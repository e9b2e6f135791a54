"""Peer tools on the harness tasks, scored by OUR evaluator, into benchmarks/results/harness.json.

Each peer makes the new embedding rows its own way; the checkpoint is then scored exactly like
`run_one` in benchmarks/harness.py does (both parts of `paths.dev_parts(dev, 20000)`, ctx 1024)
and saved as a row with method `peer:<name>`:

    peer:tokensurgeon-omp64     mergekit-tokensurgeon -a omp -k 64          (tasks g2s, s2g)
    peer:tokensurgeon-subword   mergekit-tokensurgeon -a subword            (tasks g2s, s2g)
    peer:wechsel                wechsel's matrix as shipped                 (language tasks)
    peer:wechsel+exact          the same, rows of exact overlap (and special tokens) copied
                                from the old matrix as our planner's special/exact steps do
    peer:deepfocus              deepfocus.FOCUS's matrix as shipped         (language tasks)

wechsel and deepfocus get the SAME fastText models our `wechsel` and `focus` methods get in the
harness (`train_vectors` on the task's texts, cached by content: the first of either run trains
them, ~4 min each on 2 cores) and the same dictionary (`dictionaries/en-<lang>.tsv`). They return
a matrix only; it is written into a checkpoint made by our `transplant(..., method="mean")`
(right config, tokenizer and special-token ids), whose embedding rows are then all overwritten.
tokensurgeon writes its own checkpoint (body of MODEL, tokenizer of DONOR), scored as it is.
`transplant_seconds` and `peak_rss_mib` are those of the peer's process alone (tokensurgeon:
load, compute, write; wechsel/deepfocus: load vectors, tokenizers, matrix and compute).

    nice python benchmarks/peers.py --peer tokensurgeon --task g2s            # both methods
    nice python benchmarks/peers.py --peer tokensurgeon --task g2s --method omp64
    nice python benchmarks/peers.py --peer wechsel --task de
    nice python benchmarks/peers.py --peer deepfocus --task de

A peer that would run past --timeout (600 s) is stopped; the run is then recorded as a row-less
note in the JSON's "peer_notes" with the progress it made (e.g. "39 s per 512 tokens -> 3.4 h").

Installation (the peers' dependencies conflict with ours, so they live in their own virtualenv
that sees our site-packages; nothing is installed into or upgraded in the main environment):

    python -m venv --system-site-packages /work/peers-venv
    /work/peers-venv/bin/pip install --no-deps mergekit==0.1.5 wechsel==0.0.4 deepfocus==1.0.1 \
        immutables==0.21 peft==0.21.2 nltk==3.10.4 defusedxml==0.7.1 entmax==1.3 \
        print-on-steroids==1.2.3 fastdist==1.1.7 numba==0.68.1 llvmlite==0.50.0

- mergekit needs immutables and peft at import (mergekit/common.py); the rest of its declared
  dependencies (torch, transformers 5, accelerate, safetensors, pydantic, click, scipy, tokenizers,
  huggingface_hub, tqdm) come from the main environment; datasets, sentencepiece and protobuf are
  not imported on the tokensurgeon path.
- wechsel imports nltk (pure Python; + defusedxml), fasttext (our fasttext-numpy2 provides the
  module), scikit-learn and scipy (main environment), and `datasets`/`gensim` at module level.
- deepfocus imports entmax, print-on-steroids (+ rich, main environment), fastdist (which needs
  numba/llvmlite: compiled wheels, but inside the virtualenv only) and `datasets`.
- `datasets` and `gensim` are NOT installed: their code paths (the peers training fastText
  themselves) never run here, so benchmarks/peers/stubs/ supplies importable stubs that raise if
  called; they sit last on the path, so installing the real packages overrides them.

The virtualenv is found at $TOKENTRANSPLANT_PEERS_VENV, else ../peers-venv next to the repository
(or pass --venv); a peer missing there is skipped with a message.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from paths import HERE, checkout_first, dev_parts

checkout_first()
from harness import CORPORA, RESULTS, ROOT, WORK, load_results, save_result, task_setup

GLUE = HERE / "peers"
TOKENSURGEON = {"omp64": ["-a", "omp", "-k", "64"], "subword": ["-a", "subword"]}
PEERS = {
    "tokensurgeon": {"module": "mergekit.scripts.tokensurgeon", "tasks": ("g2s", "s2g"), "methods": list(TOKENSURGEON)},
    "wechsel": {"module": "wechsel", "tasks": ("de", "fr", "es"), "methods": ["wechsel", "wechsel+exact"]},
    "deepfocus": {"module": "deepfocus", "tasks": ("de", "fr", "es", "code"), "methods": ["deepfocus"]},
}
_TQDM = re.compile(r"(\d+)/(\d+) \[([\d:]+)<([\d:?]+),\s*([\d.]+)(s/it|it/s)\]")


def venv_python(venv: str | None) -> Path:
    root = Path(venv or os.environ.get("TOKENTRANSPLANT_PEERS_VENV") or ROOT.parent / "peers-venv")
    return root / "bin" / "python"


def missing(python: Path, peer: str) -> str | None:
    """Why `peer` cannot run from `python` (None when it can)."""
    if not python.exists():
        return f"no peers' virtualenv at {python.parent.parent} (see the install steps in {Path(__file__).name})"
    probe = (f"import sys; sys.path.append({str(GLUE / 'stubs')!r}); import {PEERS[peer]['module']}")
    proc = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=False)
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return f"{peer} is not importable in {python.parent.parent}: {last}"
    return None


def run_child(cmd: list[str], log: Path, timeout: float) -> dict:
    """Run `cmd` niced in its own process group, stderr+stdout to `log`; wall time, peak RSS of the
    process tree (wait4), whether it was stopped at `timeout`, and its RESULT line if any."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(["nice", "-n", "10", *cmd], stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
        stopped = threading.Event()

        load: list[float] = []

        def stop() -> None:
            load.append(os.getloadavg()[0])  # the CPUs are shared: the rate depends on the others' load
            stopped.set()
            os.killpg(proc.pid, signal.SIGTERM)

        timer = threading.Timer(timeout, stop)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text(errors="replace")
    found = [ln for ln in text.splitlines() if ln.startswith("RESULT ")]
    return {"rc": proc.returncode, "seconds": round(time.perf_counter() - t0, 1),
            "peak_rss_mib": round(usage.ru_maxrss / 1024), "timed_out": stopped.is_set(),
            "load": load[0] if load else None,
            "result": json.loads(found[-1][len("RESULT "):]) if found else None, "log": text}


def progress_note(log: str, seconds: float, unit: str) -> str:
    """The last tqdm state in a stopped run's log as a rate and a projection (`unit`: one bar step)."""
    states = _TQDM.findall(log.replace("\r", "\n"))
    if not states:
        return f"stopped at the {seconds:.0f} s limit before any progress bar"
    done, total, elapsed, _, rate, kind = states[-1]
    per_it = float(rate) if kind == "s/it" else 1 / float(rate)
    minutes = per_it * int(total) / 60
    projected = f"{minutes:.1f} min" if minutes < 90 else f"{minutes / 60:.1f} h"
    return (f"stopped at the {seconds:.0f} s limit with {done}/{total} done ({elapsed} after the first began): "
            f"{per_it:.1f} s per {unit} -> {projected} projected for all {total} "
            "(plus loading the models before and writing the checkpoint after)")


def score(folder: Path, setup: dict, eval_bytes: int, ctx: int) -> dict:
    """EvalResult per part of the dev text ("report", "tune"), as the harness scores."""
    from transplant.measure.evaluate import evaluate_bpb

    return {name: evaluate_bpb(folder, [text], ctx=ctx) for name, text in dev_parts(setup["dev"], eval_bytes).items()}


def row_of(task: str, method: str, res: dict, child: dict, notes: str, **extra) -> dict:
    report, tune = res["report"], res["tune"]
    return {"task": task, "method": method, "bpb": report.bpb, "bytes_per_token": report.bytes_per_token,
            "eval_bytes": report.bytes,
            "tune": {"bpb": tune.bpb, "bytes_per_token": tune.bytes_per_token, "eval_bytes": tune.bytes},
            "transplant_seconds": child["seconds"], "peak_rss_mib": child["peak_rss_mib"], "notes": notes, **extra}


def save_note(task: str, method: str, note: str) -> None:
    """A run that produced no score (stopped, failed) is kept in the JSON next to the rows."""
    doc = load_results()
    notes = [n for n in doc.get("peer_notes", []) if (n["task"], n["method"]) != (task, method)]
    doc["peer_notes"] = notes + [{"task": task, "method": method, "note": note}]
    RESULTS.write_text(json.dumps(doc, indent=1) + "\n")


def failed(task: str, method: str, child: dict, what: str) -> None:
    if child["timed_out"]:
        note = progress_note(child["log"], child["seconds"], what)
        note += f"; load average {child['load']:.1f} on {os.cpu_count()} shared cores when stopped"
    else:
        tail = [ln for ln in child["log"].replace("\r", "\n").splitlines() if ln.strip()]
        note = f"failed (exit {child['rc']}): {tail[-1] if tail else '?'}"
    save_note(task, method, note)
    print(f"{task} {method}: {note}", flush=True)


# -- tokensurgeon ------------------------------------------------------------------------------

def run_tokensurgeon(python: Path, task: str, method: str, args) -> None:
    from transplant.io.sources import resolve_model

    setup = task_setup(task)
    name = f"peer:tokensurgeon-{method}"
    out = WORK / "out" / f"{task}-peer-tokensurgeon-{method}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(python.parent / "mergekit-tokensurgeon"), str(resolve_model(setup["model"])),
           str(resolve_model(setup["donor"])), str(out), *TOKENSURGEON[method], "--no-write-model-card"]
    print(f"{task} {name}: {' '.join(cmd)}", flush=True)
    child = run_child(cmd, WORK / "logs" / f"{task}-{name.replace(':', '-')}.log", args.timeout)
    if child["rc"] or child["timed_out"]:
        shutil.rmtree(out, ignore_errors=True)
        return failed(task, name, child, "batch of 512 new tokens")
    res = score(out, setup, args.eval_bytes, args.ctx)
    shutil.rmtree(out, ignore_errors=True)
    notes = (f"mergekit 0.1.5 `mergekit-tokensurgeon MODEL DONOR OUT {' '.join(TOKENSURGEON[method])}` "
             "(other options default); its own checkpoint and the donor's tokenizer, scored as written")
    row = row_of(task, name, res, child, notes)
    save_result(row)
    print(f"{task} {name}: {res.bpb:.4f} BPB ({child['seconds']} s)", flush=True)


# -- wechsel / deepfocus: a matrix written into our checkpoint ---------------------------------

def source_matrix(model: str) -> tuple[Path, str, object]:
    """(folder, input embedding key, layout) of the source model; a tied model is required."""
    from transplant.io.checkpoint import locate_embeddings
    from transplant.io.sources import resolve_model

    folder = resolve_model(model)
    layout = locate_embeddings(folder)
    if layout.output_key:
        raise SystemExit(f"{model} has an untied LM head; the peers here return one matrix (input side only)")
    return folder, layout.input_key, layout


def skeleton(setup: dict, out: Path):
    """A checkpoint on the new tokenizer from our planner (mean rows): config, tokenizer and special
    ids right; its embedding rows are overwritten with the peer's. Returns the plan."""
    from transplant import transplant

    return transplant(setup["model"], setup["new_tok"], out, method="mean", overwrite=True).plan


def overwrite_rows(folder: Path, matrix, rows=None) -> None:
    """Write `matrix` (all rows, or only `rows`) into the input embedding of the checkpoint `folder`."""
    import torch
    from safetensors.torch import load_file, save_file

    from transplant.io.checkpoint import locate_embeddings

    layout = locate_embeddings(folder)
    shard = folder / layout.shard_of[layout.input_key]
    tensors = load_file(str(shard))
    old = tensors[layout.input_key]
    new = torch.as_tensor(matrix, dtype=old.dtype)
    if rows is None:
        if new.shape[0] > old.shape[0] or new.shape[1] != old.shape[1]:
            raise SystemExit(f"peer matrix {tuple(new.shape)} does not fit the checkpoint's {tuple(old.shape)}")
        old[: new.shape[0]] = new
    else:
        old[torch.as_tensor(rows)] = new
    save_file(tensors, str(shard), metadata={"format": "pt"})


def matrix_run(python: Path, peer: str, task: str, args) -> tuple[dict, dict, Path] | None:
    """Run a peer's glue script; returns (setup, child, matrix file) or None when it failed."""
    from transplant.methods.vectors import train_vectors

    setup = task_setup(task)
    folder, key, layout = source_matrix(setup["model"])
    shard = folder / layout.shard_of[key]
    mat = WORK / "out" / f"{task}-peer-{peer}.safetensors"
    common = ["--source-tokenizer", str(folder), "--target-tokenizer", setup["new_tok"], "--shard", str(shard),
              "--key", key, "--out", str(mat)]
    if peer == "wechsel":
        # The same calls as harness.method_kwargs makes for our `wechsel` method (cached by content).
        cmd = [str(python), str(GLUE / "wechsel_rows.py"),
               "--source-vectors", str(train_vectors([CORPORA / "en" / "train.txt"], None)),
               "--target-vectors", str(train_vectors([Path(setup["train"])], None)),
               "--dictionary", str(CORPORA / "dictionaries" / f"en-{setup['lang']}.tsv"), *common]
    else:
        cmd = [str(python), str(GLUE / "focus_rows.py"),
               "--vectors", str(train_vectors([Path(setup["train"])], None, tokenizer=setup["new_tok"])), *common]
    print(f"{task} peer:{peer}: {' '.join(cmd)}", flush=True)
    child = run_child(cmd, WORK / "logs" / f"{task}-peer-{peer}.log", args.timeout)
    if child["rc"] or child["timed_out"] or not mat.exists():
        mat.unlink(missing_ok=True)
        failed(task, f"peer:{peer}", child, "progress-bar step")
        return None
    return setup, child, mat


def run_wechsel(python: Path, task: str, args) -> None:
    from safetensors.numpy import load_file

    from transplant.io.checkpoint import read_embedding

    got = matrix_run(python, "wechsel", task, args)
    if got is None:
        return
    setup, child, mat = got
    matrix = load_file(str(mat))["embeddings"]
    mat.unlink()
    out = WORK / "out" / f"{task}-peer-wechsel"
    plan = skeleton(setup, out)
    overwrite_rows(out, matrix)
    info = child["result"] or {}
    base = (f"wechsel 0.0.4 defaults (subword info, 10 neighbours, T=0.1), same fastText models and "
            f"dictionary as our wechsel; matrix written into our checkpoint; {info.get('not_found', '?')} "
            "tokens without a vector got wechsel's random N(mean, std) rows")
    res = score(out, setup, args.eval_bytes, args.ctx)
    save_result(row_of(task, "peer:wechsel", res, child, base + "; as shipped (no overlap copied)"))
    print(f"{task} peer:wechsel: {res.bpb:.4f} BPB", flush=True)
    # The same matrix with exact overlap and special tokens copied as our planner's first steps do.
    copied = [i for i, source in enumerate(plan.provenance) if source in ("special", "exact")]
    _, key, layout = source_matrix(setup["model"])
    old = read_embedding(layout, key)
    overwrite_rows(out, old[[plan.row(i)[1][0] for i in copied]], rows=copied)
    res = score(out, setup, args.eval_bytes, args.ctx)
    shutil.rmtree(out, ignore_errors=True)
    save_result(row_of(task, "peer:wechsel+exact", res, child,
                       base + f"; then {len(copied)} rows of special tokens and exact overlap copied from the "
                       "old matrix (our planner's special/exact steps)"))
    print(f"{task} peer:wechsel+exact: {res.bpb:.4f} BPB", flush=True)


def run_deepfocus(python: Path, task: str, args) -> None:
    from safetensors.numpy import load_file

    got = matrix_run(python, "deepfocus", task, args)
    if got is None:
        return
    setup, child, mat = got
    matrix = load_file(str(mat))["embeddings"]
    mat.unlink()
    out = WORK / "out" / f"{task}-peer-deepfocus"
    skeleton(setup, out)
    overwrite_rows(out, matrix)
    res = score(out, setup, args.eval_bytes, args.ctx)
    shutil.rmtree(out, ignore_errors=True)
    # FOCUS reports its counts only in its log.
    counts = {name: re.findall(pattern, re.sub(r"\s+", " ", child["log"])) for name, pattern in (
        ("copied", r"Copied embeddings for (\d+) overlapping"), ("random", r"Initialized (\d+) new tokens from N"),
        ("focus", r"Initialized (\d+) new tokens with FOCUS"))}
    copied, random_rows, mixed = (counts[k][-1] if counts[k] else "?" for k in ("copied", "random", "focus"))
    notes = ("deepfocus 1.0.1 FOCUS defaults (exact matches copied, sparsemax, seed 42) with the same token-level "
             "fastText model as our focus (fasttext_model_path); matrix written into our checkpoint; "
             f"{copied} rows copied as overlap, {mixed} made by FOCUS, {random_rows} drawn from N(mean, std) "
             "because the token-level vectors have no vector for them")
    save_result(row_of(task, "peer:deepfocus", res, child, notes))
    print(f"{task} peer:deepfocus: {res.bpb:.4f} BPB", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peer", required=True, choices=list(PEERS))
    ap.add_argument("--task", required=True)
    ap.add_argument("--method", choices=list(TOKENSURGEON), help="tokensurgeon only: one method (default: both)")
    ap.add_argument("--venv", help="the peers' virtualenv (default: $TOKENTRANSPLANT_PEERS_VENV or ../peers-venv)")
    ap.add_argument("--timeout", type=float, default=600, help="stop a peer after this many seconds")
    ap.add_argument("--eval-bytes", type=int, default=20_000)
    ap.add_argument("--ctx", type=int, default=1024)
    args = ap.parse_args()
    if args.task not in PEERS[args.peer]["tasks"]:
        raise SystemExit(f"{args.peer} runs on tasks {', '.join(PEERS[args.peer]['tasks'])}, not {args.task}")
    python = venv_python(args.venv)
    why = missing(python, args.peer)
    if why:
        print(f"skipping {args.peer}: {why}")
        return
    os.environ.setdefault("TOKENTRANSPLANT_QUIET", "1")
    if args.peer == "tokensurgeon":
        for method in [args.method] if args.method else PEERS["tokensurgeon"]["methods"]:
            run_tokensurgeon(python, args.task, method, args)
    elif args.peer == "wechsel":
        run_wechsel(python, args.task, args)
    else:
        run_deepfocus(python, args.task, args)


if __name__ == "__main__":
    main()
