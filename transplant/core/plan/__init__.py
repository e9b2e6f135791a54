"""The plan: how every new embedding row is made from the old matrix.

Most initializers are linear in the old embeddings, ``E_new[i] = sum_j W[i, j] * E_old[j]``,
so a plan stores ``W`` sparsely (CSR), plus rows that are statistics of the old matrix
(mean, a multivariate-normal sample, a random baseline) recorded by *kind*, not by value.
Statistical rows are recomputed from whichever matrix the plan is applied to, so re-applying a
plan to a fine-tune of the base model uses the fine-tune's statistics. Rows that are neither
(hypernetwork outputs) are stored as dense overrides.

A plan is saved as ``transplant_plan.safetensors`` (arrays) + ``transplant_plan.json``
(provenance, method chain, statistics).

    types.py     row kinds, `Row`, `RowBlock`, `Made`: what initializers hand in
    plan.py      `Plan`: its data, provenance and counts
    assembly.py  rows and blocks of a method chain -> one plan in id order
    apply.py     a plan x an old matrix -> the new matrix (statistical rows recomputed)
    storage.py   save, load and validate a plan

Example:
    >>> plan = Plan.load("out/")  # doctest: +SKIP
    >>> new_embeddings = plan.apply(old_embeddings)  # doctest: +SKIP
"""

from transplant.core.plan.apply import EmbeddingStats
from transplant.core.plan.plan import Plan
from transplant.core.plan.storage import OUTPUT_PREFIX, PLAN_FORMAT, PLAN_JSON, PLAN_WEIGHTS, READABLE_FORMATS
from transplant.core.plan.types import (KIND_NAMES, LINEAR, MEAN, MULTIVARIATE, OVERRIDE, RANDOM, Made, Row,
                                        RowBlock)

__all__ = ["EmbeddingStats", "KIND_NAMES", "LINEAR", "MEAN", "MULTIVARIATE", "OUTPUT_PREFIX", "OVERRIDE",
           "PLAN_FORMAT", "PLAN_JSON", "PLAN_WEIGHTS", "RANDOM", "READABLE_FORMATS", "Made", "Plan", "Row",
           "RowBlock"]
