"""Spec files: YAML read safely into a pydantic model, with one-line errors and `${VAR}` expansion.

One loader for every spec the tool reads from a file: `transplant run --recipe` (`RunSpec`),
`hypernet train --recipe` (its `TrainConfig`). Rules shared by all of them:

- Safe YAML only (no Python objects); a key given twice in one mapping is refused (PyYAML would
  silently keep the last).
- An unknown key or a value of the wrong type is one line naming the file, the key and what it
  expects (pydantic's own messages list every union member).
- `${VAR}` and `${VAR:-default}` in a string are read from the environment only when a run uses
  that field; an unset variable without a default is one line naming the variable and the flag
  that replaces the field.

Example:
    >>> from pydantic import BaseModel, ConfigDict
    >>> class Tiny(BaseModel):
    ...     model_config = ConfigDict(extra="forbid", strict=True)
    ...     steps: int = 1
    >>> parse_spec("steps: 3", Tiny, "recipe tiny.yaml").steps
    3
    >>> try:
    ...     parse_spec("step: 3", Tiny, "recipe tiny.yaml")
    ... except RecipeError as exc:
    ...     print(exc)
    recipe tiny.yaml: unknown key 'step' (valid keys: steps)
    >>> expand("${HOME_X:-/tmp}/a.txt", {}, "recipe r.yaml", "texts")
    '/tmp/a.txt'
"""

from __future__ import annotations

import re
from typing import Any, TypeVar, get_args

import yaml
from pydantic import BaseModel, ValidationError

from transplant.common.errors import TransplantError

M = TypeVar("M", bound=BaseModel)


class RecipeError(TransplantError):
    """A recipe (spec file) that cannot be used: one line naming the file and what to fix."""


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


def read_yaml_mapping(text: str, where: str, empty_hint: str = "write at least one key") -> dict:
    """The YAML mapping in `text`, or a one-line `RecipeError` (not YAML, empty, not a mapping)."""
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: no Python objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        hint = " (quote a ${VAR} value inside [...] or {...})" if "'{'" in problem and "${" in text else ""
        raise RecipeError(f"{where} is not valid YAML: {problem}{line}{hint}") from None
    except RecursionError:  # PyYAML composes nested nodes recursively
        raise RecipeError(f"{where} nests its values too deeply to be a recipe (write plain keys and values)") from None
    if raw is None:
        raise RecipeError(f"{where} is empty ({empty_hint})")
    if not isinstance(raw, dict):
        raise RecipeError(f"{where} must be a mapping of keys to values, not a {type(raw).__name__}")
    return raw


def _section_model(model: type[BaseModel], name: str) -> type[BaseModel] | None:
    """The nested model a field holds when it is only a section (`resources: ResourceFiles | None`)."""
    annotation = model.model_fields[name].annotation
    members = [a for a in (get_args(annotation) or (annotation,)) if a is not type(None)]
    if len(members) == 1 and isinstance(members[0], type) and issubclass(members[0], BaseModel):
        return members[0]
    return None


def _any_section(model: type[BaseModel], name: str) -> type[BaseModel] | None:
    """The nested model a field may hold, alone or in a union (`new_tokenizer: str | TokenizerOf`)."""
    annotation = model.model_fields[name].annotation
    for member in get_args(annotation) or (annotation,):
        if isinstance(member, type) and issubclass(member, BaseModel):
            return member
    return None


def explain(exc: ValidationError, model: type[BaseModel], where: str, raw: dict,
            expects: dict[str, str] | None = None, items: dict[str, tuple[str, str]] | None = None) -> str:
    """One line for a schema failure: an unknown key first (with the valid keys), else the first bad value.

    Args:
        expects: field -> what it takes, in words ("an integer >= 1"); default: pydantic's message.
        items: mapping field -> (what one entry is called, what it takes), for a bad entry of a
            mapping field (`options` -> ("option", "a number, string or true/false")).
    """
    expects, items = expects or {}, items or {}
    errors = exc.errors()
    bad = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = bad["loc"]
    # Walk the location through the sections, skipping pydantic's union-member tags.
    section: type[BaseModel] | None = model
    path: list[str] = []
    for part in loc[:-1] if bad["type"] == "extra_forbidden" else loc[:1]:
        if section is not None and isinstance(part, str) and part in section.model_fields:
            path.append(part)
            section = _any_section(section, part)
    if bad["type"] == "extra_forbidden":
        key = ".".join(path + [str(loc[-1])])
        of = f" of {'.'.join(path)}" if path else ""
        valid = ", ".join((section if path and section is not None else model).model_fields)
        return f"{where}: unknown key {key!r} (valid keys{of}: {valid})"
    field = path[0] if path else str(loc[0])
    if bad["type"] == "value_error":  # our own validators' messages
        return f"{where}: {field}: {bad['msg'].removeprefix('Value error, ')}"
    if field in items and len(loc) > 1:
        label, words = items[field]
        return f"{where}: {label} {loc[1]} expects {words}, not {bad['input']!r}"
    nested = _section_model(model, field) if field in model.model_fields else None
    if nested is not None and len(loc) > 1:
        return f"{where}: {field}.{loc[1]} expects a string, not {bad['input']!r}"
    return f"{where}: {field} expects {expects.get(field, bad['msg'].lower())}, not {raw.get(field)!r}"


