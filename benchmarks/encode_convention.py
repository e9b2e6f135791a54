"""Loss of Gemma-3-270M moved onto SmolLM2's tokenizer, with and without the start token a plain
`tokenizer(text)` adds (Gemma always saw `<bos>` first; the output tokenizer adds its mapped
counterpart, `<|im_start|>`, SmolLM2's declared bos).

Usage:
    python benchmarks/encode_convention.py [--text ../shared/corpora/en/dev.txt] [--bytes 3000]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from paths import CORPORA, checkout_first

checkout_first()


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from transplant import transplant
    from transplant.measure.evaluate import take_bytes
    from transplant.io.sources import resolve_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--text", type=Path, default=CORPORA / "en" / "dev.txt")
    ap.add_argument("--bytes", type=int, default=3000)
    args = ap.parse_args()
    text = take_bytes(args.text.read_text(encoding="utf-8"), args.bytes)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "gemma-on-smollm2-tok"
        transplant(resolve_model("gemma-3-270m"), resolve_model("smollm2-135m-instruct"), out)
        tok = AutoTokenizer.from_pretrained(str(out))
        model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
        print(f"{len(text.encode('utf-8'))} bytes of {args.text.name}")
        for add in (True, False):
            ids = tok(text, add_special_tokens=add, return_tensors="pt").input_ids
            with torch.no_grad():
                loss = float(model(input_ids=ids, labels=ids).loss)
            first = tok.convert_ids_to_tokens(ids[0, :1].tolist())[0]
            print(f"add_special_tokens={add!s:<5} first token {first!r:<16} {loss:.3f} nats/token")


if __name__ == "__main__":
    main()
