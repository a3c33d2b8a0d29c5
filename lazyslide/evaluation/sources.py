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
import re
import warnings
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
# Pillow's default decompression-bomb limit, kept here: other libraries set the global
# Image.MAX_IMAGE_PIXELS to None on import (large_image does), which would switch the check off.
MAX_PIXELS = 89_478_485


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
            raise LazySlideError(f"--samples {path}: {e}") from None
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
        try:
            return self._read_region(level, x, y, w, h)
        except Exception as e:  # a file that opens but whose pixels do not decode (truncated, ...)
            raise LazySlideError(
                f"--samples {self.path}: cannot read its pixels for level {level} at ({x}, {y}) "
                f"{w}x{h} px: {type(e).__name__}: {str(e)[:200]} (truncated or corrupt file?)") from None

    def _read_region(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
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
        try:
            files = sorted(p for p in sub.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        except OSError as e:
            raise LazySlideError(f"--samples {sub}: cannot list the folder ({_os_reason(e)})") from None
        if not files:
            raise LazySlideError(f"--samples {sub}: no images ({', '.join(IMAGE_SUFFIXES)})")
        images = [_read_tile(p, t, k, levels[k]) for p in files]
        out[k] = np.stack(images)
    return out


#: Image modes read as they are: RGB, and RGBA when every pixel is opaque.
RGB_MODES = ("RGB", "RGBA")

_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


def _os_reason(e: OSError) -> str:
    return e.strerror.lower() if e.strerror else f"{type(e).__name__}: {e}"


def _declared_size(e: Exception) -> str:
    """The width x height that Pillow's decompression-bomb check refused (a local of the check,
    which names only the pixel count), else that pixel count."""
    tb = e.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "_decompression_bomb_check":
            size = tb.tb_frame.f_locals.get("size")
            if isinstance(size, tuple) and len(size) == 2 and all(isinstance(v, int) for v in size):
                return f"{size[0]}x{size[1]} px ({size[0] * size[1]} pixels)"
        tb = tb.tb_next
    m = _BOMB_PIXELS.search(str(e))
    return f"{m.group(1)} pixels" if m else "a size"


def _bomb(where: str, size: str, must: str) -> str:
    return (f"{where}: the header declares {size}, over the decompression-bomb limit of "
            f"{MAX_PIXELS} pixels; not decoded; {must}")


def _read_tile(p: Path, t: int, level: int, mpp: float) -> np.ndarray:
    """One ``t`` x ``t`` uint8 RGB image, or a ``LazySlideError`` naming the file and what is wrong.
    The header is read first (``Image.open`` is lazy): an image of any other size, mode or frame
    count is refused before its pixels are decoded."""
    where = f"--samples {p}"
    must = (f"level {level} images must be {t}x{t} px at {mpp:.4g} um/px "
            f"(the model's tile at that level's scale)")
    try:
        if not p.is_file():
            raise LazySlideError(f"{where}: not a regular file")
        if p.stat().st_size == 0:
            raise LazySlideError(f"{where}: empty file (0 bytes)")
    except OSError as e:
        raise LazySlideError(f"{where}: cannot read the file ({_os_reason(e)})") from None
    with warnings.catch_warnings():
        # between 1x and 2x Image.MAX_IMAGE_PIXELS Pillow only warns: refuse those too
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(p)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise LazySlideError(_bomb(where, _declared_size(e), must)) from None
        except Image.UnidentifiedImageError:
            raise LazySlideError(f"{where}: not an image file Pillow can identify "
                                 f"(corrupt, truncated or not an image)") from None
        except OSError as e:
            raise LazySlideError(f"{where}: cannot read the file ({_os_reason(e)})") from None
        except Exception as e:  # Pillow's format plugins raise many kinds on hostile headers
            raise LazySlideError(f"{where}: not a readable image ({type(e).__name__}: {e})") from None
    with im:
        w, h = im.size
        if w * h > MAX_PIXELS:  # whatever Pillow's global limit is now
            raise LazySlideError(_bomb(where, f"{w}x{h} px ({w * h} pixels)", must))
        if (w, h) != (t, t):
            raise LazySlideError(f"{where}: {w}x{h} px; {must}")
        try:
            frames = int(getattr(im, "n_frames", 1))
        except Exception as e:
            raise LazySlideError(f"{where}: not a readable image ({type(e).__name__}: {e})") from None
        if frames > 1:
            raise LazySlideError(f"{where}: {frames} frames (pages or animation); evaluate reads "
                                 f"one single-frame image per file")
        if im.mode not in RGB_MODES:
            raise LazySlideError(f"{where}: image mode {im.mode}; evaluate compares RGB H&E images; "
                                 f"convert it to RGB")
        try:
            im.load()
            px = np.asarray(im)
        except Exception as e:  # truncated or corrupt pixel data
            reason = str(e) if isinstance(e, OSError) else f"{type(e).__name__}: {e}"
            hint = "" if "truncated" in reason else "; truncated or corrupt file?"
            raise LazySlideError(f"{where}: its pixels do not decode ({reason}{hint})") from None
    if px.shape != (t, t, len(im.mode)):
        raise LazySlideError(f"{where}: decoded to an array of shape {px.shape}, not ({t}, {t}, "
                             f"{len(im.mode)}); {must}")
    if im.mode == "RGBA":
        clear = int(np.count_nonzero(px[..., 3] != 255))
        if clear:
            raise LazySlideError(f"{where}: RGBA with {clear} of {t * t} pixels not fully opaque; "
                                 f"transparency has no meaning in a slide: evaluate compares RGB H&E "
                                 f"images; convert it to RGB")
        px = px[..., :3]
    return np.ascontiguousarray(px, dtype=np.uint8)
