"""A large_image tile source for generated slides: the Digital Slide Archive, HistomicsUI and
anything else that reads slides through large_image open a slide that does not exist yet.

A slide is named by a small JSON file, ``NAME.lazyslide``::

    {"lazyslide": 1, "model": "demo", "seed": 0}

with optional ``"cache"`` (the tile store folder; default as the CLI's), ``"fingerprint"`` (the
model's: opening fails if the model has changed since the file was written, so a file never
shows other pixels than it did) and ``"device"``. A relative model or cache path is relative to
the file. ``write_slide_file`` writes one.

Tiles are the Deep Zoom tiles of the server and the ``dzi`` export (``DeepZoom``, 254 px with a
one-pixel overlap, which this source crops as large_image's deepzoom source does), so a tile
here equals the exported one; magnification tiles are generated and stored the first time a
tile needs them, through the same engine as every other consumer. Registered under the
``large_image.source`` entry point as ``lazyslide``; importing this module imports large_image
(an optional dependency: ``pip install 'lazyslide-urcdm[large-image]'``).
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np
from large_image.cache_util import LruCacheMetaclass, methodcache
from large_image.constants import TILE_FORMAT_NUMPY, SourcePriority
from large_image.exceptions import TileSourceError, TileSourceFileNotFoundError
from large_image.tilesource import FileTileSource

from .errors import LazySlideError

FORMAT_VERSION = 1
FIELDS = {"lazyslide", "model", "seed", "cache", "fingerprint", "device"}


def read_slide_file(path: str | Path) -> dict[str, Any]:
    """The file's fields, checked; relative paths resolved against its folder."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            head = f.read(64 * 1024 + 1)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise LazySlideError(f"{path}: cannot read ({e.strerror or e})") from None
    if len(head) > 64 * 1024:
        raise LazySlideError(f"{path}: not a lazyslide slide file (over 64 KiB)")
    try:
        spec = json.loads(head)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise LazySlideError(f"{path}: not a lazyslide slide file (not JSON)") from None
    if not isinstance(spec, dict) or spec.get("lazyslide") != FORMAT_VERSION:
        raise LazySlideError(f"{path}: not a lazyslide slide file (no \"lazyslide\": {FORMAT_VERSION})")
    unknown = sorted(set(spec) - FIELDS)
    if unknown:
        raise LazySlideError(f"{path}: unknown field(s) {', '.join(unknown)} "
                             f"(known: {', '.join(sorted(FIELDS))})")
    model, seed = spec.get("model"), spec.get("seed", 0)
    if not isinstance(model, str) or not model:
        raise LazySlideError(f"{path}: \"model\" must name a model folder, 'demo' or 'random:PRESET'")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise LazySlideError(f"{path}: \"seed\" must be an integer, got {seed!r}")
    for key in ("cache", "fingerprint", "device"):
        if key in spec and not isinstance(spec[key], str):
            raise LazySlideError(f"{path}: \"{key}\" must be a string")
    if model != "demo" and not model.startswith("random:") and not Path(model).is_absolute():
        spec["model"] = str(path.parent / model)
    if "cache" in spec and not Path(spec["cache"]).is_absolute():
        spec["cache"] = str(path.parent / spec["cache"])
    return spec


def write_slide_file(path: str | Path, model: str, seed: int = 0, *, cache: str | Path | None = None,
                     fingerprint: str | None = None) -> Path:
    """Write ``NAME.lazyslide`` naming ``model`` (a spec, as ``--model`` takes) and ``seed``."""
    path = Path(path)
    spec: dict[str, Any] = {"lazyslide": FORMAT_VERSION, "model": model, "seed": seed}
    if cache is not None:
        spec["cache"] = str(cache)
    if fingerprint is not None:
        spec["fingerprint"] = fingerprint
    path.write_text(json.dumps(spec, indent=1) + "\n", encoding="utf-8")
    return path


