"""YAML recipes: one file that names a whole transplant, read into a `RunSpec` (`transplant/runspec.py`).

A recipe's keys are the fields of `RunSpec` (the keyword arguments of `transplant.transplant(...)`
where the two share a name: same names, same meaning), plus `description` and a `resources:`
section; the loader is the one every spec file uses (`transplant/common/specfile.py`):

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
# also: old_tokenizer, pad_to_multiple_of, seed, overwrite, link, trust_remote_code, encode_like, untie,
#       calibrate (false: no calibration at all)
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

Shipped recipes live in the top-level `recipes/*.yaml` (the build puts them into the wheel as
`transplant/shipped_recipes/`): `transplant recipes` lists them, `transplant recipes --show NAME`
prints one to start a recipe of your own from.

Example:
    >>> from transplant import transplant
    >>> spec = recipe_spec("smollm2-de", {"new_tokenizer": "de-bpe/", "out": "smollm2-de"})  # doctest: +SKIP
    >>> result = transplant(spec)  # doctest: +SKIP
    >>> load_recipe("smollm2-de").method
    ['fvt']
"""

from __future__ import annotations

import logging
import os
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any

from transplant.common.errors import TransplantError
from pydantic import ValidationError

from transplant.common.specfile import RecipeError, expand, explain, parse_spec, variables_in
from transplant.runspec import RESOURCE_OPTIONS, RunSpec, TokenizerOf, cli_flags, expects

log = logging.getLogger(__name__)

_MODEL_RESOURCES = {"donor"}  # model arguments, not files
_ITEMS = {"options": ("option", "a number, string or true/false")}


# -- finding and loading --------------------------------------------------------------------------

def _shipped_folder():
    """The shipped recipes: inside an installed wheel, else the source checkout's top-level `recipes/`."""
    installed = importlib_resources.files("transplant") / "shipped_recipes"
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parent.parent / "recipes"


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
            out[name] = _parse(item.read_text(encoding="utf-8"), f"shipped recipe {name}", Path.cwd()).description or ""
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


class Recipe:
    """A recipe as read: its `RunSpec` (fields as written), how errors name it, the folder paths resolve against."""

    def __init__(self, spec: RunSpec, where: str, base: Path) -> None:
        self.spec, self.where, self.base = spec, where, base

    def __getattr__(self, name: str) -> Any:  # recipe.model, recipe.method, ... read the spec's fields
        return getattr(self.spec, name)

    @property
    def written(self) -> dict[str, Any]:
        """The fields the recipe sets (the others keep `RunSpec`'s defaults)."""
        return {name: getattr(self.spec, name) for name in RunSpec.model_fields if name in self.spec.model_fields_set}


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
    return Recipe(parse_spec(text, RunSpec, where, expects(), "write at least model, new_tokenizer and out", _ITEMS),
                  where, base)


def variables(recipe: Recipe) -> list[str]:
    """The environment variables a recipe reads (`${VAR}`), in order of first use."""
    return variables_in({k: v.model_dump() if hasattr(v, "model_dump") else v
                         for k, v in recipe.written.items() if k != "description"})


# -- resolving fields -----------------------------------------------------------------------------

class _Resolver:
    """Expands variables and resolves paths of one recipe's fields (only those asked for)."""

    def __init__(self, recipe: Recipe, env: dict | None, flags: dict[str, str]) -> None:
        self.env, self.flags = os.environ if env is None else env, flags
        self.where, self.base = recipe.where, recipe.base

    def text(self, value: str, field: str) -> str:
        return expand(value, self.env, self.where, field, self.flags.get(field.split(".")[0]))

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
                   flags: dict[str, str] | None = None) -> tuple[dict[str, Any], _Resolver]:
    """The recipe's written fields (except `skip`) with variables expanded and paths resolved, and the resolver.

    `new_tokenizer: {model: M}` becomes M's folder; `resources` stays a dict of the values as
    written (expanded, resolved and checked only when a method of the chain reads them, see
    `chain_options`); `options` stays flat and typed, its strings expanded.

    Raises:
        RecipeError: an unset variable, or a named file that does not exist (one line).
    """
    res = _Resolver(recipe, env, flags or {})
    fields: dict[str, Any] = {}
    for name, value in recipe.written.items():
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
    return fields, res


def chain_options(fields: dict[str, Any], res: _Resolver, chain: list[str], drop_unused: bool) -> dict[str, Any]:
    """The recipe's options plus its resources mapped onto the methods of `chain`, checked and typed.

    Args:
        fields: from `resolve_fields` (its options and resources).
        res: the recipe's resolver (from `resolve_fields`).
        chain: the run's method chain (`planner.method_chain`).
        drop_unused: drop options of methods outside the chain (the command line changed the
            method) instead of refusing them.
    """
    from transplant.methods.initializers import declared_options, resolve_options

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
        # Names, types and ranges, as --set is checked; what must be given is checked with the
        # final method (the command line may change it, and auto fills the network's path).
        resolve_options(chain, options, required=False)
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
    from transplant.methods.initializers import resolve_options
    from transplant.methods.planner import check_methods

    recipe = load_recipe(spec)
    run = recipe.spec
    try:
        check_methods(run.method_arg, run.fallback)
        # Resources are checked by name only here (their files may not exist on this machine).
        typed = {k: v for k, v in run.options.items() if not (isinstance(v, str) and "${" in v)}
        resolve_options(run.chain(), typed, required="auto" not in run.method)
    except TransplantError as exc:
        raise RecipeError(f"{recipe.where}: {exc}") from None
    return recipe


