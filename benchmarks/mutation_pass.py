"""A small mutation pass over the modules behind the README's promises (issue 17): does the test
suite notice when the code that keeps a promise is broken?

Each mutant is one text replacement in one module (the publish of `--overwrite`, evaluate's bits,
calibration's never-worse guard, the hypernetwork's rescaling and data, plan assembly and
apply, FVT's mean, the checkpoint writer, ...). The pass extracts a commit with `git archive`
into a temporary folder (this checkout's files are never touched), applies one mutant at a
time, and runs only the test files that guard that module there (`pytest -x`: the first failure
kills it), with the temporary copy first on PYTHONPATH (its test children import it too).
A mutant is

  killed        a test failed (the failing test is recorded), and that test passes on the
                unmutated copy (checked at the end, all killing tests in one run);
  survived      every selected test passed with the mutant in place;
  timeout       the tests ran past --timeout (counted as killed by most tools; listed apart);
  not applicable  the text to replace is not in that commit (the code moved on).

Each pass is stored under its label in benchmarks/results/mutation_pass.json (other labels are
kept), and a table of every stored pass is printed, one column per label.

    nice python benchmarks/mutation_pass.py --commit c286390 --label before   # the code before the tests
    nice python benchmarks/mutation_pass.py --label after                      # HEAD
    nice python benchmarks/mutation_pass.py --only evaluate-nats,fvt-sum      # a few mutants
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from paths import HERE, ROOT

RESULTS = HERE / "results" / "mutation_pass.json"


@dataclass(frozen=True)
class Mutant:
    """One text replacement (`old` must occur exactly once in `module`) and the tests that guard it."""

    name: str
    module: str
    old: str
    new: str
    tests: tuple[str, ...]
    promise: str


OUTDIR, EVALUATE = ("tests/test_outdir.py",), ("tests/test_evaluate.py",)
CALIBRATE = ("tests/test_plan_sides.py", "tests/test_calibrate_guard.py")
PLAN = ("tests/test_plan_sides.py", "tests/test_initializers.py")
INITIALIZERS = ("tests/test_initializers.py",)
HYPERNET = ("tests/test_hypernet.py",)
# The test that came with the fix of the source check's mean (a node id: the rest of its file is
# about the default method's choice).
SHORTER_VOCAB = "tests/test_auto.py::test_a_model_with_fewer_rows_than_the_fingerprint_ids_still_matches"

MUTANTS = [
    Mutant("outdir-exchange", "transplant/io/outdir.py",
           "            if _renameat2(path, out, _RENAME_EXCHANGE):\n",
           "            if not shutil.rmtree(out) and not os.rename(path, out):\n", OUTDIR,
           "--overwrite swaps old and new atomically (rmtree then rename instead)"),
    Mutant("outdir-noreplace", "transplant/io/outdir.py",
           "done = _renameat2(path, out, _RENAME_NOREPLACE)", "done = _renameat2(path, out, 0)", OUTDIR,
           "without --overwrite nothing at the path is replaced (plain rename instead)"),
    Mutant("evaluate-nats", "transplant/measure/evaluate.py",
           "    bits = nll / math.log(2)\n", "    bits = nll\n", EVALUATE,
           "BPB is in bits (nats instead)"),
    Mutant("evaluate-chars", "transplant/measure/evaluate.py",
           'total_bytes = sum(len(d.encode("utf-8")) for d in docs)', "total_bytes = sum(len(d) for d in docs)",
           EVALUATE, "BPB divides by UTF-8 bytes (characters instead)"),
    Mutant("evaluate-first-unscored", "transplant/measure/evaluate.py",
           "        targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)\n",
           "        targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)\n        targets[:, 0] = -100\n",
           EVALUATE, "every text token is scored (each chunk's first one left out instead)"),
    Mutant("calibrate-guard", "transplant/methods/calibrate_fit.py",
           "    if not math.isfinite(fit.nll_after) or fit.nll_after > fit.nll_before:", "    if False:",
           CALIBRATE, "calibration is never worse than none on its text (guard disabled)"),
    Mutant("plan-apply-weights", "transplant/core/plan/apply.py",
           "out.index_add_(0, target, old[idx].to(torch.float32) * w)",
           "out.index_add_(0, target, old[idx].to(torch.float32))", PLAN,
           "a linear row is the weighted mix its plan records (weights ignored instead)"),
    Mutant("plan-apply-scales", "transplant/core/plan/apply.py",
           "                out *= torch.from_numpy(self.scales[start:stop]).unsqueeze(1)\n",
           "                pass\n", PLAN, "per-row scales (calibration) reach the written rows (dropped instead)"),
    Mutant("plan-mean-off-by-one", "transplant/core/plan/apply.py",
           "        mean = total / rows\n", "        mean = total / (rows + 1)\n", INITIALIZERS,
           "mean rows are the mean old row (divided by one row too many instead)"),
    Mutant("plan-assembly-kinds", "transplant/core/plan/assembly.py",
           "    kinds = kinds_cat[order]\n", "    kinds = kinds_cat\n", PLAN,
           "each row keeps its kind when rows are put in id order (kinds left unsorted instead)"),
    Mutant("fvt-sum", "transplant/methods/initializers/fvt.py",
           "                w = 1.0 / len(pieces)\n", "                w = 1.0\n", INITIALIZERS,
           "FVT is the mean of the pieces' rows (their sum instead)"),
    Mutant("checkpoint-head-side", "transplant/io/checkpoint.py",
           'side[layout.output_key] = "output" if untie or not layout.tied else "input"',
           'side[layout.output_key] = "input"', PLAN,
           "an untied head is written from the plan's output rows (the input rows instead)"),
    Mutant("hypernet-std", "hypernet/model.py",
           "return base_in + self.head_in(pooled) * self.std_in, base_out + self.head_out(pooled) * self.std_out",
           "return base_in + self.head_in(pooled), base_out + self.head_out(pooled)", HYPERNET,
           "the correction is rescaled by the source's std (dropped instead)"),
    Mutant("hypernet-data-first-piece", "hypernet/data.py",
           "list(align.decomposition(i) or [])", "list(align.decomposition(i) or [])[:1]", HYPERNET,
           "stage-2 decompositions are complete (cut to their first piece instead)"),
    Mutant("hypernet-source-mean", "hypernet/model.py",
           ".mean()) if bool(keep.any()) else 0.0", ".sum()) / len(keep) if bool(keep.any()) else 0.0",
           (SHORTER_VOCAB, *HYPERNET),
           "the source check averages over the rows a model has (over every fingerprint id instead)"),
    # Issue 30's guards and issue 29's sharding (each must be noticed by the tests that came with it).
    Mutant("plot-any-suffix", "transplant/measure/breakdown_plot.py",
           'if path.suffix.lower() != ".png":', "if False:", ("tests/test_eval_breakdown.py",),
           "--plot never writes over a file that is not a PNG (suffix check removed)"),
    Mutant("plot-over-inputs", "transplant/measure/breakdown_plot.py",
           "        if target == item or item in target.parents:\n", "        if False:\n",
           ("tests/test_eval_breakdown.py",), "--plot never writes inside the command's inputs"),
    Mutant("plot-no-probe", "transplant/measure/breakdown_plot.py",
           "    why = cannot_create_in(folder, target.name)", "    why = None",
           ("tests/test_eval_breakdown.py",), "--plot into a folder that takes no file is refused before scoring"),
    Mutant("unregister-paths", "hypernet/registry.py",
           "            or target.is_symlink() or target.resolve().parent != root.resolve()):",
           "            and False):", ("tests/test_bad_inputs_commands.py",),
           "`hypernet unregister` deletes nothing outside the registry"),
    Mutant("export-into-registry", "hypernet/export.py",
           "    if registry == Path(out).resolve() or registry in Path(out).resolve().parents:",
           "    if False:", ("tests/test_bad_inputs_commands.py",),
           "`hypernet export` never writes into the registry"),
    Mutant("fingerprint-negative-ids", "hypernet/model.py",
           "    keep = (ids >= 0) & (ids < E_in.shape[0])", "    keep = ids < E_in.shape[0]",
           ("tests/test_bad_inputs_commands.py",), "a registry entry with bad fingerprint ids is skipped"),
    Mutant("eval-config-check", "transplant/cli/eval_cmd.py",
           "    for spec in [s for s in (compare, model) if s]:\n        check_model_config(resolve_model(spec), "
           "trust_remote_code)\n", "    for spec in [s for s in (compare, model) if s]:\n        pass\n",
           ("tests/test_assist.py",), "eval refuses a config it cannot build before any load"),
    Mutant("assist-padded", "transplant/measure/assist.py",
           "    return same_vocab and draft_size == target_size", "    return same_vocab",
           ("tests/test_assist.py",), "a padded draft of the same vocabulary runs"),
    Mutant("hypernet-lock", "hypernet/training.py",
           '    with RunFolder.owned(out, accelerator, command="hypernet train", create=False) as owner:',
           '    with RunFolder.owned(out, accelerator, command="hypernet train", create=False) as owner:\n'
           '        owner.release(False)', ("tests/test_bad_inputs_commands.py",),
           "`hypernet train` owns its run folder"),
    Mutant("out-writable", "transplant/io/outdir.py",
           "    check_writable_place(out, noun)\n    return out", "    return out",
           ("tests/test_bad_inputs_commands.py",), "an output that cannot be written is refused before the work"),
    Mutant("calibration-head", "transplant/methods/calibrate_read.py",
           "split_documents(t[:limit])", "split_documents(t)", ("tests/test_calibrate_stream.py",),
           "calibration encodes only the head its budget can use"),
    Mutant("shard-reshard", "transplant/io/sharded_load.py",
           "            fully_shard(layer, mesh=mesh, reshard_after_forward=True)\n    if why is None:",
           "            fully_shard(layer, mesh=mesh)\n    if why is None:", ("tests/test_frozen_load.py",),
           "a sharded body stays sharded after a forward"),
    Mutant("calibration-into-tail", "transplant/io/recorded_text.py",
           "        if not self.held_out_tail_bytes:\n            return limit",
           "        if True:\n            return limit", ("tests/test_quality_check.py",),
           "calibration never reads the held-out tail the quality line scores"),
    Mutant("quality-whole-tail", "transplant/io/recorded_text.py",
           "    cut = body.rfind(b\"\\n\", 0, max_bytes + 1)", "    cut = len(body) - 1",
           ("tests/test_quality_check.py",), "the quality line scores at most --held-out-bytes"),
    Mutant("quality-no-size-skip", "transplant/measure/quality_check.py",
           "    if whole > MAX_FLOAT32_BYTES:", "    if False:", ("tests/test_quality_check.py",),
           "a model too big to score in float32 is skipped with one line"),
    Mutant("logit-rule-multiplier", "transplant/measure/lm.py",
           "        if self.multiplier != 1.0:\n            logits = logits * self.multiplier\n", "",
           ("tests/test_logit_rule.py",), "heal and hypernet training read Cohere's and Granite's logits as they are"),
    Mutant("routed-linear", "transplant/io/frozen_linear.py",
           '    return weight.device.type == "cpu" and weight.dtype in (torch.bfloat16, torch.float16)',
           "    return False", ("tests/test_frozen_load.py",),
           "a bf16 body's input gradient on the CPU goes through float32 blocks"),
]


def extract(commit: str, dest: Path) -> str:
    """`commit`'s tree into `dest` (git archive); returns the full commit hash."""
    full = subprocess.run(["git", "-C", str(ROOT), "rev-parse", commit], check=True, capture_output=True,
                          text=True).stdout.strip()
    archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", full], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, check=True)
    if archive.wait():
        raise SystemExit(f"git archive {full} failed")
    return full