class LazySlideFileTileSource(FileTileSource, metaclass=LruCacheMetaclass):
    """A generated slide as large_image sees a pyramidal image: levels halving down to one
    tile, the full resolution the deepest magnification level."""

    cacheName = "tilesource"
    name = "lazyslide"
    extensions = {None: SourcePriority.MANUAL, "lazyslide": SourcePriority.PREFERRED}
    mimeTypes = {None: SourcePriority.MANUAL, "application/x-lazyslide+json": SourcePriority.PREFERRED}

    def __init__(self, path, **kwargs) -> None:
        super().__init__(path, **kwargs)
        self._largeImagePath = str(self._getLargeImagePath())
        try:
            spec = read_slide_file(self._largeImagePath)
        except FileNotFoundError:
            raise TileSourceFileNotFoundError(self._largeImagePath) from None
        except LazySlideError as e:
            raise TileSourceError(str(e)) from None
        # imported here: a file that is not ours is refused without loading torch
        from .deepzoom import DeepZoom
        from .model import URCDM
        from .slide import Slide
        from .store import TileStore

        try:
            model = URCDM.from_spec(spec["model"])
            if "device" in spec:
                model = model.to(spec["device"])
            if spec.get("fingerprint") not in (None, model.fingerprint):
                raise LazySlideError(f"model {spec['model']!r} is now {model.fingerprint}, the file "
                                     f"was written for {spec['fingerprint']}: its tiles would differ")
            store = TileStore(spec.get("cache"))
            self._slide = Slide(model, spec["seed"], store, make_level0=False)
        except (LazySlideError, OSError) as e:
            raise TileSourceError(f"{self._largeImagePath}: {e}") from None
        self._spec = spec
        self._dz = DeepZoom(self._slide)
        self._lock = threading.Lock()  # DeepZoomGenerator reads through one view
        width, height = self._dz.view.dimensions
        self.sizeX, self.sizeY = width, height
        self.tileWidth = self.tileHeight = self._dz.tile_size
        self._overlap = self._dz.overlap
        self._background = tuple(bytes.fromhex(self._dz.view.properties["openslide.background-color"]))
        self.levels = int(math.ceil(math.log(max(width, height) / self.tileWidth, 2))) + 1
        # Deep Zoom's levels start at 1 x 1 px; large_image's at one tile
        self._base = self._dz.level_count - self.levels

    def getNativeMagnification(self) -> dict[str, float | None]:
        props = self._dz.view.properties  # what openslide readers of the slide are told
        mm = float(props["openslide.mpp-x"]) / 1000
        return {"magnification": float(props["openslide.objective-power"]), "mm_x": mm, "mm_y": mm}

    def getInternalMetadata(self, **kwargs) -> dict[str, Any]:
        g = self._slide.geometry
        return {"lazyslide": {"model": self._spec["model"], "fingerprint": self._slide.model.fingerprint,
                              "seed": self._slide.seed, "canvases": list(g.canvases),
                              "tile": g.tile, "mpp": g.mpp}}

    @methodcache()
    def getTile(self, x, y, z, pilImageAllowed=False, numpyAllowed=False, **kwargs):
        self._xyzInRange(x, y, z)
        with self._lock:
            try:
                tile = np.asarray(self._dz.dz.get_tile(self._base + z, (x, y)).convert("RGB"))
            except LazySlideError as e:
                raise TileSourceError(f"{self._largeImagePath}: {e}") from None
        o = self._overlap
        tile = tile[o if y else 0:, o if x else 0:][: self.tileHeight, : self.tileWidth]
        if tile.shape[:2] != (self.tileHeight, self.tileWidth):
            # an edge tile: padded with the slide's background (as Deep Zoom fills beyond it),
            # not black, which large_image's resampling lets bleed into a thumbnail's last pixels
            full = np.full((self.tileHeight, self.tileWidth, 3), self._background, np.uint8)
            full[: tile.shape[0], : tile.shape[1]] = tile
            tile = full
        return self._outputTile(tile, TILE_FORMAT_NUMPY, x, y, z, pilImageAllowed, numpyAllowed, **kwargs)


def open(*args, **kwargs) -> LazySlideFileTileSource:  # noqa: A001 (large_image's plugin API)
    """Create an instance of the module class."""
    return LazySlideFileTileSource(*args, **kwargs)


def canRead(*args, **kwargs) -> bool:  # noqa: N802 (large_image's plugin API)
    """Check if an input can be read by the module class."""
    return LazySlideFileTileSource.canRead(*args, **kwargs)
