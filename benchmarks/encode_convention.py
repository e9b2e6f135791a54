"""Loss of Gemma-3-270M moved onto SmolLM2's tokenizer, with and without the start token a plain
`tokenizer(text)` adds (Gemma always saw `<bos>` first; the output tokenizer adds its mapped
counterpart, `<|im_start|>`, SmolLM2's declared bos).

Usage:
    python benchmarks/encode_convention.py [--text ../shared/corpora/en/dev.txt ...] [--bytes 3000]

Each text is scored on the leading --bytes of whole documents of its report part (`paths.dev_parts`);
results go to benchmarks/results/encode_convention.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from paths import CORPORA, HERE, checkout_first, dev_parts

checkout_first()


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from transplant import transplant
    from transplant.measure.evaluate import take_bytes
    from transplant.io.sources import resolve_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--text", type=Path, nargs="+", default=[CORPORA / "en" / "dev.txt", CORPORA / "code" / "dev.txt"])
    ap.add_argument("--bytes", type=int, default=3000)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "gemma-on-smollm2-tok"
        transplant(resolve_model("gemma-3-270m"), resolve_model("smollm2-135m-instruct"), out)
        tok = AutoTokenizer.from_pretrained(str(out))
        model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
        for path in args.text:
            text = take_bytes(dev_parts(path, 10**9)["report"], args.bytes)
            print(f"{len(text.encode('utf-8'))} bytes of {path}")
            for add in (True, False):
                ids = tok(text, add_special_tokens=add, return_tensors="pt").input_ids
                with torch.no_grad():
                    loss = float(model(input_ids=ids, labels=ids).loss)
                first = tok.convert_ids_to_tokens(ids[0, :1].tolist())[0]
                print(f"add_special_tokens={add!s:<5} first token {first!r:<16} {loss:.3f} nats/token")
                rows.append({"text": f"{path.parent.name}/{path.name}", "part": "report",
                             "bytes": len(text.encode("utf-8")), "add_special_tokens": add, "first_token": first,
                             "nats_per_token": loss})
    (HERE / "results" / "encode_convention.json").write_text(
        json.dumps({"model": "gemma-3-270m onto smollm2-135m-instruct's tokenizer (default method)",
                    "results": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