def _pytest(tree: Path, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """pytest in `tree`, its packages first on PYTHONPATH (test children inherit it), offline, with a
    cache of its own (shared by the pass's runs: no mutant touches what it holds, MiniLM vectors of
    tokens) and a base temp folder of its own (pytest prunes old ones in the shared default)."""
    env = dict(os.environ, PYTHONPATH=str(tree), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_HUB_DISABLE_PROGRESS_BARS="1", TOKENTRANSPLANT_CACHE=str(tree / ".cache"))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(tree / ".pytest-tmp"),
           *args]
    return subprocess.run(cmd, check=False, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)


def run_tests(tree: Path, tests: list[str], timeout: float) -> tuple[str, list[str], float]:
    """pytest -x on `tests` in `tree` -> ("passed" | "failed" | "timeout" | "error", failing node ids, seconds)."""
    started = time.perf_counter()
    try:
        proc = _pytest(tree, ["-x", *tests], timeout)
    except subprocess.TimeoutExpired:
        return "timeout", [], round(time.perf_counter() - started, 1)
    seconds = round(time.perf_counter() - started, 1)
    failing = re.findall(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, re.MULTILINE)
    status = {0: "passed", 1: "failed"}.get(proc.returncode, "error")
    if status == "error":
        failing = [proc.stdout[-400:] + proc.stderr[-400:]]
    return status, failing, seconds


