"""tokentransplant: move a pretrained Hugging Face language model onto a new tokenizer.

Example:
    >>> from transplant import transplant
    >>> result = transplant("smollm2-135m-instruct", "tok.json", "out/", method="fvt")  # doctest: +SKIP
"""

from transplant.api import TransplantResult, apply_plan, transplant, transplant_model
from transplant.common.errors import TransplantError
from transplant.measure.evaluate import evaluate_bpb
from transplant.core.plan import Plan

__all__ = ["transplant", "apply_plan", "transplant_model", "evaluate_bpb", "Plan", "TransplantResult",
           "TransplantError"]
__version__ = "0.1.0"
