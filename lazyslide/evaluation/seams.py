"""Inpainting seam score: does the line where a tile's generated pixels meet the pixels its
neighbours fixed show?

Over inpainted tiles: the mean absolute luminance difference between the two pixel lines on
either side of each known/generated boundary, divided by the same statistic for pairs of
adjacent lines ``inset`` px inside the generated region (the texture's own line-to-line
difference). 1.0 means an invisible seam; a sampler that ignores the known pixels scores well
above 1. Unlike the tile-grid score (``consistency``), which looks at the magnification-tile
grid on a rendered canvas, this looks inside each tile at the inpainting boundary.

The ratio is exactly what a gradient-domain blend equalises, so it cannot judge one: ``seam_kid``
compares the distribution of crops centred on the boundary with crops from tile interiors,
beside the same comparison on real tissue cut at the same positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .kid import kid

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


# -- a seam measure no blend can game ---------------------------------------------------------
def _distance_to(mask: np.ndarray) -> np.ndarray:
    """Chessboard distance of every pixel to the nearest True pixel of ``mask`` (large without)."""
    from scipy import ndimage

    if not mask.any():
        return np.full(mask.shape, 10**6)
    return ndimage.distance_transform_cdt(~mask, metric="chessboard")


def seam_crops(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], size: int,
               per_tile: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(seam, interior) crops of ``size`` px from inpainted tiles: seam crops centred on a
    generated pixel next to a known one (the first generated line), interior crops wholly
    generated with every pixel at least ``size / 2`` px from the known ones. Positions come
    from the masks alone, so a real image cut with the same masks gives the reference (it has
    no seams: its two sets differ only by chance)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    seam, interior = [], []
    h = size // 2
    for img, mask in zip(images, masks, strict=True):
        if not mask.any() or mask.all():
            continue
        t = mask.shape[0]
        dist = _distance_to(mask)
        fits = np.zeros_like(mask)
        fits[h:t - size + h + 1, h:t - size + h + 1] = True  # the crop lies inside the tile
        for want, out in ((dist == 1, seam), (None, interior)):
            if want is None:  # interior: the whole crop more than h px from known pixels
                want = ndimage.minimum_filter((dist > h).astype(np.uint8), size=size,
                                              mode="constant") > 0
            ys, xs = np.nonzero(want & fits)
            if not len(ys):
                continue
            for i in rng.choice(len(ys), min(per_tile, len(ys)), replace=False):
                y, x = ys[i] - h, xs[i] - h
                out.append(img[y:y + size, x:x + size])
    empty = np.zeros((0, size, size, 3), np.uint8)
    return (np.stack(seam) if seam else empty), (np.stack(interior) if interior else empty)


def seam_kid(extract, images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
             real: Sequence[np.ndarray], size: int, per_tile: int = 4, seed: int = 0) -> dict:
    """KID x 1000 between seam-centred and interior crops (``seam_crops``) of the generated
    tiles, and the same for ``real`` tiles cut at the same positions (the masks, cycled): the
    reference a seamless generator matches. A blend that only evens out the step at the seam
    still leaves whatever else differs there (blur, a colour shift, a texture change) for the
    features to see. ``extract``: images -> features (e.g. ``InceptionFeatures``)."""
    out = {}
    real_masks = [masks[i % len(masks)] for i in range(len(real))] if masks else []
    for name, imgs, ms in (("generated", images, masks), ("real", real, real_masks)):
        seam, interior = seam_crops(imgs, ms, size, per_tile, seed)
        v = {"n_seam": len(seam), "n_interior": len(interior)}
        if len(seam) >= 4 and len(interior) >= 4:
            v["kid"], *v["kid_ci"] = kid(extract(seam), extract(interior), seed=seed)
        out[name] = v
    return out
