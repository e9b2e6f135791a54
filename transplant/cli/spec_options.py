"""Click options generated from a spec's fields (`RunSpec`): one declaration, one flag each.

Each field with a `flag` in its metadata becomes one option named after the field, typed from
the field: a bool is a flag (`negate`: the flag sets it false), a list is repeatable, a `Literal`
is a choice, an int with a lower bound an `IntRange`. `options` (a mapping) is read as repeated
`METHOD.OPTION=VALUE` settings.

Example:
    >>> import click
    >>> from transplant.runspec import RunSpec
    >>> @click.command()
    ... @spec_options(RunSpec)
    ... def run(**fields): pass
    >>> [p.opts[0] for p in run.params][:3]
    ['--model', '--new-tok', '--out']
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Callable

import click
from click.core import ParameterSource
from pydantic import BaseModel


def _members(annotation: Any) -> list[Any]:
    """The members of `X | Y | None` but None; `[annotation]` for a plain type."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(annotation) if a is not type(None)]
    return [annotation]


def _option(name: str, field) -> Callable:
    extra = field.json_schema_extra
    annotation = _members(field.annotation)[0]
    origin = typing.get_origin(annotation)
    kwargs: dict[str, Any] = {"help": field.description}
    if extra.get("metavar"):
        kwargs["metavar"] = extra["metavar"]
    lower = next((m.ge for m in field.metadata if hasattr(m, "ge")), None)
    if annotation is bool:
        kwargs.update(is_flag=True, default=field.default)
        if extra.get("negate"):
            kwargs["flag_value"] = not field.default
    elif origin in (list, dict) and name != "method":
        kwargs["multiple"] = True
    elif name == "method":  # a chain is written "a+b" on the command line
        kwargs.update(default="+".join(field.default), show_default=True)
    elif origin is typing.Literal:
        kwargs.update(type=click.Choice(list(typing.get_args(annotation))), default=field.default, show_default=True)
    elif annotation is int:
        kwargs.update(type=click.IntRange(min=lower) if lower is not None else int, default=field.default,
                      show_default=field.default is not None)
    else:
        kwargs.update(default=field.default, show_default=field.default is not None)
    if name == "out":
        kwargs["type"] = click.Path()
    return click.option(extra["flag"], name, **kwargs)


def spec_options(spec: type[BaseModel]) -> Callable:
    """Decorator adding one click option per flagged field of `spec`, in field order."""
    def decorate(fn: Callable) -> Callable:
        for name, field in reversed(list(spec.model_fields.items())):
            if (field.json_schema_extra or {}).get("flag"):
                fn = _option(name, field)(fn)
        return fn

    return decorate


def dataclass_options(cls) -> Callable:
    """Decorator adding one click option per declared field of dataclass `cls` that has a flag
    (`transplant.common.settings.setting`), in field order: typed and ranged from the declaration.

    Example:
        >>> from transplant.train.heal_settings import HealConfig
        >>> @click.command()
        ... @dataclass_options(HealConfig)
        ... def heal(**fields): pass
        >>> [p.opts[0] for p in heal.params][:3]
        ['--model', '--text', '--out']
    """
    from transplant.common.settings import base_type, declared

    def one(f) -> Callable:
        m, (kind, optional) = f.metadata, base_type(f)
        default = None if f.default is dataclasses.MISSING else f.default
        kwargs: dict[str, Any] = {"help": m["help"]}
        if kind == "bool":
            kwargs.update(is_flag=True, default=default)
        elif kind == "list":
            kwargs["multiple"] = True
        else:
            if m["choices"]:
                kwargs["type"] = click.Choice(list(m["choices"]))
            elif kind == "int":
                kwargs["type"] = click.IntRange(min=m["ge"], max=m["le"])
            elif kind == "float":
                low = m["gt"] if m["gt"] is not None else m["ge"]
                high = m["lt"] if m["lt"] is not None else m["le"]
                kwargs["type"] = click.FloatRange(min=low, max=high, min_open=m["gt"] is not None,
                                                  max_open=m["lt"] is not None)
            elif m["path"] == "dir":
                kwargs["type"] = click.Path(file_okay=False)
            kwargs.update(default=default, show_default=default is not None)
        return click.option(m["flag"], f.name, **kwargs)

    def decorate(fn: Callable) -> Callable:
        for f in reversed([f for f in declared(cls) if f.metadata.get("flag")]):
            fn = one(f)(fn)
        return fn

    return decorate


def frozen_body_options(unit: str) -> Callable:
    """`--shard-body` and `--checkpoint-layers`, the training commands' two ways of holding a big
    frozen model (`heal`, `hypernet train`); `unit` names what a step reads ("windows", "chunks")."""
    def add(fn: Callable) -> Callable:
        fn = click.option("--checkpoint-layers", is_flag=True,
                          help="Recompute the frozen model's layers in the backward pass instead of keeping their "
                               f"activations: less memory for long {unit} and large batches, one more forward "
                               "pass of the body a step.")(fn)
        return click.option("--shard-body", is_flag=True,
                            help="Shard the frozen model's decoder layers over the processes of `accelerate launch` "
                                 "(FSDP2): each holds 1/N of the body, for a model one device cannot hold "
                                 "(recipes/accelerate/).")(fn)
    return add


def given_on_command_line(ctx: click.Context, names) -> set[str]:
    """The parameters among `names` the user set (command line, environment, prompt), not left at default."""
    return {name for name in names if ctx.get_parameter_source(name) in (
        ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT, ParameterSource.PROMPT)}


def as_fields(values: dict[str, Any]) -> dict[str, Any]:
    """Click's values as spec field values: tuples as lists, `options` settings parsed."""
    from transplant.runspec import parse_settings

    out = {}
    for name, value in values.items():
        if name == "options":
            value = parse_settings(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[name] = value
    return out
