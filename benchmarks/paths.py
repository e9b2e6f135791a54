"""Where the benchmarks find things; imported by every script here (`python benchmarks/X.py` puts
this folder first on `sys.path`, so `from paths import ...` works from any working directory).

    HERE      benchmarks/ (results/ and the git-ignored work/ live here)
    ROOT      the checkout
    CORPORA   the shared corpora: $CORPORA, else ../shared/corpora beside the checkout

`dev_parts(path, limit)` cuts a dev text into its two parts (see there): defaults are chosen on
"tune", results are reported on "report".

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


def dev_parts(path: str | Path, limit: int) -> dict[str, str]:
    """The tuning and the report part of a dev text, each at most `limit` UTF-8 bytes of whole documents.

    tune    the leading documents: the slice every default (WORD_START, FOCUS's temperature, OMP's
            cap, tokenadapt's settings, the order of special-token roles) was chosen on.
    report  the same amount taken from the second half of the documents, which no choice looked
            at: the results in BENCHMARKS.md and README.md are scored on it.
    """
    from transplant.common.texts import split_documents, take_bytes

    docs = split_documents(Path(path).read_text(encoding="utf-8"))
    return {"tune": take_bytes("".join(docs), limit), "report": take_bytes("".join(docs[len(docs) // 2:]), limit)}
