"""`transplant heal`: only the made rows the text uses move, the loss falls, resume after a kill
matches an uninterrupted run, two accelerate processes work, bad input is one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

from transplant import transplant
from transplant.common.errors import TransplantError
from transplant.train.heal import HealConfig, aligned_windows, clean_cuts, heal
from transplant.core.plan import Plan

import builders as B

TEXT = str(B.DATA / "bible_en.txt")
ROOT = Path(__file__).resolve().parents[1]
# A run in a child process that ends abruptly (exit 137, as a kill) when it reaches step 8: the
# training loop's private test hook (`transplant.train.trainloop._DIE_AT_STEP`).
KILLED_AT_STEP_8 = ("import sys; sys.path.insert(0, %r); import json; import transplant.train.trainloop as loop; "
                    "loop._DIE_AT_STEP = 8; from transplant.train.heal import heal, HealConfig; "
                    "heal(HealConfig(**json.loads(sys.argv[1])))")


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in folder.glob("*.safetensors"):
        if not f.name.startswith("transplant_plan"):
            out.update(load_file(str(f)))
    return out


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _trained_tiny(toks, folder: Path, tied: bool, dtype: torch.dtype = torch.float32) -> Path:
    """A tiny Llama trained for a few seconds on English verses: a teacher that knows something
    (a random one scores worse than an FVT student with fewer tokens, and distilling it hurts)."""
    from conftest import ROLES, _ids

    tok = toks["bl"]
    model = B.tiny_model("llama", tok.get_vocab_size(with_added_tokens=True), tied, *_ids(tok, "bl")).train()
    ids = [i for e in tok.encode_batch(B.lines("en")[:1500]) for i in e.ids]
    data = torch.tensor(ids[:len(ids) // 64 * 64]).view(-1, 64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):
        batch = data[torch.randint(len(data), (16,), generator=gen)]
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return B.save_model(model.eval().to(dtype), tok, folder, **ROLES["bl"])


@pytest.fixture(scope="module")
def transplanted(toks, tok_dirs, tmp_path_factory):
    """{tied: (trained tiny base model, its FVT transplant onto the sentencepiece-style tokenizer)}."""
    root = tmp_path_factory.mktemp("heal")
    out = {}
    for tied in (True, False):
        model = _trained_tiny(toks, root / f"m-{tied}", tied)
        transplant(model, tok_dirs["sp"], root / f"t-{tied}", method="fvt")
        out[tied] = (model, root / f"t-{tied}")
    return out


def _cfg(model: Path, out: Path, **kw) -> HealConfig:
    base = dict(model=str(model), texts=[TEXT], out=str(out), steps=12, batch_size=2, seq_len=48, lr=3e-2,
                eval_every=3, checkpoint_every=3, patience=0)
    base.update(kw)
    return HealConfig(**base)


@pytest.mark.parametrize("tied", [True, False])
def test_loss_falls_and_only_used_made_rows_move(transplanted, tmp_path, tied):
    _, t = transplanted[tied]
    res = heal(_cfg(t, tmp_path / "healed", steps=30))
    log = _log(res.run)
    dist = [r["distill"] for r in log if "distill" in r]
    assert len(dist) == 30
    # (0.85: since the new bos row copies the base's document separator, the untied student
    # starts closer to its teacher and falls about 19% over 30 steps)
    assert sum(dist[-10:]) / 10 < 0.85 * sum(dist[:10]) / 10, dist
    held = [r["held_out_bpb"] for r in log if "held_out_bpb" in r]
    assert res.summary["best_bpb"] == pytest.approx(min(held), abs=1e-5) and min(held) < held[0]
    before, after = _weights(t), _weights(res.out)
    assert before.keys() == after.keys()
    plan = Plan.load(t)
    made = torch.from_numpy(plan.made_rows())
    for key in before:
        if key.endswith("embed_tokens.weight") or key == "lm_head.weight":
            moved = (after[key] != before[key]).any(1)
            assert moved.any(), key
            assert not (moved & ~made[:len(moved)]).any(), key  # copied, special, pad rows untouched
            assert int(moved.sum()) <= res.summary["rows_trained"]
        else:
            assert torch.equal(before[key], after[key]), key  # the frozen body, byte for byte
    assert res.summary["rows_trained"] < int(made.sum())  # rows the text never uses stay as made
    assert res.summary["untied"] is (not tied)
    assert "## Healing" in (res.out / "README.md").read_text()
    assert (res.out / "heal_log.jsonl").is_file() and (res.out / "heal.json").is_file()
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(str(res.out))  # loads with plain transformers


def test_a_transplant_that_made_no_rows_has_nothing_to_heal(build_model, tok_dirs, tmp_path):
    model = build_model(tmp_path / "m", tied=True)
    t = tmp_path / "t"
    transplant(model, tok_dirs["bl"], t, method="fvt")  # the same tokenizer: every row an exact copy
    with pytest.raises(TransplantError, match="uses none of the rows the transplant made"):
        heal(_cfg(t, tmp_path / "healed", steps=2))
    assert not (tmp_path / "healed").exists()


def test_windows_cover_the_same_characters_under_both_tokenizers(toks):
    docs = [d for d in B.sample_text("en").split("\n\n") if d.strip()][:20]
    student, teacher = toks["sp"], toks["bl"]
    wins = aligned_windows(docs, student, teacher, 40, 80)
    assert wins
    for w in wins:
        assert 0 < len(w.student) <= 40 and 0 < len(w.teacher) <= 80
        assert w.cuts[-1] == (len(w.student), len(w.teacher))
        assert all(a < b for a, b in zip(w.cuts, w.cuts[1:]))
        # both sides decode to the same text: the cuts align characters, not token counts
        assert student.decode(w.student) .replace(" ", "") == teacher.decode(w.teacher).replace(" ", "")
    assert clean_cuts([(0, 2), (2, 3), (2, 3), (3, 5)]) == [(2, 1), (3, 3), (5, 4)]


def test_resume_after_a_kill_matches_an_uninterrupted_run(transplanted, tmp_path):
    _, t = transplanted[False]
    whole = heal(_cfg(t, tmp_path / "whole"))
    cfg = _cfg(t, tmp_path / "killed")
    code = KILLED_AT_STEP_8 % str(ROOT)
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(asdict(cfg))], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1"})
    assert proc.returncode == 137, proc.stderr[-2000:]
    assert not (tmp_path / "killed").exists()
    run = cfg.run_dir
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000003", "step-000006"]
    with pytest.raises(TransplantError, match="--resume"):
        heal(cfg)
    cfg.resume = True
    killed = heal(cfg)
    a, b = _weights(whole.out), _weights(killed.out)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    assert [r["step"] for r in _log(killed.run)] == [r["step"] for r in _log(whole.run)]
    assert killed.summary["best_step"] == whole.summary["best_step"]
    # A larger budget on --resume trains on from where the run stopped.
    cfg.steps, cfg.overwrite = 15, True
    longer = heal(cfg)
    assert longer.summary["step"] == 15
    cfg.lr = 1.0
    with pytest.raises(TransplantError, match="was started with lr"):
        heal(cfg)  # a resume is the same run: other settings are refused, in one line


def test_bad_input_is_one_line(transplanted, build_model, tmp_path):
    model, t = transplanted[True]
    with pytest.raises(TransplantError, match="not a transplant output"):
        heal(_cfg(model, tmp_path / "o"))
    with pytest.raises(TransplantError, match="budget"):
        heal(_cfg(t, tmp_path / "o", steps=0))
    with pytest.raises(TransplantError, match="not found"):
        heal(_cfg(t, tmp_path / "o", texts=[str(tmp_path / "missing.txt")]))
    proc = subprocess.run([sys.executable, "-m", "transplant.cli", "heal", "--model", str(model), "--text", TEXT,
                           "--out", str(tmp_path / "o"), "--steps", "2"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "transplant run" in proc.stderr, proc.stderr
    assert not (tmp_path / "o").exists()


def test_accelerate_launch_two_processes(transplanted, tmp_path):
    pytest.importorskip("accelerate")
    _, t = transplanted[True]
    out = tmp_path / "healed"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "transplant.cli",
           "--quiet", "heal", "--model", str(t), "--text", TEXT, "--out", str(out), "--steps", "4",
           "--batch-size", "1", "--seq-len", "32", "--eval-every", "2", "--checkpoint-every", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "heal.json").read_text())
    assert summary["processes"] == 2 and summary["step"] == 4
    assert proc.stdout.count("healed:") == 1  # one process speaks


@pytest.mark.parametrize("tied", [pytest.param(True, marks=pytest.mark.slow), False])  # untied: the teacher view too
def test_two_processes_sharding_the_body_train_what_replicas_train(transplanted, tmp_path, tied):
    """--shard-body (FSDP2 over the decoder layers, gloo on two CPU processes) changes where the
    frozen weights live, not the training: the same held-out scores and healed rows as two
    processes that each hold the whole body. Untied: the teacher is a view of the sharded body."""
    pytest.importorskip("accelerate")
    _, t = transplanted[tied]
    results = {}
    for name, extra in (("replicas", []), ("sharded", ["--shard-body"])):
        out = tmp_path / name
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "transplant.cli",
               "--quiet", "heal", "--model", str(t), "--text", TEXT, "--out", str(out), "--steps", "4",
               "--batch-size", "2", "--seq-len", "32", "--eval-every", "2", "--checkpoint-every", "2", *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[name] = (json.loads((out / "heal.json").read_text()), _weights(out))
    (rep, rep_w), (sh, sh_w) = results["replicas"], results["sharded"]
    assert sh["body_shards"] == 2 and rep["body_shards"] == 1 and sh["step"] == rep["step"] == 4
    assert sh["best_bpb"] == pytest.approx(rep["best_bpb"], rel=1e-5)
    assert sh["start_bpb"] == pytest.approx(rep["start_bpb"], rel=1e-6)
    base = _weights(t)
    for k in rep_w:
        torch.testing.assert_close(sh_w[k], rep_w[k], rtol=1e-4, atol=1e-5, msg=k)
    assert any(not torch.equal(rep_w[k], base[k]) for k in rep_w)  # the run trained something


def test_recomputed_layers_heal_as_kept_ones(transplanted, tmp_path):
    """--checkpoint-layers trades memory for compute, never the result."""
    _, t = transplanted[False]
    kept = heal(_cfg(t, tmp_path / "kept", steps=4))
    recomputed = heal(_cfg(t, tmp_path / "recomputed", steps=4, checkpoint_layers=True))
    assert recomputed.summary["best_bpb"] == pytest.approx(kept.summary["best_bpb"], rel=1e-6)
    a, b = _weights(kept.out), _weights(recomputed.out)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)


def test_accelerates_own_fsdp_plugin_is_refused_in_one_line(transplanted, tmp_path):
    """accelerate's FSDP shards only what it prepares (here the trained rows): heal says how to
    shard the body instead, before any model loads."""
    pytest.importorskip("accelerate")
    _, t = transplanted[True]
    # (accelerate turns FSDP on only with GPUs: its state is patched to say so.)
    code = ("import sys; from unittest import mock; from accelerate import Accelerator, DistributedType; "
            "mock.patch.object(Accelerator, 'distributed_type', new_callable=mock.PropertyMock, "
            "return_value=DistributedType.FSDP).start(); "
            f"sys.argv = ['transplant', 'heal', '--model', {str(t)!r}, '--text', {TEXT!r}, '--out', "
            f"{str(tmp_path / 'o')!r}, '--steps', '2']; from transplant.cli.commands import main; main()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
    assert "--shard-body" in proc.stderr and "recipes/accelerate" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_heals_an_extended_vocabulary_and_keeps_its_old_rows(transplanted, tmp_path):
    from transplant.extend import extend

    model, _ = transplanted[True]
    ext = tmp_path / "ext"
    res = extend(model, [TEXT], 60, ext)
    n_old = len(Tokenizer.from_file(str(model / "tokenizer.json")).get_vocab())
    healed = heal(_cfg(ext, tmp_path / "healed", steps=6, eval_every=2))
    assert 0 < healed.summary["rows_trained"] <= len(res.new_tokens)
    before, after = _weights(ext), _weights(healed.out)
    key = "model.embed_tokens.weight"
    assert torch.equal(after[key][:n_old], before[key][:n_old])  # the old vocabulary is untouched


def test_resume_writes_the_best_state_of_its_checkpoint(transplanted, tmp_path):
    # Killed after an evaluation saved a newer best (step 7) than the last checkpoint (step 6):
    # a resume whose budget is already spent must write the checkpoint's best, as a run of 6 steps does.
    _, t = transplanted[True]
    kw = dict(steps=6, eval_every=1, checkpoint_every=6)
    six = heal(_cfg(t, tmp_path / "six", **kw))
    cfg = _cfg(t, tmp_path / "killed", **{**kw, "steps": 12})
    code = KILLED_AT_STEP_8 % str(ROOT)
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(asdict(cfg))], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1"})
    assert proc.returncode == 137, proc.stderr[-2000:]
    cfg.resume, cfg.steps = True, 6
    resumed = heal(cfg)
    assert resumed.summary["best_step"] == six.summary["best_step"]
    a, b = _weights(six.out), _weights(resumed.out)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_heal_recipe_is_read_by_the_shared_loader(tmp_path, monkeypatch):
    """`transplant heal --recipe` reads HealConfig's fields like every spec file: flags win, one-line errors."""
    from click.testing import CliRunner

    from transplant.cli import cli
    from transplant.common.specfile import config_values

    (tmp_path / "t.txt").write_text("text\n")
    recipe = tmp_path / "heal.yaml"
    recipe.write_text("model: ${MODEL_DIR:-m}\ntexts: t.txt\nout: o\nlr: 0.02\nsteps: 5\n")
    values = config_values(str(recipe), HealConfig, {"texts": (), "lr": 0.01, "steps": 0, "seed": 3}, {"lr"})
    assert values["texts"] == [str(tmp_path / "t.txt")] and values["model"] == "m"
    assert values["lr"] == 0.01 and values["steps"] == 5 and values["seed"] == 3  # the flag given wins
    assert HealConfig(**values).out == "o"
    recipe.write_text("model: m\ntexts: [t.txt]\nout: o\nsteps: 5\nlearning_rate: 1\n")
    result = CliRunner().invoke(cli, ["heal", "--recipe", str(recipe)])
    assert result.exit_code != 0 and "unknown key 'learning_rate' (valid keys: model, texts, out" in str(result.exception)
    recipe.write_text("model: m\ntexts: [t.txt]\nout: o\n")
    result = CliRunner().invoke(cli, ["heal", "--recipe", str(recipe)])
    assert result.exit_code == 2 and "pass a budget" in result.output


