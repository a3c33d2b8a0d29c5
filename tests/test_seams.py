"""The inpainting seam score: 1 where the boundary does not show, well above where it does."""

import numpy as np

from lazyslide import URCDM
from lazyslide.evaluation.seams import known_mask, seam_score
from lazyslide.geometry import TileId
from lazyslide.plan import ParityPlan


def texture(seed: int, size: int = 64) -> np.ndarray:
    """A smooth gradient plus pixel noise: line-to-line differences are the same everywhere."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size]
    base = 120 + 0.5 * x + 0.3 * y
    return np.clip(base[..., None] + rng.normal(0, 6, (size, size, 3)), 0, 255).astype(np.uint8)


def test_an_invisible_seam_scores_one_and_a_pasted_region_does_not():
    mask = np.zeros((64, 64), bool)
    mask[:, :8] = True  # a left strip known
    mask[:8, :] = True  # and a top strip: a corner and both directions
    images = [texture(s) for s in range(6)]
    assert abs(seam_score(images, [mask] * 6) - 1) < 0.1
    shifted = []
    for im in images:
        im = im.astype(int)
        im[~mask] += 30  # generated pixels that ignore the known ones
        shifted.append(np.clip(im, 0, 255).astype(np.uint8))
    assert seam_score(shifted, [mask] * 6) > 2
    right = np.zeros((64, 64), bool)
    right[:, -8:] = True  # known on the right: reference lines 4 px to the left
    assert abs(seam_score(images, [right] * 6) - 1) < 0.1
    assert np.isnan(seam_score(images, [np.zeros((64, 64), bool)] * 6))


def test_known_mask_is_what_the_plan_fixes():
    g = URCDM.random("test", 0).geometry
    plan = ParityPlan()
    assert not known_mask(g, plan, TileId(2, 0, 0)).any()  # the first phase knows nothing
    m = known_mask(g, plan, TileId(2, 1, 0))  # second phase: left and right neighbours
    assert m[:, : g.overlap].all() and m[:, -g.overlap:].all() and not m[:, g.overlap:-g.overlap].any()


def simple_features(crops: np.ndarray) -> np.ndarray:
    """Mean colour and mean line-to-line differences per crop: a cheap stand-in for Inception."""
    c = crops.astype(np.float64)
    dx = np.abs(np.diff(c, axis=2)).mean(axis=(1, 2, 3))
    dy = np.abs(np.diff(c, axis=1)).mean(axis=(1, 2, 3))
    return np.column_stack([c.mean(axis=(1, 2)) / 40, dx / 4, dy / 4])


def test_seam_kid_sees_what_a_blend_hides_from_the_seam_score():
    """Generated pixels 30 levels brighter than the known ones, faded in over 16 px from the
    boundary (what a gradient-domain blend makes of a colour mismatch): no step at the seam, so
    the seam score says 1; the crops centred on the seam are darker than the interior ones, and
    the KID between them says so, far above the same positions on the unshifted texture."""
    from lazyslide.evaluation.seams import seam_crops, seam_kid

    def tissue(seed: int) -> np.ndarray:  # stationary: every position alike, as real tissue is
        rng = np.random.default_rng(seed)
        return np.clip(rng.uniform(100, 160) + rng.normal(0, 6, (64, 64, 3)), 0, 255)

    mask = np.zeros((64, 64), bool)
    mask[:, :8] = True
    real = [tissue(s).astype(np.uint8) for s in range(12)]
    ramp = np.clip((np.arange(64) - 8) / 16, 0, 1) * 30
    blended = [np.clip(tissue(s + 100) + ramp[None, :, None], 0, 255).astype(np.uint8)
               for s in range(12)]
    assert abs(seam_score(blended, [mask] * 12) - 1) < 0.1
    seam, interior = seam_crops(blended, [mask] * 12, 16, per_tile=8)
    assert len(seam) == len(interior) == 96
    v = seam_kid(simple_features, blended, [mask] * 12, real, 16, per_tile=8)
    gen, ref = v["generated"], v["real"]
    assert ref["kid_ci"][0] <= 0 <= ref["kid_ci"][1]  # no seams in the real texture
    assert gen["kid_ci"][0] > ref["kid_ci"][1]


def test_kid_is_the_unbiased_mmd_of_torchmetrics():
    import torch
    from torchmetrics.image.kid import poly_mmd

    from lazyslide.evaluation.kid import kid, mmd2

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(60, 8)), rng.normal(1.0, 1, size=(60, 8))  # torchmetrics: equal n
    ref = float(poly_mmd(torch.from_numpy(a), torch.from_numpy(b)))
    assert abs(mmd2(a, b) - ref) < 1e-9
    same = kid(a, rng.normal(size=(50, 8)))
    assert same[1] <= 0 <= same[2]
    shifted = kid(a, b)
    assert shifted[1] > 0 and abs(shifted[0] - 1000 * ref) < 1e-6