def recipe_spec(spec: str | Path, given: dict[str, Any] | None = None, env: dict | None = None,
                flags: dict[str, str] | None = None) -> RunSpec:
    """The `RunSpec` of a recipe with the fields in `given` (from the command line or the caller) winning.

    Recipe fields are expanded and resolved (relative paths against the recipe's folder); the
    values in `given` are taken as they are. `given["options"]` merges key by key over the
    recipe's options; when `given` changes the method or fallback, the recipe's options of
    methods no longer in the chain are dropped.

    Args:
        spec: a YAML file or a shipped recipe's name.
        given: field -> value, as `RunSpec` takes them.
        env: the environment variables `${VAR}` reads (default: `os.environ`).
        flags: field -> the flag that replaces it, named in errors (default: the CLI's flags).

    Raises:
        RecipeError: see `load_recipe` / `resolve_fields`; model, new tokenizer or output missing.
    """
    from transplant.methods.planner import check_methods

    given = dict(given or {})
    flags = cli_flags() if flags is None else flags
    recipe = load_recipe(spec)
    cli_options = given.pop("options", None) or {}
    fields, res = resolve_fields(recipe, skip=set(given), env=env, flags=flags)
    merged = dict(fields, **given)
    for name in ("model", "new_tokenizer", "out"):
        if not merged.get(name):
            raise RecipeError(f"{recipe.where} gives no {name} (add `{name}:` to the recipe or pass {flags[name]})")
    values = {k: v for k, v in merged.items() if k not in ("options", "resources")}
    try:
        run = RunSpec.model_validate(values, strict=False)
    except ValidationError as exc:
        raise RecipeError(explain(exc, RunSpec, recipe.where, values, expects(), _ITEMS)) from None
    check_methods(run.method_arg, run.fallback)
    options = chain_options(fields, res, run.chain(), drop_unused=bool({"method", "fallback"} & set(given)))
    options.update(cli_options)  # the caller's settings win, key by key
    return run.model_copy(update={"options": options, "description": recipe.spec.description})


def recipe_kwargs(spec: str | Path, env: dict | None = None, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for `transplant.transplant(...)` from a recipe, `overrides` winning.

    `overrides` use the recipe's key names (`out="x"`, `method="knn"`, `options={"knn.k": 20}`:
    options merge key by key; `eval_texts=None` drops the recipe's). Evaluation and calibration
    files are read here. `recipe_spec` gives the same run as a `RunSpec` (`transplant(spec)`).

    Example:
        >>> kwargs = recipe_kwargs("gemma-to-smollm2", out="g2s", calibrate_texts=None)  # doctest: +SKIP
        >>> transplant(**kwargs)  # doctest: +SKIP
    """
    unknown = set(overrides) - set(RunSpec.model_fields)
    if unknown:
        raise RecipeError(f"unknown recipe key(s) {', '.join(sorted(unknown))} (valid keys: "
                          f"{', '.join(RunSpec.model_fields)})")
    dropped = {k for k in ("eval_texts", "calibrate_texts") if k in overrides and overrides[k] is None}
    given = {k: str(v) if isinstance(v, Path) else v for k, v in overrides.items() if v is not None}
    given.update({k: [] for k in dropped})
    run = recipe_spec(spec, given, env, flags={k: f"{k}=" for k in RunSpec.model_fields})
    return run_kwargs(run)


def run_kwargs(run: RunSpec) -> dict[str, Any]:
    """The keyword form of `transplant.transplant(...)` for a spec (texts read)."""
    kwargs: dict[str, Any] = {name: getattr(run, name) for name in (
        "model", "new_tokenizer", "out", "fallback", "old_tokenizer", "pad_to_multiple_of", "seed", "overwrite",
        "link", "trust_remote_code", "eval_ctx", "encode_like", "untie", "calibrate_tokens", "calibrate",
        "allow_forced_tokenizer_class")}
    kwargs.update(method=run.method_arg, options=dict(run.options) or None, language=run.language or None,
                  eval_texts=run.read_eval_texts(), calibrate_texts=run.read_calibrate_texts(),
                  input_paths=run.input_paths)
    if run.eval_texts:
        kwargs["eval_name"] = run.eval_name
    return {k: v for k, v in kwargs.items() if v is not None or k in ("eval_texts", "calibrate_texts", "options")}


__all__ = ["Recipe", "RecipeError", "load_recipe", "check_recipe", "recipe_spec", "recipe_kwargs", "run_kwargs",
           "shipped_recipes", "resolve_fields", "variables", "RESOURCE_OPTIONS"]
