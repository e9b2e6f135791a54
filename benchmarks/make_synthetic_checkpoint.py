"""Write a synthetic bf16 Llama checkpoint with Mistral-7B widths, for the streaming benchmark.

What it makes
-------------
A Hugging Face folder that loads with `AutoModelForCausalLM.from_pretrained`: LlamaForCausalLM,
hidden 4096, intermediate 14336, 32 heads, 8 kv heads, 4 layers, untied lm_head, vocab 49152,
bf16 weights drawn as `randn * 0.02` (RMSNorm weights = 1) from a fixed seed per tensor, so the
bytes are reproducible. Weights are split into 6 safetensors shards (~2.5 GB total) with
`model.safetensors.index.json`; `model.embed_tokens.weight` is in the first shard and
`lm_head.weight` alone in the last, as `save_pretrained` lays them out. `config.json`,
`generation_config.json` and SmolLM2's tokenizer files (copied from the converted
SmolLM2-135M-Instruct folder) complete it.

Memory: each shard is streamed to disk one tensor at a time (header first, then each tensor's
bytes as it is generated), so peak memory is one tensor (~400 MB for the embedding).

Usage:
    python benchmarks/make_synthetic_checkpoint.py --out benchmarks/work/synth-7b-widths
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import sys
import time
from pathlib import Path

from paths import HERE, checkout_first

checkout_first()

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


def tensor_specs(hidden: int, inter: int, heads: int, kv_heads: int, layers: int, vocab: int) -> list[tuple[str, list[int]]]:
    """(name, shape) in the order `save_pretrained` writes a LlamaForCausalLM."""
    head_dim = hidden // heads
    specs = [("model.embed_tokens.weight", [vocab, hidden])]
    for i in range(layers):
        p = f"model.layers.{i}"
        specs += [
            (f"{p}.self_attn.q_proj.weight", [heads * head_dim, hidden]),
            (f"{p}.self_attn.k_proj.weight", [kv_heads * head_dim, hidden]),
            (f"{p}.self_attn.v_proj.weight", [kv_heads * head_dim, hidden]),
            (f"{p}.self_attn.o_proj.weight", [hidden, heads * head_dim]),
            (f"{p}.mlp.gate_proj.weight", [inter, hidden]),
            (f"{p}.mlp.up_proj.weight", [inter, hidden]),
            (f"{p}.mlp.down_proj.weight", [hidden, inter]),
            (f"{p}.input_layernorm.weight", [hidden]),
            (f"{p}.post_attention_layernorm.weight", [hidden]),
        ]
    specs += [("model.norm.weight", [hidden]), ("lm_head.weight", [vocab, hidden])]
    return specs


def numel(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def assign_shards(specs: list[tuple[str, list[int]]], n_shards: int) -> list[list[tuple[str, list[int]]]]:
    """lm_head alone in the last shard; the rest split into n_shards-1 contiguous, balanced groups."""
    body, head = specs[:-1], specs[-1:]
    total = sum(numel(s) for _, s in body)
    groups: list[list] = [[] for _ in range(n_shards - 1)]
    start = 0
    for name, shape in body:
        k = min(n_shards - 2, start * (n_shards - 1) // total)
        groups[k].append((name, shape))
        start += numel(shape)
    return [g for g in groups if g] + [head]


def make_tensor(name: str, shape: list[int], seed: int):
    import torch

    if name.endswith("norm.weight"):
        return torch.ones(shape, dtype=torch.bfloat16)
    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, dtype=torch.bfloat16, generator=gen)
    t.mul_(0.02)
    return t


def write_shard(path: Path, tensors: list[tuple[str, list[int]]], seeds: dict[str, int]) -> int:
    """Stream one safetensors file: header, then each tensor's bytes as it is generated."""
    import torch

    header, offset = {}, 0
    for name, shape in tensors:
        size = numel(shape) * 2
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)))
        fh.write(blob)
        for name, shape in tensors:
            t = make_tensor(name, shape, seeds[name])
            fh.write(memoryview(t.view(torch.uint8).numpy()))
            del t
    return offset


def build(out: Path, smollm_folder: Path, *, hidden: int = 4096, inter: int = 14336, heads: int = 32,
          kv_heads: int = 8, layers: int = 4, vocab: int = 49152, shards: int = 6, seed: int = 0) -> dict:
    from transformers import GenerationConfig, LlamaConfig

    out.mkdir(parents=True, exist_ok=True)
    specs = tensor_specs(hidden, inter, heads, kv_heads, layers, vocab)
    seeds = {name: seed * 1_000_003 + i for i, (name, _) in enumerate(specs)}
    groups = assign_shards(specs, shards)
    weight_map, total = {}, 0
    for k, group in enumerate(groups, 1):
        fname = f"model-{k:05d}-of-{len(groups):05d}.safetensors"
        total += write_shard(out / fname, group, seeds)
        weight_map.update({name: fname for name, _ in group})
        print(f"  {fname}: {len(group)} tensors", flush=True)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")

    old_cfg = json.loads((smollm_folder / "config.json").read_text())
    ids = {k: old_cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in old_cfg}
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=hidden // heads,
                         max_position_embeddings=32768, rms_norm_eps=1e-5, tie_word_embeddings=False,
                         rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0}, **ids)
    config.architectures = ["LlamaForCausalLM"]
    config.dtype = "bfloat16"
    config.save_pretrained(str(out))
    GenerationConfig(**ids).save_pretrained(str(out))
    for name in TOKENIZER_FILES:
        if (smollm_folder / name).exists():
            shutil.copyfile(smollm_folder / name, out / name)
    return {"folder": str(out), "shards": len(groups), "total_size": total, "tensors": len(specs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / "work" / "synth-7b-widths")
    ap.add_argument("--smollm", default="smollm2-135m-instruct",
                    help="SmolLM2 model argument or folder to copy the tokenizer/special ids from")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--shards", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args()

    from transplant.io.sources import resolve_model

    if args.out.exists():
        if not args.overwrite:
            sys.exit(f"{args.out} exists (pass --overwrite)")
        shutil.rmtree(args.out)
    t0 = time.perf_counter()
    info = build(args.out, resolve_model(args.smollm), layers=args.layers, shards=args.shards, seed=args.seed)
    print(f"wrote {info['folder']}: {info['shards']} shards, {info['total_size'] / 1e9:.2f} GB of weights "
          f"in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
