"""Kernel Inception Distance (Binkowski et al. 2018): the unbiased MMD^2 between two feature
sets under the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3.

Why beside FID: its estimator is unbiased, so at the small n this project can afford it does
not reward a generator with too little spread (FID does), and two rows at different n can be
read against each other. Reported, as is usual, x 1000.
"""

from __future__ import annotations

import numpy as np


def mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of two sets (rows are samples) under the KID kernel."""
    d = x.shape[1]
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    m, n = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def kid(x: np.ndarray, y: np.ndarray, subsets: int = 100, seed: int = 0) -> tuple[float, float, float]:
    """KID x 1000 of the full sets, and the 2.5 and 97.5 percentiles of it over ``subsets``
    random halves of each set (drawn without replacement): an interval for a set of n / 2,
    so wider than the full sets' own (conservative)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 4 or len(y) < 4:
        raise ValueError(f"KID needs at least 4 samples a side, got {len(x)} and {len(y)}")
    rng = np.random.default_rng(seed)
    hx, hy = len(x) // 2, len(y) // 2
    draws = [mmd2(x[rng.choice(len(x), hx, replace=False)], y[rng.choice(len(y), hy, replace=False)])
             for _ in range(subsets)]
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return 1000 * mmd2(x, y), 1000 * float(lo), 1000 * float(hi)


def kid_difference(real: np.ndarray, a: np.ndarray, b: np.ndarray, subsets: int = 100,
                   seed: int = 0) -> tuple[float, float, float]:
    """KID x 1000 of ``b`` minus that of ``a`` against the same ``real`` set, on paired draws:
    each of ``subsets`` draws takes one random half of the real set and one random half of the
    generated indices, the same indices for both generators (sets made at the same addresses:
    the same seeds and tiles). Returns the full-set difference and the 2.5 and 97.5
    percentiles of the paired draws: b differs from a where they leave out 0."""
    real, a, b = (np.asarray(v, np.float64) for v in (real, a, b))
    n = min(len(a), len(b))
    if n < 4 or len(real) < 4:
        raise ValueError(f"KID needs at least 4 samples a side, got {len(real)}, {len(a)}, {len(b)}")
    a, b = a[:n], b[:n]
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(subsets):
        r = real[rng.choice(len(real), len(real) // 2, replace=False)]
        i = rng.choice(n, n // 2, replace=False)
        draws.append(mmd2(r, b[i]) - mmd2(r, a[i]))
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return 1000 * (mmd2(real, b) - mmd2(real, a)), 1000 * float(lo), 1000 * float(hi)
