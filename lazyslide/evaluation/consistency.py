"""Does a slide agree with itself across scales, and does its tile grid show?

FID compares images one scale at a time and is blind to a level that paints tissue where the
level above shows glass, or to a patchwork of tile rectangles. Two measures see it:

- cross-scale consistency: a level-k tile, area-downsampled to the parent level's scale, against
  the parent pixels under its footprint (what it was conditioned on): tissue-mask IoU, the share
  of the child's tissue that lies over parent glass ("hallucinated tissue"), and the mean CIE
  Delta E 2000 where both show tissue. For real slides the same numbers come from the same
  region read at both levels' um/px: the reference row.
- tile-grid score: on a level's canvas (the Deep Zoom level rendered from that magnification
  level at its own size), the mean absolute difference between the two pixel columns (rows)
  that meet at a magnification-tile seam, divided by the same statistic for the pairs one and
  two pixels further into either side; separately where the seam crosses glass and tissue.
  1.0: no visible grid.

Tissue here is HSV saturation > 0.12 (glass, even tinted, stays below it; stained tissue above).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ..wsi import SlideReader, to_hsv

if TYPE_CHECKING:
    from ..geometry import Geometry
    from ..slide import Slide

TISSUE_SAT = 0.12


def tissue_mask(rgb: np.ndarray, sat: float = TISSUE_SAT) -> np.ndarray:
    return to_hsv(rgb)[..., 1] > sat


def area_resize(rgb: np.ndarray, size: int, box: Sequence[float] | None = None) -> np.ndarray:
    """``size`` x ``size`` area average of ``rgb`` (or of the fractional ``box`` in it)."""
    box = tuple(float(v) for v in box) if box is not None else None
    img = Image.fromarray(rgb).resize((size, size), Image.Resampling.BOX, box=box)
    return np.asarray(img)


@dataclass
class CrossScale:
    """Sums over pairs (child at the parent's scale, parent region), reduced at the end."""

    intersection: int = 0
    union: int = 0
    child_tissue: int = 0
    over_glass: int = 0
    delta_e: list[float] = field(default_factory=list)
    pairs: int = 0
    #: Lab sums and pixel counts of the child's and the parent's tissue (their mean colours)
    lab: dict[str, list] = field(default_factory=lambda: {k: [np.zeros(3), 0] for k in ("child", "parent")})

    def add(self, child: np.ndarray, parent: np.ndarray) -> None:
        """``child`` and ``parent``: RGB of the same region at the same (parent) scale."""
        from skimage.color import deltaE_ciede2000, rgb2lab

        if child.shape != parent.shape:
            raise ValueError(f"child {child.shape} and parent {parent.shape} differ in shape")
        c, p = tissue_mask(child), tissue_mask(parent)
        self.intersection += int((c & p).sum())
        self.union += int((c | p).sum())
        self.child_tissue += int(c.sum())
        self.over_glass += int((c & ~p).sum())
        both = c & p
        if both.any():
            de = deltaE_ciede2000(rgb2lab(child[both][None]), rgb2lab(parent[both][None]))
            self.delta_e.extend(de.ravel().tolist())
        for key, img, mask in (("child", child, c), ("parent", parent, p)):
            if mask.any():
                self.lab[key][0] += rgb2lab(img[mask][None])[0].sum(0)
                self.lab[key][1] += int(mask.sum())
        self.pairs += 1

    def summary(self) -> dict[str, float | int | None]:
        if not self.pairs:  # nothing compared (outpainting has no level above): not "agrees"
            return {"pairs": 0, "tissue_iou": None, "hallucinated_tissue": None, "delta_e_tissue": None,
                    "lab_vs_parent": None}
        (cs, cn), (ps, pn) = self.lab["child"], self.lab["parent"]
        return {
            "pairs": self.pairs,
            # no tissue on either side anywhere: nothing to disagree about
            "tissue_iou": self.intersection / self.union if self.union else 1.0,
            "hallucinated_tissue": self.over_glass / self.child_tissue if self.child_tissue else 0.0,
            "delta_e_tissue": float(np.mean(self.delta_e)) if self.delta_e else None,
            # the tissue's mean colours (CIE76): a level far too dark shows here, where the
            # masks' IoU (blind to colour) and the per-pixel Delta E (tissue on tissue only) miss it
            "lab_vs_parent": float(np.linalg.norm(cs / cn - ps / pn)) if cn and pn else None,
        }


def child_at_parent_scale(child: np.ndarray, parent_window: np.ndarray,
                          footprint_in_window: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """A generated tile and the parent pixels under it, both area-resampled to the footprint's
    size in parent pixels (rounded), so they compare pixel for pixel."""
    x0, y0, x1, y1 = (float(v) for v in footprint_in_window)
    n = max(1, round((x1 - x0 + y1 - y0) / 2))
    return area_resize(child, n), area_resize(parent_window, n, (x0, y0, x1, y1))


def seams(grid: int, stride: int, overlap: int) -> list[int]:
    """Canvas positions where tile content may change: a tile's first owned column ``k*stride``
    and the end of the strip it inpainted from its left neighbour ``k*stride + overlap``."""
    out = set()
    for k in range(1, grid):
        out.update((k * stride, k * stride + overlap))
    return sorted(out)


@dataclass
class GridScore:
    """Accumulates seam and reference differences on glass and tissue."""

    sums: dict[str, list[float]] = field(default_factory=lambda: {
        k: [0.0, 0.0, 0] for k in ("glass", "tissue")})  # seam sum, reference sum, pixels

    def add(self, canvas: np.ndarray, positions: Sequence[int]) -> None:
        """``canvas``: RGB of one level; ``positions``: seam columns and rows (pixel b is the
        first pixel after the seam, so the seam pair is (b - 1, b))."""
        lum = canvas.astype(np.float32).mean(-1)
        tissue = tissue_mask(canvas)
        for img, mask in ((lum, tissue), (lum.T, tissue.T)):  # vertical seams, then horizontal
            w = img.shape[1]
            for b in positions:
                if not 3 <= b <= w - 3:
                    continue
                seam = np.abs(img[:, b] - img[:, b - 1])
                # the pairs one and two pixels further in, on either side of the seam
                ref = np.mean([np.abs(img[:, b + d] - img[:, b + d - 1]) for d in (-2, -1, 1, 2)], 0)
                on_tissue = mask[:, b - 1] | mask[:, b]
                for name, where in (("glass", ~on_tissue), ("tissue", on_tissue)):
                    s = self.sums[name]
                    s[0] += float(seam[where].sum())
                    s[1] += float(ref[where].sum())
                    s[2] += int(where.sum())

    def summary(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for name, (seam, ref, n) in self.sums.items():
            # +0.5 grey level: a perfectly flat area has no grid, not an undefined ratio
            out[f"grid_{name}"] = (seam / n + 0.5) / (ref / n + 0.5) if n else None
        return out


# -- measuring slides -----------------------------------------------------------------------------
def generated_consistency(slides: Sequence[Slide], block: int,
                          levels: Sequence[int] | None = None) -> dict[int, dict[str, Any]]:
    """Per level k >= 1 (of ``levels``, default all): cross-scale numbers over each slide's
    ``block_tiles`` block, and the grid score on the canvas region those tiles cover (its seams)."""
    from .samples import block_tiles

    out: dict[int, dict[str, Any]] = {}
    for slide in slides:
        g = slide.geometry
        for level in slide.levels:
            if level == 0 or (levels is not None and level not in levels):
                continue
            cs, gs = out.setdefault(level, {"cross": CrossScale(), "grid": GridScore()}).values()
            tiles = block_tiles(slide, level, block)
            slide.ensure(tiles)
            if slide.method.conditioned:
                for t in tiles:
                    ox, oy, ox1, oy1 = g.parent_window(*t)
                    window = slide.read_region(level - 1, ox, oy, ox1 - ox, oy1 - oy)
                    fx0, fy0, fx1, fy1 = g.parent_footprint(*t)
                    cs.add(*child_at_parent_scale(slide.tile(*t), window,
                                                  (fx0 - ox, fy0 - oy, fx1 - ox, fy1 - oy)))
            x0, y0 = g.tile_box(*tiles[0])[:2]
            x1, y1 = g.tile_box(*tiles[-1])[2:]
            positions = [p - x0 for p in seams(g.grid(level), g.stride, g.overlap) if x0 < p < x1]
            gs.add(slide.read_region(level, x0, y0, x1 - x0, y1 - y0), positions)
    return {lv: {**v["cross"].summary(), **v["grid"].summary()} for lv, v in out.items()}


def real_consistency(readers: Sequence[SlideReader] | dict[int, Sequence[SlideReader]], geometry: Geometry,
                     n: int, block: int, rng: np.random.Generator) -> dict[int, dict[str, Any]]:
    """The reference: the same numbers on real slides. ``n`` random targets per level k >= 1 (at
    level k's um/px) against the parent window read at level k-1's; the grid score on regions of
    the generated blocks' size, at the seam positions a lazyslide canvas would have.
    ``readers``: one list for every level, or a list per level (those fine enough for it)."""
    from ..training.prepare import window_origin

    g, t = geometry, geometry.tile
    out: dict[int, dict[str, Any]] = {}
    by_level = readers if isinstance(readers, dict) else dict.fromkeys(range(g.levels), readers)
    for level in range(1, g.levels):
        readers = by_level.get(level) or []
        if not readers:
            continue
        cs, gs = CrossScale(), GridScore()
        mpp, parent_mpp = g.level_mpp(level), g.level_mpp(level - 1)
        s = float(g.scale(level))
        side = (block - 1) * g.stride + t
        for i in range(n):
            reader = readers[i % len(readers)]
            to_base = mpp / reader.mpp
            w, h = (int(v / to_base) for v in reader.size)
            x, y = (int(rng.integers(0, max(1, m - t))) for m in (w, h))
            target = reader.read((round(x * to_base), round(y * to_base)), t, mpp)
            wx, wy = window_origin(g, level, x, y)
            rx, ry = round(wx), round(wy)  # whole parent pixels, as the engine's windows are
            window = reader.read((round(rx * parent_mpp / reader.mpp), round(ry * parent_mpp / reader.mpp)),
                                 t, parent_mpp)
            foot = (x / s - rx, y / s - ry, (x + t) / s - rx, (y + t) / s - ry)
            cs.add(*child_at_parent_scale(target, window, foot))
            if i < max(1, n // 4):  # fewer, larger regions for the grid reference
                region = reader.read((round(x * to_base), round(y * to_base)), side, mpp)
                gs.add(region, seams(block, g.stride, g.overlap))
        out[level] = {**cs.summary(), **gs.summary()}
    return out
