"""OME-Zarr (OME-NGFF 0.4) export: the format napari, vizarr, OMERO and cloud pipelines read.

One multiscale image, the pages of the svs / ome-tiff exports (``export.Pyramid``: every
magnification level at its own resolution and its reductions), each an array ``(c, y, x)``
uint8 with physical pixel sizes in micrometres, chunked one tile per chunk and written tile by
tile from the store. NGFF 0.4 on Zarr format 2 (``/`` chunk separators) because that is what
today's readers take (napari-ome-zarr, vizarr, tiatoolbox's ``NGFFWSIReader``); chunks are
compressed losslessly (Blosc zstd; ``--compression`` and ``--quality`` are TIFF options).
Nothing in it depends on the time or the run, so a rerun writes the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from .slide import Slide

NGFF_VERSION = "0.4"
#: Blosc, zstd level 5 with byte shuffle and automatic block size: the same bytes for the same
#: pixels (the byte-identical rerun test checks it).
BLOSC = dict(cname="zstd", clevel=5, shuffle=1, blocksize=0)


def multiscales(slide: Slide, mpps: list[float], levels: list[int], name: str) -> dict:
    """NGFF 0.4 ``multiscales`` and ``omero`` attributes: page k is ``mpps[k]`` um per pixel,
    made from magnification level ``levels[k]``."""
    datasets = [{"path": str(k), "coordinateTransformations": [
        {"type": "scale", "scale": [1.0, float(mpp), float(mpp)]}]} for k, mpp in enumerate(mpps)]
    channels = [{"label": label, "color": color, "active": True, "coefficient": 1.0,
                 "family": "linear", "inverted": False,
                 "window": {"start": 0, "end": 255, "min": 0, "max": 255}}
                for label, color in (("red", "FF0000"), ("green", "00FF00"), ("blue", "0000FF"))]
    return {
        "multiscales": [{
            "version": NGFF_VERSION, "name": name,
            "axes": [{"name": "c", "type": "channel"},
                     {"name": "y", "type": "space", "unit": "micrometer"},
                     {"name": "x", "type": "space", "unit": "micrometer"}],
            "datasets": datasets,
            "type": "area",  # reductions are area averages of the level's tiles
            "metadata": {"generator": "lazyslide", "model": slide.model.fingerprint,
                         "method": slide.method.name, "seed": slide.seed,
                         "levels": levels},
        }],
        "omero": {"name": name, "version": NGFF_VERSION, "channels": channels,
                  "rdefs": {"model": "color", "defaultT": 0, "defaultZ": 0}},
    }


def write_ome_zarr(slide: Slide, path: Path, *, tile: int = 256,
                   progress: Callable[[], None] | None = None) -> None:
    """The slide as an OME-Zarr folder at ``path`` (the caller renames it into place)."""
    import numcodecs
    import zarr

    from .export import Pyramid  # export's registry imports this module

    pyr = Pyramid(slide, tile, native_levels=True)
    name = f"lazyslide seed {slide.seed}"
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    compressor = numcodecs.Blosc(**BLOSC)
    for k, size in enumerate(pyr.sizes):
        arr = root.create_array(str(k), shape=(3, size, size), chunks=(3, tile, tile), dtype="uint8",
                                compressors=compressor, fill_value=0,
                                chunk_key_encoding={"name": "v2", "separator": "/"})
        n = pyr.grid(k)
        for i, pixels in enumerate(pyr.tiles(k, progress)):
            r, c = divmod(i, n)
            y0, x0 = r * tile, c * tile
            h, w = min(tile, size - y0), min(tile, size - x0)
            arr[:, y0:y0 + h, x0:x0 + w] = np.moveaxis(pixels[:h, :w], -1, 0)
    mpps = [pyr.mpp(k) for k in range(len(pyr.sizes))]
    root.attrs.update(multiscales(slide, mpps, [level for level, _ in pyr.sources], name))
