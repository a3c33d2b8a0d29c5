"""Reading real whole-slide images: tiatoolbox's ``WSIReader`` behind one small reader, the
tissue rules used on real pixels, and the one RGB -> HSV conversion (shared with the
background rule on generated pixels). Used by ``prepare`` (training data), ``evaluate`` (real
patches) and the reader study."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import LazySlideError
from .geometry import BACKGROUND_FILL


class SlideReadError(LazySlideError):
    """A slide that cannot be opened or read (the message names the file)."""


def to_hsv(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB (H, W, 3) -> float32 HSV in [0, 1] (PIL's conversion, as the paper's rules)."""
    return np.asarray(Image.fromarray(rgb).convert("HSV"), dtype=np.float32) / 255.0


@dataclass(frozen=True)
class TissueRule:
    """The paper's training test (HSV in [0, 1]): tissue = h > 0.5, s > 0.1, v < 0.9.

    A target is kept when at least ``min_fraction`` of its pixels are tissue.
    """

    hue_min: float = 0.5
    sat_min: float = 0.1
    val_max: float = 0.9
    min_fraction: float = 0.05

    def __post_init__(self) -> None:
        for name in ("hue_min", "sat_min", "val_max", "min_fraction"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                flag = " (--min-tissue)" if name == "min_fraction" else ""
                raise LazySlideError(f"tissue {name}{flag} is a fraction in [0, 1], got {v!r}")

    def fraction(self, rgb: np.ndarray) -> float:
        hsv = to_hsv(rgb)
        tissue = (hsv[..., 0] > self.hue_min) & (hsv[..., 1] > self.sat_min) & (hsv[..., 2] < self.val_max)
        return float(tissue.mean())

    def keeps(self, rgb: np.ndarray) -> bool:
        return self.fraction(rgb) >= self.min_fraction


class SlideMask:
    """A boolean mask over a whole slide, ``make(thumbnail, mpp)`` of a thumbnail at ``mpp`` (no
    finer than the slide); ``fraction(box)`` is its share of a box given in baseline pixels."""

    def __init__(self, reader: SlideReader, mpp: float,
                 make: Callable[[np.ndarray, float], np.ndarray]) -> None:
        mpp = max(mpp, reader.mpp)
        n = [max(1, round(v * reader.mpp / mpp)) for v in reader.size]
        self.mask = make(reader.read_rect((0, 0), (n[0], n[1]), mpp), mpp)
        self.to_thumb = reader.mpp / mpp  # thumbnail pixels per baseline pixel

    def fraction(self, x: int, y: int, size: int) -> float:
        f = self.to_thumb
        h, w = self.mask.shape
        x0, y0 = max(0, int(x * f)), max(0, int(y * f))
        x1, y1 = min(w, int(np.ceil((x + size) * f))), min(h, int(np.ceil((y + size) * f)))
        if x1 <= x0 or y1 <= y0:
            return 0.0
        return float(self.mask[y0:y1, x0:x1].sum()) / max(1.0, (size * f) ** 2)


class OtsuMask(SlideMask):
    """Slide-level tissue mask: Otsu's threshold on a greyscale thumbnail, as tiatoolbox's
    ``OtsuTissueMasker`` computes it (which cannot be imported without umap, timm, ...)."""

    def __init__(self, reader: SlideReader, max_side: int = 2048) -> None:
        super().__init__(reader, reader.mpp * max(1.0, max(reader.size) / max_side), self._otsu)

    @staticmethod
    def _otsu(thumb: np.ndarray, mpp: float) -> np.ndarray:
        from skimage.filters import threshold_otsu

        grey = np.asarray(Image.fromarray(thumb).convert("L"))
        return grey < threshold_otsu(grey) if grey.min() < grey.max() else np.zeros_like(grey, bool)


@dataclass(frozen=True)
class PenRule:
    """Pen ink on a slide: blue and green marker hues, far from H&E's (haematoxylin's purple
    starts near 0.7, eosin's pink near 0.9), strongly saturated, in areas larger than a nucleus.

    Looked for on a ``mpp`` thumbnail (8 um/px: a nucleus is about one pixel there and blends
    with its stroma; an ink blot is tens of pixels), opened once so that specks drop out, then
    grown by ``halo_um`` for the blot's faint rim. Measured on the packaged sources
    (docs/demo-model-history.md, v10): only the needle biopsy's blot (1.3 % of its training
    region); none in skin, prostate, TMA, ovary or tumour crops."""

    hue_min: float = 0.2
    hue_max: float = 0.7
    sat_min: float = 0.3
    mpp: float = 8.0
    halo_um: float = 80.0

    def mask(self, rgb: np.ndarray, mpp: float) -> np.ndarray:
        """Bool (h, w): ink in ``rgb``, an image at ``mpp`` um/px."""
        from scipy import ndimage

        hsv = to_hsv(rgb)
        ink = (hsv[..., 0] > self.hue_min) & (hsv[..., 0] < self.hue_max) & (hsv[..., 1] > self.sat_min)
        ink = ndimage.binary_opening(ink)
        grow = round(self.halo_um / mpp)
        return ndimage.binary_dilation(ink, iterations=grow) if grow and ink.any() else ink


class PenMask(SlideMask):
    """Where ``rule`` finds pen ink on the slide."""

    def __init__(self, reader: SlideReader, rule: PenRule) -> None:
        super().__init__(reader, rule.mpp, rule.mask)


@dataclass(frozen=True)
class GlassStats:
    """The colour of a slide's glass at one mpp: per-channel mean and standard deviation of
    bright unsaturated pixels (HSV saturation < 0.05, value > 0.8), and how many were seen.

    ``prepare`` fills the area beyond the slide with it, so that a slide's edge does not show
    as a rectangle of real glass on flat grey padding, which the model would learn as tissue
    fragments with straight edges."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pixels: int

    #: fewer glass pixels than this (or than 5 % of a small sample): no glass to measure
    MIN_PIXELS = 1000

    def fill(self, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
        """uint8 (h, w, 3) glass: the mean plus Gaussian noise of the measured spread."""
        noise = rng.standard_normal((*shape, 3), dtype=np.float32) * np.float32(self.std)
        return np.clip(np.round(np.float32(self.mean) + noise), 0, 255).astype(np.uint8)

    def to_dict(self) -> dict:
        return {"mean": [round(v, 2) for v in self.mean], "std": [round(v, 2) for v in self.std],
                "pixels": self.pixels}


def measure_glass(reader: SlideReader, mpp: float, *, grid: int = 4, size: int = 128) -> GlassStats | None:
    """``GlassStats`` of ``reader``'s slide at ``mpp`` from a ``grid`` x ``grid`` sample of
    ``size`` px regions spread over it (pixels beyond the slide left out); None if the sample
    holds too little glass (a crop of tissue)."""
    k = mpp / reader.mpp  # baseline pixels per pixel
    extent = [v / k for v in reader.size]
    # regions inside the slide: a slide smaller than ``size`` at this mpp is read once, whole
    # (reads reaching far beyond a slide are padded at full resolution: slow and useless)
    size = max(1, min(size, math.ceil(max(extent))))
    if size >= max(extent):
        grid = 1
    picked = []
    for gy in range(grid):
        for gx in range(grid):
            x = round(max(0.0, extent[0] - size) * gx / max(1, grid - 1))
            y = round(max(0.0, extent[1] - size) * gy / max(1, grid - 1))
            origin = (round(x * k), round(y * k))
            rgb = reader.read(origin, size, mpp)
            inside = inside_slide(reader, origin, size, mpp)
            hsv = to_hsv(rgb)
            glass = inside & (hsv[..., 1] < 0.05) & (hsv[..., 2] > 0.8)
            picked.append(rgb[glass].astype(np.float64))
    pixels = np.concatenate(picked)
    sampled = grid * grid * size * size
    if len(pixels) < min(GlassStats.MIN_PIXELS, 0.05 * sampled):
        return None
    return GlassStats(tuple(float(v) for v in pixels.mean(0)), tuple(float(v) for v in pixels.std(0)),
                      len(pixels))


def _on_axis(start: int, n: int, k: float, extent: int) -> np.ndarray:
    """(n,) bool: which of n pixels of k baseline pixels each, from baseline pixel ``start``,
    have their centres inside [0, extent)."""
    centres = start + (np.arange(n) + 0.5) * k
    return (centres >= 0) & (centres < extent)


def inside_slide(reader: SlideReader, origin: tuple[int, int], size: int, mpp: float) -> np.ndarray:
    """(size, size) bool: which pixels of ``reader.read(origin, size, mpp)`` lie on the slide
    (pixel centres inside its baseline extent), the rest being padding."""
    k = mpp / reader.mpp
    ok_x, ok_y = (_on_axis(o, size, k, e) for o, e in zip(origin, reader.size, strict=True))
    return ok_y[:, None] & ok_x[None, :]


class _OnceFilter(logging.Filter):
    """Passes each distinct tiatoolbox warning once per process.

    tiatoolbox logs through the root logger on every read, e.g. "Read: Scale > 1" for each of
    thousands of targets read finer than the slide's baseline: one line says it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if "tiatoolbox" not in record.pathname:
            return True
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


_ONCE = _OnceFilter()


class SlideReader:
    """One slide through tiatoolbox, read in regions at a requested mpp.

    ``image``: a file, or decoded RGB pixels (a packaged image read from its archive,
    ``realdata``; ``mpp`` required). ``box`` (x0, y0, x1, y1 baseline pixels): the reader sees only
    that region of the slide, as if it were the whole slide: ``size`` is the box's, coordinates
    start at its corner and every pixel outside it reads as background. This is how a held-out
    region stays out of training and a training region out of evaluation (``realdata``).
    """

    def __init__(self, image: Path | np.ndarray, mpp: float | None, *,
                 box: tuple[int, int, int, int] | None = None, name: str | None = None) -> None:
        try:
            from tiatoolbox.wsicore.wsireader import WSIReader
        except ImportError as e:  # pragma: no cover - depends on the install
            raise SlideReadError(f"reading slides needs tiatoolbox ({e}); run `make install`") from None
        logging.getLogger().addFilter(_ONCE)  # no-op when already added
        array = isinstance(image, np.ndarray)
        self.name = name or ("pixels" if array else Path(image).name)
        if array and not mpp:
            raise SlideReadError(f"{self.name}: pixels without micrometres-per-pixel")
        try:
            self.wsi = WSIReader.open(image if array else str(image), mpp=(mpp, mpp) if mpp else None)
            info = self.wsi.info
            self.full_size = tuple(int(v) for v in info.slide_dimensions)
            slide_mpp = info.mpp
        except Exception as e:  # tiatoolbox raises many kinds for unreadable files
            raise SlideReadError(f"cannot read {self.name}: {type(e).__name__}: {str(e)[:200]}") from None
        if slide_mpp is None or not float(slide_mpp[0]) > 0:
            raise SlideReadError(f"{self.name}: no micrometres-per-pixel in the file; pass --slide-mpp")
        self.mpp = float(slide_mpp[0])
        self.box = None if box is None else tuple(int(v) for v in box)
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            if not (0 <= x0 < x1 <= self.full_size[0] and 0 <= y0 < y1 <= self.full_size[1]):
                raise SlideReadError(f"{self.name}: region {self.box} is not inside the slide "
                                     f"({self.full_size[0]}x{self.full_size[1]} px)")
        b = self.box
        self.size = self.full_size if b is None else (b[2] - b[0], b[3] - b[1])

    def read(self, origin: tuple[int, int], size: int, mpp: float) -> np.ndarray:
        """``size`` x ``size`` RGB at ``mpp``, top-left at baseline pixel ``origin``."""
        return self.read_rect(origin, (size, size), mpp)

    def read_rect(self, origin: tuple[int, int], size: tuple[int, int], mpp: float) -> np.ndarray:
        """(h, w) RGB at ``mpp`` (``size`` = (w, h)), top-left at baseline pixel ``origin`` (of the
        box, when there is one); pixels beyond the slide or the box are ``BACKGROUND_FILL``.

        Only the part on the slide is read: tiatoolbox pads a region that reaches beyond the
        slide at full resolution before resampling it, which made a 32 px level-0 target of a
        small slide (5120^2 baseline pixels, nearly all padding) take seconds to read."""
        k = mpp / self.mpp  # baseline pixels per pixel
        spans = []  # per axis: the output pixels that lie on the slide (or box), inside_slide's rule
        for o, n, extent in zip(origin, size, self.size, strict=True):
            on = np.flatnonzero(_on_axis(o, n, k, extent))
            spans.append((int(on[0]), int(on[-1]) + 1) if on.size else (0, 0))
        (x0, x1), (y0, y1) = spans
        if (x0, x1, y0, y1) == (0, size[0], 0, size[1]):
            return self._read_rect(origin, size, mpp)
        out = np.full((size[1], size[0], 3), BACKGROUND_FILL, np.uint8)
        if x1 > x0 and y1 > y0:
            part = (origin[0] + round(x0 * k), origin[1] + round(y0 * k))
            out[y0:y1, x0:x1] = self._read_rect(part, (x1 - x0, y1 - y0), mpp)
        return out

    def _read_rect(self, origin: tuple[int, int], size: tuple[int, int], mpp: float) -> np.ndarray:
        w, h = size
        x, y = origin
        if self.box is not None:
            x, y = x + self.box[0], y + self.box[1]
        out = self.wsi.read_rect((x, y), (w, h), resolution=mpp, units="mpp",
                                 pad_constant_values=BACKGROUND_FILL)
        out = np.ascontiguousarray(out[..., :3], dtype=np.uint8)
        if out.shape != (h, w, 3):  # tiatoolbox may be off by one after rescaling
            out = np.asarray(Image.fromarray(out).resize((w, h), Image.BILINEAR))
        if self.box is not None:
            k = mpp / self.mpp  # baseline pixels per pixel; centres outside the box are not ours
            xs, ys = x + (np.arange(w) + 0.5) * k, y + (np.arange(h) + 0.5) * k
            inside = (((ys >= self.box[1]) & (ys < self.box[3]))[:, None]
                      & ((xs >= self.box[0]) & (xs < self.box[2]))[None, :])
            if not inside.all():
                out = out.copy()
                out[~inside] = BACKGROUND_FILL
        return out
