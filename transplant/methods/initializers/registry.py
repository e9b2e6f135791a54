"""Initializers by name, imported lazily so heavy optional dependencies load only when used.

Adding an initializer is one new file in this folder (a `BaseInitializer` subclass) plus one line
in `_REGISTRY`. An initializer declares its tunable settings in `options` (name -> `Option`); a
run sets them as `METHOD.OPTION` keys (`transplant run --set knn.k=20`), checked and typed by
`resolve_options`.

Example:
    >>> get_initializer("fvt").name
    'fvt'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module
from typing import Any, ClassVar

from transplant.common.errors import TransplantError
from transplant.common.optional import missing_package
from transplant.core.align import Alignment
from transplant.core.plan import Made
from transplant.methods.initializers.options import Option  # part of the contract: initializers import it here
from transplant.methods.resources import Resources

# name -> "module:Class" in this folder (imported on first use), or the class itself.
_REGISTRY: dict[str, str | type] = {
    "special": "special:SpecialInitializer",
    "exact": "exact:ExactInitializer",
    "fvt": "fvt:FVTInitializer",
    "mean": "mean:MeanInitializer",
    "multivariate": "multivariate:MultivariateInitializer",
    "random": "random:RandomInitializer",
    "knn": "knn:KNNInitializer",
    "hull": "hull:HullInitializer",
    "tokenadapt": "tokenadapt:TokenAdaptInitializer",
    "wechsel": "wechsel:WECHSELInitializer",
    "focus": "focus:FOCUSInitializer",
    "omp": "omp:OMPInitializer",
    "hypernet": "hypernet:HyperNetInitializer",
    "cw2v": "cw2v:CW2VInitializer",
}


@dataclass
class InitContext:
    """What an initializer may look at: the alignment, its validated options and the run's resources.

    `options` maps method name -> option name -> typed value (see `resolve_options`).

    Example:
        >>> ctx.options_for("knn")  # doctest: +SKIP
        {'k': 20, 'temperature': 1.0}
    """

    alignment: Alignment
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The door to everything else a method may read (old matrices, a donor, vectors, indices):
    # lazily loaded and cached. None in bare unit tests.
    resources: Resources | None = None
    seed: int = 0

    def need_resources(self, method: str) -> Resources:
        """The run's resources, or a one-line error naming what `method` needs."""
        if self.resources is None:
            raise TransplantError(f"method {method} needs the model's embeddings (plan through transplant(), "
                                  "apply or the CLI, or pass resources= to build_plan)")
        return self.resources

    def options_for(self, method: str) -> dict[str, Any]:
        """The typed options of `method`, defaults filled in where the run set none."""
        return {**defaults(method), **self.options.get(method, {})}


