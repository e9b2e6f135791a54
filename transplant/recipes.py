"""YAML recipes: one file that names a whole transplant, validated by one schema (`Recipe`).

A recipe's keys are the keyword arguments of `transplant.transplant(...)` (same names, same
meaning), plus `description`, `eval_bytes` / `eval_ctx` (how much of the evaluation text is
scored, as `--eval-bytes` / `--ctx`) and a `resources:` section:

```yaml
description: SmolLM2-135M onto a German 32k byte-level BPE   # one line, shown by `transplant recipes`
model: smollm2-135m-instruct          # any --model form; a relative path is read from the recipe's folder
new_tokenizer: ${DE_TOKENIZER}        # tokenizer.json or folder; or {model: gemma-3-270m}: that model's own
out: out/smollm2-de                   # output folder
method: [fvt]                         # a name, a list (a chain: tried in order) or "a+b" as on the CLI
fallback: mean
options:                              # METHOD.OPTION values, nested or flat ("knn.k: 20")
  knn: {k: 20, temperature: 0.1}
resources:                            # files and models handed to every method of the chain that reads them
  donor: gemma-3-270m                 #   -> METHOD.donor            (a model using the new tokenizer: omp)
  vectors: vec/de-tok.bin             #   -> METHOD.vectors          (token-level fastText: focus)
  source_vectors: vec/en.bin          #   -> METHOD.source_vectors   (wechsel)
  target_vectors: vec/de.bin          #   -> METHOD.target_vectors   (wechsel)
  dictionary: ${CORPORA}/dictionaries/en-de.tsv   # -> METHOD.dictionary (wechsel)
  corpus: ${CORPORA}/de/train.txt     #   -> METHOD.text             (text to train vectors on: focus)
calibrate_texts: ${CORPORA}/de/train.txt     # one file or a list; the tokenizer's training text, never the scored one
calibrate_tokens: 8192
eval_texts: ${CORPORA}/de/dev.txt     # one file or a list; scored before/after into the model card
eval_bytes: 20000
language: [de]
# also: old_tokenizer, pad_to_multiple_of, seed, overwrite, link, trust_remote_code, encode_like, untie
```

Rules:
- Unknown keys and values of the wrong type are refused with one line naming the key, the file
  and the valid keys (`RecipeError`, a `TransplantError`); so are options a method of the chain
  does not declare (checked by `initializers.resolve_options`, as for `--set`).
- `${VAR}` and `${VAR:-default}` in any string are read from the environment, only for the
  fields a run uses (a field given on the command line needs no variable); an unset variable
  without a default is a one-line error naming the variable and the flag that replaces the field.
  Inside a flow list or mapping (`[...]`, `{...}`) quote such a value: `["${CORPORA}/a.txt"]`.
- Relative paths resolve against the recipe file's folder. A shipped recipe (found by name,
  installed with the package) has no folder of the user's: its paths resolve against the
  current directory. `model`, `resources.donor` and `new_tokenizer.model` stay as written
  (a packaged name or hub id) unless they start with `.`, `/` or `~`, end in `.gguf`, or name
  an existing path there.
- A resource goes to every method of the chain that declares an option of its name (`corpus`
  goes to option `text`); one no method of the chain reads is ignored (logged), so a recipe may
  name a donor for a method it does not run yet. Files named under `options:` are passed as
  written (relative to the current directory); name them under `resources:` to have them resolved.
- Command-line flags override fields (`transplant run --recipe smollm2-de --out x --method knn`);
  `--set` overrides one option and keeps the recipe's others; a flag that takes a list
  (`--eval-text`, `--calibrate-text`, `--language`) replaces the recipe's list. When the
  command line changes the method, the recipe's options for methods no longer in the chain
  are dropped.

Shipped recipes live in `transplant/recipes/*.yaml` (package data): `transplant recipes` lists
them, `transplant recipes --show NAME` prints one to start a recipe of your own from.

Example:
    >>> from transplant import transplant
    >>> from transplant.recipes import recipe_kwargs
    >>> result = transplant(**recipe_kwargs("smollm2-de", new_tokenizer="de-bpe/", out="smollm2-de"))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import re
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, StrictBool, StrictFloat, StrictInt,
                      StrictStr, ValidationError, field_validator)

from transplant.common.errors import TransplantError

log = logging.getLogger(__name__)

# resources: key -> the method option it fills (in every method of the chain declaring it).
RESOURCE_OPTIONS = {"donor": "donor", "vectors": "vectors", "source_vectors": "source_vectors",
                    "target_vectors": "target_vectors", "dictionary": "dictionary", "corpus": "text"}
_MODEL_RESOURCES = {"donor"}  # model arguments, not files

Scalar = StrictBool | StrictInt | StrictFloat | StrictStr


class RecipeError(TransplantError):
    """A recipe that cannot be used: one line naming the file and what to fix."""


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


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class Recipe(_Section):
    """The schema: every key a recipe may hold (the keyword arguments of `transplant.transplant`)."""

    description: str | None = Field(None, description="one line, shown by `transplant recipes`")
    model: str | None = None
    new_tokenizer: str | TokenizerOf | None = None
    out: str | None = None
    method: list[str] | None = Field(None, min_length=1)
    fallback: str | None = None
    old_tokenizer: str | None = None
    pad_to_multiple_of: int | None = Field(None, ge=1)
    seed: int | None = None
    overwrite: bool | None = None
    link: bool | None = None
    trust_remote_code: bool | None = None
    eval_texts: list[str] | None = None
    eval_bytes: int | None = Field(None, ge=1)
    eval_ctx: int | None = Field(None, ge=1)
    encode_like: Literal["source", "target"] | None = None
    language: list[str] | None = None
    options: dict[str, Scalar] | None = None
    untie: bool | None = None
    calibrate_texts: list[str] | None = None
    calibrate_tokens: int | None = Field(None, ge=64)
    resources: ResourceFiles | None = None

    _where: str = PrivateAttr("recipe")
    _base: Path = PrivateAttr(default_factory=Path.cwd)

    @field_validator("method", mode="before")
    @classmethod
    def _split_chain(cls, value: Any) -> Any:
        return value.split("+") if isinstance(value, str) else value

    @field_validator("eval_texts", "calibrate_texts", "language", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return _as_list(value)

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

    @property
    def where(self) -> str:
        """How errors name this recipe: its file, or `shipped recipe NAME`."""
        return self._where


# What each key takes, for one-line type errors (pydantic's own messages list every union member).
_EXPECTS = {
    "description": "a string", "model": "a model argument (a string)",
    "new_tokenizer": "a tokenizer path, or {model: MODEL} for that model's tokenizer",
    "out": "a folder path (a string)", "method": "a method name, a list of names or 'a+b'",
    "fallback": "a method name", "old_tokenizer": "a tokenizer path", "pad_to_multiple_of": "an integer >= 1",
    "seed": "an integer", "overwrite": "true or false", "link": "true or false", "trust_remote_code": "true or false",
    "eval_texts": "a file path or a list of them", "eval_bytes": "an integer >= 1", "eval_ctx": "an integer >= 1",
    "encode_like": "source or target", "language": "a language code or a list of them",
    "options": "a mapping of METHOD.OPTION (or METHOD: {OPTION: ...}) to a number, string or true/false",
    "untie": "true or false", "calibrate_texts": "a file path or a list of them",
    "calibrate_tokens": "an integer >= 64", "resources": f"a mapping with keys {', '.join(RESOURCE_OPTIONS)}",
}
_SECTIONS: dict[str, type[BaseModel]] = {"resources": ResourceFiles, "new_tokenizer": TokenizerOf}


def _explain(exc: ValidationError, where: str, raw: dict) -> str:
    """One line for a schema failure: an unknown key first (with the valid keys), else the first bad value."""
    errors = exc.errors()
    bad = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    # Walk the location through the sections, skipping pydantic's union-member tags.
    model: type[BaseModel] | None = Recipe
    path: list[str] = []
    for part in bad["loc"][:-1] if bad["type"] == "extra_forbidden" else bad["loc"][:1]:
        if model is not None and isinstance(part, str) and part in model.model_fields:
            path.append(part)
            model = _SECTIONS.get(part)
    if bad["type"] == "extra_forbidden":
        key = ".".join(path + [str(bad["loc"][-1])])
        section = f" of {'.'.join(path)}" if path else ""
        valid = ", ".join((_SECTIONS[path[-1]] if path else Recipe).model_fields)
        return f"{where}: unknown key {key!r} (valid keys{section}: {valid})"
    field = path[0] if path else str(bad["loc"][0])
    if bad["type"] == "value_error":  # our own validators' messages
        return f"{where}: {field}: {bad['msg'].removeprefix('Value error, ')}"
    if field == "options" and len(bad["loc"]) > 1:
        return (f"{where}: option {bad['loc'][1]} expects a number, string or true/false, "
                f"not {bad['input']!r}")
    if field in _SECTIONS and field != "new_tokenizer" and len(bad["loc"]) > 1:
        return f"{where}: {field}.{bad['loc'][1]} expects a string, not {bad['input']!r}"
    if bad["type"] == "missing" and field == "new_tokenizer":
        return f"{where}: new_tokenizer expects {_EXPECTS['new_tokenizer']}, not {raw.get(field)!r}"
    return f"{where}: {field} expects {_EXPECTS.get(field, bad['msg'].lower())}, not {raw.get(field)!r}"


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe YAML (no Python objects) that refuses a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


# -- finding and loading --------------------------------------------------------------------------

def _shipped_folder():
    return importlib_resources.files("transplant") / "recipes"


def shipped_recipes() -> dict[str, str]:
    """Name -> description of every recipe installed with the package.

    Example:
        >>> "smollm2-de" in shipped_recipes()
        True
    """
    out = {}
    for item in sorted(_shipped_folder().iterdir(), key=lambda p: p.name):
        if item.name.endswith(".yaml"):
            name = item.name[:-len(".yaml")]
            recipe = _parse(item.read_text(encoding="utf-8"), f"shipped recipe {name}", Path.cwd())
            out[name] = recipe.description or ""
    return out


def recipe_text(spec: str | Path) -> tuple[str, str, Path]:
    """(YAML text, how errors name it, the folder its relative paths resolve against) of a recipe.

    `spec` is a YAML file, or the name of a shipped recipe (with or without `.yaml`).
    """
    path = Path(spec).expanduser()
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8"), f"recipe {path}", path.resolve().parent
        except UnicodeDecodeError:
            raise RecipeError(f"recipe {path} is not UTF-8 text") from None
    name = str(spec).removesuffix(".yaml")
    item = _shipped_folder() / f"{name}.yaml"
    if "/" not in name and item.is_file():
        return item.read_text(encoding="utf-8"), f"shipped recipe {name}", Path.cwd()
    if path.is_dir():
        raise RecipeError(f"recipe {path} is a folder (pass a .yaml file or a shipped recipe name)")
    names = [p.name[:-5] for p in _shipped_folder().iterdir() if p.name.endswith(".yaml")]
    raise RecipeError(f"recipe not found: {spec} (pass a YAML file, or one of the shipped recipes: "
                      f"{', '.join(sorted(names))})")


def load_recipe(spec: str | Path) -> Recipe:
    """Read and validate a recipe (a YAML file or a shipped recipe's name); nothing is resolved yet.

    Raises:
        RecipeError: not YAML, not a mapping, an unknown key or a value of the wrong type (one line).

    Example:
        >>> load_recipe("smollm2-de").model
        'smollm2-135m-instruct'
    """
    return _parse(*recipe_text(spec))


def _parse(text: str, where: str, base: Path) -> Recipe:
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: no Python objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        hint = " (quote a ${VAR} value inside [...] or {...})" if "'{'" in problem and "${" in text else ""
        raise RecipeError(f"{where} is not valid YAML: {problem}{line}{hint}") from None
    if raw is None:
        raise RecipeError(f"{where} is empty (write at least model, new_tokenizer and out)")
    if not isinstance(raw, dict):
        raise RecipeError(f"{where} must be a mapping of keys to values, not a {type(raw).__name__}")
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(_explain(exc, where, raw)) from None
    recipe._where, recipe._base = where, base
    return recipe


# -- resolving fields -----------------------------------------------------------------------------

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(value: str, env: dict, where: str, field: str, flag: str | None) -> str:
    def one(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in env and env[name] != "":
            return env[name]
        if default is not None:
            return default
        hint = f"set it, or pass {flag}" if flag else "set it"
        raise RecipeError(f"{where}: {field} reads ${{{name}}}, which is not set ({hint})")

    return _VAR.sub(one, value)


def variables(recipe: Recipe) -> list[str]:
    """The environment variables a recipe reads (`${VAR}`), in order of first use."""
    found: dict[str, None] = {}

    def walk(value: Any) -> None:
        if isinstance(value, str):
            found.update(dict.fromkeys(m.group(1) for m in _VAR.finditer(value)))
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(recipe.model_dump(exclude={"description"}))
    return list(found)


class _Resolver:
    """Expands variables and resolves paths of one recipe's fields (only those asked for)."""

    def __init__(self, recipe: Recipe, env: dict | None, flags: dict[str, str]) -> None:
        self.recipe, self.env, self.flags = recipe, os.environ if env is None else env, flags
        self.where, self.base = recipe.where, recipe._base

    def text(self, value: str, field: str) -> str:
        return _expand(value, self.env, self.where, field, self.flags.get(field.split(".")[0]))

    def path(self, value: str, field: str, must_exist: bool = True) -> str:
        path = Path(self.text(value, field)).expanduser()
        path = path if path.is_absolute() else self.base / path
        if must_exist and not path.exists():
            flag = self.flags.get(field.split(".")[0])
            raise RecipeError(f"{self.where}: {field}: file not found: {path}"
                              + (f" (fix the recipe or pass {flag})" if flag else " (fix the recipe)"))
        return str(path)

    def model(self, value: str, field: str) -> str:
        """A model argument: a path when it reads as one (resolved here), else as written."""
        from transplant.io.sources import PACKAGED

        text = self.text(value, field)
        if text in PACKAGED:
            return text
        if text.startswith((".", "/", "~")) or text.endswith(".gguf") or (self.base / text).exists():
            return self.path(text, field, must_exist=False)
        return text


_PATHS = ("out", "old_tokenizer")
_FILE_LISTS = ("eval_texts", "calibrate_texts")


def resolve_fields(recipe: Recipe, skip: set[str] = frozenset(), env: dict | None = None,
                   flags: dict[str, str] | None = None) -> dict[str, Any]:
    """The recipe's set fields (except `skip`) with variables expanded and paths resolved.

    `new_tokenizer: {model: M}` becomes M's folder; `resources` stays a dict of the values as
    written (expanded, resolved and checked only when a method of the chain reads them, see
    `chain_options`); `options` stays flat and typed, its strings expanded.

    Raises:
        RecipeError: an unset variable, or a named file that does not exist (one line).
    """
    res = _Resolver(recipe, env, flags or {})
    fields: dict[str, Any] = {}
    for name, value in recipe:
        if value is None or name in skip or name == "description":
            continue
        if name == "model":
            value = res.model(value, name)
        elif name == "new_tokenizer":
            if isinstance(value, TokenizerOf):
                from transplant.io.sources import resolve_model

                value = str(resolve_model(res.model(value.model, "new_tokenizer.model")))
            else:
                value = res.path(value, name)
        elif name in _PATHS:
            value = res.path(value, name, must_exist=name != "out")
        elif name in _FILE_LISTS:
            value = [res.path(v, name) for v in value]
        elif name == "options":
            value = {k: res.text(v, f"option {k}") if isinstance(v, str) else v for k, v in value.items()}
        elif name == "resources":
            value = {k: v for k, v in value.model_dump().items() if v is not None}
        fields[name] = value
    fields["_resolver"] = res
    return fields


def chain_options(fields: dict[str, Any], chain: list[str], drop_unused: bool) -> dict[str, Any]:
    """The recipe's options plus its resources mapped onto the methods of `chain`, checked and typed.

    Args:
        fields: from `resolve_fields` (its options, resources and resolver).
        chain: the run's method chain (`planner.method_chain`).
        drop_unused: drop options of methods outside the chain (the command line changed the
            method) instead of refusing them.
    """
    from transplant.methods.initializers import declared_options, resolve_options

    res: _Resolver = fields["_resolver"]
    options = dict(fields.get("options") or {})
    if drop_unused:
        dropped = [k for k in options if k.partition(".")[0] not in chain]
        for key in dropped:
            log.info("%s: option %s dropped (method %s is not in this run's chain)", res.where, key,
                     key.partition(".")[0])
            del options[key]
    for key, value in (fields.get("resources") or {}).items():
        option = RESOURCE_OPTIONS[key]
        readers = [m for m in chain if option in declared_options(m)]
        if not readers:
            log.info("%s: resource %s is not read by any method of the chain (%s)", res.where, key, " → ".join(chain))
            continue
        value = (res.model(value, f"resources.{key}") if key in _MODEL_RESOURCES
                 else res.path(value, f"resources.{key}"))
        for method in readers:
            name = f"{method}.{option}"
            if name in options:
                raise RecipeError(f"{res.where}: option {name} is set twice (resources.{key} and options.{name}; "
                                  "keep one)")
            options[name] = value
    try:
        resolve_options(chain, options)  # names and types, as --set is checked
    except TransplantError as exc:
        raise RecipeError(f"{res.where}: {exc}") from None
    return options


# -- front ends -----------------------------------------------------------------------------------

def check_recipe(spec: str | Path) -> Recipe:
    """Validate a recipe without running it or needing its files: schema, methods, option names and types.

    Variables are not expanded and files are not looked for (a shipped recipe validates on a
    machine without the model's weights).

    Example:
        >>> check_recipe("mistral-7b-code").method
        ['fvt']
    """
    from transplant.methods.planner import check_methods, method_chain

    recipe = load_recipe(spec)
    methods, fallback = recipe.method or _api_default("method"), recipe.fallback or _api_default("fallback")
    try:
        check_methods(methods, fallback)
    except TransplantError as exc:
        raise RecipeError(f"{recipe.where}: {exc}") from None
    chain = method_chain(methods, fallback)
    # Resources are checked by name only here (their files may not exist on this machine).
    from transplant.methods.initializers import resolve_options

    typed = {k: v for k, v in (recipe.options or {}).items() if not (isinstance(v, str) and "${" in v)}
    try:
        resolve_options(chain, typed)
    except TransplantError as exc:
        raise RecipeError(f"{recipe.where}: {exc}") from None
    return recipe


def recipe_kwargs(spec: str | Path, env: dict | None = None, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for `transplant.transplant(...)` from a recipe, `overrides` winning.

    `overrides` use the recipe's key names (`out="x"`, `method="knn"`, `options={"knn.k": 20}`:
    options merge key by key). Evaluation and calibration files are read here.

    Raises:
        RecipeError: see `load_recipe` / `resolve_fields`; `model`, `new_tokenizer` or `out` missing.

    Example:
        >>> kwargs = recipe_kwargs("gemma-to-smollm2", out="g2s", calibrate_texts=None)  # doctest: +SKIP
        >>> transplant(**kwargs)  # doctest: +SKIP
    """
    from transplant.cli import _read_texts
    from transplant.methods.planner import check_methods, method_chain

    recipe = load_recipe(spec)
    unknown = set(overrides) - set(Recipe.model_fields)
    if unknown:
        raise RecipeError(f"unknown recipe key(s) {', '.join(sorted(unknown))} (valid keys: "
                          f"{', '.join(Recipe.model_fields)})")
    cli_options = overrides.pop("options", None) or {}
    fields = resolve_fields(recipe, skip=set(overrides), env=env)
    fields.update({k: v for k, v in overrides.items() if v is not None})
    for key in ("eval_texts", "calibrate_texts"):
        if overrides.get(key, "unset") is None:
            fields.pop(key, None)
    _require(fields, recipe.where, {"model": "model=", "new_tokenizer": "new_tokenizer=", "out": "out="})
    method = fields.pop("method", None) or _api_default("method")
    methods = method.split("+") if isinstance(method, str) else list(method)
    fallback = fields.get("fallback") or _api_default("fallback")
    check_methods(methods, fallback)
    options = chain_options(fields, method_chain(methods, fallback),
                            drop_unused="method" in overrides or "fallback" in overrides)
    options.update(cli_options)
    fields.pop("resources", None), fields.pop("options", None), fields.pop("_resolver")
    # Unset: as `transplant run` does (its --eval-bytes default) and as transplant() does.
    eval_bytes, eval_ctx = fields.pop("eval_bytes", 50_000), fields.pop("eval_ctx", _api_default("eval_ctx"))
    kwargs: dict[str, Any] = dict(fields, method=methods if len(methods) > 1 else methods[0],
                                  options=options or None, eval_ctx=eval_ctx)
    eval_files, cal_files = fields.get("eval_texts") or [], fields.get("calibrate_texts") or []
    kwargs["eval_texts"] = _read_texts(tuple(map(str, eval_files)), eval_bytes) if eval_files else None
    kwargs["calibrate_texts"] = _read_texts(tuple(map(str, cal_files)), None) if cal_files else None
    if eval_files:
        kwargs["eval_name"] = ", ".join(Path(p).name for p in eval_files)
    kwargs["input_paths"] = [*eval_files, *cal_files]
    return kwargs


def _api_default(name: str) -> Any:
    """The default of `transplant.transplant`'s keyword `name` (a recipe that omits a key gets the API's choice)."""
    import inspect

    from transplant.api import transplant

    return inspect.signature(transplant).parameters[name].default


def _require(fields: dict, where: str, flags: dict[str, str]) -> None:
    for name, flag in flags.items():
        if not fields.get(name):
            raise RecipeError(f"{where} gives no {name} (add `{name}:` to the recipe or pass {flag})")


# The `run` command's parameters that a recipe field fills, by recipe key.
CLI_PARAMS = {"model": "model", "new_tokenizer": "new_tok", "out": "out", "method": "method", "fallback": "fallback",
              "old_tokenizer": "old_tok", "pad_to_multiple_of": "pad_to_multiple_of", "seed": "seed", "link": "link",
              "overwrite": "overwrite", "trust_remote_code": "trust_remote_code", "eval_texts": "eval_text",
              "eval_bytes": "eval_bytes", "eval_ctx": "ctx", "encode_like": "encode_like", "language": "languages",
              "options": "settings", "untie": "untie", "calibrate_texts": "calibrate_text",
              "calibrate_tokens": "calibrate_tokens"}


def _as_setting(key: str, value: Any) -> str:
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return f"{key}={text}"


def merge_cli(spec: str, ctx) -> dict[str, Any]:
    """The `run` command's parameters with the recipe filling every flag not given on the command line.

    Args:
        spec: the `--recipe` value (a YAML file or a shipped recipe's name).
        ctx: the click context of `run` (its params, and where each came from).

    Returns:
        Every parameter of `run`, `recipe` set to None, ready to call its callback with.
    """
    from click.core import ParameterSource

    from transplant.cli import parse_settings
    from transplant.methods.planner import check_methods, method_chain

    params = dict(ctx.params, recipe=None)
    given = {name for name in params
             if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT,
                                                   ParameterSource.PROMPT)}
    flags = {p.name: p.opts[0] for p in ctx.command.params if p.opts}
    key_flags = {key: flags[param] for key, param in CLI_PARAMS.items() if param in flags}
    recipe = load_recipe(spec)
    skip = {key for key, param in CLI_PARAMS.items() if param in given} - {"options"}
    fields = resolve_fields(recipe, skip=skip, env=None, flags=key_flags)
    for key, value in fields.items():
        param = CLI_PARAMS.get(key)
        if param is None or param not in params or key in ("options", "resources"):
            continue
        if key == "method":
            value = "+".join(value)
        elif isinstance(value, list):
            value = tuple(value)
        params[param] = value
    _require({k: params[p] for k, p in CLI_PARAMS.items() if p in params}, recipe.where,
              {k: key_flags[k] for k in ("model", "new_tokenizer", "out")})
    methods = params["method"].split("+") if "+" in params["method"] else params["method"]
    check_methods(methods, params["fallback"])
    options = chain_options(fields, method_chain(methods, params["fallback"]),
                            drop_unused=bool({"method", "fallback"} & given))
    options.update(parse_settings(params["settings"]))  # --set wins, key by key
    params["settings"] = tuple(_as_setting(k, v) for k, v in options.items())
    return params


__all__ = ["Recipe", "RecipeError", "load_recipe", "check_recipe", "recipe_kwargs", "shipped_recipes",
           "resolve_fields", "variables", "merge_cli", "RESOURCE_OPTIONS"]
