"""Run wechsel 0.0.4 (Minixhofer et al., 2022) as shipped and save its embedding matrix.

Runs inside the peers' virtualenv (see benchmarks/peers.py). Uses the peer's own defaults
(fastText subword information, 10 neighbours, temperature 0.1) with the fastText models and the
bilingual dictionary it is given; wechsel aligns them by orthogonal Procrustes itself.

Example:
    /work/peers-venv/bin/python benchmarks/peers/wechsel_rows.py --source-vectors en.bin \
        --target-vectors de.bin --dictionary en-de.tsv --source-tokenizer smollm2/ \
        --target-tokenizer de-bpe/ --shard smollm2/model.safetensors \
        --key model.embed_tokens.weight --out wechsel.safetensors
"""

from __future__ import annotations

import argparse

from _common import Timer, load_matrix, load_tokenizer, report, save_matrix


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name in ("source-vectors", "target-vectors", "dictionary", "source-tokenizer", "target-tokenizer",
                 "shard", "key", "out"):
        ap.add_argument(f"--{name}", required=True)
    args = ap.parse_args()

    import fasttext
    from wechsel import WECHSEL

    with Timer() as t:
        source_tok = load_tokenizer(args.source_tokenizer)
        target_tok = load_tokenizer(args.target_tokenizer)
        matrix = load_matrix(args.shard, args.key)[: len(source_tok)]
        wechsel = WECHSEL(fasttext.load_model(args.source_vectors), fasttext.load_model(args.target_vectors),
                          bilingual_dictionary=args.dictionary)
        target, info = wechsel.apply(source_tok, target_tok, matrix)
    save_matrix(args.out, target)
    report(peer="wechsel", rows=int(target.shape[0]), not_found=len(info.not_found), seconds=t.seconds)


if __name__ == "__main__":
    main()