class BaseInitializer:
    """The contract of an initializer: subclass it, set the class attributes, write `assign`.

    Class attributes:
        name: the registry name (`--method NAME`, `--set NAME.OPTION=VALUE`).
        description: one line for `transplant methods` (empty: the class docstring's first line).
        complete: True when `assign` makes every token it is asked for, so the method may be a
            `--fallback` (mean, multivariate, random).
        options: the settings it accepts, name -> `Option`; `ctx.options_for(self.name)` gives
            them typed, defaults filled in.

    Anything beyond the alignment (old matrices, a donor model, fastText vectors, auxiliary
    spaces) is read through `ctx.need_resources(self.name)`, a `Resources`, which loads it once,
    caches it and records its fingerprint in the plan: a method never opens files itself.

    Example:
        >>> from transplant.core.plan import Made, Row
        >>> class Copy(BaseInitializer):
        ...     name = "copy0"
        ...     description = "every token gets old row 0"
        ...     def assign(self, ctx, todo):
        ...         return Made(rows={i: Row(self.name, (0,), (1.0,)) for i in todo})
        >>> Copy().assign(None, [3, 5]).ids().tolist()
        [3, 5]
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    complete: ClassVar[bool] = False
    options: ClassVar[dict[str, Option]] = {}

    def assign(self, ctx: InitContext, todo: list[int]) -> Made:
        """Rows for those of `todo` (new ids) this method can make; the rest go down the chain.

        Returns:
            `Made`: single `Row`s by id (few rows, or statistical kinds) and/or `RowBlock`s (many
            rows as arrays), each id of `todo` at most once.
        """
        raise NotImplementedError


def available() -> list[str]:
    """The registered method names, sorted."""
    return sorted(_REGISTRY)


def get_initializer(name: str) -> BaseInitializer:
    """An instance of method `name` (its module imported on first use; a one-line error when its
    optional package is missing)."""
    if name not in _REGISTRY:
        raise TransplantError(f"unknown method {name!r} (choose one of: {', '.join(available())})")
    target = _REGISTRY[name]
    if not isinstance(target, str):  # a class registered directly (e.g. by a test)
        return target()
    module, cls = target.split(":")
    try:
        found = import_module(f"{__package__}.{module}")
    except ModuleNotFoundError as exc:
        if (exc.name or "").startswith(__package__):
            raise
        raise TransplantError(missing_package(exc, f"method {name!r}")) from None
    return getattr(found, cls)()


def declared_options(name: str) -> dict[str, Option]:
    """The options method `name` declares (empty for a method without any)."""
    return dict(get_initializer(name).options)


def defaults(name: str) -> dict[str, Any]:
    """Option name -> default value of method `name`."""
    return {key: opt.default for key, opt in declared_options(name).items()}


def _valid(name: str) -> str:
    keys = [f"{name}.{key}" for key in declared_options(name)]
    return f"valid: {', '.join(keys)}" if keys else f"method {name} has no options"


def _flatten(raw: dict) -> dict[str, Any]:
    """`{"knn": {"k": 20}}` and `{"knn.k": 20}` alike as `{"knn.k": 20}`."""
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{sub}": v for sub, v in value.items()})
        else:
            flat[str(key)] = value
    return flat


def resolve_options(chain: list[str], raw: dict[str, Any] | None, required: bool = True) -> dict[str, dict[str, Any]]:
    """Check and type `METHOD.OPTION` settings against the methods of a chain, defaults filled in.

    Args:
        chain: the initializers of the run (see `planner.method_chain`).
        raw: `{"knn.k": "20"}` (strings from the command line, or typed values); a nested
            `{"knn": {"k": 20}}` is read the same way.
        required: refuse a method whose required option is unset (False while `auto` may still
            fill it in, e.g. the registered network's path).

    Returns:
        Method -> option -> typed value, for every method of `chain` that declares options.

    Raises:
        TransplantError: (one line) a key that is not METHOD.OPTION, an unknown method or option, a
            method the chain does not use, or a value of the wrong type.

    Example:
        >>> resolve_options(["special", "exact", "knn", "mean"], {"knn.k": "20"})  # doctest: +SKIP
        {'knn': {'k': 20, 'temperature': 1.0}}
    """
    resolved = {name: defaults(name) for name in chain if declared_options(name)}
    for key, value in _flatten(raw or {}).items():
        method, dot, option = key.partition(".")
        if not dot or not method or not option:
            raise TransplantError(f"malformed option {key!r} (expected METHOD.OPTION, e.g. knn.k)")
        if method not in _REGISTRY:
            raise TransplantError(f"unknown method {method!r} in option {key} (choose one of: {', '.join(available())})")
        if method not in chain:
            raise TransplantError(f"option {key} is for method {method}, which this run does not use "
                                  f"(chain: {', '.join(chain)})")
        declared = declared_options(method)
        if option not in declared:
            raise TransplantError(f"unknown option {key} ({_valid(method)})")
        try:
            resolved[method][option] = declared[option].parse(value)
        except ValueError as exc:
            raise TransplantError(f"option {key} {exc} ({key}: {declared[option].describe()})") from None
    for method, values in resolved.items() if required else ():  # what must be given, and was not set
        for option, spec in declared_options(method).items():
            if spec.required and values.get(option) in ("", None):
                raise TransplantError(f"method {method} needs option {method}.{option} ({spec.required})")
    return resolved


def format_options(resolved: dict[str, dict[str, Any]]) -> str:
    """`knn.k=20, knn.temperature=1.0` (the model card's line); empty when there are none.

    Example:
        >>> format_options({"knn": {"k": 20}})
        'knn.k=20'
    """
    return ", ".join(f"{method}.{key}={str(v).lower() if isinstance(v, bool) else v}"
                     for method, opts in resolved.items() for key, v in opts.items())
