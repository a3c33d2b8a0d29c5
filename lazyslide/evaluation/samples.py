"""Matched real and generated images for the metrics: per-level patches and pFID crops.

Generated images come from the lazy engine (``Slide``), i.e. the tiles a viewer sees. Real ones
are read from whole-slide images at the same micrometres per pixel (``SlideReader``), at random
tissue positions. pFID crops (Chai et al. 2022) have a random physical size and a random
relative position, the same for the real and the generated slide, and are resized to the
model's tile size.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..geometry import TileId
from ..slide import Slide, produce
from ..wsi import SlideReader, TissueRule, to_hsv

Progress = Callable[[int], None]


@dataclass(frozen=True)
class Crop:
    """A pFID crop: side in micrometres, top-left as a fraction of the free extent (u, v)."""

    size_um: float
    u: float
    v: float


def random_crops(n: int, min_um: float, max_um: float, rng: np.random.Generator) -> list[Crop]:
    """Sizes log-uniform in [min_um, max_um], positions uniform."""
    lo, hi = math.log(min_um), math.log(max(max_um, min_um))
    return [Crop(float(math.exp(rng.uniform(lo, hi))), float(rng.uniform()), float(rng.uniform()))
            for _ in range(n)]


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    if img.shape[0] == size and img.shape[1] == size:
        return img
    return np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BOX))


# -- real slides ---------------------------------------------------------------------------------
def real_patches(readers: Sequence[SlideReader], mpp: float, size: int, n: int, rng: np.random.Generator,
                 *, rule: TissueRule | None = None, attempts: int = 20) -> np.ndarray:
    """``n`` random ``size`` px patches with tissue at ``mpp``, from the slides in turn.

    A slide smaller than the patch is placed at a random offset inside it (glass around), as
    ``prepare`` does for training.
    """
    rule = rule or TissueRule()
    out: list[np.ndarray] = []
    tries = 0
    while len(out) < n and tries < attempts * n:
        reader = readers[tries % len(readers)]
        tries += 1
        span = [s * reader.mpp / mpp for s in reader.size]  # slide extent in patch pixels
        x = rng.uniform(min(0, span[0] - size), max(0, span[0] - size))
        y = rng.uniform(min(0, span[1] - size), max(0, span[1] - size))
        base = mpp / reader.mpp
        patch = reader.read((round(x * base), round(y * base)), size, mpp)
        if rule.keeps(patch):
            out.append(patch)
    if not out:
        raise ValueError(f"no tissue found in the real slides at {mpp:.3g} um/px")
    return np.stack(out)


def real_crops(readers: Sequence[SlideReader], crops: Sequence[Crop], size: int) -> np.ndarray:
    out = []
    for i, c in enumerate(crops):
        reader = readers[i % len(readers)]
        mpp = c.size_um / size
        free = [max(0.0, s * reader.mpp - c.size_um) for s in reader.size]  # um
        origin = (round(c.u * free[0] / reader.mpp), round(c.v * free[1] / reader.mpp))
        out.append(reader.read(origin, size, mpp))
    return np.stack(out)


# -- generated slides ----------------------------------------------------------------------------
def _tissue_centre(overview: np.ndarray) -> tuple[float, float]:
    sat = to_hsv(overview)[..., 1]
    ys, xs = np.nonzero(sat > 0.1)
    if not len(xs):
        return overview.shape[1] / 2, overview.shape[0] / 2
    return float(xs.mean()), float(ys.mean())


def block_tiles(slide: Slide, level: int, block: int) -> list[TileId]:
    """A ``block`` x ``block`` block of ``level``'s tiles around the slide's tissue (level 0: the
    overview). For the outpainting method (deepest level only), the top-left block, where raster
    outpainting starts."""
    g = slide.geometry
    if level == 0:
        return [TileId(0, 0, 0)]
    if 0 in slide.levels:  # centre on the tissue the overview shows
        cx, cy = _tissue_centre(slide.tile(0, 0, 0))
        f = g.canvases[level] / g.canvases[0] / g.stride
        centre = (int(cx * f), int(cy * f))
    else:
        centre = (block // 2, block // 2)
    lo = [min(max(0, c - block // 2), g.grid(level) - block) for c in centre]
    return [TileId(level, lo[0] + i, lo[1] + j) for j in range(block) for i in range(block)]


def ensure_many(slides: Sequence[Slide], targets: Sequence[Iterable[TileId]]) -> None:
    """Make what ``targets[i]`` needs on ``slides[i]`` (slides of one model and method), the
    tiles of one level and inpainting phase of all slides in shared network calls of the
    model's ``sampling.batch`` tiles.

    Evaluation draws many slides of one model, each making a few tiles per phase; on a GPU a
    call costs about the same for one tile as for tens, so batching across slides is what makes
    large sample counts affordable there. Calls are padded to the fixed batch (``produce``), so
    these are the slides' own tiles, byte for byte, whichever tiles shared a call."""
    groups: dict[tuple[int, int], list[tuple[Slide, TileId]]] = defaultdict(list)
    for slide, tiles in zip(slides, targets, strict=True):
        for t in slide.missing(tiles):
            groups[(t.level, slide.plan.rank(slide.geometry, *t))].append((slide, t))
    for key in sorted(groups):  # a level's phases after the levels above: dependencies first
        produce(groups[key])


def level_patches(slides: Sequence[Slide], level: int, block: int, *, tissue_only: bool = True,
                  progress: Progress | None = None) -> list[np.ndarray]:
    """Tiles of ``level``: per slide the ``block_tiles`` block (tissue only, but at level 0)."""
    rule = TissueRule()
    out = []
    for slide in slides:
        if level not in slide.levels:
            continue
        tiles = block_tiles(slide, level, block)
        slide.ensure(tiles)
        for t in tiles:
            px = slide.tile(*t)
            if not tissue_only or level == 0 or rule.keeps(px):
                out.append(px)
        if progress:
            progress(1)
    return out


def generated_crops(slides: Sequence[Slide], crops: Sequence[Crop], size: int,
                    progress: Progress | None = None) -> np.ndarray:
    """The crops on generated slides (slide ``i % len(slides)`` for crop ``i``), read from the
    coarsest level that still has ``size`` px across the crop, resized to ``size``."""
    out = []
    for i, c in enumerate(crops):
        slide = slides[i % len(slides)]
        g = slide.geometry
        fine = [lv for lv in slide.levels if g.level_mpp(lv) <= c.size_um / size * (1 + 1e-9)]
        level = fine[0] if fine else slide.levels[-1]
        mpp = g.level_mpp(level)
        side = max(1, round(c.size_um / mpp))
        free = max(0, g.canvases[level] - side)
        x, y = round(c.u * free), round(c.v * free)
        out.append(_resize(slide.read_region(level, x, y, side, side), size))
        if progress:
            progress(1)
    return np.stack(out)