def test_heal_files_follow_the_umask(transplanted, tmp_path):
    """The healed output and its run folder's best offsets are readable as the umask allows, like
    every other file (safetensors alone writes 0600)."""
    from transplant.common.permissions import umask
    from transplant.train.heal_config import BEST_FILE

    _, t = transplanted[False]
    result = heal(_cfg(t, tmp_path / "healed"))
    expect = oct(0o666 & ~umask())
    files = [*result.out.iterdir(), result.run / BEST_FILE]
    modes = {p.name: oct(os.stat(p).st_mode & 0o777) for p in files if p.is_file()}
    assert set(modes.values()) == {expect}, modes


def test_a_torn_last_log_line_does_not_block_a_resume(tmp_path):
    """A crash or a full disk mid-append leaves half a JSON line; trimming for a resume drops it
    (and the steps after the checkpoint) and keeps every whole record before it."""
    from transplant.train.trainloop import trim_log

    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "loss": 1.2}\n{"step": 4, "lo')
    trim_log(log, 3)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3]


def test_a_bf16_checkpoint_heals_in_bf16_with_float32_offsets(toks, tok_dirs, tmp_path, monkeypatch):
    """The frozen body and teacher stay in the checkpoint's dtype (half the memory of float32);
    what trains (the offsets) and the loss are float32; the body is written back byte for byte."""
    import transplant.train.heal as heal_module

    base = _trained_tiny(toks, tmp_path / "m16", tied=False, dtype=torch.bfloat16)
    moved = tmp_path / "t16"
    transplant(base, tok_dirs["sp"], moved, method="fvt")
    seen = {}
    real_frozen = heal_module.FrozenLM

    def spy(lm):
        seen.setdefault("dtypes", set()).update(p.dtype for p in getattr(lm, lm.base_model_prefix).parameters())
        return real_frozen(lm)

    monkeypatch.setattr(heal_module, "FrozenLM", spy)
    res = heal(_cfg(moved, tmp_path / "healed", steps=12))
    assert seen["dtypes"] == {torch.bfloat16}  # student and teacher bodies: never float32
    log = _log(res.run)
    held = [r["held_out_bpb"] for r in log if "held_out_bpb" in r]
    assert min(held) < held[0]
    before, after = _weights(moved), _weights(res.out)
    assert all(t.dtype == torch.bfloat16 for t in after.values())
    assert all(torch.equal(before[k], after[k]) for k in before if "embed_tokens" not in k and k != "lm_head.weight")
    assert any(not torch.equal(before[k], after[k]) for k in ("model.embed_tokens.weight", "lm_head.weight"))


def test_row_adam_heals_too(transplanted, tmp_path):
    """The optimizer with a quarter of Adam's state lowers the held-out score like Adam does."""
    _, t = transplanted[False]
    adam = heal(_cfg(t, tmp_path / "adam", steps=12))
    row = heal(_cfg(t, tmp_path / "row", steps=12, optimizer="row-adam"))
    assert row.summary["best_bpb"] < row.summary["start_bpb"]
    assert row.summary["best_bpb"] == pytest.approx(adam.summary["best_bpb"], rel=0.02)
    assert row.summary["settings"]["optimizer"] == "row-adam"
