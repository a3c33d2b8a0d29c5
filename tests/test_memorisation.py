"""The memorisation audit: Meehan et al.'s C_T flags copies, not fresh or held-out samples."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.distance import cdist
from scipy.stats import mannwhitneyu, norm

from lazyslide.evaluation import memorisation as mem

D = 64


def _sets(seed: int, n_train: int = 300, n_held: int = 300, n_gen: int = 300):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n_train, D)), rng.standard_normal((n_held, D)),
            rng.standard_normal((n_gen, D)), rng)


@pytest.mark.parametrize("noise", [0.0, 1e-3])
def test_copies_of_training_samples_are_flagged(noise):
    train, held, _, rng = _sets(0)
    generated = train + noise * rng.standard_normal(train.shape)
    r = mem.data_copying_test(train, held, generated)
    assert r["C_T"] < mem.COPYING_THRESHOLD
    assert r["verdict"] == mem.VERDICT_COPYING and r["copying"] is True
    assert r["cells"] == 7 == len(r["Z"]) == len(r["used"]) == len(r["counts"]["generated"])
    assert sum(r["counts"]["train"]) == 300 and sum(r["counts"]["generated"]) == 300


def test_half_copies_still_flagged_and_a_subset_of_copies_too():
    train, held, fresh, rng = _sets(1)
    generated = np.concatenate([train[rng.choice(300, 150, replace=False)], fresh[:150]])
    assert mem.data_copying_test(train, held, generated)["copying"] is True


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_fresh_samples_from_the_same_distribution_are_not_flagged(seed):
    train, held, fresh, _ = _sets(seed)
    r = mem.data_copying_test(train, held, fresh, seed=seed)
    assert abs(r["C_T"]) < 2.5
    assert r["verdict"] == mem.VERDICT_NONE and r["copying"] is False


def test_the_held_out_set_itself_is_not_flagged():
    train, held, _, _ = _sets(5)
    r = mem.data_copying_test(train, held, held)
    assert r["copying"] is False
    assert abs(r["C_T"]) < 0.1  # identical distance sets: every cell's U is exactly nm/2


def test_samples_far_from_the_training_data_read_as_underfitting():
    train, held, fresh, _ = _sets(6)
    r = mem.data_copying_test(train, held, 1.5 * fresh)
    assert r["C_T"] > mem.UNDERFIT_THRESHOLD and r["copying"] is False
    assert r["verdict"] == mem.VERDICT_UNDERFIT


def test_too_few_generated_samples_is_inconclusive_not_a_verdict():
    train, held, fresh, _ = _sets(7)
    r = mem.data_copying_test(train, held, fresh[:10])
    assert r["C_T"] is None and r["copying"] is None and r["verdict"] == mem.VERDICT_INCONCLUSIVE
    assert not any(r["used"])
    json.dumps(r, allow_nan=False)


def test_default_cells_rule():
    assert mem.default_cells(50, 50, 50) == 1
    assert mem.default_cells(300, 300, 300) == 7
    assert mem.default_cells(10**5, 10**5, 10**5) == mem.MAX_CELLS
    assert mem.default_cells(30, 1000, 1000) == 1  # every cell keeps training samples


def test_explicit_cells_and_seed_are_reproducible():
    train, held, fresh, _ = _sets(8)
    a = mem.data_copying_test(train, held, fresh, cells=3, seed=4)
    b = mem.data_copying_test(train, held, fresh, cells=3, seed=4)
    assert a == b and a["cells"] == 3


def test_mann_whitney_z_equals_scipy_asymptotic_with_ties():
    rng = np.random.default_rng(9)
    gen, held = rng.random(30), rng.random(40)
    gen[:6] = 0.0
    held[:3] = 0.0
    z = mem.mann_whitney_z(gen, held)
    ref = mannwhitneyu(gen, held, alternative="less", method="asymptotic", use_continuity=True)
    assert norm.cdf(z) == pytest.approx(ref.pvalue, rel=1e-9)


def test_nearest_equals_brute_force_cdist():
    rng = np.random.default_rng(10)
    query, reference = rng.standard_normal((257, 16)), rng.standard_normal((301, 16))
    d, i = mem.nearest(query, reference, chunk=32)  # several query and reference blocks
    full = cdist(query, reference)
    np.testing.assert_array_equal(i, full.argmin(axis=1))
    np.testing.assert_allclose(d, full.min(axis=1), rtol=1e-10, atol=1e-12)
    d0, i0 = mem.nearest(reference[::7], reference)
    assert np.all(d0 == 0.0) and np.array_equal(i0, np.arange(0, 301, 7))


def test_audit_is_json_serialisable_and_complete():
    train, held, fresh, _ = _sets(11, 200, 150, 120)
    generated = np.concatenate([train[:20], fresh[:100]])
    r = mem.audit(train, held, generated)
    text = json.dumps(r, allow_nan=False)
    assert json.loads(text) == r
    for key in ("C_T", "verdict", "Z", "counts", "used", "cells", "median_distance_generated",
                "median_distance_held_out", "median_ratio", "share_below_p5", "held_out_p5",
                "nearest_train_index", "nearest_train_distance"):
        assert key in r
    assert len(r["nearest_train_index"]) == len(r["nearest_train_distance"]) == 120
    assert r["nearest_train_index"][:20] == list(range(20))
    assert r["nearest_train_distance"][:20] == [0.0] * 20
    assert r["share_below_p5"] >= 20 / 120  # the copies sit below the held-out 5th percentile
    assert r["median_ratio"] < 1.0


def _smooth_images(rng: np.random.Generator, n: int, size: int = 48) -> np.ndarray:
    coarse = rng.integers(0, 256, (n, 6, 6, 3)).astype(np.float64)
    up = np.repeat(np.repeat(coarse, size // 6, axis=1), size // 6, axis=2)
    k = np.ones(5) / 5  # blur the blocks into smooth images
    for axis in (1, 2):
        up = np.apply_along_axis(lambda v: np.convolve(v, k, mode="same"), axis, up)
    return np.clip(up + rng.normal(0, 4, up.shape), 0, 255).astype(np.uint8)


def test_pixel_audit_flags_copied_images():
    rng = np.random.default_rng(12)
    train_img, held_img = _smooth_images(rng, 160), _smooth_images(rng, 100)
    gen_img = train_img[rng.choice(160, 100, replace=False)]
    vt, vh, vg = (mem.pixel_vectors(x, size=16) for x in (train_img, held_img, gen_img))
    assert vt.shape == (160, 16 * 16 * 3) and vt.dtype == np.float32
    assert mem.audit(vt, vh, vg)["copying"] is True
    fresh = mem.pixel_vectors(_smooth_images(rng, 100), size=16)
    assert mem.audit(vt, vh, fresh)["copying"] is False


def test_pixel_vectors_box_average():
    img = np.zeros((1, 4, 6, 3), dtype=np.uint8)
    img[0, :2, :3] = 255  # top-left quadrant white
    v = mem.pixel_vectors(img, size=2).reshape(2, 2, 3)
    np.testing.assert_allclose(v[..., 0], [[1, 0], [0, 0]], atol=1e-6)
    odd = mem.pixel_vectors(np.full((2, 7, 5, 3), 51, dtype=np.uint8), size=3)  # not divisible
    np.testing.assert_allclose(odd, 0.2, atol=1e-6)
    with pytest.raises(ValueError):
        mem.pixel_vectors(np.zeros((2, 8, 8), dtype=np.uint8))


def test_pairs_figure_writes_png_of_expected_size(tmp_path):
    rng = np.random.default_rng(13)
    train_img = rng.integers(0, 256, (20, 32, 40, 3), dtype=np.uint8)
    gen_img = rng.integers(0, 256, (12, 32, 40, 3), dtype=np.uint8)
    idx = rng.integers(0, 20, 12)
    dist = rng.random(12)
    path = mem.pairs_figure(gen_img, train_img, idx, dist, tmp_path / "sub" / "pairs.png", k=8)
    g, col = mem.FIGURE_GAP, max(40, mem.FIGURE_MIN_COL)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        assert im.size == (8 * col + 9 * g, 4 * g + 2 * 32 + mem.FIGURE_TEXT_H)
        best = int(np.argmin(dist))  # the first column is the closest pair
        x0 = g + (col - 40) // 2
        np.testing.assert_array_equal(np.asarray(im)[g:g + 32, x0:x0 + 40], gen_img[best])
        np.testing.assert_array_equal(np.asarray(im)[2 * g + 32:2 * g + 64, x0:x0 + 40],
                                      train_img[idx[best]])
        assert im.getpixel((0, 0)) == (255, 255, 255)
    few = mem.pairs_figure(gen_img[:3], train_img, idx[:3], dist[:3], tmp_path / "few.png")
    with Image.open(few) as im:
        assert im.size[0] == 3 * col + 4 * g


def test_no_verdict_against_held_out_tissue_of_other_organs(tmp_path):
    """Against another organ every generator sits closer to its training data than the reference
    does: the audit keeps C_T but gives no verdict then."""
    from lazyslide.evaluation.evaluate import _audit
    from lazyslide.evaluation.memorisation import VERDICT_SHIFTED

    rng = np.random.default_rng(0)
    px = lambda n: rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8)  # noqa: E731
    ft = lambda n: rng.normal(size=(n, 16))  # noqa: E731
    args = ({2: px(12)}, {2: ft(12)}, {2: px(40)}, {2: ft(40)}, {2: (px(10), px(10))},
            {2: (ft(10), ft(10))}, 0)
    plain = _audit(tmp_path, *args)["2"]
    shifted = _audit(tmp_path, *args, shifted=True)["2"]
    assert plain["features"]["verdict"] != VERDICT_SHIFTED
    assert shifted["features"]["verdict"] == shifted["pixels"]["verdict"] == VERDICT_SHIFTED
    assert shifted["features"]["C_T"] == plain["features"]["C_T"]
