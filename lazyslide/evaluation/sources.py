"""Generated images made elsewhere: a whole-slide file or a folder of images per level.

``lazyslide evaluate --samples PATH`` measures another generator's output (the paper's StyleGAN3
and MorphDiff rows, or an exported lazyslide slide) with the same real patches, crops and
features as the engine's samples. The model's geometry sets the protocol: level k is
``canvases[k]`` px at ``level_mpp(k)`` um/px, and images are ``tile`` px.

- A slide file (anything tiatoolbox reads) is read as those canvases from its top-left corner
  (beyond its edge: background grey), ``FileSlide``: level k from a page of exactly level k's
  um/px where the file has one, pixel for pixel through tiffslide (a lazyslide ``svs`` or
  ``ome-tiff`` export has one per magnification level), else resampled by tiatoolbox. It then
  goes through the engine's own sampling code (``samples.level_patches``, ``generated_crops``,
  ``generated_consistency``), so an exported slide gives the engine's own numbers.
- A folder holds ``level0/``, ``level1/``, ``level2/`` of ``tile`` px images at each level's
  um/px, or is one such folder of images at ``--mpp X`` (X one of the levels'). It has no whole
  slide, so no pFID crops and no cross-scale consistency.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import LazySlideError
from ..geometry import BACKGROUND_FILL, Geometry
from ..wsi import SlideReader, SlideReadError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")

#: A page is "of level k's um/px" within this relative difference (TIFF resolutions are
#: rationals of pixels per centimetre: exact to about 1e-7).
MPP_MATCH = 1e-4


@dataclass(frozen=True)
class _Conditioned:
    """What ``generated_consistency`` asks of a method: whether each level has a level above."""

    conditioned: bool = True


class FileSlide:
    """A generated whole-slide file read as the model geometry's canvases (``Slide``'s reading
    interface: ``levels``, ``tile``, ``read_region``, ``ensure``)."""

    method = _Conditioned()

    def __init__(self, path: str | Path, geometry: Geometry, *, mpp: float | None = None) -> None:
        try:
            self.reader = SlideReader(Path(path), mpp)
        except SlideReadError as e:
            raise LazySlideError(f"--samples: {e}") from None
        self.path = Path(path)
        self.geometry = geometry
        self.levels = list(range(geometry.levels))
        #: tiffslide page read pixel for pixel for each magnification level, where the file has
        #: a page of exactly that level's um/px (tiatoolbox resamples even there: a level's
        #: pixel is a fractional baseline position, and it interpolates)
        self.native: dict[int, int] = {}
        self._tiff = None
        try:
            import tiffslide

            self._tiff = tiffslide.TiffSlide(str(path))
        except Exception:  # not a TIFF-family file: tiatoolbox reads it, resampled
            return
        for k in self.levels:
            want = geometry.level_mpp(k)
            for i, ds in enumerate(self._tiff.level_downsamples):
                if abs(self.reader.mpp * ds - want) <= MPP_MATCH * want:
                    self.native[k] = i
                    break

    def ensure(self, tiles: object) -> None:
        """Nothing to make: the file holds every pixel."""

    def tile(self, level: int, col: int, row: int) -> np.ndarray:
        x0, y0, x1, y1 = self.geometry.tile_box(level, col, row)
        return self.read_region(level, x0, y0, x1 - x0, y1 - y0)

    def read_region(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """uint8 RGB (h, w, 3) of level ``level``'s canvas at (x, y)."""
        if level in self.native:
            return self._read_page(self.native[level], x, y, w, h)
        mpp = self.geometry.level_mpp(level)
        k = mpp / self.reader.mpp  # baseline pixels per level pixel
        out = self.reader.wsi.read_rect((round(x * k), round(y * k)), (w, h), resolution=mpp,
                                        units="mpp", pad_constant_values=BACKGROUND_FILL)
        out = np.ascontiguousarray(out[..., :3], dtype=np.uint8)
        if out.shape != (h, w, 3):  # tiatoolbox may be off by one after rescaling
            out = np.asarray(Image.fromarray(out).resize((w, h), Image.Resampling.BILINEAR))
        return out

    def _read_page(self, page: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Page pixels [x, x + w) x [y, y + h), background beyond the page."""
        ts = self._tiff
        ds = ts.level_downsamples[page]
        pw, ph = ts.level_dimensions[page]
        out = np.full((h, w, 3), BACKGROUND_FILL, np.uint8)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, pw), min(y + h, ph)
        if x0 < x1 and y0 < y1:
            # tiffslide floors location / downsample: ceil(x * ds) / ds lies in [x, x + 1/ds)
            region = ts.read_region((math.ceil(x0 * ds), math.ceil(y0 * ds)), page,
                                    (x1 - x0, y1 - y0), as_array=True)
            out[y0 - y:y1 - y, x0 - x:x1 - x] = np.asarray(region)[..., :3]
        return out

    def __repr__(self) -> str:
        return f"FileSlide({str(self.path)!r})"


def folder_images(folder: str | Path, geometry: Geometry, *,
                  mpp: float | None = None) -> dict[int, np.ndarray]:
    """The images of a samples folder per level: ``level{k}/`` subfolders, or the folder itself
    at ``mpp`` (the level whose um/px it is). Every image must be ``tile`` x ``tile`` px."""
    folder = Path(folder)
    t = geometry.tile
    levels = {k: geometry.level_mpp(k) for k in range(geometry.levels)}
    expected = ", ".join(f"level {k}: {v:.4g}" for k, v in levels.items())
    if mpp is not None:
        match = [k for k, v in levels.items() if abs(v - mpp) <= 0.01 * v]
        if not match:
            raise LazySlideError(f"--mpp {mpp:g}: images at {mpp:g} um/px match no level of the model "
                                 f"(um/px {expected})")
        parts = {match[0]: folder}
    else:
        parts = {k: folder / f"level{k}" for k in levels if (folder / f"level{k}").is_dir()}
        if not parts:
            raise LazySlideError(f"--samples {folder}: no level0/, level1/ or level2/ folder of images "
                                 f"(or give --mpp for a folder of images at one level's um/px: {expected})")
    out: dict[int, np.ndarray] = {}
    for k, sub in parts.items():
        files = sorted(p for p in sub.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise LazySlideError(f"--samples {sub}: no images ({', '.join(IMAGE_SUFFIXES)})")
        images = []
        for p in files:
            try:
                with Image.open(p) as im:
                    rgb = np.asarray(im.convert("RGB"))
            except (OSError, ValueError) as e:
                raise LazySlideError(f"--samples {p}: not a readable image ({e})") from None
            if rgb.shape[:2] != (t, t):
                raise LazySlideError(
                    f"--samples {p}: {rgb.shape[1]}x{rgb.shape[0]} px; level {k} images must be "
                    f"{t}x{t} px at {levels[k]:.4g} um/px (the model's tile at that level's scale)")
            images.append(rgb)
        out[k] = np.stack(images)
    return out
