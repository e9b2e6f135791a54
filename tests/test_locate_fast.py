"""`locate_embeddings` without building the model (`embedding_keys.fast_layout`).

For every architecture the suite builds (tied and untied), the fast path either declines (None)
or gives exactly the meta-model path's layout, field by field. It must fire for the plain Llama
checkpoints the benchmarks use (tiny tied/untied/sharded, the synthetic checkpoint's layout), and
decline where the checkpoint's files do not decide the names on their own.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import arch_builders as A
import builders as B
from transplant.common.errors import TransplantError
from transplant.io import checkpoint as C
from transplant.io.embedding_keys import fast_layout

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 300
# Architectures whose fast path must fire (plain names, no conversions, no head bias).
MUST_FIRE = {"llama", "qwen2", "qwen3", "mistral", "gemma", "gemma3_text", "phi3", "cohere", "gpt2", "opt",
             "bloom", "falcon"}


def _fields(layout) -> dict:
    return {f.name: getattr(layout, f.name) for f in dataclasses.fields(layout)}


def _fast(folder: Path, trust: bool = False):
    fields = fast_layout(folder, trust)
    if fields is None:
        return None
    return C.EmbeddingLayout(folder, **dict(fields, dtype=C._dtype_of(fields["dtype"])))


def _same_or_declined(folder: Path):
    """The fast layout (or None) after checking it against the meta-model path."""
    slow = C._locate_on_meta(folder)
    fast = _fast(folder)
    if fast is not None:
        assert _fields(fast) == _fields(slow)
    assert _fields(C.locate_embeddings(folder)) == _fields(slow)
    return fast


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("arch", list(A.ARCHS))
def test_fast_path_matches_meta_model(arch, tied, tmp_path):
    model = A.tiny_arch(arch, VOCAB, tied, 1, 2)
    model.save_pretrained(str(tmp_path))
    fast = _same_or_declined(tmp_path)
    if arch in MUST_FIRE:
        assert fast is not None, f"{arch}: the fast path declined"
    else:  # phi: a head bias; gpt_neox: transformers renames its checkpoint keys
        assert fast is None


@pytest.mark.parametrize("shard_size", [None, "20KB"])
@pytest.mark.parametrize("tied", [True, False])
def test_fires_on_tiny_llama(tied, shard_size, tmp_path):
    model = B.tiny_model("llama", 500, tied, 1, 2)
    model.save_pretrained(str(tmp_path), **({"max_shard_size": shard_size} if shard_size else {}))
    assert (tmp_path / C.INDEX_NAME).exists() == bool(shard_size)
    fast = _same_or_declined(tmp_path)
    assert fast is not None
    assert (fast.input_key, fast.output_key, fast.tied, fast.head_key) == (
        "model.embed_tokens.weight", None if tied else "lm_head.weight", tied, "lm_head.weight")


def test_fires_on_synthetic_benchmark_layout(tmp_path):
    """The benchmark's synthetic checkpoint (index, 3 shards, head alone in the last), tiny widths."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import make_synthetic_checkpoint as S
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    ids = tmp_path / "ids"
    ids.mkdir()
    (ids / "config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    out = tmp_path / "synth"
    S.build(out, ids, hidden=64, inter=128, heads=4, kv_heads=2, layers=2, vocab=VOCAB, shards=3)
    fast = _same_or_declined(out)
    assert fast is not None and fast.dtype == torch.bfloat16 and not fast.tied
    assert fast.shard_of[fast.input_key] != fast.shard_of[fast.output_key]


def _edit(folder: Path, add: dict[str, torch.Tensor] = (), drop: tuple[str, ...] = ()) -> None:
    path = folder / "model.safetensors"
    tensors = {k: v for k, v in load_file(path).items() if k not in drop}
    tensors.update(dict(add))
    save_file(tensors, path, metadata={"format": "pt"})


@pytest.mark.parametrize("tied", [True, False])
def test_declines_on_lookalike_keys(tied, tmp_path):
    """Keys the slow path's prefix/suffix matching could take (or a head bias): build the model."""
    B.tiny_model("llama", VOCAB, tied, 1, 2).save_pretrained(str(tmp_path))
    row = torch.zeros(VOCAB, 32)
    for extra in ({"model.lm_head.weight": row}, {"lm_head.bias": torch.zeros(VOCAB)},
                  {"embed_tokens.weight": row}, {"model.decoder.embed_tokens.weight": row}):
        _edit(tmp_path, add=extra)
        assert fast_layout(tmp_path) is None, extra
        slow = C._locate_on_meta(tmp_path)
        assert _fields(C.locate_embeddings(tmp_path)) == _fields(slow)
        _edit(tmp_path, drop=tuple(extra))


def test_unrelated_extra_matrix_changes_nothing(tmp_path):
    """Another [vocab, hidden] tensor under an unrelated name is not an embedding for either path."""
    B.tiny_model("llama", VOCAB, True, 1, 2).save_pretrained(str(tmp_path))
    _edit(tmp_path, add={"model.extra_table.weight": torch.zeros(VOCAB, 32)})
    assert _same_or_declined(tmp_path) is not None


def test_declines_on_odd_inputs(tmp_path):
    B.tiny_model("llama", VOCAB, False, 1, 2).save_pretrained(str(tmp_path))
    assert fast_layout(tmp_path, trust_remote_code=True) is None
    # An untied config whose head is missing: the slow path's error, unchanged.
    _edit(tmp_path, drop=("lm_head.weight",))
    assert fast_layout(tmp_path) is None
    with pytest.raises(TransplantError, match="untied LM head not found"):
        C.locate_embeddings(tmp_path)
    # vocab_size disagreeing with the stored rows: not decided by the files, left to the slow path.
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(dict(cfg, vocab_size=VOCAB + 1, tie_word_embeddings=True)))
    assert fast_layout(tmp_path) is None
    # Custom code is refused before either path, with the same message.
    (tmp_path / "config.json").write_text(json.dumps(dict(cfg, auto_map={"AutoModelForCausalLM": "x.Y"})))
    assert fast_layout(tmp_path) is None
    with pytest.raises(TransplantError, match="needs custom code"):
        C.locate_embeddings(tmp_path)


def test_fast_path_imports_no_modeling_code(tmp_path):
    B.tiny_model("llama", VOCAB, False, 1, 2).save_pretrained(str(tmp_path))
    code = ("import sys; from pathlib import Path; from transplant.io.checkpoint import locate_embeddings; "
            f"l = locate_embeddings(Path({str(tmp_path)!r})); "
            "print(l.input_key, 'transformers.models.llama.modeling_llama' in sys.modules, "
            "'transformers.modeling_utils' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["model.embed_tokens.weight", "False", "False"]
