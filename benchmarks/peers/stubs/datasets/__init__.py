"""Stub of `datasets` for the peer benchmarks (see ../README.md): importable, never usable."""

_WHY = ("the real `datasets` package is not installed in the peers' virtualenv; the benchmark passes "
        "ready fastText models so the peers never load datasets (see benchmarks/peers/stubs/README.md)")


def load_dataset(*args, **kwargs):
    raise RuntimeError(f"datasets.load_dataset called: {_WHY}")
