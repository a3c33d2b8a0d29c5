"""Fréchet distance between two feature sets (Heusel et al. 2017), as pytorch-fid computes it."""

from __future__ import annotations

import numpy as np
from scipy import linalg


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, dtype=np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():  # singular product: offset the diagonals (pytorch-fid)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid(real: np.ndarray, fake: np.ndarray) -> float:
    """FID of two feature arrays (N, D).

    With fewer samples than dimensions (a few dozen 2048-d Inception features, as on a CPU) the
    covariances have rank < N and ``sqrtm`` of their 2048^2 product is slow (seconds) and
    inaccurate ("matrix is singular"). The same number exactly: with S1 = A'A, S2 = B'B (A, B
    the centred features over sqrt(N - 1)), tr sqrt(S1 S2) is the nuclear norm of A B' (N1 x N2).
    """
    a, b = (np.asarray(f, dtype=np.float64) for f in (real, fake))
    if min(len(a), len(b)) < 2 or max(len(a), len(b)) > a.shape[1]:
        return frechet_distance(*feature_stats(a), *feature_stats(b))
    mu1, mu2 = a.mean(axis=0), b.mean(axis=0)
    ca, cb = (a - mu1) / np.sqrt(len(a) - 1), (b - mu2) / np.sqrt(len(b) - 1)
    diff = mu1 - mu2
    trace_covmean = np.linalg.svd(ca @ cb.T, compute_uv=False).sum()
    return float(diff.dot(diff) + (ca * ca).sum() + (cb * cb).sum() - 2 * trace_covmean)


def fid_bootstrap(real: np.ndarray, fakes: list[np.ndarray], draws: int = 200,
                  seed: int = 0) -> np.ndarray:
    """FIDs of ``draws`` bootstrap resamples, (draws, len(fakes)): each draw resamples the real
    features and every fake set with replacement, with the same indices for every fake set.

    With tens of samples FID moves by tens between two sets of the same images; the spread of
    these draws shows how much. Fake sets made at the same addresses (rows of one benchmark)
    drawn with the same indices give paired differences: a row is better or worse than another
    where the interval of its per-draw difference leaves out 0."""
    rng = np.random.default_rng(seed)
    real = np.asarray(real)
    n = min(len(f) for f in fakes)
    out = np.empty((draws, len(fakes)))
    for d in range(draws):
        r = real[rng.integers(0, len(real), len(real))]
        idx = rng.integers(0, n, n)
        out[d] = [fid(r, np.asarray(f)[:n][idx]) for f in fakes]
    return out


#: At least this many bootstrap draws behind an interval (the issue's floor: fewer give a
#: standard deviation that itself moves by more than 10 % between runs).
MIN_DRAWS = 50


def fid_interval(real: np.ndarray, fake: np.ndarray, draws: int = MIN_DRAWS, seed: int = 0,
                 z: float = 1.96) -> tuple[float, float, float]:
    """FID and its 95 % interval: the value +- z standard deviations of ``draws`` bootstrap FIDs
    (both sets resampled with replacement, ``fid_bootstrap``).

    The spread, not the draws' percentiles: a resample repeats samples, which raises every
    draw's FID (each set looks less varied), so the draws can all lie above the full-set value;
    their spread, the sampling noise of the number, has no such shift. Returns (fid, low, high).
    """
    if draws < MIN_DRAWS:
        raise ValueError(f"a bootstrap interval needs at least {MIN_DRAWS} draws, got {draws}")
    value = fid(real, fake)
    sd = float(fid_bootstrap(real, [fake], draws, seed)[:, 0].std(ddof=1))
    return value, value - z * sd, value + z * sd
