"""Improved precision and recall (Kynkäänniemi et al. 2019) on feature sets.

Each set's manifold is the union of balls around its points, each ball's radius the distance
to the point's k-th nearest neighbour within the set (k = 3 in the paper). Precision: the share
of generated points inside the real manifold (are samples realistic?); recall: the share of real
points inside the generated manifold (is the real variety covered?).
"""

from __future__ import annotations

import numpy as np
import torch


def _pairwise(a: torch.Tensor, b: torch.Tensor, block: int = 2048) -> torch.Tensor:
    return torch.cat([torch.cdist(a[i:i + block], b) for i in range(0, len(a), block)])


def knn_radii(features: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of each point to its k-th nearest other point of the same set."""
    if len(features) <= k:
        raise ValueError(f"need more than k={k} points per set, got {len(features)}")
    d = _pairwise(features, features)
    return d.kthvalue(k + 1, dim=1).values  # the 1st smallest is the point itself (0)


def coverage(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> float:
    """Share of ``points`` inside at least one ball (centres, radii)."""
    d = _pairwise(points, centres)
    return float((d <= radii[None, :]).any(dim=1).float().mean())


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    r = torch.as_tensor(np.asarray(real), dtype=torch.float64)
    f = torch.as_tensor(np.asarray(fake), dtype=torch.float64)
    precision = coverage(f, r, knn_radii(r, k))
    recall = coverage(r, f, knn_radii(f, k))
    return precision, recall
