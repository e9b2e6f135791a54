"""CW2V against FVT, the mix it starts from: SmolLM2-135M-Instruct onto a German BPE trained `--like`
it on `CORPORA/de/train.txt` (so it records its text, which CW2V trains on: the head only), each
method alone (no calibration, no quality line), scored on the report half of `de/dev.txt` (50 kB).

Results: `benchmarks/results/cw2v_vs_fvt.json` (bits per byte, the ratio to the original's, the
run's wall seconds).

Usage:
    python benchmarks/cw2v_vs_fvt.py                 # about 8 minutes on 2 cores
    python benchmarks/cw2v_vs_fvt.py --steps 3000
"""

from __future__ import annotations

import argparse
import json
import time

from paths import CORPORA, HERE, checkout_first, dev_parts

checkout_first()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1500)
    args = ap.parse_args()
    from transplant import transplant
    from transplant.measure.evaluate import evaluate_bpb
    from transplant.train.tokenizer_train import train_tokenizer

    work = HERE / "work" / "cw2v"
    work.mkdir(parents=True, exist_ok=True)
    tok = work / "de-tok"
    if not (tok / "tokenizer.json").is_file():
        train_tokenizer([str(CORPORA / "de" / "train.txt")], 32000, tok, like="smollm2-135m-instruct")
    text = dev_parts(CORPORA / "de" / "dev.txt", 50_000)["report"]
    results = {"original": {"bpb": evaluate_bpb("smollm2-135m-instruct", [text]).bpb}}
    for method, options in (("fvt", None), ("cw2v", {"cw2v.steps": args.steps})):
        began = time.perf_counter()
        out = work / f"smollm2-de-{method}"
        transplant("smollm2-135m-instruct", str(tok), str(out), method=method, options=options, overwrite=True,
                   calibrate=False, quality_check=False)
        seconds = time.perf_counter() - began
        bpb = evaluate_bpb(str(out), [text]).bpb
        results[method] = {"bpb": bpb, "ratio": bpb / results["original"]["bpb"], "run_seconds": round(seconds, 1)}
        print(method, results[method], flush=True)
    results["settings"] = {"cw2v.steps": args.steps, "text_bytes": len(text.encode("utf-8"))}
    (HERE / "results" / "cw2v_vs_fvt.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
