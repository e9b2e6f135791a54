"""Where the benchmarks find things; imported by every script here (`python benchmarks/X.py` puts
this folder first on `sys.path`, so `from paths import ...` works from any working directory).

    HERE      benchmarks/ (results/ and the git-ignored work/ live here)
    ROOT      the checkout
    CORPORA   the shared corpora: $CORPORA, else ../shared/corpora beside the checkout

`checkout_first()` puts the checkout (and this folder) first on `sys.path`, so the scripts run
this checkout's `transplant` and `hypernet` even where another copy is installed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CORPORA = Path(os.environ.get("CORPORA", ROOT.parent / "shared" / "corpora"))


def checkout_first() -> None:
    """This checkout's packages first on `sys.path`, and the benchmark scripts importable."""
    sys.path.insert(0, str(ROOT))
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
