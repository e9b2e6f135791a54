"""Progress bars and stage messages on stderr, silenced by `transplant --quiet` or by the standard
`HF_HUB_DISABLE_PROGRESS_BARS=1` (huggingface_hub's `disable_progress_bars()` works as well).

Bars are `huggingface_hub.utils.tqdm`, so they obey the same switches as the hub's and
transformers' own bars (e.g. "Loading weights"); `--quiet` turns those off too.

Example:
    >>> total = 0
    >>> for batch in bar([1, 2, 3], desc="scoring", unit="batch"):  # the bar goes to stderr
    ...     total += batch
    >>> total
    6
    >>> stage("training the tokenizer")  # one line on stderr
    >>> restore = set_quiet(True)  # what `--quiet` does: no bars, no stage lines
    >>> is_quiet(), bars_disabled()
    (True, True)
    >>> restore()
    >>> is_quiet()
    False
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Iterable

from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
from huggingface_hub.utils import tqdm as _hf_tqdm

_quiet = False


def is_quiet() -> bool:
    """True after `set_quiet(True)` (the CLI's `--quiet`): no bars, no stage messages."""
    return _quiet


def bars_disabled() -> bool:
    return _quiet or are_progress_bars_disabled()


def bar(iterable: Iterable | None = None, *, total: float | None = None, desc: str | None = None,
        unit: str = "it", leave: bool = False, **kwargs) -> _hf_tqdm:
    """A progress bar on stderr (a no-op object when bars are disabled); use as iterator or context.

    Into a log (stderr not a terminal) every bar keeps to its own line and redraws at most every
    10 s: a nested bar would otherwise move the cursor up (`ESC[A`), which a log file shows as junk.
    """
    if not _is_terminal(sys.stderr):
        kwargs.setdefault("position", 0)
        kwargs.setdefault("mininterval", 10.0)
    return _hf_tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, disable=bars_disabled(),
                    file=sys.stderr, dynamic_ncols=True, **kwargs)


def native_bars() -> bool:
    """Whether `tokenizers`' own trainers may show their progress bars (`show_progress=`).

    They draw the bars on stderr but end each stage with a newline on stdout: into a pipe or a
    file that is one blank line per stage in the command's output, so only on two terminals.
    """
    return not bars_disabled() and _is_terminal(sys.stdout) and _is_terminal(sys.stderr)


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or foreign stream
        return False


def stage(message: str) -> None:
    """Say what a long operation is doing now (stderr); silent with `--quiet`."""
    if not _quiet:
        print(message, file=sys.stderr, flush=True)


def set_quiet(quiet: bool = True) -> Callable[[], None]:
    """Silence (or not) every bar and stage message; returns a function restoring the previous state.

    Also turns off huggingface_hub's and transformers' bars, so `--quiet` means quiet.
    """
    global _quiet
    before = (_quiet, are_progress_bars_disabled())
    tf_logging = sys.modules.get("transformers.utils.logging")
    tf_before = tf_logging.is_progress_bar_enabled() if tf_logging is not None else None
    _quiet = quiet
    if quiet:
        with warnings.catch_warnings():  # HF_HUB_DISABLE_PROGRESS_BARS=0 cannot be overridden there
            warnings.simplefilter("ignore")
            disable_progress_bars()
            if tf_logging is not None:
                tf_logging.disable_progress_bar()

    def restore() -> None:
        global _quiet
        _quiet = before[0]
        if not quiet:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if not before[1]:
                enable_progress_bars()
            if tf_logging is not None and tf_before:
                tf_logging.enable_progress_bar()

    return restore


__all__ = ["bar", "stage", "set_quiet", "is_quiet", "bars_disabled"]
