"""Shared helpers of the glue scripts that run a peer inside the peers' virtualenv.

They load tokenizers and the source embedding matrix the way the peers expect (transformers
tokenizers, a float32 matrix), write the peer's embedding matrix as safetensors (no pickles) and
print one `RESULT {json}` line that benchmarks/peers.py reads.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

# Stubs of heavy imports the peers never use here go LAST on the path: a real package wins.
sys.path.append(str(Path(__file__).resolve().parent / "stubs"))


def load_tokenizer(folder: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def load_matrix(shard: str, key: str):
    """The embedding matrix `key` of a safetensors shard, as float32 numpy."""
    from safetensors import safe_open

    with safe_open(shard, framework="pt") as fh:
        return fh.get_tensor(key).float().numpy()


def save_matrix(path: str, matrix) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    save_file({"embeddings": np.ascontiguousarray(matrix, dtype=np.float32)}, path)


def report(**fields) -> None:
    print("RESULT " + json.dumps(fields), flush=True)


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = round(time.perf_counter() - self.t0, 1)
