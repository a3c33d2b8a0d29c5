"""Background-tile skipping: no diffusion where the parent shows no tissue.

The authors' rule, on the parent conditioning window: tissue = hue > 0.5 and saturation > 0.02
(HSV in [0, 1]), eroded with a 5x5 square, dilated with a 51x51 square (sizes for 1024 px
tiles; scaled with the tile size here); a tile is generated if any tissue pixel falls inside
its footprint. Dilation then "any pixel in the footprint" equals "any eroded pixel in the
footprint grown by the dilation radius", which is what is computed (integral images, O(pixels)).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from .errors import LazySlideError
from .wsi import to_hsv

#: Which levels skip background tiles (``BackgroundRule.levels``).
LEVELS = ("every", "deepest")
#: PIL resampling filters by the name ``BackgroundRule.fill`` uses.
FILLS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
#: Fields added after the first models, left out of a config at these values.
_IMPLICIT = {"fill_blur": 0.0, "levels": "every", "fill": "bicubic"}


@dataclass(frozen=True)
class BackgroundRule:
    hue_min: float = 0.5
    sat_min: float = 0.02
    #: square sizes in pixels of a 1024 px window; scaled to the model's tile size
    erode: int = 5
    dilate: int = 51
    enabled: bool = True
    #: Gaussian blur radius (parent pixels) applied to the parent before it is upscaled into a
    #: background tile. 0 (the authors' fill, and every model's before this existed): the parent's
    #: own pixel noise, magnified, next to generated glass that is smooth, a patchwork of tiles.
    fill_blur: float = 0.0
    #: at which levels tiles are skipped: ``every`` level >= 1 (every model's before this
    #: existed) or only the ``deepest`` (the paper's and the authors': levels 1 to L-2 are
    #: diffused wherever they are)
    levels: str = "every"
    #: how the parent is upscaled into a skipped tile: ``bicubic`` or ``bilinear`` (the authors')
    fill: str = "bicubic"

    def __post_init__(self) -> None:
        if self.levels not in LEVELS:
            raise LazySlideError(f"background levels must be one of {', '.join(LEVELS)}, "
                                 f"got {self.levels!r}")
        if self.fill not in FILLS:
            raise LazySlideError(f"background fill must be one of {', '.join(FILLS)}, got {self.fill!r}")
        if not (0 <= self.hue_min <= 1 and 0 <= self.sat_min <= 1):
            raise LazySlideError(f"background thresholds must be in [0, 1]: {self}")
        if self.erode < 1 or self.dilate < 1:
            raise LazySlideError(f"background erode/dilate sizes must be >= 1: {self}")
        if isinstance(self.fill_blur, bool) or not isinstance(self.fill_blur, (int, float)) \
                or not 0 <= self.fill_blur <= 64:
            raise LazySlideError(f"background fill_blur must be a radius in [0, 64] parent pixels, "
                                 f"got {self.fill_blur!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        for name, old in _IMPLICIT.items():  # absent at their old values: old models keep
            if d[name] == old:               # their fingerprints
                del d[name]
        return d

    def skips(self, level: int, levels: int) -> bool:
        """Whether tiles of ``level`` (of a pyramid of ``levels``) with no tissue are skipped."""
        return self.enabled and level >= 1 and (self.levels == "every" or level == levels - 1)

    @classmethod
    def from_dict(cls, d: dict) -> BackgroundRule:
        try:
            return cls(**d)
        except TypeError as e:
            raise LazySlideError(f"bad background rule {d}: {e}") from e


def _scaled(size: int, tile: int) -> int:
    """An odd square size scaled from a 1024 px window to ``tile`` px, at least 1."""
    s = max(1, round(size * tile / 1024))
    return s if s % 2 else s + 1


def tissue_mask(rgb: np.ndarray, rule: BackgroundRule) -> np.ndarray:
    """Boolean mask of tissue pixels (before morphology)."""
    hsv = to_hsv(rgb)
    return (hsv[..., 0] > rule.hue_min) & (hsv[..., 1] > rule.sat_min)


def _box_sum(integral: np.ndarray, y0, x0, y1, x1) -> np.ndarray:
    return integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]


def _integral(mask: np.ndarray) -> np.ndarray:
    out = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    out[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    return out


def has_tissue(window: np.ndarray, footprint: tuple[float, float, float, float],
               rule: BackgroundRule) -> bool:
    """Whether a tile whose footprint (window pixels, x0 y0 x1 y1) lies in ``window`` has tissue."""
    if not rule.enabled:
        return True
    h, w = window.shape[:2]
    tile = w
    mask = tissue_mask(window, rule)
    # erosion: a pixel stays tissue if its whole e x e square is tissue (outside = no tissue)
    e = _scaled(rule.erode, tile) // 2
    if e:
        ii = _integral(mask)
        ys, xs = np.arange(h), np.arange(w)
        y0, y1 = np.clip(ys - e, 0, h), np.clip(ys + e + 1, 0, h)
        x0, x1 = np.clip(xs - e, 0, w), np.clip(xs + e + 1, 0, w)
        full = (2 * e + 1) ** 2
        sums = _box_sum(ii, y0[:, None], x0[None, :], y1[:, None], x1[None, :])
        mask = mask & (sums == full)
    d = _scaled(rule.dilate, tile) // 2
    fx0, fy0, fx1, fy1 = footprint
    x0 = max(0, int(np.floor(fx0)) - d)
    y0 = max(0, int(np.floor(fy0)) - d)
    x1 = min(w, int(np.ceil(fx1)) + d)
    y1 = min(h, int(np.ceil(fy1)) + d)
    return bool(mask[y0:y1, x0:x1].any())
