"""`RunSpec`: every parameter of a transplant run, declared once.

The command line generates its `run` options from it (`cli_options`), a recipe is a `RunSpec`
read from YAML (`transplant.recipes`), and `transplant(spec)` runs one; the keyword form
`transplant(model, new_tokenizer, out, ...)` builds one. A new run option is one field here: its
type, default, help text and flag; the CLI, recipes and the API follow.

Field metadata (`json_schema_extra`):
- `flag`: the command-line flag (`--new-tok`); None: recipe-only (`description`, `resources`).
- `expects`: what the field takes, in words, for one-line recipe errors.
- `negate`: a boolean whose flag turns it off (`--no-calibrate` sets `calibrate: false`).
- `metavar`: how the help names the value.

Rules that live here, once: `method` is a name, a list (a chain) or `"a+b"`; `options` are
`METHOD.OPTION` keys, nested (`knn: {k: 20}`) or flat; list fields accept one value or a list;
evaluation texts are cut to `eval_bytes` of whole documents, calibration texts read whole.

Example:
    >>> spec = RunSpec(model="m", new_tokenizer="t.json", out="o", method="fvt+knn", options={"knn": {"k": 3}})
    >>> spec.method, spec.options
    (['fvt', 'knn'], {'knn.k': 3})
    >>> spec.method_arg
    ['fvt', 'knn']
    >>> RunSpec.model_fields["new_tokenizer"].json_schema_extra["flag"]
    '--new-tok'
"""

from __future__ import annotations

from pathlib import Path, PurePath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, field_validator

from transplant.common.errors import TransplantError
from transplant.common.texts import BYTES_PER_TOKEN_BOUND, read_text_head, read_texts

Scalar = StrictBool | StrictInt | StrictFloat | StrictStr

