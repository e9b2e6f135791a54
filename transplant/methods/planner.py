"""Compose initializers into a plan: special -> exact -> method -> fallback, recorded per token."""

from __future__ import annotations

import time

from transplant.common.errors import TransplantError
from transplant.common.progress import bar
from transplant.core.align import Alignment
from transplant.core.plan import MEAN, Made, Plan, Row
from transplant.core.vocab import Vocabulary
from transplant.methods.initializers import InitContext, available, get_initializer, resolve_options
from transplant.methods.resources import Resources


FIXED_STEPS = ("special", "exact")
# What `auto` may resolve to (transplant/auto.py), for checking options before anything loads.
AUTO_CANDIDATES = ("hypernet", "fvt")


def check_methods(method: str | list[str], fallback: str = "mean") -> None:
    """Refuse unknown methods, the fixed chain steps as methods, and a fallback that cannot fill every row.

    Example:
        >>> check_methods(["knn", "fvt"], fallback="random")  # fine: nothing to say
        >>> check_methods("fvt", fallback="fvt")
        Traceback (most recent call last):
        ...
        transplant.common.errors.TransplantError: fallback 'fvt' cannot make every token (choose one of: mean, multivariate, random)
    """
    steps = [method] if isinstance(method, str) else list(method)
    if "auto" in steps:
        if len(steps) > 1:
            raise TransplantError("auto chooses the whole method; it cannot be chained (pass --method auto alone)")
        steps = ["fvt"]
    for step in steps + [fallback]:
        if step in FIXED_STEPS:
            choices = ", ".join(n for n in available() if n not in FIXED_STEPS)
            raise TransplantError(f"{step!r} is not a method: special tokens and exact matches are always made first "
                                  f"(choose one of: {choices})")
        get_initializer(step)  # unknown names fail here
    if not get_initializer(fallback).complete:
        raise TransplantError(f"fallback {fallback!r} cannot make every token "
                              f"(choose one of: {', '.join(_complete_methods())})")


def _complete_methods() -> list[str]:
    """Initializers that make every token they are asked for (importing each; only on the error path)."""
    names = []
    for name in available():
        try:
            if name not in FIXED_STEPS and get_initializer(name).complete:
                names.append(name)
        except TransplantError:  # an initializer whose optional package is missing
            pass
    return names


def method_chain(method: str | list[str], fallback: str = "mean") -> list[str]:
    """The initializers tried in order; `method` may itself be a list (e.g. ["fvt", "mean"]);
    `auto` stands for every method it may choose (for checking their options).

    Example:
        >>> method_chain("fvt")
        ['special', 'exact', 'fvt', 'mean']
        >>> method_chain(["knn", "fvt"], fallback="random")
        ['special', 'exact', 'knn', 'fvt', 'random']
        >>> method_chain("auto")
        ['special', 'exact', 'hypernet', 'fvt', 'mean']
    """
    steps = ["special", "exact"] + ([method] if isinstance(method, str) else list(method)) + [fallback]
    steps = [s for step in steps for s in (AUTO_CANDIDATES if step == "auto" else (step,))]
    chain: list[str] = []
    for step in steps:
        if step not in chain:
            chain.append(step)
    return chain


def build_plan(old: Vocabulary, new: Vocabulary, method: str | list[str] = "fvt", fallback: str = "mean",
               pad_to_multiple_of: int | None = None, seed: int = 0, options: dict | None = None,
               alignment: Alignment | None = None, resources: Resources | None = None) -> Plan:
    """Plan every row of the new embedding matrix.

    Args:
        old, new: the source and target vocabularies.
        method: initializer name (or list) used after exact overlap and special tokens.
        fallback: initializer for tokens no earlier step could make (must handle every token).
        pad_to_multiple_of: round the row count up (the extra rows get the mean and are labelled `pad`).
        seed: seed of statistical rows (multivariate, random).
        options: `METHOD.OPTION` settings, e.g. `{"knn.k": "20"}` (see `initializers.resolve_options`);
            recorded, typed and with defaults, in `plan.meta["options"]`.

    Example:
        >>> from transplant.core.vocab import load_tokenizer
        >>> old, new = load_tokenizer(model_dir).vocabulary(), load_tokenizer(new_tok_dir).vocabulary()
        >>> plan = build_plan(old, new, method="fvt")
        >>> plan.counts()  # provenance of the 759 rows; `<unk>` (no old role, no pieces): the fallback's
        {'mean': 1, 'special': 2, 'byte': 256, 'exact': 293, 'fvt': 207}
        >>> plan.meta["chain"]
        ['special', 'exact', 'fvt', 'mean']
        >>> plan = build_plan(old, new, method="fvt", pad_to_multiple_of=64)
        >>> plan.new_size, plan.counts()["pad"]
        (768, 9)
        >>> build_plan(old, new, method="fvt", options={"knn.k": "20"})
        Traceback (most recent call last):
        ...
        transplant.common.errors.TransplantError: option knn.k is for method knn, which this run does not use (chain: special, exact, fvt, mean)
    """
    started = time.perf_counter()
    if method == "auto" or method == ["auto"]:
        raise TransplantError("method auto is resolved by transplant()/transplant_model() before planning "
                              "(see transplant.methods.auto.choose)")
    check_methods(method, fallback)
    alignment = alignment or Alignment.build(old, new)
    chain = method_chain(method, fallback)
    resolved = resolve_options(chain, options)
    ctx = InitContext(alignment, resolved, resources, seed)
    everything = Made()
    todo = [i for i, t in enumerate(new.tokens) if t.kind != "unused"]
    for name in bar(chain, desc="planning", unit="step"):
        if not todo:
            break
        made = get_initializer(name).assign(ctx, todo)
        done = _accepted(name, made, set(todo))
        everything.add(made)
        todo = [i for i in todo if i not in done]
    size = len(new)
    if pad_to_multiple_of:
        size = -(-size // pad_to_multiple_of) * pad_to_multiple_of
    meta = {
        "method": method if isinstance(method, str) else "+".join(method),
        "chain": chain,
        "fallback": fallback,
        "options": resolved,
        "old_family": old.family,
        "new_family": new.family,
        "alignment": alignment.stats(),
        "special_map": {str(k): v for k, v in sorted(alignment.special_map.items())},
        "seconds": round(time.perf_counter() - started, 2),
    }
    if resources is not None and resources.fingerprints():
        meta["resources"] = resources.fingerprints()
    return Plan.assemble(size, len(old), everything.rows, everything.blocks, meta, seed, fill=Row("pad", kind=MEAN))


def _accepted(name: str, made: Made, todo: set[int]) -> set[int]:
    """The ids an initializer made, checked against the contract: a `Made`, only ids it was asked
    for, each once."""
    if not isinstance(made, Made):
        raise TransplantError(f"method {name} returned {type(made).__name__}, not rows (internal error in the method)")
    ids = made.ids().tolist()
    done = set(ids)
    if len(done) != len(ids):
        raise TransplantError(f"method {name} made some rows twice (internal error in the method)")
    stray = done - todo
    if stray:
        raise TransplantError(f"method {name} made rows it was not asked for, e.g. id {min(stray)} "
                              "(internal error in the method)")
    return done
