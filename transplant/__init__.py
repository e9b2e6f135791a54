"""tokentransplant: move a pretrained Hugging Face language model onto a new tokenizer.

Example:
    >>> from transplant import transplant
    >>> result = transplant("smollm2-135m-instruct", "tok.json", "out/", method="fvt")  # doctest: +SKIP
"""

from .api import TransplantResult, apply_plan, transplant, transplant_model
from .errors import TransplantError
from .evaluate import evaluate_bpb
from .plan import Plan

__all__ = ["transplant", "apply_plan", "transplant_model", "evaluate_bpb", "Plan", "TransplantResult",
           "TransplantError"]
__version__ = "0.1.0"
