"""Output-calibration variants side by side on one task, fitted on train.txt, scored on dev.txt.

The model reads each text once (new input rows, unscaled); each variant rescales only the LM
head's made rows, so the scored BPB is what an untied (or `--untie`) calibration gives:
  none     no calibration
  scale    one scale for every made row
  buckets  one scale per bucket of rows (by how many old rows they mix), shared scale for thin ones

    python benchmarks/calibration_probe.py --task de --method fvt

Scored on the report part of the dev text (`paths.dev_parts`); the result is printed and merged
into benchmarks/results/calibration_probe.json by (task, method, fit tokens).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from paths import HERE, checkout_first, dev_parts

checkout_first()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="de")
    ap.add_argument("--method", default="fvt")
    ap.add_argument("--fit-tokens", type=int, default=4096)  # the calibration default
    ap.add_argument("--eval-bytes", type=int, default=20_000)
    args = ap.parse_args()

    import numpy as np
    import torch

    from harness import method_kwargs, task_setup
    from transplant import transplant
    from transplant.methods.calibrate import final_hidden_states, fit_scale, row_buckets
    from transplant.methods.calibrate_compact import nll_grid as _nll_grid
    from transplant.measure.evaluate import pack, split_documents
    from transplant.io.sources import resolve_model
    from transplant.core.vocab import load_tokenizer

    setup = task_setup(args.task)
    kwargs = method_kwargs(args.method, setup)
    result = transplant(setup["model"], setup["new_tok"], None, **kwargs)
    plan = result.plan
    folder = resolve_model(setup["model"])
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    model.resize_token_embeddings(plan.new_size, mean_resizing=False)
    with torch.no_grad():
        model.get_input_embeddings().weight.copy_(result.embeddings["input"])
    head = result.embeddings.get("output", result.embeddings["input"]).to(torch.float32)
    tok = load_tokenizer(setup["new_tok"]).tokenizer
    ids = result.special_ids
    start = ids.bos if ids.bos is not None else ids.eos[0]

    def states(text: str, max_tokens: int | None):
        docs = split_documents(text)
        enc = [e.ids for e in tok.encode_batch(docs, add_special_tokens=False)]
        if max_tokens:
            taken, used = [], 0
            for d in enc:
                if used >= max_tokens:
                    break
                taken.append(d[: max_tokens - used])
                used += len(taken[-1])
            enc = taken
        return final_hidden_states(model, [c for c in pack(enc, 512) if c], start)

    made_np = plan.side("output").made_rows()
    made = torch.from_numpy(made_np)
    buckets = row_buckets(plan.side("output"), made_np)
    h_fit, y_fit = states(Path(setup["train"]).read_text(encoding="utf-8"), args.fit_tokens)
    dev = dev_parts(setup["dev"], args.eval_bytes)["report"]
    h_dev, y_dev = states(dev, None)
    n_bytes = len(dev.encode("utf-8"))
    single = fit_scale(h_fit, y_fit, head, made)
    bucketed = fit_scale(h_fit, y_fit, head, made, buckets=buckets)

    def dev_bpb(scales_per_row: np.ndarray) -> float:
        scaled = head * torch.from_numpy(scales_per_row.astype(np.float32)).unsqueeze(1)
        nll, _ = _nll_grid(h_dev, y_dev, scaled, made, np.array([1.0]), lambda x: x)
        return float(nll[0]) / math.log(2) / n_bytes

    ones = np.ones(plan.new_size)
    s1 = ones.copy()
    s1[made_np] = single.scale
    sb = ones.copy()
    if bucketed.bucket_scales:
        sb[made_np] = np.asarray(bucketed.bucket_scales)[buckets[made_np]]
    else:
        sb = s1
    rows = {"none": dev_bpb(ones), "scale": dev_bpb(s1), "buckets": dev_bpb(sb)}
    row = {"task": args.task, "method": args.method, "fit_tokens": args.fit_tokens, "dev_part": "report",
           "dev_bytes": n_bytes, "dev_bpb_output_side": rows, "scale": single.scale,
           "bucket_scales": bucketed.bucket_scales, "bucket_support": bucketed.bucket_support,
           "made_share": single.made_share, "mass_before": single.made_mass_before,
           "mass_after": single.made_mass_after}
    print(json.dumps(row, indent=1))
    results = HERE / "results" / "calibration_probe.json"
    doc = json.loads(results.read_text()) if results.exists() else {"results": []}
    key = (args.task, args.method, args.fit_tokens)
    doc["results"] = [r for r in doc["results"] if (r["task"], r["method"], r["fit_tokens"]) != key] + [row]
    results.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
