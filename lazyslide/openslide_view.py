"""An OpenSlide-like read interface over a lazy slide, for tools that speak OpenSlide.

OpenSlide numbers levels from the highest resolution down and addresses regions in level-0
(full-resolution) pixels; URCDM numbers magnification levels from the lowest up. This view
translates: OpenSlide level ``i`` is URCDM level ``n - 1 - i``. openslide-python's
``DeepZoomGenerator`` runs over it unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from PIL import Image

from .errors import LazySlideError
from .slide import Slide


class OpenSlideView:
    """``level_count``, ``dimensions``, ``level_dimensions``, ``level_downsamples``,
    ``properties``, ``read_region``, ``get_best_level_for_downsample``, ``get_thumbnail``."""

    def __init__(self, slide: Slide) -> None:
        self.slide = slide
        g = slide.geometry
        # URCDM level of each OpenSlide level (outpainting makes only the deepest one)
        self._levels = tuple(reversed(slide.levels))
        self._canvases = tuple(g.canvases[k] for k in self._levels)
        full = self._canvases[0]
        self.level_count = len(self._levels)
        self.level_dimensions = tuple((c, c) for c in self._canvases)
        self.dimensions = self.level_dimensions[0]
        self.level_downsamples = tuple(full / c for c in self._canvases)
        mpp = g.mpp
        self.properties: Mapping[str, str] = {
            "openslide.vendor": "lazyslide",
            "openslide.mpp-x": repr(mpp),
            "openslide.mpp-y": repr(mpp),
            "openslide.objective-power": repr(round(10.0 / mpp, 2)),
            "openslide.background-color": "F2F2F2",
            "openslide.level-count": str(self.level_count),
            "lazyslide.model": slide.model.fingerprint,
            "lazyslide.seed": str(slide.seed),
        }
        self.associated_images: Mapping[str, Image.Image] = {}
        self.color_profile = None

    def get_best_level_for_downsample(self, downsample: float) -> int:
        """The highest-resolution level whose downsample does not exceed ``downsample``."""
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d <= downsample * (1 + 1e-9):
                best = i
        return best

    def read_region(self, location: tuple[int, int], level: int,
                    size: tuple[int, int]) -> Image.Image:
        """RGBA region; ``location`` in level-0 pixels, transparent outside the slide."""
        if not 0 <= level < self.level_count:
            raise LazySlideError(f"level must be in 0..{self.level_count - 1}, got {level}")
        w, h = size
        if w <= 0 or h <= 0:
            raise LazySlideError(f"region size must be positive, got {w}x{h}")
        ds = self.level_downsamples[level]
        x, y = round(location[0] / ds), round(location[1] / ds)
        canvas = self._canvases[level]
        out = np.zeros((h, w, 4), np.uint8)
        ix0, iy0, ix1, iy1 = max(x, 0), max(y, 0), min(x + w, canvas), min(y + h, canvas)
        if ix0 < ix1 and iy0 < iy1:
            rgb = self.slide.read_region(self._levels[level], ix0, iy0, ix1 - ix0, iy1 - iy0)
            out[iy0 - y:iy1 - y, ix0 - x:ix1 - x, :3] = rgb
            out[iy0 - y:iy1 - y, ix0 - x:ix1 - x, 3] = 255
        return Image.fromarray(out, "RGBA")

    def get_thumbnail(self, size: tuple[int, int]) -> Image.Image:
        """RGB thumbnail fitting in ``size``, from the lowest-resolution level (always made)."""
        level = self.level_count - 1
        c = self._canvases[level]
        img = Image.fromarray(self.slide.read_region(self._levels[level], 0, 0, c, c))
        img.thumbnail(size, Image.Resampling.LANCZOS)
        return img

    def close(self) -> None:
        pass
