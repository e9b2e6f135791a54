"""The hypernetwork: untrained = FVT, save/load, base-model check, training, resume, accelerate."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import builders as B
import pytest
import torch
from safetensors.torch import load_file

from hypernet import HyperNet, TrainConfig, train
from hypernet.data import TextPool, TokenizerSampler, withheld_decompositions
from hypernet.training import load_source
from transplant import transplant
from transplant.common.errors import TransplantError
from transplant.core.vocab import Vocabulary

TEXTS = [str(B.DATA / "bible_en.txt"), str(B.DATA / "bible_es.txt")]
ROOT = Path(__file__).resolve().parents[1]


def _fresh_net(model_dir: Path, folder: Path, **shape) -> Path:
    _, E_in, E_out, _ = load_source(str(model_dir))
    return HyperNet.create(E_in, E_out, base_model=str(model_dir), **shape).save(folder)


@pytest.mark.parametrize("tied", [False, True])
def test_untrained_network_reproduces_fvt(build_model, tok_dirs, tmp_path, tied):
    model = build_model(tmp_path / "m", tied=tied)
    net = _fresh_net(model, tmp_path / "hn")
    fvt = transplant(model, tok_dirs["sp"], None, method="fvt").embeddings
    hn = transplant(model, tok_dirs["sp"], None, method="hypernet", options={"hypernet.path": str(net)})
    made = [i for i, p in enumerate(hn.plan.provenance) if p == "hypernet"]
    assert len(made) > 100
    torch.testing.assert_close(hn.embeddings["input"], fvt["input"], atol=1e-5, rtol=1e-5)
    head = fvt.get("output", fvt["input"])
    torch.testing.assert_close(hn.embeddings["output"], head, atol=1e-5, rtol=1e-5)


def test_save_load_gives_identical_predictions(llama_bl, tmp_path):
    _, E_in, E_out, _ = load_source(str(llama_bl))
    net = HyperNet.create(E_in, E_out, width=16, heads=2, layers=1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))  # a non-trivial network
    decs = [[5, 9, 12], [40], [3, 3, 100, 7, 8, 9, 10, 11, 12, 13]]
    before = net.predict(decs, E_in, E_out)
    loaded = HyperNet.load(net.save(tmp_path / "hn"))
    after = loaded.predict(decs, E_in, E_out)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    assert not torch.equal(before[0], before[1])  # input and head predicted apart


def test_another_base_model_is_refused_a_finetune_accepted(build_model, tok_dirs, tmp_path):
    model = build_model(tmp_path / "a", tied=False, seed=0)
    other = build_model(tmp_path / "b", tied=False, seed=1)
    net = _fresh_net(model, tmp_path / "hn")
    with pytest.raises(TransplantError, match="belongs to .* do not match"):
        transplant(other, tok_dirs["sp"], None, method="hypernet", options={"hypernet.path": str(net)})
    tied = build_model(tmp_path / "c", tied=True, seed=0)
    with pytest.raises(TransplantError, match="belongs to"):
        transplant(tied, tok_dirs["sp"], None, method="hypernet", options={"hypernet.path": str(net)})
    loaded = HyperNet.load(net)
    _, E_in, E_out, _ = load_source(str(model))
    assert loaded.check_source(E_in + 0.05 * torch.randn_like(E_in), E_out) > 0.95  # a fine-tune


def _nonzero_net(E_in: torch.Tensor, E_out: torch.Tensor | None) -> HyperNet:
    """A fresh network with heads of a fixed non-zero draw (the same for any source matrix)."""
    net = HyperNet.create(E_in, E_out, width=16, heads=2, layers=1, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in (*net.head_in.parameters(), *net.head_out.parameters()):
            p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return net


@pytest.mark.parametrize("untied", [False, True], ids=["tied", "untied"])
def test_correction_is_in_units_of_the_source_matrix(untied):
    """The encoder reads pieces standardized by the source's per-dimension mean and std, and its
    correction is scaled back by that std: a network made for E * s + b predicts the rows the
    network made for E predicts, times s, plus b (a correction in absolute units would not
    follow a matrix whose dimensions have other scales)."""
    g = torch.Generator().manual_seed(0)
    E_in = torch.randn(300, 16, generator=g)
    E_out = torch.randn(300, 16, generator=g) if untied else None
    s, b = torch.logspace(-1, 1, 16), torch.randn(16, generator=g)
    moved_in, moved_out = E_in * s + b, (E_out * s + b if untied else None)
    decs = [[1, 2], [3, 4, 5], [7], [10, 20, 30, 40, 50]]
    rows = _nonzero_net(E_in, E_out).predict(decs, E_in, E_out)
    moved = _nonzero_net(moved_in, moved_out).predict(decs, moved_in, moved_out)
    for side, (a, m) in enumerate(zip(rows, moved)):
        fvt = torch.stack([(E_in if side == 0 or not untied else E_out)[d].mean(0) for d in decs])
        assert (a - fvt).abs().max() > 0.1  # a real correction, not FVT
        torch.testing.assert_close(m, a * s + b, rtol=1e-4, atol=1e-4)


def test_source_check_averages_over_the_rows_a_shorter_vocabulary_has(llama_bl):
    """A model whose vocabulary stops before the last fingerprint ids is judged on the rows it
    has: the mean cosine over those, not a sum over them divided by every fingerprint id."""
    _, E_in, E_out, _ = load_source(str(llama_bl))
    net = HyperNet.create(E_in, E_out, width=16, heads=2, layers=1)
    cut = E_in.shape[0] // 2  # about half of the fingerprint ids are past the end
    kept = net.fingerprint_ids[net.fingerprint_ids < cut]
    assert 0 < len(kept) < len(net.fingerprint_ids)
    tuned = E_in[:cut] + 0.3 * torch.randn(cut, E_in.shape[1], generator=torch.Generator().manual_seed(0))
    want = torch.nn.functional.cosine_similarity(tuned[kept], E_in[kept], dim=1).mean()
    assert want > 0.8
    assert net.check_source(tuned, E_out[:cut]) == pytest.approx(float(want), rel=1e-6)
    with pytest.raises(TransplantError, match=f"over {len(kept)} sampled rows"):
        net.check_source(E_in[:cut] + 2.0 * torch.randn(cut, E_in.shape[1]), E_out[:cut])


def test_missing_or_wrong_path_is_one_line(llama_bl, tok_dirs, tmp_path):
    with pytest.raises(TransplantError, match="hypernet.path=DIR"):
        transplant(llama_bl, tok_dirs["sp"], None, method="hypernet")
    with pytest.raises(TransplantError, match="not a hypernetwork folder"):
        transplant(llama_bl, tok_dirs["sp"], None, method="hypernet", options={"hypernet.path": str(tmp_path)})


def test_withheld_decompositions_never_use_the_token(tok_dirs):
    from tokenizers import Tokenizer

    vocab = Vocabulary.from_tokenizer(Tokenizer.from_file(str(tok_dirs["bl"] / "tokenizer.json")))
    targets, pieces = withheld_decompositions(vocab)
    assert len(targets) > 100
    for t, p in zip(targets, pieces):
        assert t not in p and len(p) >= 2
        assert b"".join(vocab.tokens[j].text for j in p) == vocab.tokens[t].text


def test_sampled_tokenizers_are_lossless_and_aligned(tok_dirs):
    """Each drawn tokenizer reproduces its text, and each of its ids is either an old token with
    the same bytes or a complete decomposition into old tokens (stage 2 trains on those rows)."""
    import random

    from tokenizers import Tokenizer

    old = Tokenizer.from_file(str(tok_dirs["bl"] / "tokenizer.json"))
    pool = TextPool.from_files(TEXTS)
    sampler = TokenizerSampler(old, pool)
    old_vocab = Vocabulary.from_tokenizer(old)
    sizes, multi_piece = set(), 0
    for seed in range(3):
        rng = random.Random(seed)
        st = sampler.sample(rng, seed % 2)
        sizes.add(st.tokenizer.get_vocab_size())
        text = pool.chunks(rng, seed % 2, 1, 400)[0]
        assert st.tokenizer.decode(st.tokenizer.encode(text).ids) == text
        new_vocab = Vocabulary.from_tokenizer(st.tokenizer)
        assert len(st.exact) == len(st.pieces) == len(new_vocab.tokens)
        for i, tok in enumerate(new_vocab.tokens):  # every id, not only those of one text
            exact, pieces = st.exact[i], st.pieces[i]
            assert (exact >= 0) != bool(pieces), (i, tok.text)  # an old token or old pieces, never both
            if exact >= 0:
                assert old_vocab.tokens[exact].text == tok.text, i
            else:
                assert b"".join(old_vocab.tokens[j].text for j in pieces) == tok.text, (i, pieces)
                multi_piece += len(pieces) > 1
    assert len(sizes) > 1  # vocabulary sizes are drawn
    assert multi_piece > 100  # the sampled vocabularies go beyond the old one


def _cfg(model: Path, out: Path, **kw) -> TrainConfig:
    base = dict(model=str(model), texts=TEXTS, out=str(out), stage1_steps=6, steps=4, stage1_batch=64, batch_size=2,
                seq_len=32, negatives=32, aux_batch=16, width=16, layers=1, checkpoint_every=3, log_every=3,
                train_chars=20_000)
    base.update(kw)
    return TrainConfig(**base)


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_training_lowers_both_losses(build_model, tmp_path):
    model = build_model(tmp_path / "m", tied=True)
    out = train(_cfg(model, tmp_path / "hn", stage1_steps=40, steps=30, lr=3e-3, stage2_lr=3e-3, log_every=20))
    log = _log(out)
    held = [r["held_out"] for r in log if "held_out" in r]
    assert held[-1] < 0.9 * held[0], held
    lm = [r["lm_loss"] for r in log if r["stage"] == 2]
    assert len(lm) == 30 and all(map(lambda v: v == v, lm))
    assert sum(lm[-8:]) / 8 < sum(lm[:8]) / 8, lm
    net = HyperNet.load(out)
    assert net.config.base_model == str(model)
    assert json.loads((out / "training.json").read_text())["stage2_done"] == 30


def test_resume_after_a_kill_matches_an_uninterrupted_run(build_model, tmp_path):
    model = build_model(tmp_path / "m", tied=False)
    whole = train(_cfg(model, tmp_path / "whole"))
    killed = tmp_path / "killed"
    # Killed at step 8 in a child process: the training loop's private test hook ends it as a kill would.
    code = ("import sys; sys.path.insert(0, %r); import json; import transplant.train.trainloop as loop; "
            "loop._DIE_AT_STEP = 8; from hypernet.training import train, TrainConfig; "
            "train(TrainConfig(**json.loads(sys.argv[1])))" % str(ROOT))
    cfg = _cfg(model, killed)
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(asdict(cfg))], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1"})
    assert proc.returncode == 137, proc.stderr[-2000:]
    assert not (killed / "model.safetensors").exists()
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["step-000003", "step-000006"]
    with pytest.raises(TransplantError, match="--resume"):
        train(cfg)
    cfg.resume = True
    train(cfg)
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    assert a.keys() == b.keys()
    # Equal up to float round-off: tokenizers' Unigram trainer (the seed vocabularies, rebuilt on resume)
    # orders the characters it appends below its learned pieces differently in each process, so the
    # rows of a step come in another order; BLAS kernels may also sum in another order
    # (two uninterrupted runs differ by ~1e-8 here); a resume that lost the optimizer state, the
    # step or the data order differs by orders of magnitude more.
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    assert [r["step"] for r in _log(killed)] == [r["step"] for r in _log(whole)]


def test_trained_network_plugs_into_transplant_and_apply(build_model, tok_dirs, tmp_path):
    from hypernet.training import export_checkpoint
    from transplant.api import apply_plan

    model = build_model(tmp_path / "m", tied=True)
    out = train(_cfg(model, tmp_path / "hn", stage1_steps=10, steps=2))
    last = sorted((out / "checkpoints").iterdir())[-1]
    exported = load_file(str(export_checkpoint(last, tmp_path / "exported") / "model.safetensors"))
    final = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(exported[k], final[k]) for k in final)  # the last checkpoint is the final state
    res = transplant(model, tok_dirs["sp"], tmp_path / "t", method="hypernet", options={"hypernet.path": str(out)})
    cfg = json.loads((tmp_path / "t" / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False  # the head's own predictions
    assert any("untied" in n for n in res.notes)
    card = (tmp_path / "t" / "README.md").read_text()
    assert "hypernet" in card
    again = apply_plan(tmp_path / "t", model, tmp_path / "t2")
    assert any("reused as they are" in n for n in again.notes)
    tied = transplant(model, tok_dirs["sp"], None, method="hypernet",
                      options={"hypernet.path": str(out), "hypernet.tied_output": "true"})
    assert tied.plan.output is None


def test_accelerate_launch_two_processes(build_model, tmp_path):
    pytest.importorskip("accelerate")
    model = build_model(tmp_path / "m", tied=True)
    out = tmp_path / "hn"
    # accelerate 1.x starts several processes only through its multi-GPU launcher (torchrun); on a
    # CPU-only machine each process then trains on the CPU (gloo).
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "hypernet.cli", "--quiet",
           "train",
           "--model", str(model), "--text", TEXTS[0], "--out", str(out), "--stage1-steps", "4", "--steps", "2",
           "--width", "16", "--layers", "1", "--batch-size", "1", "--seq-len", "32", "--stage1-batch", "32",
           "--negatives", "16", "--checkpoint-every", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "training.json").read_text())
    assert summary["processes"] == 2 and summary["stage2_done"] == 2
    HyperNet.load(out)


def test_two_processes_sharding_the_body_train_what_replicas_train(build_model, tmp_path):
    """--shard-body (FSDP2 over the decoder layers, gloo on two CPU processes, through the
    shipped accelerate config) trains the network two whole-body processes train."""
    pytest.importorskip("accelerate")

    model = build_model(tmp_path / "m", tied=False)
    nets = {}
    variants = (("replicas", []), ("sharded", ["--shard-body"]),
                ("sharded-recomputed", ["--shard-body", "--checkpoint-layers"]))
    for name, extra in variants:
        out = tmp_path / name
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "recipes" / "accelerate" / "cpu-2-processes.yaml"), "-m", "hypernet.cli", "--quiet", "train",
               "--model", str(model), "--text", TEXTS[0], "--out", str(out), "--stage1-steps", "2", "--steps", "3",
               "--width", "16", "--layers", "1", "--batch-size", "1", "--seq-len", "32", "--stage1-batch", "32",
               "--negatives", "16", "--checkpoint-every", "5", *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        summary = json.loads((out / "training.json").read_text())
        assert summary["stage2_done"] == 3 and summary["body_shards"] == (2 if extra else 1)
        nets[name] = {k: v for f in out.glob("*.safetensors") for k, v in load_file(str(f)).items()}
        nets[name + "-log"] = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    for name in ("sharded", "sharded-recomputed"):
        for k, v in nets["replicas"].items():
            torch.testing.assert_close(nets[name][k], v, rtol=1e-4, atol=1e-6, msg=f"{name}: {k}")
    losses = {n: [r["lm_loss"] for r in nets[n + "-log"] if r.get("stage") == 2] for n, _ in variants}
    for name in ("sharded", "sharded-recomputed"):
        assert len(losses[name]) == 3 and losses[name] == pytest.approx(losses["replicas"], rel=1e-4)


def test_recipe_fields_and_flags(tmp_path, monkeypatch):
    from hypernet.cli import config_from

    (tmp_path / "a.txt").write_text("x")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: m\ntexts: [a.txt, '${EXTRA}']\nout: o\nwidth: 64\nminutes: 5\n")
    monkeypatch.setenv("EXTRA", "/abs/b.txt")
    cfg = config_from(str(recipe), {"out": "elsewhere", "width": 0, "texts": ()}, {"out"})
    assert cfg.texts == [str(tmp_path / "a.txt"), "/abs/b.txt"] and cfg.out == "elsewhere"
    assert cfg.width == 64 and cfg.minutes == 5
    recipe.write_text("model: m\ntexts: [a.txt]\nout: o\nwidht: 64\n")
    with pytest.raises(TransplantError, match="unknown key.*widht.*valid"):
        config_from(str(recipe), {}, set())
    monkeypatch.delenv("EXTRA")
    recipe.write_text("model: m\ntexts: ['${EXTRA}']\nout: o\n")
    with pytest.raises(TransplantError, match=r"texts reads \$\{EXTRA\}, which is not set \(set it, or pass --text\)"):
        config_from(str(recipe), {}, set())


def test_cli_errors_are_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "hypernet.cli", "train", "--text", TEXTS[0], "--out",
                           str(tmp_path / "o")], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: no model: pass --model (or set model in the recipe)"]
    proc = subprocess.run([sys.executable, "-m", "hypernet.cli", "info", str(tmp_path)], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 2 and "not a hypernetwork folder" in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_checkpoint_waits_for_every_process_before_publishing(tmp_path):
    """Each process saves its own part of a checkpoint (its RNG state); the folder is renamed into
    place only after all of them wrote, or a slower process writes into a folder already gone
    (the two-process CI failure: 'Parent directory .../.step-000004.partial does not exist')."""
    from transplant.train.trainloop import Checkpoints

    class TwoProcesses:  # the main process's view; the other process finishes its write by the next barrier
        is_main_process = True

        def __init__(self):
            self.pending = []

        def wait_for_everyone(self):
            for write in self.pending:
                write()
            self.pending.clear()

        def save_state(self, folder):
            Path(folder).mkdir(parents=True, exist_ok=True)
            (Path(folder) / "random_states_0.pkl").write_bytes(b"0")
            self.pending.append(lambda: (Path(folder) / "random_states_1.pkl").write_bytes(b"1"))

    Checkpoints(tmp_path, keep=2).save(TwoProcesses(), {"step": 4})
    done = tmp_path / "checkpoints" / "step-000004"
    assert sorted(p.name for p in done.iterdir()) == ["random_states_0.pkl", "random_states_1.pkl", "trainer_state.json"]


def test_saved_network_follows_the_umask(llama_bl, tmp_path):
    """A network folder shared with others loads for them: no file is private to its writer."""
    from transplant.common.permissions import umask

    folder = _fresh_net(llama_bl, tmp_path / "hn")
    modes = {p.name: oct(os.stat(p).st_mode & 0o777) for p in Path(folder).iterdir() if p.is_file()}
    assert set(modes.values()) == {oct(0o666 & ~umask())}, modes


def test_a_bf16_model_trains_its_network_in_bf16(build_model, tmp_path, monkeypatch):
    """The frozen model stays in its checkpoint's dtype (half the memory of float32); the network
    and the loss are float32, and both stages still learn."""
    import importlib

    train_module = importlib.import_module("hypernet.training")  # (the package's `train` is the function)
    model = build_model(tmp_path / "m16", tied=True, dtype=torch.bfloat16)  # as the float32 test above
    real = train_module.load_source
    seen = {}

    def spy(spec, device="cpu", mesh=None):
        lm, E_in, E_out, folder = real(spec, device, mesh)
        seen["dtypes"] = {p.dtype for p in lm.parameters()}
        return lm, E_in, E_out, folder

    monkeypatch.setattr(train_module, "load_source", spy)
    out = train(_cfg(model, tmp_path / "hn", stage1_steps=40, steps=30, lr=3e-3, stage2_lr=3e-3, log_every=20))
    assert seen["dtypes"] == {torch.bfloat16}
    log = _log(out)
    held = [r["held_out"] for r in log if "held_out" in r]
    assert held[-1] < 0.9 * held[0], held
    lm = [r["lm_loss"] for r in log if r["stage"] == 2]
    assert all(v == v for v in lm) and sum(lm[-8:]) / 8 < sum(lm[:8]) / 8, lm
    assert all(t.dtype == torch.float32 for t in HyperNet.load(out).state_dict().values() if t.is_floating_point())


@pytest.mark.parametrize("recipe", sorted((ROOT / "hypernet" / "recipes").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_network_recipe_reads_as_a_training_config(recipe, monkeypatch):
    from hypernet.cli import config_from

    monkeypatch.setenv("CORPORA", "/corpora")
    monkeypatch.setenv("MODEL", "path/to/mistral-7b")
    cfg = config_from(str(recipe), {}, set())
    assert cfg.model and cfg.texts and all(t.startswith("/corpora/") or "work" in t for t in cfg.texts)
    assert cfg.layers >= 1 and (cfg.steps or cfg.minutes)


def test_fine_tuning_on_dynamically_merged_batches(build_model, tmp_path):
    """--init starts from a network of this model (its shape, its weights), --dynamic-share 1 trains
    every stage-2 step on the base tokenization with the batch's own merges: merged tokens are
    predicted (made_share > 0), the loss is finite and the network moves."""
    model = build_model(tmp_path / "m", tied=False)
    first = train(_cfg(model, tmp_path / "first", steps=0))
    tuned = train(_cfg(model, tmp_path / "tuned", stage1_steps=0, steps=3, init=str(first), dynamic_share=1.0,
                       width=0, layers=3))
    assert HyperNet.load(tuned).config.width == HyperNet.load(first).config.width == 16  # the init's shape
    stage2 = [r for r in _log(tuned) if r["stage"] == 2]
    assert len(stage2) == 3 and all(math.isfinite(r["lm_loss"]) for r in stage2)
    assert any(r["made_share"] > 0 for r in stage2)
    a, b = load_file(str(first / "model.safetensors")), load_file(str(tuned / "model.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("encoder"))
    with pytest.raises(TransplantError, match="--init"):
        train(_cfg(model, tmp_path / "bad", init=str(tmp_path / "nowhere")))
    other = build_model(tmp_path / "other", tied=False, seed=7)
    with pytest.raises(TransplantError, match="belongs to"):
        train(_cfg(other, tmp_path / "bad2", stage1_steps=0, steps=1, init=str(first)))
