"""Why our FVT number (quality_de.py) differs from the outside reference (2.388 BPB).

Probes, on the same German tokenizer and dev text as `quality_de.py`:
  1. alignment audit: where every FVT decomposition comes from (the old tokenizer's own
     encoding vs the exact byte segmentation used for partial UTF-8 tokens), which rows fell back
     to the mean and why (bytes absent from SmolLM2's vocabulary), how many exact-overlap tokens
     the old tokenizer would itself encode differently;
  2. protocol sensitivity: BPB of the original and of the FVT model with the start token the
     protocol uses (bos = `<|im_start|>`) vs `<|endoftext|>`, and with bf16 weights;
  3. the reference's "mean" number vs a uniform distribution over the new vocabulary
     (log2(V) / bytes-per-token), i.e. what an all-rows-identical tied model scores.

Results: `benchmarks/results/fvt_probe.json` + markdown on stdout.

Usage:
    python benchmarks/quality_de.py        # trains the tokenizer (benchmarks/work/quality_de/de-bpe)
    python benchmarks/fvt_probe.py
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

from paths import CORPORA, HERE, checkout_first

checkout_first()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--new-tok", type=Path, default=HERE / "work" / "quality_de" / "de-bpe")
    ap.add_argument("--dev", type=Path, default=CORPORA / "de" / "dev.txt")
    ap.add_argument("--eval-bytes", type=int, default=50_000)
    ap.add_argument("--work", type=Path, default=HERE / "work" / "fvt_probe")
    ap.add_argument("--results", type=Path, default=HERE / "results" / "fvt_probe.json")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from transplant import transplant
    from transplant.core.align import Alignment
    from transplant.measure.evaluate import score, take_bytes
    from transplant.io.sources import resolve_model
    from transplant.core.vocab import load_tokenizer

    folder = resolve_model(args.model)
    old_src, new_src = load_tokenizer(folder), load_tokenizer(args.new_tok)
    old, new = old_src.vocabulary(), new_src.vocabulary()
    al = Alignment.build(old, new)
    by_encoding = partial_utf8 = 0
    for i, ids in al.decompositions.items():
        try:
            text = new.tokens[i].text.decode("utf-8")
        except UnicodeDecodeError:
            partial_utf8 += 1
            continue
        by_encoding += old.tokenizer.encode(text, add_special_tokens=False).ids == ids
    no_decomp = [i for i, t in enumerate(new.tokens) if t.kind != "special" and i not in al.exact
                 and i not in al.decompositions]
    exact_not_self = sum(old.tokenizer.encode(new.tokens[i].text.decode("utf-8", "replace"),
                                              add_special_tokens=False).ids != [j] for i, j in al.exact.items())
    audit = {
        "alignment": al.stats(),
        "decompositions_from_old_encoding": by_encoding,
        "decompositions_by_byte_segmentation_partial_utf8": partial_utf8,
        "no_decomposition_rows": [new.tokens[i].text.hex() for i in no_decomp],
        "old_vocab_missing_single_bytes": [f"{b:02x}" for b in range(256) if old.lookup(bytes([b])) is None],
        "exact_tokens_old_tokenizer_encodes_differently": exact_not_self,
        "special_rows": {new.tokens[n].text.decode(): old.tokens[o].text.decode() for n, o in al.special_rows.items()},
    }

    text = take_bytes(args.dev.read_text(encoding="utf-8"), args.eval_bytes)
    out = args.work / "fvt"
    transplant(args.model, args.new_tok, out, method="fvt", overwrite=True)
    protocol = {}
    for name, fold in (("original", folder), ("fvt", out)):
        src = load_tokenizer(fold)

        def enc(docs, src=src):
            return [e.ids for e in src.tokenizer.encode_batch(docs, add_special_tokens=False)]
        for dtype in (torch.float32, torch.bfloat16):
            model = AutoModelForCausalLM.from_pretrained(str(fold), dtype=dtype).eval()
            starts = ("<|im_start|>", "<|endoftext|>") if dtype == torch.float32 else ("<|im_start|>",)
            for start in starts:
                r = score(model, enc, src.tokenizer.token_to_id(start), [text])
                protocol[f"{name} {str(dtype).split('.')[1]} start={start}"] = round(r.bpb, 4)
                print(f"{name} {dtype} start={start}: {r.bpb:.4f}", flush=True)
                if name == "fvt" and dtype == torch.float32 and start == "<|im_start|>":
                    bpt = r.bytes_per_token
            del model
    shutil.rmtree(args.work, ignore_errors=True)
    uniform = math.log2(len(new)) / bpt
    doc = {"audit": audit, "protocol_bpb": protocol,
           "uniform_over_new_vocab_bpb": round(uniform, 4), "reference_mean_bpb": 3.185,
           "new_vocab": len(new), "bytes_per_token": round(bpt, 4)}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(doc, indent=2) + "\n")
    print("\n| probe | value |\n|---|---|")
    for k, v in audit.items():
        print(f"| {k} | {v} |")
    for k, v in protocol.items():
        print(f"| BPB {k} | {v} |")
    print(f"| uniform over {len(new)} ids: log2(V)/bytes-per-token | {uniform:.4f} (reference 'mean': 3.185) |")
    print(f"\nwrote {args.results}")


if __name__ == "__main__":
    main()
