"""Spherical k-means: groups of rows pointing the same way (how `sparse_coding.omp` groups its targets).

Example:
    >>> centroids, assign = spherical_kmeans(torch.randn(1000, 8), 10)
    >>> centroids.shape, assign.shape
    (torch.Size([10, 8]), torch.Size([1000]))
"""

from __future__ import annotations

import torch


def spherical_kmeans(X: torch.Tensor, groups: int, iters: int = 8, sample_per_group: int = 48,
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine k-means of the rows of `X` (normalised): (centroids (groups, d), assignment (n,)).

    Trained on a sample of about `sample_per_group` rows per group, then every row is assigned
    to its closest centroid (one chunked matrix product).

    Example:
        >>> c, a = spherical_kmeans(torch.randn(1000, 8), 10)
        >>> c.shape, a.shape
        (torch.Size([10, 8]), torch.Size([1000]))
    """
    X = normalise(X.to(torch.float32))
    n = X.shape[0]
    groups = max(1, min(groups, n))
    gen = torch.Generator().manual_seed(seed)
    sample = X[torch.randperm(n, generator=gen)[: min(n, groups * sample_per_group)]]
    cent = sample[torch.randperm(len(sample), generator=gen)[:groups]].clone()
    for _ in range(iters):
        assign = _closest(sample, cent)
        sums = torch.zeros_like(cent).index_add_(0, assign, sample)
        counts = torch.bincount(assign, minlength=groups)
        empty = counts == 0
        if bool(empty.any()):  # re-seed empty groups with random sample rows
            sums[empty] = sample[torch.randint(len(sample), (int(empty.sum()),), generator=gen)]
        cent = normalise(sums)
    return cent, _closest(X, cent)


def _closest(X: torch.Tensor, cent: torch.Tensor) -> torch.Tensor:
    chunk = max(1, (64 << 20) // (4 * max(1, cent.shape[0])))
    return torch.cat([(X[i:i + chunk] @ cent.T).argmax(1) for i in range(0, X.shape[0], chunk)])


def normalise(X: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length (zero rows stay zero)."""
    return X / torch.linalg.vector_norm(X, dim=1, keepdim=True).clamp_min(1e-30)