def parse_spec(text: str, model: type[M], where: str, expects: dict[str, str] | None = None,
               empty_hint: str = "write at least one key", items: dict[str, tuple[str, str]] | None = None) -> M:
    """`text` (YAML) validated into `model`, or a one-line `RecipeError`.

    Example:
        >>> from pydantic import BaseModel
        >>> class Two(BaseModel):
        ...     a: int = 0
        >>> parse_spec("a: 2", Two, "spec").a
        2
    """
    raw = read_yaml_mapping(text, where, empty_hint)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(explain(exc, model, where, raw, expects, items)) from None


VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand(value: str, env: dict, where: str, field: str, flag: str | None = None) -> str:
    """`${VAR}` / `${VAR:-default}` in `value` from `env`, or a one-line error naming the variable and `flag`."""
    def one(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in env and env[name] != "":
            return env[name]
        if default is not None:
            return default
        hint = f"set it, or pass {flag}" if flag else "set it"
        raise RecipeError(f"{where}: {field} reads ${{{name}}}, which is not set ({hint})")

    return VAR.sub(one, value)


def variables_in(value: Any) -> list[str]:
    """The environment variables `value` (any nesting of dicts, lists and strings) reads, in order of first use."""
    found: dict[str, None] = {}

    def walk(item: Any) -> None:
        if isinstance(item, str):
            found.update(dict.fromkeys(m.group(1) for m in VAR.finditer(item)))
        elif isinstance(item, dict):
            for v in item.values():
                walk(v)
        elif isinstance(item, list):
            for v in item:
                walk(v)

    walk(value)
    return list(found)


def dataclass_spec(cls: type, exclude: tuple[str, ...] = ()) -> type[BaseModel]:
    """A dataclass's fields as a pydantic model that refuses unknown keys (the schema of its spec file).

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class Cfg:
        ...     steps: int = 1
        >>> dataclass_spec(Cfg).model_validate({"steps": 2}).steps
        2
    """
    import dataclasses
    import typing

    from pydantic import ConfigDict, create_model

    hints = typing.get_type_hints(cls)
    fields = {f.name: (hints[f.name], None if f.default is dataclasses.MISSING else f.default)
              for f in dataclasses.fields(cls) if f.name not in exclude}
    return create_model(f"{cls.__name__}Spec", __config__=ConfigDict(extra="forbid"), **fields)


def config_values(recipe: str | None, cls: type, flags: dict[str, Any], given: set[str],
                  lists: tuple[str, ...] = ("texts",), flag_of: dict[str, str] | None = None,
                  exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The settings of a dataclass-configured command: a recipe's fields, the flags given on the command line winning.

    The recipe (YAML) is checked against `cls`'s fields (`dataclass_spec`); its strings have
    `${VAR}` / `${VAR:-default}` expanded and `~` resolved. A relative path in a `lists` field is
    read from the recipe's folder when it is there, else from the current directory. Flags not
    given fill the fields the recipe leaves out.

    Args:
        recipe: the recipe file, or None.
        cls: the config dataclass (its fields are the recipe's keys).
        flags: every command-line value, by field name; `given`: those set on the command line.
        lists: fields holding file lists (one string becomes a one-item list).
        flag_of: field -> the flag naming it in errors (default `--field-name`).

    Example:
        >>> from dataclasses import dataclass, field
        >>> @dataclass
        ... class Cfg:
        ...     texts: list = field(default_factory=list)
        ...     steps: int = 1
        >>> _ = open("r.yaml", "w").write("texts: a.txt\\nsteps: 3\\n")
        >>> config_values("r.yaml", Cfg, {"texts": (), "steps": 5}, {"steps"})["steps"]
        5
    """
    import os
    from pathlib import Path

    values: dict[str, Any] = {}
    if recipe:
        where = f"recipe {recipe}"
        try:
            raw = read_yaml_mapping(Path(recipe).read_text(encoding="utf-8"), where)
        except UnicodeDecodeError:
            raise RecipeError(f"{where} is not UTF-8 text") from None
        for name in lists:
            if isinstance(raw.get(name), str):
                raw[name] = [raw[name]]
        spec = dataclass_spec(cls, exclude)
        try:  # strict, as `transplant run --recipe`: "3" is not a number, "yes" is not true
            spec.model_validate(raw, strict=True)
        except ValidationError as exc:
            raise RecipeError(explain(exc, spec, where, raw)) from None
        base = os.path.dirname(os.path.abspath(recipe))
        flag_of = flag_of or {}

        def resolved(key: str, value: Any) -> Any:
            if not isinstance(value, str):
                return value
            flag = flag_of.get(key, f"--{key.replace('_', '-')}")
            return os.path.expanduser(expand(value, os.environ, where, key, flag))

        for key, value in raw.items():
            if key in given:
                continue
            values[key] = [resolved(key, v) for v in value] if isinstance(value, list) else resolved(key, value)
            if key in lists:
                values[key] = [p if os.path.isabs(p) or not os.path.exists(os.path.join(base, p))
                               else os.path.join(base, p) for p in values[key]]
    for key, value in flags.items():
        if key in given or key not in values:
            values[key] = list(value) if key in lists else value
    return values
