"""Whole-slide export, streamed tile by tile from the store (never the whole canvas in memory).

Formats:
- ``tiff``: tiled BigTIFF, reduced-resolution pages (NewSubfileType 1), resolution tags;
  multi-level in openslide (generic-tiff), tiffslide, tiatoolbox and pyvips.
- ``svs``: the Aperio layout (ImageDescription with AppMag and MPP on every level, a thumbnail
  page after level 0), so openslide reports objective power and a thumbnail.
- ``ome-tiff``: OME-XML with the pyramid in SubIFDs, for Bio-Formats/QuPath (openslide reads
  only its first level).
- ``dzi``: a Deep Zoom folder whose descriptor and tiles are byte-identical to the server's.
- ``ome-zarr``: an OME-NGFF 0.4 folder with the ome-tiff's pages (``ome_zarr.py``).

Every file is written under a temporary name and renamed when complete, so a partial file never
looks finished. The pages are the levels the viewer shows (``Pyramid``): each magnification
level at its own resolution and reduced 2, 4, ... times, read from reduced copies of the tiles.
Temporary names derive from the output's name (``.NAME.partial``), so a run killed mid-export
leaves nothing that the next run of the same output does not remove.
``check_export`` validates every option and the output location before anything is generated.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .deepzoom import DeepZoom
from .errors import LazySlideError
from .ome_zarr import write_ome_zarr
from .openslide_view import OpenSlideView
from .slide import Slide

COMPRESSIONS = ("jpeg", "deflate")


class ExportError(LazySlideError):
    """The export cannot be written (the message names the path and the problem)."""


#: TIFF tile sizes: multiples of 16 (TIFF's rule for tiles) up to this many pixels.
MAX_TIFF_TILE = 4096


def check_writable(folder: Path) -> None:
    """Fail now if nothing can be created in ``folder`` (permissions, read-only file system).

    A probe file rather than os.access: access() says yes to root on a read-only mount.
    """
    try:
        fd, probe = tempfile.mkstemp(prefix=".lazyslide-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ExportError(f"cannot write in {folder}: {e.strerror or e}") from None


def check_export(out: Path, fmt: str, *, compression: str = "jpeg", quality: int = 90,
                 tile: int = 256, overwrite: bool = False) -> Path:
    """Validate an export before its slide is generated (minutes to hours): every option, the
    name, and that the output can be written. Returns ``out`` as a Path."""
    if fmt not in EXPORTERS:
        raise ExportError(f"unknown format {fmt!r}; choose from {', '.join(EXPORTERS)}")
    if compression not in COMPRESSIONS:
        raise ExportError(f"unknown compression {compression!r}; choose jpeg or deflate")
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ExportError(f"--quality must be in 1..100, got {quality!r}")
    if (isinstance(tile, bool) or not isinstance(tile, int) or tile <= 0 or tile % 16
            or tile > MAX_TIFF_TILE):
        raise ExportError(f"--tiff-tile must be a multiple of 16 in 16..{MAX_TIFF_TILE}, got {tile!r}")
    out = Path(out)
    exporter, name = EXPORTERS[fmt], out.name.lower()
    if exporter.strict_extension and not name.endswith(exporter.extension):
        raise ExportError(f"a {fmt} export must be named NAME{exporter.extension}, got {out.name}")
    for other, e in EXPORTERS.items():
        if other != fmt and e.strict_extension and name.endswith(e.extension):
            raise ExportError(f"a {fmt} export must be named NAME{exporter.extension} (not "
                              f"{e.extension}, which is the {other} format's), got {out.name}")
    if not out.parent.is_dir():
        raise ExportError(f"output folder {out.parent} does not exist")
    taken = [p for p in (out, _dzi_files(out) if fmt == "dzi" else None) if p is not None and p.exists()]
    for p in taken:
        if p.is_dir() and p == out and not exporter.folder:
            raise ExportError(f"{out} is a folder: give a file name (nothing was replaced)")
        if not overwrite:
            raise ExportError(f"{p} exists (use --overwrite to replace it)")
    check_writable(out.parent)
    return out


def _dzi_files(out: Path) -> Path:
    return out.with_name(out.name[: -len(".dzi")] + "_files")


def _temporary(out: Path, what: str) -> Path:
    """A temporary path beside ``out``, the same for every run of the same output."""
    return out.with_name(f".{out.name}.{what}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def ome_uuid(slide: Slide, fmt: str, compression: str, quality: int, tile: int) -> str:
    """The OME UUID of an export: a function of what the file holds, so reruns write the same
    bytes (tifffile would draw a random one)."""
    identity = f"lazyslide/{slide.model.fingerprint}/{slide.method}/{slide.seed}/{fmt}/" \
               f"{compression}/{quality}/{tile}"
    return str(uuid.UUID(bytes=hashlib.sha256(identity.encode()).digest()[:16], version=4))


class Pyramid:
    """A TIFF's pages, each read from the store's tiles (reduced copies for reduced pages), as
    row-major tile streams.

    ``native_levels`` (``svs``, ``ome-tiff``): the levels of the view the Deep Zoom server reads
    (``OpenSlideView(reduced_levels=True)``): every magnification level at its own resolution,
    each reduced 2, 4, ... times down to the next one, so a reader shows at every scale what the
    viewer shows there (the level generated for that scale, not the deepest one shrunk), and
    ``evaluate --samples`` on the file reads the engine's own pixels. Otherwise (plain ``tiff``):
    the deepest level halved while the overlap allows (down to canvas / (overlap + 1)), because
    tifffile, and with it tiffslide and tiatoolbox, take pages as one pyramid only when one
    factor steps through all of them.
    Below the coarsest magnification level, reductions stop once a page fits in one tile.
    """

    def __init__(self, slide: Slide, tile: int, *, native_levels: bool = True) -> None:
        self.slide, self.tile = slide, tile
        g = slide.geometry
        if native_levels:
            view = OpenSlideView(slide, reduced_levels=True)
            candidates = [view.source(i) for i in range(view.level_count)]
        else:
            deepest, f = slide.levels[-1], 1
            candidates = []
            while g.reduction_valid(deepest, f):
                candidates.append((deepest, f))
                f *= 2
        #: (URCDM level, reduction factor) and side of each page, largest first
        self.sources: list[tuple[int, int]] = []
        self.sizes: list[int] = []
        for level, factor in candidates:
            if factor > 1 and self.sizes and self.sizes[-1] <= tile:
                continue  # small enough already: no more reductions of this level
            self.sources.append((level, factor))
            self.sizes.append(g.canvases[level] // factor)

    @classmethod
    def of_layout(cls, slide: Slide, tile: int, layout: str) -> Pyramid:
        """The pages of a TIFF layout: native levels but for plain ``tiff`` (see above)."""
        return cls(slide, tile, native_levels=layout != "tiff")

    def grid(self, k: int) -> int:
        return math.ceil(self.sizes[k] / self.tile)

    def mpp(self, k: int) -> float:
        level, factor = self.sources[k]
        return self.slide.geometry.level_mpp(level) * factor

    def tiles(self, k: int, done: Callable[[], None] | None = None) -> Iterator[np.ndarray]:
        """Page ``k``'s tiles, row-major (beyond the canvas: background)."""
        n, t = self.grid(k), self.tile
        level, factor = self.sources[k]
        for r in range(n):
            for c in range(n):
                tile = self.slide.read_region(level, c * t, r * t, t, t, factor=factor)
                if done is not None:
                    done()
                yield tile


