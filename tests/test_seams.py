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