def run_mutant(tree: Path, m: Mutant, timeout: float) -> dict:
    """Apply `m` in `tree`, run its tests, restore the module."""
    path = tree / m.module
    tests = [t for t in m.tests if (tree / t.split("::")[0]).exists()]
    row = {**asdict(m), "tests": tests, "killed_by": None, "seconds": 0.0}
    source = path.read_text() if path.exists() else ""
    if source.count(m.old) != 1 or not tests:
        return {**row, "status": "not applicable"}
    path.write_text(source.replace(m.old, m.new))
    try:
        status, failing, row["seconds"] = run_tests(tree, tests, timeout)
    finally:
        path.write_text(source)
    row["status"] = {"passed": "survived", "failed": "killed"}.get(status, status)
    row["killed_by"] = failing[0] if failing else None
    return row


def confirm_kills(tree: Path, rows: list[dict], timeout: float) -> None:
    """Each killing test must pass on the unmutated tree; a kill by a test that fails anyway is void."""
    nodes = sorted({r["killed_by"] for r in rows if r["status"] == "killed"})
    if not nodes:
        return
    proc = _pytest(tree, nodes, timeout)
    broken = set(re.findall(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, re.MULTILINE))
    for r in rows:
        if r["status"] == "killed" and r["killed_by"] in broken:
            r["status"] = "invalid (the killing test fails unmutated)"


