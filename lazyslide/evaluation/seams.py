"""Inpainting seam score: does the line where a tile's generated pixels meet the pixels its
neighbours fixed show?

Over inpainted tiles: the mean absolute luminance difference between the two pixel lines on
either side of each known/generated boundary, divided by the same statistic for pairs of
adjacent lines ``inset`` px inside the generated region (the texture's own line-to-line
difference). 1.0 means an invisible seam; a sampler that ignores the known pixels scores well
above 1. Unlike the tile-grid score (``consistency``), which looks at the magnification-tile
grid on a rendered canvas, this looks inside each tile at the inpainting boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..geometry import Geometry, TileId
    from ..plan import Plan

#: How far inside the generated region the reference line pairs lie (px).
INSET = 4


def known_mask(geometry: Geometry, plan: Plan, tile: TileId) -> np.ndarray:
    """(T, T) bool: the pixels of ``tile`` that earlier neighbours fixed (what it inpainted)."""
    t = geometry.tile
    mask = np.zeros((t, t), bool)
    for _, (x0, y0, x1, y1) in plan.known_boxes(geometry, tile):
        mask[y0:y1, x0:x1] = True
    return mask


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def _pairs(lum: np.ndarray, mask: np.ndarray, inset: int) -> tuple[np.ndarray, np.ndarray]:
    """Along axis 1: |differences| across known/generated boundaries and of the line pairs
    ``inset`` px further into the generated side (where both lines are generated)."""
    a, b = mask[:, :-1], mask[:, 1:]
    diff = np.abs(lum[:, 1:] - lum[:, :-1])
    gen = ~mask
    n = lum.shape[1] - 1
    seam, ref = [], []
    for (rows, cols), step in ((np.nonzero(a & ~b), inset), (np.nonzero(~a & b), -inset)):
        seam.append(diff[rows, cols])  # known on the left (step > 0) or on the right
        shifted = cols + step
        ok = (shifted >= 0) & (shifted < n)
        r, c = rows[ok], shifted[ok]
        ok = gen[r, c] & gen[r, c + 1]
        ref.append(diff[r[ok], c[ok]])
    return np.concatenate(seam), np.concatenate(ref)


def seam_sums(images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
              inset: int = INSET) -> tuple[float, int, float, int]:
    """(sum, count) of the boundary differences and of the reference ones: what ``seam_score``
    divides, kept apart so that scores of tile sets made in separate runs can be pooled."""
    seam, ref = [np.zeros(0)], [np.zeros(0)]
    for img, mask in zip(images, masks, strict=True):
        if not mask.any() or mask.all():
            continue
        lum = _luminance(img)
        for lines, m in ((lum, mask), (lum.T, mask.T)):  # vertical boundaries, then horizontal
            s, r = _pairs(lines, m, inset)
            seam.append(s)
            ref.append(r)
    s, r = np.concatenate(seam), np.concatenate(ref)
    return float(s.sum()), len(s), float(r.sum()), len(r)


def seam_ratio(seam_sum: float, seam_n: int, ref_sum: float, ref_n: int) -> float:
    """Mean boundary difference over mean reference difference; nan without both."""
    if not seam_n or not ref_n or ref_sum == 0:
        return float("nan")
    return (seam_sum / seam_n) / (ref_sum / ref_n)


def seam_score(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], inset: int = INSET) -> float:
    """Seam score of tiles (H, W, 3 uint8) with their known masks (H, W bool); nan if no tile
    has a boundary between known and generated pixels."""
    return seam_ratio(*seam_sums(images, masks, inset))