# resources: key -> the method option it fills (in every method of the chain declaring it).
RESOURCE_OPTIONS = {"donor": "donor", "vectors": "vectors", "source_vectors": "source_vectors",
                    "target_vectors": "target_vectors", "dictionary": "dictionary", "corpus": "text"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TokenizerOf(_Section):
    """`new_tokenizer: {model: MODEL}`: the tokenizer that ships with a model (cross-model transplants)."""

    model: str = Field(description="any --model form; its tokenizer is the new tokenizer")


class ResourceFiles(_Section):
    """Files and models handed to the methods of the chain (see `RESOURCE_OPTIONS`)."""

    donor: str | None = Field(None, description="a model that already uses the new tokenizer (METHOD.donor)")
    vectors: str | None = Field(None, description="token-level fastText .bin of the new tokenizer (METHOD.vectors)")
    source_vectors: str | None = Field(None, description="fastText .bin of the source language")
    target_vectors: str | None = Field(None, description="fastText .bin of the target language")
    dictionary: str | None = Field(None, description="bilingual dictionary, source<TAB>target per line")
    corpus: str | None = Field(None, description="target-language text to train vectors on (METHOD.text)")


def _field(default: Any, help: str, flag: str | None, expects: str, *, ge: int | None = None,
           min_length: int | None = None, **extra: Any) -> Any:
    """A field with its help, flag and the words of its one-line errors (see the module docstring)."""
    return Field(default, description=help, ge=ge, min_length=min_length,
                 json_schema_extra={"flag": flag, "expects": expects, **extra})


class RunSpec(_Section):
    """Every parameter of one transplant run (see the module docstring); recipe keys are these field names."""

    description: str | None = _field(None, "One line, shown by `transplant recipes`.", None, "a string")
    model: str | None = _field(None, "Model folder, cached hub id, .gguf file, or smollm2-135m-instruct / "
                               "gemma-3-270m.", "--model", "a model argument (a string)")
    new_tokenizer: str | TokenizerOf | None = _field(
        None, "Target tokenizer.json or tokenizer folder.", "--new-tok",
        "a tokenizer path, or {model: MODEL} for that model's tokenizer")
    out: str | None = _field(None, "Output folder (written atomically).", "--out", "a folder path (a string)")
    method: list[str] = _field(
        ["auto"], "Initializer after exact overlap (see `transplant methods`); auto: the hypernetwork known for "
        "this model (`hypernet list`), else fvt, then calibration when calibration text is known.", "--method",
        "a method name, a list of names or 'a+b'", min_length=1)
    fallback: str = _field("mean", "Initializer for tokens the method cannot make.", "--fallback", "a method name")
    old_tokenizer: str | None = _field(None, "Source tokenizer, if not the one in the model folder.", "--old-tok",
                                       "a tokenizer path")
    pad_to_multiple_of: int | None = _field(None, "Round embedding rows up to a multiple.", "--pad-to-multiple-of",
                                            "an integer >= 1", ge=1)
    seed: int = _field(0, "Seed of the sampled rows (multivariate, random); the same seed gives the same "
                       "checkpoint.", "--seed", "an integer")
    overwrite: bool = _field(False, "Replace an existing output folder.", "--overwrite", "true or false")
    link: bool = _field(False, "Hard-link untouched shards instead of copying.", "--link", "true or false")
    trust_remote_code: bool = _field(False, "Allow custom model code from the model folder.", "--trust-remote-code",
                                     "true or false")
    eval_texts: list[str] = _field([], "Score original and new model on this text (model card).", "--eval-text",
                                   "a file path or a list of them")
    eval_bytes: int = _field(50_000, "Score the leading whole documents up to this many bytes.", "--eval-bytes",
                             "an integer >= 1", ge=1)
    eval_ctx: int = _field(1024, "Evaluation context length.", "--ctx", "an integer >= 1", ge=1)
    quality_check: bool = _field(
        True, "No quality line: without --eval-text a run scores original and transplant on the held-out tail of "
        "the tokenizer's recorded training text (up to --held-out-bytes; skipped above 0.5 G parameters).",
        "--no-eval", "true or false", negate=True)
    held_out_bytes: int = _field(2048, "Bytes of held-out text the quality line scores (whole lines).",
                                 "--held-out-bytes", "an integer >= 256", ge=256)
    encode_like: Literal["source", "target"] = _field(
        "source", "What a plain tokenizer(text) adds: the source model's convention (e.g. Gemma's start token), "
        "re-expressed in the new tokens, or the target tokenizer's own.", "--encode-like", "source or target")
    language: list[str] = _field([], "Language of the model card's metadata, e.g. de (repeatable; default: "
                                 "recognized in the calibration or evaluation text, else none).", "--language",
                                 "a language code or a list of them",
                                 metavar="CODE")
    options: dict[str, Scalar] = _field(
        {}, "Set an option of a method in the chain, e.g. --set knn.k=20 (repeatable; `transplant methods` lists "
        "each method's options).", "--set",
        "a mapping of METHOD.OPTION (or METHOD: {OPTION: ...}) to a number, string or true/false",
        metavar="METHOD.OPTION=VALUE")
    untie: bool = _field(False, "Write a tied model with an LM head of its own (its rows may then differ from the "
                         "input rows, e.g. be calibrated alone); costs new-vocab x hidden parameters.", "--untie",
                         "true or false")
    calibrate_texts: list[str] = _field(
        [], "Text in the target language/domain (e.g. the tokenizer's training text; never the evaluation text): "
        "fit the scale of made tokens' output rows on it by likelihood.", "--calibrate-text",
        "a file path or a list of them", metavar="FILE")
    calibrate_tokens: int = _field(4096, "How many tokens of the calibration text to read.", "--calibrate-tokens",
                                   "an integer >= 64", ge=64)
    calibrate: bool = _field(True, "No output calibration, not even on the tokenizer's recorded training text "
                             "(--method auto).", "--no-calibrate", "true or false", negate=True)
    allow_forced_tokenizer_class: bool = _field(
        False, "Write the output even when transformers forces a tokenizer class on this model type that ignores "
        "tokenizer.json (e.g. Qwen2Tokenizer for qwen2); the model card then says to load the tokenizer with "
        "PreTrainedTokenizerFast. A target trained with `transplant tokenizer train --like MODEL` needs no such flag.",
        "--allow-forced-tokenizer-class", "true or false")
    resources: ResourceFiles | None = _field(None, "Files and models for the methods of the chain.", None,
                                             f"a mapping with keys {', '.join(RESOURCE_OPTIONS)}")

    @field_validator("method", mode="before")
    @classmethod
    def _split_chain(cls, value: Any) -> Any:
        return value.split("+") if isinstance(value, str) else value

    @field_validator("model", "new_tokenizer", "out", "old_tokenizer", mode="before")
    @classmethod
    def _path_as_text(cls, value: Any) -> Any:
        # Python callers pass pathlib paths; a recipe (YAML) never holds one.
        return str(value) if isinstance(value, PurePath) else value

    @field_validator("eval_texts", "calibrate_texts", "language", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        value = str(value) if isinstance(value, PurePath) else value
        if isinstance(value, (list, tuple)):
            return [str(v) if isinstance(v, PurePath) else v for v in value]
        return [value] if isinstance(value, str) else value

    @field_validator("options", mode="before")
    @classmethod
    def _flatten_options(cls, value: Any) -> Any:
        # `knn: {k: 20}` and `knn.k: 20` alike as {"knn.k": 20}; deeper nesting is left for the
        # type check to refuse.
        if not isinstance(value, dict):
            return value
        flat: dict = {}
        for key, sub in value.items():
            items = ({f"{key}.{k}": v for k, v in sub.items()} if isinstance(sub, dict) and "." not in str(key)
                     else {key: sub})
            for k, v in items.items():
                if k in flat:
                    raise ValueError(f"{k} is set twice (nested and flat)")
                flat[k] = v
        return flat

    # -- what a run derives from the fields ------------------------------------------------------

    @property
    def method_arg(self) -> str | list[str]:
        """The method as the planner takes it: one name, or the chain's list."""
        return self.method[0] if len(self.method) == 1 else list(self.method)

    def chain(self) -> list[str]:
        """Every method the run may use, in order (`planner.method_chain`)."""
        from transplant.methods.planner import method_chain

        return method_chain(self.method_arg, self.fallback)

    def check(self) -> None:
        """Refuse unknown methods, a bad chain or bad options before anything is loaded (one line)."""
        from transplant.methods.initializers import resolve_options
        from transplant.methods.planner import check_methods

        check_methods(self.method_arg, self.fallback)
        resolve_options(self.chain(), dict(self.options), required="auto" not in self.method)

    def require(self, where: str = "the run", hint: str = "") -> None:
        """Refuse a spec without model, new tokenizer or output folder (one line naming the flag)."""
        for name in ("model", "new_tokenizer", "out"):
            if not getattr(self, name):
                flag = RunSpec.model_fields[name].json_schema_extra["flag"]
                raise TransplantError(f"{where} gives no {name} (pass {flag}{hint})")

    def read_eval_texts(self) -> list[str] | None:
        """The evaluation texts, each cut to its leading whole documents within `eval_bytes`."""
        return read_texts(self.eval_texts, self.eval_bytes) if self.eval_texts else None

    def read_calibrate_texts(self) -> list[str] | None:
        """The calibration texts: each file's head, as much as `calibrate_tokens` tokens can span
        (calibration reads no further; a 1 GB text costs what its first megabyte does)."""
        if not self.calibrate_texts:
            return None
        limit = self.calibrate_tokens * BYTES_PER_TOKEN_BOUND
        return [read_text_head(p, limit) for p in self.calibrate_texts]

    @property
    def eval_name(self) -> str:
        """How the model card names the evaluation text (its files' names)."""
        return ", ".join(Path(p).name for p in self.eval_texts)

    @property
    def input_paths(self) -> list[str]:
        """The text files the run reads (never inside the output folder)."""
        return [*self.eval_texts, *self.calibrate_texts]


def cli_flags() -> dict[str, str]:
    """Field -> its command-line flag, for the fields the CLI sets."""
    return {name: f.json_schema_extra["flag"] for name, f in RunSpec.model_fields.items()
            if f.json_schema_extra["flag"]}


def expects() -> dict[str, str]:
    """Field -> what it takes, in words (for one-line recipe errors)."""
    return {name: f.json_schema_extra["expects"] for name, f in RunSpec.model_fields.items()}


def parse_settings(settings: tuple[str, ...] | list[str]) -> dict[str, str]:
    """`--set` values (`METHOD.OPTION=VALUE`) as `{"METHOD.OPTION": "VALUE"}`; values stay strings.

    Raises:
        TransplantError: a setting without `=` or without a METHOD.OPTION key, or one set twice.

    Example:
        >>> parse_settings(["knn.k=20", "knn.temperature=0.5"])
        {'knn.k': '20', 'knn.temperature': '0.5'}
    """
    out: dict[str, str] = {}
    for item in settings:
        key, eq, value = item.partition("=")
        key = key.strip()
        method, dot, option = key.partition(".")
        if not eq or not (method and dot and option):
            raise TransplantError(f"malformed --set {item!r} (expected METHOD.OPTION=VALUE, e.g. --set knn.k=20)")
        if key in out:
            raise TransplantError(f"option {key} is set twice (--set {key}={out[key]} and --set {item}; keep one)")
        out[key] = value
    return out


__all__ = ["RunSpec", "TokenizerOf", "ResourceFiles", "RESOURCE_OPTIONS", "cli_flags", "expects", "parse_settings"]
