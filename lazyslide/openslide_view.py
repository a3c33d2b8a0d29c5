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

    def __init__(self, slide: Slide, *, reduced_levels: bool = False) -> None:
        """``reduced_levels``: between the magnification levels, levels reduced 2, 4, ... times
        (``Slide.read_region(factor=)``), as a pyramidal TIFF has, down to no lower than the
        next magnification level, so a reader picks the same magnification level as without
        them but reads f^2 times fewer pixels (the Deep Zoom server's coarse levels)."""
        self.slide = slide
        g = slide.geometry
        levels = list(reversed(slide.levels))  # outpainting makes only the deepest one
        #: (URCDM level, reduction factor) of each OpenSlide level, highest resolution first
        self._sources: list[tuple[int, int]] = []
        for i, k in enumerate(levels):
            self._sources.append((k, 1))
            coarser = g.canvases[levels[i + 1]] if i + 1 < len(levels) else 0
            f = 2
            while reduced_levels and g.reduction_valid(k, f) and g.canvases[k] // f > coarser:
                self._sources.append((k, f))
                f *= 2
        self._canvases = tuple(g.canvases[k] // f for k, f in self._sources)
        full = self._canvases[0]
        self.level_count = len(self._sources)
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
            k, f = self._sources[level]
            rgb = self.slide.read_region(k, ix0, iy0, ix1 - ix0, iy1 - iy0, factor=f)
            out[iy0 - y:iy1 - y, ix0 - x:ix1 - x, :3] = rgb
            out[iy0 - y:iy1 - y, ix0 - x:ix1 - x, 3] = 255
        return Image.fromarray(out, "RGBA")

    def source(self, level: int) -> tuple[int, int]:
        """The URCDM level an OpenSlide level shows and how many times it is reduced."""
        return self._sources[level]

    def get_thumbnail(self, size: tuple[int, int]) -> Image.Image:
        """RGB thumbnail fitting in ``size``, from the lowest-resolution level (always made)."""
        k, f = self._sources[-1]
        c = self._canvases[-1]
        img = Image.fromarray(self.slide.read_region(k, 0, 0, c, c, factor=f))
        img.thumbnail(size, Image.Resampling.LANCZOS)
        return img

    def close(self) -> None:
        pass