def _tiff_codec(compression: str, quality: int) -> dict:
    if compression == "jpeg":
        return {"compression": "jpeg", "compressionargs": {"level": quality}}
    return {"compression": "zlib", "compressionargs": {"level": 6}}


def _aperio(slide: Slide, w: int, h: int, tile: int, compression: str, quality: int, mpp: float) -> str:
    mag = 10.0 / slide.geometry.mpp
    codec = f"JPEG/RGB Q={quality}" if compression == "jpeg" else "Deflate/RGB"
    return (f"Aperio Image Library v12.0.15 lazyslide\r\n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) "
            f"{codec}|AppMag = {mag:g}|MPP = {mpp:.6f}|Filename = lazyslide "
            f"{slide.model.fingerprint} seed {slide.seed}")


def write_tiff(slide: Slide, path: Path, *, layout: str = "tiff", compression: str = "jpeg",
               quality: int = 90, tile: int = 256, progress: Callable[[], None] | None = None) -> None:
    """A tiled BigTIFF pyramid (``Pyramid``) in the plain, Aperio (``svs``) or OME
    (``ome-tiff``) layout."""
    import tifffile

    g = slide.geometry
    codec = _tiff_codec(compression, quality)
    pyr = Pyramid.of_layout(slide, tile, layout)
    with tifffile.TiffWriter(path, bigtiff=True, ome=layout == "ome-tiff") as tif:
        for k, size in enumerate(pyr.sizes):
            mpp = pyr.mpp(k)
            res = 1e4 / mpp  # pixels per centimetre
            kw = dict(shape=(size, size, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                      resolution=(res, res), resolutionunit="CENTIMETER", **codec)
            if layout == "ome-tiff":
                if k == 0:
                    kw["subifds"] = len(pyr.sizes) - 1
                    kw["metadata"] = {"axes": "YXS", "Name": f"lazyslide seed {slide.seed}",
                                      "UUID": ome_uuid(slide, layout, compression, quality, tile),
                                      "PhysicalSizeX": mpp, "PhysicalSizeXUnit": "µm",
                                      "PhysicalSizeY": mpp, "PhysicalSizeYUnit": "µm"}
                else:
                    kw["subfiletype"] = 1
            elif layout == "svs":
                kw["description"] = _aperio(slide, size, size, tile, compression, quality, mpp)
                kw["metadata"] = None
            else:
                kw["subfiletype"] = 1 if k else 0
                kw["metadata"] = None
            tif.write(pyr.tiles(k, progress), **kw)
            if layout == "svs" and k == 0:
                thumb = _thumbnail(slide, 1024)
                tif.write(thumb, photometric="rgb", metadata=None, **_tiff_codec("jpeg", 85),
                          description=_aperio(slide, thumb.shape[1], thumb.shape[0], 0,
                                              "jpeg", 85, g.mpp * size / thumb.shape[1]))


def _thumbnail(slide: Slide, longest: int) -> np.ndarray:
    g = slide.geometry
    level = max(k for k in slide.levels if g.canvases[k] <= max(longest, g.canvases[slide.levels[0]]))
    c = g.canvases[level]
    if c > 4 * longest:  # only the full-resolution canvas exists (outpainting): shrink tile by tile
        f = longest / c
        out = Image.new("RGB", (longest, longest))
        for tile in g.tiles(level):
            x0, y0, x1, y1 = g.tile_box(*tile)
            ax, ay = int(x0 * f), int(y0 * f)
            box = (ax, ay, max(ax + 1, int(x1 * f)), max(ay + 1, int(y1 * f)))
            part = Image.fromarray(slide.tile(*tile)).resize((box[2] - box[0], box[3] - box[1]),
                                                            Image.Resampling.BOX)
            out.paste(part, box[:2])
        return np.asarray(out)
    img = Image.fromarray(slide.read_region(level, 0, 0, c, c))
    img.thumbnail((longest, longest), Image.Resampling.LANCZOS)
    return np.asarray(img)


def write_dzi(slide: Slide, path: Path, *, quality: int = 90, lossless: bool = False,
              progress: Callable[[], None] | None = None) -> None:
    """``NAME.dzi`` and ``NAME_files/``, exactly as the server's Deep Zoom endpoint answers:
    JPEG tiles, or PNG ones with ``lossless`` (``--compression deflate``, PNG's own codec)."""
    dz = DeepZoom(slide, quality=quality)
    ext = "png" if lossless else "jpeg"
    files = _dzi_files(path)
    partial, descriptor = _temporary(files, "partial"), _temporary(path, "partial")
    try:
        _remove(partial)
        for level in range(dz.level_count):
            (partial / str(level)).mkdir(parents=True)
            cols, rows = dz.level_tiles(level)
            for row in range(rows):
                for col in range(cols):
                    (partial / str(level) / f"{col}_{row}.{ext}").write_bytes(
                        dz.render(level, col, row, ext.upper()))
                    if progress is not None:
                        progress()
        descriptor.write_text(dz.descriptor(ext), encoding="utf-8")
        if files.exists():
            _remove(files)
        partial.rename(files)
        descriptor.replace(path)
    finally:
        _remove(partial)
        _remove(descriptor)


def _tiff_counter(layout: str) -> Callable[[Slide, int], int]:
    def count(slide: Slide, tile: int) -> int:
        pyr = Pyramid.of_layout(slide, tile, layout)
        return sum(pyr.grid(k) ** 2 for k in range(len(pyr.sizes)))
    return count


def _tiff_layout(layout: str) -> Writer:
    """A writer of one TIFF layout: the file under its temporary name, renamed when complete."""

    def write(slide: Slide, out: Path, *, compression: str, quality: int, tile: int,
              progress: Callable[[], None] | None) -> None:
        tmp = _temporary(out, "partial")
        try:
            write_tiff(slide, tmp, layout=layout, compression=compression, quality=quality,
                       tile=tile, progress=progress)
            tmp.replace(out)
        finally:
            tmp.unlink(missing_ok=True)

    return write


def _write_dzi(slide: Slide, out: Path, *, compression: str, quality: int, tile: int,
               progress: Callable[[], None] | None) -> None:
    write_dzi(slide, out, quality=quality, lossless=compression == "deflate", progress=progress)


def _write_ome_zarr(slide: Slide, out: Path, *, compression: str, quality: int, tile: int,
                    progress: Callable[[], None] | None) -> None:
    """The folder under its temporary name, renamed when complete (lossless: no TIFF codec)."""
    tmp = _temporary(out, "partial")
    try:
        _remove(tmp)
        write_ome_zarr(slide, tmp, tile=tile, progress=progress)
        if out.exists():
            _remove(out)
        tmp.rename(out)
    finally:
        _remove(tmp)


#: ``(slide, out, *, compression, quality, tile, progress)``: writes ``out`` atomically.
Writer = Callable[..., None]


@dataclass(frozen=True)
class Exporter:
    """One export format: its writer, the file name it takes, and what reads it."""

    write: Writer
    extension: str
    layout: str
    readers: str
    #: output tiles for ``(slide, tiff_tile)`` (progress bars)
    count: Callable[[Slide, int], int]
    #: the name must end in ``extension`` (and no other format may take that extension)
    strict_extension: bool = False
    #: the export is a folder (a file format's output may not be one)
    folder: bool = False


#: The export formats, by their ``--format`` name. The format table in docs/formats.md follows it.
EXPORTERS: dict[str, Exporter] = {
    "tiff": Exporter(_tiff_layout("tiff"), ".tiff",
                     "tiled BigTIFF, the deepest level halved (NewSubfileType 1), resolution tags in cm",
                     "openslide (generic-tiff), tiffslide, tiatoolbox, pyvips: all levels",
                     _tiff_counter("tiff")),
    "svs": Exporter(_tiff_layout("svs"), ".svs",
                    "Aperio: every magnification level and its reductions, ImageDescription with "
                    "AppMag and MPP, thumbnail page after level 0",
                    "the same, and openslide reports objective power and a thumbnail",
                    _tiff_counter("svs")),
    "ome-tiff": Exporter(_tiff_layout("ome-tiff"), ".ome.tiff", "OME-XML, every magnification "
                         "level and its reductions in SubIFDs",
                         "tiffslide, tiatoolbox (and QuPath/Bio-Formats): all levels; openslide: "
                         "level 0 only", _tiff_counter("ome-tiff")),
    "dzi": Exporter(_write_dzi, ".dzi", "`NAME.dzi` + `NAME_files/`, byte-identical to the "
                    "server's Deep Zoom endpoint: JPEG tiles, PNG with --compression deflate",
                    "any Deep Zoom viewer; large_image's deepzoom source",
                    lambda slide, tile: DeepZoom(slide).tile_count, strict_extension=True),
    "ome-zarr": Exporter(_write_ome_zarr, ".ome.zarr", "OME-NGFF 0.4 folder (Zarr 2): every "
                         "magnification level and its reductions, one tile per chunk, lossless, "
                         "pixel sizes in um", "napari (napari-ome-zarr), vizarr, tiatoolbox "
                         "(NGFFWSIReader), zarr", _tiff_counter("ome-tiff"), strict_extension=True,
                         folder=True),
}
FORMATS = tuple(EXPORTERS)
EXTENSIONS = {name: e.extension for name, e in EXPORTERS.items()}


def tile_count(slide: Slide, fmt: str, tile: int = 256) -> int:
    """How many output tiles an export writes (for progress bars)."""
    return EXPORTERS[fmt].count(slide, tile)


def export(slide: Slide, out: Path, fmt: str, *, compression: str = "jpeg", quality: int = 90,
           overwrite: bool = False, tile: int = 256, progress: Callable[[], None] | None = None) -> Path:
    """Write the slide to ``out`` atomically (temporary name, then rename)."""
    out = check_export(out, fmt, compression=compression, quality=quality, tile=tile,
                       overwrite=overwrite)
    try:
        EXPORTERS[fmt].write(slide, out, compression=compression, quality=quality, tile=tile,
                             progress=progress)
        return out
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ExportError(f"disk full while writing {out} (the tile store is intact; free space "
                              "and rerun: nothing stored is generated again)") from None
        raise ExportError(f"cannot write {out}: {e.strerror or e}") from None
