"""The quality line of a plain `transplant run`: the transplant scored against the original on
text neither the new tokenizer nor calibration read, so a user learns what the move cost without
a separate `transplant eval`.

The text is the held-out tail of the tokenizer's recorded training text
(`transplant.io.recorded_text`), at most `max_bytes` of whole lines: its cost is a cap on bytes,
not on the text's size. Both models are loaded whole in float32 to score it (`evaluate_bpb`), so
above `MAX_FLOAT32_BYTES` the check is skipped with one line naming the command that runs it
(at 7B, 28 GB and minutes per model); `--no-eval` skips it too. With `--eval-text` the run
scores that text instead and the line reports it.

Example:
    >>> from transplant.core.vocab import load_tokenizer
    >>> check = plan_quality_check(load_tokenizer(new_tok_dir), model_dir, 4_096)
    >>> check.texts is None, check.line.split(" (")[0]  # this tokenizer records no training text
    (True, 'no quality check: the target tokenizer records no training text')
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transplant.common.memory import MARGIN, available_bytes, checkpoint_bytes, human
from transplant.core.vocab import TokenizerSource
from transplant.io.recorded_text import held_out_text, recorded_texts

# Scoring loads each model whole in float32: above this (0.5 G parameters) a run does not do it
# by itself. SmolLM2-135M is 0.54 GB, Gemma-3-270M 1.07 GB, a 7B 28 GB.
MAX_FLOAT32_BYTES = 2 * 10**9
LOGITS_BYTES = 1 << 30  # `score` sizes its batches to keep the float32 logits near 1 GB
HOW = "score the output with `transplant eval --model OUT --compare MODEL --text FILE`"


@dataclass
class QualityCheck:
    """What the run scores for its quality line: `texts` (None: nothing, `line` says why) and
    how the model card names them."""

    texts: list[str] | None
    name: str = ""
    note: str = ""
    line: str = ""


def plan_quality_check(new_src: TokenizerSource, folder: str | Path, max_bytes: int,
                       stored_bytes: int = 4) -> QualityCheck:
    """Decide the run's quality check before the work: the held-out text, or one line saying why none.

    Args:
        new_src: the target tokenizer (its recorded training text holds the held-out tail).
        folder: the source checkpoint (its size decides whether scoring it here is reasonable).
        max_bytes: the most bytes of held-out text to score.
        stored_bytes: bytes per parameter as the checkpoint stores them (2 for bf16).
    """
    files, why = recorded_texts(new_src)
    if not files:
        return QualityCheck(None, line=f"no quality check: {why} ({HOW})")
    text = held_out_text(files, max_bytes)
    if not text.strip():
        return QualityCheck(None, line="no quality check: the tokenizer's training text has no held-out tail "
                                       f"(it was trained with --held-out 0, or by an older version; {HOW})")
    whole = checkpoint_bytes(Path(folder)) * 4 // max(stored_bytes, 1)
    if whole > MAX_FLOAT32_BYTES:
        return QualityCheck(None, line=f"quality check skipped: scoring loads the model whole in float32 "
                                       f"({human(whole)}, above the {human(MAX_FLOAT32_BYTES)} a run scores by "
                                       f"itself); {HOW}")
    room = available_bytes()
    if room is not None and (whole + LOGITS_BYTES) * MARGIN > room:
        return QualityCheck(None, line=f"quality check skipped: scoring needs about {human(whole + LOGITS_BYTES)} "
                                       f"and {human(room)} is available; {HOW}")
    names = ", ".join(f.path.name for f in files if f.held_out_tail_bytes)
    return QualityCheck([text], name=names, note="from its end, which the tokenizer's training left out and "
                                                 "calibration never reads")


def ratio_line(evaluation: dict, name: str) -> str:
    """The run's last line: the transplant's bits per byte against the original's on the same bytes.

    Example:
        >>> from types import SimpleNamespace as R
        >>> ratio_line({"original": R(bpb=1.5, bytes=4000), "transplanted": R(bpb=1.65, bytes=4000)}, "dev.txt")
        "quality: 1.100x the original's bits per byte (1.6500 vs 1.5000 on 4,000 bytes of dev.txt; lower is better)"
    """
    old, new = evaluation["original"], evaluation["transplanted"]
    return (f"quality: {new.bpb / old.bpb:.3f}x the original's bits per byte ({new.bpb:.4f} vs {old.bpb:.4f} on "
            f"{old.bytes:,} bytes of {name}; lower is better)")


__all__ = ["MAX_FLOAT32_BYTES", "QualityCheck", "plan_quality_check", "ratio_line"]
