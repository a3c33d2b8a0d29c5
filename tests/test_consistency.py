"""Cross-scale consistency and the tile-grid score on synthetic slides whose answer is known."""

from __future__ import annotations

import numpy as np
from PIL import Image

from lazyslide.evaluation.consistency import CrossScale, GridScore, child_at_parent_scale, seams

GLASS, PINK = (236, 234, 238), (214, 140, 190)


def parent_window(size: int = 128) -> np.ndarray:
    """Glass with a pink tissue fragment (an ellipse, edges a pixel soft): a parent window."""
    y, x = np.mgrid[:size, :size]
    r = np.sqrt(((x - 60) / 24.0) ** 2 + ((y - 68) / 18.0) ** 2)
    blob = np.clip((1.05 - r) * 20, 0, 1)[..., None]
    img = np.array(GLASS) * (1 - blob) + np.array(PINK) * blob
    return np.round(img).astype(np.uint8)


FOOTPRINT = (40.25, 45.5, 92.25, 97.5)  # a fractional box in the window, as the geometry gives


def upsampled_child(window: np.ndarray, tile: int = 128) -> np.ndarray:
    return np.asarray(Image.fromarray(window).resize((tile, tile), Image.Resampling.BICUBIC, box=FOOTPRINT))


def test_a_child_that_is_its_parent_upsampled_agrees_perfectly():
    window = parent_window()
    cs = CrossScale()
    cs.add(*child_at_parent_scale(upsampled_child(window), window, FOOTPRINT))
    s = cs.summary()
    assert s["tissue_iou"] > 0.95 and s["hallucinated_tissue"] < 0.03  # 1 and 0 up to edge pixels
    assert s["delta_e_tissue"] < 2


def test_pasted_tissue_blocks_over_glass_are_caught():
    window = parent_window()
    child = upsampled_child(window).copy()
    child[:40, :] = PINK  # a rectangle of tissue where the parent shows glass
    child[100:, 90:] = PINK
    cs = CrossScale()
    cs.add(*child_at_parent_scale(child, window, FOOTPRINT))
    s = cs.summary()
    assert s["tissue_iou"] < 0.8 and s["hallucinated_tissue"] > 0.1


def canvas(tints: bool) -> np.ndarray:
    """A 3x3-tile level (tile 64, overlap 8, stride 56) from one smooth image; ``tints`` gives
    every tile a slightly different glass tint and tissue shade, as a patchwork of tiles does."""
    tile, overlap, grid = 64, 8, 3
    size = (grid - 1) * (tile - overlap) + tile
    y, x = np.mgrid[:size, :size]
    blob = np.exp(-(((x - 70) / 40.0) ** 2 + ((y - 80) / 30.0) ** 2))[..., None]  # smooth tissue
    base = np.array(GLASS) * (1 - blob) + np.array(PINK) * blob
    out = base.astype(int).copy()
    if tints:
        rng = np.random.default_rng(0)
        s = tile - overlap
        for r in range(grid):
            for c in range(grid):
                out[r * s:(r + 1) * s, c * s:(c + 1) * s] += rng.choice([-8, 8], 3)
    return np.clip(out, 0, 255).astype(np.uint8)


def test_no_grid_scores_one_and_a_patchwork_does_not():
    positions = seams(3, 56, 8)
    assert positions == [56, 64, 112, 120]
    smooth, patchwork = GridScore(), GridScore()
    smooth.add(canvas(False), positions)
    patchwork.add(canvas(True), positions)
    s, p = smooth.summary(), patchwork.summary()
    assert 0.8 < s["grid_glass"] < 1.2 and 0.8 < s["grid_tissue"] < 1.2
    assert p["grid_glass"] > 1.5 and p["grid_tissue"] > 1.5
