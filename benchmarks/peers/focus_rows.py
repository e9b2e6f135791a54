"""Run deepfocus 1.0.1 (FOCUS, Dobler & de Melo, 2023) as shipped and save its embedding matrix.

Runs inside the peers' virtualenv (see benchmarks/peers.py). FOCUS gets a ready token-level
fastText model of the target tokenizer (`fasttext_model_path`, its option 3), so it neither
tokenizes text nor trains; everything else is the peer's default (exact matches copied, sparsemax
over the overlapping tokens' auxiliary-space similarities, N(mean, std) for tokens without a
vector, seed 42).

Example:
    /work/peers-venv/bin/python benchmarks/peers/focus_rows.py --vectors de-tok.bin \
        --source-tokenizer smollm2/ --target-tokenizer de-bpe/ \
        --shard smollm2/model.safetensors --key model.embed_tokens.weight --out focus.safetensors
"""

from __future__ import annotations

import argparse

from _common import Timer, load_matrix, load_tokenizer, report, save_matrix


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name in ("vectors", "source-tokenizer", "target-tokenizer", "shard", "key", "out"):
        ap.add_argument(f"--{name}", required=True)
    args = ap.parse_args()

    import torch
    from deepfocus import FOCUS

    with Timer() as t:
        source_tok = load_tokenizer(args.source_tokenizer)
        target_tok = load_tokenizer(args.target_tokenizer)
        matrix = torch.from_numpy(load_matrix(args.shard, args.key)[: len(source_tok)])
        target = FOCUS(target_tokenizer=target_tok, source_tokenizer=source_tok, source_embeddings=matrix,
                       fasttext_model_path=args.vectors, verbosity="info")
    save_matrix(args.out, target.numpy())
    report(peer="deepfocus", rows=int(target.shape[0]), seconds=t.seconds)


if __name__ == "__main__":
    main()