def table(passes: dict) -> str:
    """Markdown: one row per mutant, one status column per stored pass."""
    labels = list(passes)
    names = list(dict.fromkeys(r["name"] for p in passes.values() for r in p["mutants"]))
    by = {lab: {r["name"]: r for r in passes[lab]["mutants"]} for lab in labels}
    head = "| mutant | promise | " + " | ".join(f"{lab} ({passes[lab]['commit'][:7]})" for lab in labels) + " |"
    lines = [head, "|" + "---|" * (2 + len(labels))]
    for n in names:
        any_row = next(by[lab][n] for lab in labels if n in by[lab])
        cells = [by[lab][n]["status"] if n in by[lab] else "-" for lab in labels]
        lines.append(f"| {n} | {any_row['promise']} | " + " | ".join(cells) + " |")
    totals = [f"{sum(r['status'] == 'killed' for r in passes[lab]['mutants'])}/{len(passes[lab]['mutants'])} killed"
              for lab in labels]
    lines.append("| **total** | | " + " | ".join(totals) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commit", default="HEAD", help="the commit to mutate (default HEAD)")
    ap.add_argument("--label", default="after", help="the name this pass is stored under (before, after, ...)")
    ap.add_argument("--only", default="", help="comma-separated mutant names (default: all)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per mutant's tests")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only.split(",")]
    started = time.perf_counter()
    tree = Path(tempfile.mkdtemp(prefix="mutation-pass-"))
    try:
        commit = extract(args.commit, tree)
        rows = []
        for m in chosen:
            rows.append(run_mutant(tree, m, args.timeout))
            r = rows[-1]
            print(f"{m.name:28s} {r['status']:15s} {r['seconds']:6.1f}s  {r['killed_by'] or ''}", flush=True)
        confirm_kills(tree, rows, args.timeout)
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    doc = json.loads(args.out.read_text()) if args.out.exists() else {}
    passes = doc.setdefault("passes", {})
    passes[args.label] = {"commit": commit, "date": time.strftime("%Y-%m-%d %H:%M"),
                          "seconds": round(time.perf_counter() - started, 1),
                          "load_average": os.getloadavg(), "mutants": rows}
    doc["about"] = ("benchmarks/mutation_pass.py: one text replacement per mutant in the modules behind the "
                    "README's promises; the relevant test files run with pytest -x on a git-archive copy")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(table(passes))


if __name__ == "__main__":
    main()
