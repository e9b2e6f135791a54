"""Calibration problems where the compact fit is wrong on purpose, so the guard of `fit_scale`
("never worse than no calibration", judged on the exact NLL) has something to catch.

The made rows of each group are one outlier (a logit of up to `outlier`) among many rows near
zero. With a single histogram bin per position and group, `quantize` keeps their count, mean and
spread but not the outlier, so the compact form sees a far smaller made mass than the full
logits; the text is drawn from the model itself at scale 1, so no scale improves on 1 by much,
and the scale fitted on the compact form makes the exact NLL worse.
"""

from __future__ import annotations

import numpy as np
import torch

from transplant.methods.calibrate_compact import head_pass
from transplant.methods.calibrate_fit import _grid_scale, _newton_scales


def outlier_problem(groups: int = 1, transform=None, n: int = 2000, kept: int = 10, made: int = 200,
                    outlier: float = 4.0, seed: int = 0):
    """(h, y, head, made mask, buckets): final hidden states, next tokens drawn from the model's
    own distribution (after `transform`, a soft cap), the head, and the made rows split into
    `groups` buckets of equal size."""
    g = torch.Generator().manual_seed(seed)
    dim, per = groups + 2, made // groups
    head = torch.zeros(kept + made, dim)
    head[:kept] = torch.randn(kept, dim, generator=g)
    buckets = np.full(kept + made, -1)
    for b in range(groups):
        first = kept + b * per
        head[first, b] = outlier  # bucket b's outlier reads dimension b
        head[first + 1:first + per] = 0.05 * torch.randn(per - 1, dim, generator=g)
        buckets[first:first + per] = b
    h = torch.randn(n, dim, generator=g)
    h[:, :groups] = h[:, :groups].abs()  # every position leans towards the outliers
    mask = torch.zeros(kept + made, dtype=torch.bool)
    mask[kept:] = True
    logits = h @ head.T
    probs = torch.softmax(transform(logits) if transform else logits, 1)
    y = torch.multinomial(probs, 1, generator=g).squeeze(1)
    return h, y, head, mask, buckets


def compact_proposal(h, y, head, made, buckets=None, transform=None, bins: int = 1) -> tuple[np.ndarray, float, float]:
    """What `fit_scale` would return before its guard: (scales fitted on the compact form, exact
    summed NLL at no scale, exact summed NLL at those scales)."""
    group = torch.where(made, torch.from_numpy(buckets) if buckets is not None else 0, -1)
    n_groups = int(group.max()) + 1
    ones = np.ones((1, n_groups))
    _, _, compact = head_pass(h, y, head, group, ones, transform, bins)
    if transform is not None:
        scales = np.array([_grid_scale(compact, transform)])
    else:
        scales = _newton_scales(compact, ones[0], np.ones(n_groups, bool))
    nll, _, _ = head_pass(h, y, head, group, np.stack([ones[0], scales]), transform)
    return scales, float(nll[0]), float(nll[1])
