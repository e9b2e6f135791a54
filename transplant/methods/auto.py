"""`method="auto"`: the best transplant this installation can make, chosen from the inputs alone.

The rule (measured in BENCHMARKS.md: a trained hypernetwork beats every heuristic on every task
of the harness, and output calibration helps every method):
1. special tokens and exact overlap are copied, as always;
2. the other rows come from the hypernetwork trained for this base model when one is known
   (`hypernet list`: registered by `hypernet train`, or shipped for the packaged models), matched
   by the model's own embeddings, so a fine-tune of the base matches too; else from `fvt`;
3. the made rows' output scale is calibrated whenever calibration text is known: the
   `calibrate_texts` given, else the text the target tokenizer was trained on, as recorded by
   `transplant tokenizer train` (used only while it is still there and unchanged).

The choice depends on the inputs and on the networks known, never on timing or randomness; it
is printed on one line and recorded in the plan (`meta["auto"]`) and the model card. An explicit
method (`--method fvt`) never calibrates unless calibration text is passed, so it gives exactly
what it gave before `auto` existed.

Example:
    >>> from safetensors.torch import load_file
    >>> from transplant.core.vocab import load_tokenizer
    >>> from transplant.methods.resources import Resources
    >>> weights = load_file(f"{model_dir}/model.safetensors")
    >>> resources = Resources(lambda: weights["model.embed_tokens.weight"], lambda: weights["lm_head.weight"],
    ...                       old_rows=500)
    >>> choice = choose(resources, load_tokenizer(new_tok_dir), calibrate_texts=None)
    >>> choice.method  # no network is known for this tiny model
    'fvt'
    >>> print(choice.line)
    auto: fvt (no hypernetwork known for this model: ...); no calibration: the target tokenizer records no training text (...)
    >>> from transplant.train.tokenizer_train import train_tokenizer
    >>> _ = train_tokenizer([text_file], 1000, "my-tok")  # records where its training text is
    >>> print(choose(resources, load_tokenizer("my-tok"), calibrate_texts=None).line)
    auto: fvt (...); calibration on the tokenizer's training text text.txt

    With SmolLM2-135M-Instruct, whose shipped network matches its embeddings:

    >>> choice.method, choice.line  # doctest: +SKIP
    ('hypernet', 'auto: hypernet smollm2-135m-instruct (shipped, ...); calibration on ... de/train.txt')
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transplant.common.texts import BYTES_PER_TOKEN_BOUND, read_text_head
from transplant.core.vocab import TokenizerSource
from transplant.io.recorded_text import TRAINING_SUMMARY, recorded_texts

AUTO = "auto"


@dataclass
class CalibrationSource:
    """The calibration text a run uses: the files, where they came from, and their content."""

    texts: list[str]
    origin: str  # "given" or "tokenizer"
    names: list[str] = field(default_factory=list)


@dataclass
class AutoChoice:
    """What `auto` resolved to, and why (one line)."""

    method: str
    options: dict
    network: str | None
    calibration: CalibrationSource | None
    line: str

    def meta(self) -> dict:
        return {"method": self.method, "network": self.network, "line": self.line,
                "calibration": None if self.calibration is None else
                {"origin": self.calibration.origin, "texts": self.calibration.names}}


def is_auto(method) -> bool:
    return method == AUTO or (isinstance(method, (list, tuple)) and list(method) == [AUTO])


def choose(resources, new_src: TokenizerSource, calibrate_texts: list[str] | None, calibrate: bool = True,
           options: dict | None = None, no_calibration: str = "--no-calibrate", calibrate_tokens: int = 4096
           ) -> AutoChoice:
    """Resolve `auto` for a model whose embeddings `resources` reads, onto `new_src`.

    Args:
        resources: the run's `Resources` (the old input and head matrices are read from it).
        new_src: the target tokenizer.
        calibrate_texts: calibration text given by the caller (wins over the recorded one).
        calibrate: False turns calibration off (`--no-calibrate`).
        options: the run's `METHOD.OPTION` settings; `hypernet.path` names the network itself.
        no_calibration: why there is no calibration when `calibrate` is False.
    """
    from hypernet.registry import find_network

    options = dict(options or {})
    given_path = options.get("hypernet.path")
    if given_path:
        method, network, why = "hypernet", str(given_path), f"hypernet {given_path} (hypernet.path given)"
    else:
        # The match reads a few rows of the input matrix and whether the head is the model's own:
        # the stored matrix, not the float32 copies a method may keep for the run.
        E_in = resources.stored_input()
        found = find_network(E_in, None if resources.tied else E_in)
        del E_in
        if found is not None:
            net, cos = found
            options["hypernet.path"] = str(net.path)
            method, network = "hypernet", net.name
            why = (f"hypernet {net.name} ({net.origin}, trained for {net.base_model or '?'}; embeddings match at "
                   f"cosine {cos:.3f})")
        else:
            method, network = "fvt", None
            why = "fvt (no hypernetwork known for this model: `hypernet list`; train one with `hypernet train`)"
    calibration, cal_why = None, ""
    if not calibrate:
        cal_why = f"no calibration ({no_calibration})"
    elif calibrate_texts:
        calibration = CalibrationSource(list(calibrate_texts), "given", ["the calibration text given"])
        cal_why = "calibration on the text given"
    else:
        files, reason = recorded_texts(new_src)
        if files:
            # Only the head calibration can use (a tokenizer trained on gigabytes costs a
            # megabyte), and never the held-out tail the run's quality check scores.
            texts = [read_text_head(f.path, f.head_limit(calibrate_tokens * BYTES_PER_TOKEN_BOUND)) for f in files]
            calibration = CalibrationSource(texts, "tokenizer", [str(f.path) for f in files])
            cal_why = f"calibration on the tokenizer's training text {', '.join(f.path.name for f in files)}"
        else:
            cal_why = (f"no calibration: {reason} (--calibrate-text FILE, text in the target language or domain, "
                       "would fit the made rows' output scale: a few % lower bits per byte)")
    return AutoChoice(method, options, network, calibration, f"auto: {why}; {cal_why}")


__all__ = ["AUTO", "AutoChoice", "CalibrationSource", "choose", "is_auto", "recorded_texts", "TRAINING_SUMMARY"]
