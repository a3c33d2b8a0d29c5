"""Synthetic tissue fragments, for training slides that are crops of tissue without glass.

A model learns that glass follows glass across scales only from data that shows it. A crop of
tissue (a TCGA-style region, a tile archive) has none, so ``prepare --fragments SIZE`` cuts a
random smooth shape out of each training sample and fills the rest with glass. The shape is
defined in physical space (micrometres on the slide) and evaluated at every pixel's centre,
so a target and its parent window, read at different micrometres per pixel, show the same
fragment border at their own resolutions: one physical mask per sample.

The shape: a sum of ``WAVES`` plane waves of random direction, wavelength around ``size_um``
and phase, thresholded at a random level (so a sample is mostly tissue, mostly glass or a
border between them), with the edge anti-aliased over one pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..geometry import BACKGROUND_FILL
from ..wsi import GlassStats

WAVES = 6
#: Glass for slides that have none to measure: the flat padding grey with a little noise.
DEFAULT_GLASS = GlassStats((float(BACKGROUND_FILL),) * 3, (1.5, 1.5, 1.5), 0)


@dataclass(frozen=True)
class FragmentMask:
    """One sample's fragment: tissue where ``field(x, y) > threshold`` (x, y in micrometres)."""

    directions: np.ndarray  # (WAVES, 2) unit vectors
    wavenumbers: np.ndarray  # (WAVES,) radians per micrometre
    phases: np.ndarray  # (WAVES,)
    threshold: float

    @classmethod
    def random(cls, rng: np.random.Generator, size_um: float) -> FragmentMask:
        angle = rng.uniform(0, 2 * np.pi, WAVES)
        k = 2 * np.pi / (size_um * rng.uniform(1.0, 3.0, WAVES))
        return cls(np.stack([np.cos(angle), np.sin(angle)], 1), k,
                   rng.uniform(0, 2 * np.pi, WAVES), float(rng.uniform(-0.6, 0.6)))

    def field(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The smooth field, normalised to unit variance, at micrometre positions (broadcast)."""
        out = np.zeros(np.broadcast_shapes(x.shape, y.shape))
        for (dx, dy), k, p in zip(self.directions, self.wavenumbers, self.phases, strict=True):
            out += np.cos(k * (dx * x + dy * y) + p)
        return out * np.sqrt(2 / WAVES)

    def coverage(self, origin_um: tuple[float, float], size: int, mpp: float,
                 extent_um: tuple[float, float] | None = None, size_um: float = 0.0) -> np.ndarray:
        """(size, size) tissue weight in [0, 1] of a region read at ``mpp`` whose top-left
        corner is at ``origin_um``; the edge ramps over about one pixel. With the slide's
        ``extent_um``, the field is pushed down within ``size_um`` / 2 of the slide's edge, so
        fragments close on glass before it instead of being cut straight by the crop."""
        c = (np.arange(size) + 0.5) * mpp
        x, y = origin_um[0] + c[None, :], origin_um[1] + c[:, None]
        f = self.field(x, y) - self.threshold
        if extent_um is not None and size_um > 0:
            edge = np.minimum(np.minimum(x, extent_um[0] - x), np.minimum(y, extent_um[1] - y))
            f = f - 4.0 * np.clip(1 - edge / (size_um / 2), 0, None)
        # the field's gradient is at most sum(k) * sqrt(2 / WAVES): a ramp one pixel wide
        slope = float(self.wavenumbers.sum() * np.sqrt(2 / WAVES) * mpp)
        return np.clip(0.5 + f / max(slope, 1e-12), 0.0, 1.0)

    def apply(self, rgb: np.ndarray, origin_um: tuple[float, float], mpp: float,
              glass: GlassStats, rng: np.random.Generator,
              extent_um: tuple[float, float] | None = None, size_um: float = 0.0) -> np.ndarray:
        """``rgb`` (a region at ``mpp``) with the area outside the fragment made glass."""
        w = self.coverage(origin_um, rgb.shape[0], mpp, extent_um, size_um)[..., None]
        fill = glass.fill(rgb.shape[:2], rng).astype(np.float32)
        return np.round(w * rgb + (1 - w) * fill).astype(np.uint8)
