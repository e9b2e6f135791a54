"""tokentransplant: move a pretrained Hugging Face language model onto a new tokenizer.

The package reads like the pipeline, bottom layer first (each imports only from the layers
before it; `tests/test_layers.py` checks it):

    common/    errors, progress bars, the one text reader, the spec-file loader
    core/      vocabularies, the alignment of old to new tokens, the plan (E_new = W · E_old)
    io/        checkpoints (streamed shards), tokenizers, configs, model cards, output folders
    measure/   bits per byte, and what transformers does around the model's body
    methods/   the initializers, their resources, calibration, the planner, `auto`
    train/     the shared training loop, healing, tokenizer training
    front ends runspec (every run parameter, once), api, recipes, extend, demo, cli/

Public names are imported on first use, so `import transplant` (and `transplant --help`) does
not load torch.

Example:
    >>> from transplant import RunSpec, transplant
    >>> spec = RunSpec(model="smollm2-135m-instruct", new_tokenizer="tok.json", out="out/", method="fvt")
    >>> result = transplant(spec)  # doctest: +SKIP

    In a fine-tuning script (plan, then apply to the model in memory):

    >>> from transplant import plan_transplant
    >>> plan = plan_transplant(model, "tok.json", old_tokenizer="smollm2-135m-instruct")  # doctest: +SKIP
    >>> model, tokenizer = plan.apply_to(model)  # doctest: +SKIP
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load on first use
    # ruff: noqa: F401
    from transplant.api import TransplantResult, apply_plan, run_spec, transplant, transplant_model
    from transplant.planned import TransplantPlan, plan_transplant
    from transplant.common.errors import TransplantError
    from transplant.core.plan import Plan
    from transplant.measure.evaluate import evaluate_bpb
    from transplant.runspec import RunSpec

_PUBLIC = {"transplant": "transplant.api", "run_spec": "transplant.api", "apply_plan": "transplant.api",
           "transplant_model": "transplant.api", "TransplantResult": "transplant.api",
           "plan_transplant": "transplant.planned", "TransplantPlan": "transplant.planned",
           "evaluate_bpb": "transplant.measure.evaluate", "Plan": "transplant.core.plan",
           "TransplantError": "transplant.common.errors", "RunSpec": "transplant.runspec"}

__all__ = list(_PUBLIC)
__version__ = "0.1.0"


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'transplant' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later lookups skip this hook
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
