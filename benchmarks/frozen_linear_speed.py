"""The input gradient through a frozen bf16 linear layer on this CPU: torch's own kernel against
`transplant.io.frozen_linear` (float32 blocks of the weight), side by side in one process.

One Mistral-7B MLP projection (14,336 x 4,096, bf16) and a batch of `--tokens` rows: the forward
`x @ W.T` and the backward's `grad @ W`, each the best of `--repeats`, with the threads torch uses
by default here. The gradients are compared (the routed one is computed in float32 and rounded
once). Results: `benchmarks/results/frozen_linear_speed.json`.

Usage:
    python benchmarks/frozen_linear_speed.py
"""

from __future__ import annotations

import argparse
import json
import os
import time

from paths import HERE, checkout_first

checkout_first()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rows", type=int, default=14336)
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--results", default=str(HERE / "results" / "frozen_linear_speed.json"))
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F

    from transplant.io.frozen_linear import frozen_linear

    torch.manual_seed(0)
    w = (torch.randn(args.rows, args.width) * 0.02).bfloat16()
    x0 = torch.randn(args.tokens, args.width).bfloat16()
    flops = 2 * args.tokens * args.rows * args.width
    rows = {}
    for name, fn in (("torch", F.linear), ("routed", frozen_linear)):
        best_f = best_b = float("inf")
        for _ in range(args.repeats):
            x = x0.clone().requires_grad_(True)
            t0 = time.perf_counter()
            y = fn(x, w)
            t1 = time.perf_counter()
            y.float().sum().backward()
            t2 = time.perf_counter()
            best_f, best_b = min(best_f, t1 - t0), min(best_b, t2 - t1)
        rows[name] = {"forward_s": best_f, "backward_s": best_b, "forward_gflops": flops / best_f / 1e9,
                      "backward_gflops": flops / best_b / 1e9, "grad": x.grad.float()}
        print(f"{name:7s} forward {best_f:.3f} s ({flops / best_f / 1e9:.1f} GFLOPS), backward {best_b:.3f} s "
              f"({flops / best_b / 1e9:.1f} GFLOPS)", flush=True)
    diff = float((rows["torch"]["grad"] - rows["routed"]["grad"]).abs().max())
    scale = float(rows["torch"]["grad"].abs().max())
    for r in rows.values():
        del r["grad"]
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    doc = {"settings": vars(args), "threads": torch.get_num_threads(),
           "cpu": {"avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags, "avx2": "avx2" in flags},
           "rows": rows, "grad_max_abs_difference": diff, "grad_max_abs": scale,
           "backward_speedup": rows["torch"]["backward_s"] / rows["routed"]["backward_s"]}
    with open(args.results, "w") as fh:
        json.dump(doc, fh, indent=1)
        fh.write("\n")
    print(f"backward x{doc['backward_speedup']:.0f}; gradients differ by at most {diff:.3g} (max |grad| {scale:.3g})")


if __name__ == "__main__":
    main()
