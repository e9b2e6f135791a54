"""Progress bars written into a log (stderr not a terminal) stay readable."""

from __future__ import annotations

import io
import sys

from transplant.common import progress


def test_nested_bars_in_a_log_never_move_the_cursor(monkeypatch):
    """An outer and an inner bar (planning and a method's own) written to a file-like stderr:
    no cursor-up escape (`ESC[A`), which log files show as `[A` lines."""
    log = io.StringIO()
    monkeypatch.setattr(progress.sys, "stderr", log)
    restore = progress.set_quiet(False)
    monkeypatch.setattr(progress, "are_progress_bars_disabled", lambda: False)
    # huggingface_hub's tqdm asks its own switch too, which an earlier test may have left off.
    hub_tqdm = sys.modules["huggingface_hub.utils.tqdm"]
    monkeypatch.setattr(hub_tqdm, "are_progress_bars_disabled", lambda name=None: False)
    try:
        for _ in progress.bar(range(3), desc="planning", mininterval=0):
            for _ in progress.bar(range(5), desc="omp", mininterval=0):
                pass
    finally:
        restore()
    text = log.getvalue()
    assert "planning" in text and "omp" in text  # the bars were drawn
    assert "\x1b[A" not in text, repr(text[:200])
