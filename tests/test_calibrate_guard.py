"""Calibration never makes the text less likely than no calibration at all: when the scale(s)
fitted on the compact form raise the exact NLL, `fit_scale` keeps the rows as they are."""

from __future__ import annotations

import pytest
import torch
from calibration_cases import compact_proposal, outlier_problem

from transplant.methods.calibrate_fit import fit_scale

CAP = 3.0


def _soft_cap(x: torch.Tensor) -> torch.Tensor:
    return CAP * torch.tanh(x / CAP)


CASES = {  # name -> (groups, transform): Newton's method on one or two scales, the soft-cap grid
    "one-scale": (1, None),
    "per-bucket": (2, None),
    "soft-cap": (1, _soft_cap),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_fit_worse_than_none_is_refused(case):
    groups, transform = CASES[case]
    h, y, head, made, buckets = outlier_problem(groups, transform)
    bucketed = buckets if groups > 1 else None
    scales, nll_none, nll_fitted = compact_proposal(h, y, head, made, bucketed, transform)
    # The case is what it claims: the compact fit moved, and made the exact NLL worse.
    assert (scales != 1).all() and nll_fitted > nll_none, (scales, nll_none, nll_fitted)

    fit = fit_scale(h, y, head, made, transform, buckets=bucketed, min_support=50, bins=1)
    assert fit.scale == 1.0 and fit.bucket_scales is None
    assert fit.nll_after == fit.nll_before == pytest.approx(nll_none / len(y), rel=1e-9)
    assert fit.made_mass_after == fit.made_mass_before


def test_a_fit_better_than_none_is_kept():
    """The same problem with enough bins: the compact form is right, the fitted scales lower the
    exact NLL, and they are kept (the guard is no blanket refusal)."""
    h, y, head, made, buckets = outlier_problem(2)
    scales, nll_none, nll_fitted = compact_proposal(h, y, head, made, buckets, bins=64)
    assert nll_fitted < nll_none
    fit = fit_scale(h, y, head, made, buckets=buckets, min_support=50)
    assert fit.bucket_scales == pytest.approx(scales.tolist(), abs=1e-4)
    assert fit.nll_after == pytest.approx(nll_fitted / len(y), rel=1e-9) and fit.nll_after < fit.nll_before
