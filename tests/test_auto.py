"""`method="auto"` (the default): the network known for the model, else FVT; calibration on the
tokenizer's recorded training text; the network registry and its commands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import builders as B
import pytest
import torch
from cli_helpers import run_inproc
from safetensors.torch import load_file, save_file

from hypernet.registry import find_network, known_networks, register, registry_dir, unregister
from transplant import transplant
from transplant.common.errors import TransplantError
from transplant.train.tokenizer_train import train_tokenizer

TEXT = B.DATA / "bible_es.txt"


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        if f.name != "transplant_plan.safetensors":
            out.update(load_file(str(f)))
    return out


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def es_tok(llama_bl, tmp_path_factory):
    """A tokenizer trained by `tokenizer train` on a text of its own folder (so a test may change it)."""
    root = tmp_path_factory.mktemp("auto-tok")
    text = root / "es.txt"
    shutil.copy(TEXT, text)
    train_tokenizer([text], 900, root / "tok", like=str(llama_bl))
    return root / "tok", text


def test_auto_without_network_or_text_is_fvt_bit_for_bit(llama_bl, tok_dirs, tmp_path, capsys):
    auto = transplant(llama_bl, tok_dirs["sp"], tmp_path / "auto")
    fvt = transplant(llama_bl, tok_dirs["sp"], tmp_path / "fvt", method="fvt")
    assert _same_weights(auto.output_dir, fvt.output_dir)
    meta = auto.plan.meta["auto"]
    assert meta["method"] == "fvt" and meta["network"] is None and meta["calibration"] is None
    assert "calibration" not in auto.plan.meta
    line = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("auto:")]
    assert len(line) == 1 and "--calibrate-text" in line[0]  # says what calibration text would add
    card = (auto.output_dir / "README.md").read_text()
    assert "Chosen by `--method auto`: fvt" in card


def test_registered_network_is_chosen_for_its_model_and_fine_tunes_only(llama_bl, build_model, hypernet_dir,
                                                                         tok_dirs, tmp_path):
    net = register(hypernet_dir)
    assert net.origin == "registered" and net.path.parent == registry_dir()
    auto = transplant(llama_bl, tok_dirs["sp"], tmp_path / "auto")
    explicit = transplant(llama_bl, tok_dirs["sp"], tmp_path / "explicit", method="hypernet",
                          options={"hypernet.path": str(net.path)})
    assert auto.plan.meta["auto"]["network"] == net.name
    assert _same_weights(auto.output_dir, explicit.output_dir)
    assert "hypernet" in auto.plan.counts()

    # A fine-tune of the base (embeddings moved a little) still matches ...
    tuned = tmp_path / "tuned"
    shutil.copytree(llama_bl, tuned)
    for f in tuned.glob("*.safetensors"):
        state = load_file(str(f))
        g = torch.Generator().manual_seed(0)
        state = {k: v + 0.02 * v.std() * torch.randn(v.shape, generator=g) if "embed" in k else v
                 for k, v in state.items()}
        save_file(state, str(f), metadata={"format": "pt"})
    assert transplant(tuned, tok_dirs["sp"], tmp_path / "tuned-out").plan.meta["auto"]["network"] == net.name
    # ... another model of the same shape does not (FVT instead).
    other = build_model(tmp_path / "other", "llama", tied=False, seed=7)
    assert transplant(other, tok_dirs["sp"], tmp_path / "other-out").plan.meta["auto"]["method"] == "fvt"


def test_given_network_path_wins_over_the_registry(llama_bl, hypernet_dir, tok_dirs, tmp_path):
    res = transplant(llama_bl, tok_dirs["sp"], tmp_path / "o", options={"hypernet.path": str(hypernet_dir)})
    assert res.plan.meta["auto"]["method"] == "hypernet"
    assert "hypernet.path given" in res.plan.meta["auto"]["line"]


def test_calibrates_on_the_tokenizers_recorded_text_while_unchanged(llama_bl, es_tok, tmp_path, capsys):
    tok, text = es_tok
    record = json.loads((tok / "training_summary.json").read_text())["training_texts"]
    assert record[0]["path"] == str(text.resolve()) and len(record[0]["sha256"]) == 16
    assert "Jehová" not in (tok / "training_summary.json").read_text()  # a fingerprint, never the text

    res = transplant(llama_bl, tok, tmp_path / "cal")
    assert res.plan.meta["auto"]["calibration"] == {"origin": "tokenizer", "texts": [str(text.resolve())]}
    assert res.plan.meta["calibration"]["tokens"] > 0
    assert "calibration on the tokenizer's training text es.txt" in capsys.readouterr().err
    # Same as passing the text by hand.
    by_hand = transplant(llama_bl, tok, tmp_path / "hand", calibrate_texts=[text.read_text(encoding="utf-8")])
    assert _same_weights(res.output_dir, by_hand.output_dir)
    # --no-calibrate turns it off; an explicit method never looks for it.
    assert "calibration" not in transplant(llama_bl, tok, tmp_path / "off", calibrate=False).plan.meta
    assert "calibration" not in transplant(llama_bl, tok, tmp_path / "fvt", method="fvt").plan.meta


def test_changed_or_missing_recorded_text_is_not_used(llama_bl, es_tok, tmp_path, capsys):
    tok, text = es_tok
    original = text.read_bytes()
    try:
        text.write_bytes(original + b"\nmore\n")
        res = transplant(llama_bl, tok, tmp_path / "changed")
        assert "calibration" not in res.plan.meta
        assert "changed since the tokenizer was trained" in capsys.readouterr().err
        text.unlink()
        res = transplant(llama_bl, tok, tmp_path / "gone")
        assert "calibration" not in res.plan.meta and "is gone" in res.plan.meta["auto"]["line"]
    finally:
        text.write_bytes(original)


def test_same_inputs_same_model(llama_bl, hypernet_dir, es_tok, tmp_path):
    register(hypernet_dir)
    a = transplant(llama_bl, es_tok[0], tmp_path / "a")
    b = transplant(llama_bl, es_tok[0], tmp_path / "b")
    assert a.plan.meta["auto"]["method"] == "hypernet" and "calibration" in a.plan.meta
    assert _same_weights(a.output_dir, b.output_dir)


def _registered() -> list[str]:
    return [n.name for n in known_networks() if n.origin == "registered"]


def test_registry_order_names_and_unregister(hypernet_dir, tmp_path):
    first = register(hypernet_dir)
    again = register(hypernet_dir)  # the same source folder: replaced under its name
    assert again.name == first.name and _registered() == [first.name]
    twin = tmp_path / hypernet_dir.name
    shutil.copytree(hypernet_dir, twin)
    other = register(twin)  # another folder of the same name: a name of its own
    assert other.name != first.name and other.name.startswith(first.name)
    assert _registered() == sorted([first.name, other.name])
    assert [n.origin for n in known_networks()][:2] == ["registered", "registered"]  # before shipped ones
    unregister(other.name)
    assert _registered() == [first.name]
    with pytest.raises(TransplantError, match="no registered network"):
        unregister("nope")
    with pytest.raises(TransplantError, match="not a trained hypernetwork"):
        register(tmp_path)


def test_find_network_refuses_other_shapes(hypernet_dir):
    register(hypernet_dir)
    assert find_network(torch.randn(500, 7), None) is None


def test_cli_lists_networks_and_auto(llama_bl, hypernet_dir, monkeypatch, capsys, tmp_path):
    from hypernet.cli import main as hn_main

    register(hypernet_dir)
    monkeypatch.setattr("sys.argv", ["hypernet", "list"])
    hn_main()
    out = capsys.readouterr().out
    assert hypernet_dir.name in out and "registered" in out
    proc = run_inproc(["methods"], monkeypatch, capsys, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("auto")
    assert f"network {hypernet_dir.name} (registered)" in proc.stdout


def test_cli_no_calibrate_and_auto_chain_errors(llama_bl, tok_dirs, monkeypatch, capsys, tmp_path):
    proc = run_inproc(["run", "--model", llama_bl, "--new-tok", tok_dirs["sp"], "--out", tmp_path / "o",
                       "--no-calibrate", "--calibrate-text", B.DATA / "bible_es.txt"], monkeypatch, capsys)
    assert proc.returncode == 2 and "contradict" in proc.stderr and not (tmp_path / "o").exists()
    proc = run_inproc(["run", "--model", llama_bl, "--new-tok", tok_dirs["sp"], "--out", tmp_path / "o",
                       "--method", "auto+fvt"], monkeypatch, capsys)
    assert proc.returncode == 2 and "cannot be chained" in proc.stderr
    proc = run_inproc(["run", "--model", llama_bl, "--new-tok", tok_dirs["sp"], "--out", tmp_path / "o",
                       "--set", "hypernet.nope=1"], monkeypatch, capsys)
    assert proc.returncode == 2 and "hypernet.nope" in proc.stderr and not (tmp_path / "o").exists()


def test_shipped_networks_follow_registered_ones_and_keep_predictions(llama_bl, hypernet_dir, tmp_path,
                                                                        monkeypatch):
    import hypernet.registry as reg
    from hypernet import HyperNet
    from hypernet.training import load_source

    monkeypatch.setattr(reg, "SHIPPED_DIR", tmp_path / "shipped")
    folder = reg.ship(hypernet_dir, "tiny", root=reg.SHIPPED_DIR)
    assert (folder / "model.safetensors").stat().st_size < (hypernet_dir / "model.safetensors").stat().st_size
    assert [(n.name, n.origin) for n in known_networks()] == [("tiny", "shipped")]
    registered = register(hypernet_dir)
    assert [n.origin for n in known_networks()] == ["registered", "shipped"]
    assert find_network(*load_source(str(llama_bl))[1:3])[0].name == registered.name
    _, E_in, E_out, _ = load_source(str(llama_bl))
    decs = [[5, 9], [17, 3, 40], [200]]
    a = HyperNet.load(hypernet_dir).predict(decs, E_in, E_out)
    b = HyperNet.load(folder).predict(decs, E_in, E_out)
    for x, y in zip(a, b):  # bfloat16 weights: the corrections move by well under 1% of a row
        assert (x - y).norm(dim=1).max() < 0.01 * x.norm(dim=1).min()


def test_every_shipped_network_loads_and_names_a_packaged_model():
    from hypernet import HyperNet
    from hypernet.registry import SHIPPED_DIR, trained_dynamic
    from transplant.io.sources import PACKAGED

    shipped = [n for n in known_networks() if n.origin == "shipped"]
    assert {n.name for n in shipped} == {p.name for p in SHIPPED_DIR.iterdir() if p.is_dir()}
    for n in shipped:
        net = HyperNet.load(n.path)
        # Named after its packaged model, or that name + "-dynamic" when fine-tuned for dynamic tokens.
        assert net.config.base_model in PACKAGED
        assert n.name == net.config.base_model or (n.name == f"{net.config.base_model}-dynamic" and trained_dynamic(n))
        assert n.training.get("stage2_done", 0) > 0  # trained through the LM, not stage 1 only
    # auto (a static transplant) takes each model's own network, never the dynamic one.
    names = [n.name for n in shipped]
    assert all(names.index(n) < names.index(f"{n}-dynamic") for n in names if f"{n}-dynamic" in names)


def test_a_model_with_fewer_rows_than_the_fingerprint_ids_still_matches(llama_bl, hypernet_dir):
    """The match is the mean cosine over the fingerprint rows the model has (not over all 256)."""
    from hypernet import HyperNet
    from hypernet.training import load_source

    _, E_in, E_out, _ = load_source(str(llama_bl))
    cut = E_in.shape[0] * 2 // 3  # the last third of the fingerprint ids is past the end
    net = register(hypernet_dir)
    assert find_network(E_in[:cut], E_out[:cut])[0].name == net.name
    assert HyperNet.load(hypernet_dir).check_source(E_in[:cut], E_out[:cut]) > 0.99
