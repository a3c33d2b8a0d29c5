"""The evaluation metrics against references: torchmetrics' FID, analytic cases, known P/R."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lazyslide.evaluation.fid import fid, fid_bootstrap, fid_interval, frechet_distance
from lazyslide.evaluation.precision_recall import knn_radii, precision_recall


def test_fid_equals_torchmetrics_on_the_same_features():
    from torchmetrics.image.fid import FrechetInceptionDistance

    class Features(torch.nn.Module):  # hands precomputed features through
        num_features = 64

        def forward(self, x):
            return x

    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 64))
    fake = rng.normal(0.3, 1.2, size=(280, 64)) + rng.normal(size=(1, 64))
    metric = FrechetInceptionDistance(feature=Features(), normalize=False).double()
    metric.update(torch.from_numpy(real), real=True)
    metric.update(torch.from_numpy(fake), real=False)
    reference = float(metric.compute())
    assert fid(real, fake) == pytest.approx(reference, rel=1e-3)


def test_fid_with_fewer_samples_than_dimensions_is_the_same_number():
    """The low-rank form (nuclear norm of A B') equals sqrtm of the singular 2048^2 product."""
    from lazyslide.evaluation.fid import feature_stats

    rng = np.random.default_rng(2)
    real, fake = rng.normal(size=(36, 256)), rng.normal(0.2, 1.3, size=(31, 256))
    assert fid(real, fake) == pytest.approx(frechet_distance(*feature_stats(real), *feature_stats(fake)),
                                            rel=1e-6)


def test_frechet_distance_of_diagonal_gaussians_is_analytic():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    expected = ((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum()
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-9)
    assert fid(np.eye(5), np.eye(5)) == pytest.approx(0, abs=1e-6)


def test_fid_bootstrap_spread_narrows_with_n_and_pairs_rows():
    rng = np.random.default_rng(0)

    def spread(n: int) -> float:
        real, fake = rng.normal(size=(n, 8)), rng.normal(0.3, 1, size=(n, 8))
        draws = fid_bootstrap(real, [fake], draws=60, seed=1)[:, 0]
        lo, hi = np.percentile(draws, [2.5, 97.5])
        return hi - lo

    assert spread(400) < spread(40) / 2
    real, fake = rng.normal(size=(50, 8)), rng.normal(0.3, 1, size=(50, 8))
    draws = fid_bootstrap(real, [fake, fake.copy(), fake + 1], draws=30, seed=2)
    assert draws.shape == (30, 3)
    assert np.array_equal(draws[:, 0], draws[:, 1])  # the same indices in every row: paired
    assert (draws[:, 2] > draws[:, 0]).all()  # a shifted row is worse in every draw
    assert np.array_equal(draws, fid_bootstrap(real, [fake, fake.copy(), fake + 1], draws=30, seed=2))


def test_fid_interval_contains_the_value_narrows_with_n_and_needs_50_draws():
    rng = np.random.default_rng(3)
    widths = {}
    for n in (40, 400):
        real, fake = rng.normal(size=(n, 8)), rng.normal(0.3, 1, size=(n, 8))
        value, lo, hi = fid_interval(real, fake, draws=50, seed=1)
        assert value == pytest.approx(fid(real, fake)) and lo < value < hi
        widths[n] = hi - lo
    assert widths[400] < widths[40] / 2  # sampling noise falls like 1/sqrt(n)
    with pytest.raises(ValueError, match="at least 50 draws"):
        fid_interval(real, fake, draws=49)


def test_precision_recall_known_answers():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(200, 16))
    assert precision_recall(a, a.copy()) == (1.0, 1.0)
    far = a + 1000.0
    assert precision_recall(a, far) == (0.0, 0.0)
    # fake covers only half of the real modes: precise, but recall about one half
    real = np.concatenate([rng.normal(size=(200, 2)), rng.normal(size=(200, 2)) + 50])
    fake = rng.normal(size=(300, 2))
    p, r = precision_recall(real, fake)
    assert p > 0.95 and 0.4 < r < 0.6


def test_precision_recall_matches_the_reference_formula():
    """Brute force, straight from Kynkäänniemi et al. (2019), eq. 1-3, with k = 3."""
    rng = np.random.default_rng(2)
    real, fake = rng.normal(size=(60, 5)), rng.normal(0.5, 1.3, size=(50, 5))

    def manifold_contains(points, x, k=3):
        d = np.linalg.norm(points[:, None] - points[None], axis=-1)
        radii = np.sort(d, axis=1)[:, k]
        return bool((np.linalg.norm(points - x, axis=1) <= radii).any())

    precision = np.mean([manifold_contains(real, f) for f in fake])
    recall = np.mean([manifold_contains(fake, r) for r in real])
    assert precision_recall(real, fake) == pytest.approx((precision, recall))
    with pytest.raises(ValueError, match="more than k=3"):
        knn_radii(torch.zeros(3, 2), 3)
