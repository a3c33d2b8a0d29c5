"""Deep Zoom over a lazy slide: openslide-python's DeepZoomGenerator does the arithmetic.

Shared by the tile server and the ``dzi`` export, so both give byte-identical tiles.

``DeepZoomGenerator`` runs over ``OpenSlideView``, so level count, level sizes, tile counts and
tile sizes are exactly openslide's for the same width and height, and each Deep Zoom level is
read from the lowest-resolution magnification level whose resolution is at least its own
(``get_best_level_for_downsample``). The view offers that level reduced 2 and 4 times too, as a
pyramidal TIFF would (``reduced_levels``): a coarse Deep Zoom tile reads 254 px of reduced
pixels instead of up to 1016 px of full ones and a LANCZOS resize of them (timings:
docs/benchmarks.md, serving). Before rendering, the server asks
which magnification tiles a Deep Zoom tile reads, so it can have them generated off the event
loop first.
"""

from __future__ import annotations

import io

from openslide.deepzoom import DeepZoomGenerator

from .geometry import TileId
from .openslide_view import OpenSlideView
from .slide import Slide

XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>\n'
FORMATS = {"jpeg": "JPEG", "jpg": "JPEG", "png": "PNG"}
MEDIA_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png"}


class DeepZoom:
    def __init__(self, slide: Slide, *, tile_size: int = 254, overlap: int = 1, quality: int = 90) -> None:
        self.slide = slide
        self.tile_size, self.overlap = tile_size, overlap
        self.view = OpenSlideView(slide, reduced_levels=True)
        self.dz = DeepZoomGenerator(self.view, tile_size=tile_size, overlap=overlap, limit_bounds=False)
        self.quality = quality

    def descriptor(self, fmt: str = "jpeg") -> str:
        """The .dzi XML, with the declaration that Microsoft's descriptors carry (openslide's
        get_dzi omits it, and readers such as large_image's deepzoom source refuse it then)."""
        return XML_DECLARATION + self.dz.get_dzi(fmt)

    @property
    def level_count(self) -> int:
        return self.dz.level_count

    @property
    def tile_count(self) -> int:
        return self.dz.tile_count

    def level_tiles(self, level: int) -> tuple[int, int]:
        """(columns, rows) of Deep Zoom tiles at ``level``."""
        return self.dz.level_tiles[level]

    def valid(self, level: int, col: int, row: int) -> bool:
        if not 0 <= level < self.dz.level_count:
            return False
        cols, rows = self.dz.level_tiles[level]
        return 0 <= col < cols and 0 <= row < rows

    def magnification_level(self, level: int) -> int:
        """The URCDM level a Deep Zoom level is rendered from."""
        _, slide_level, _ = self.dz.get_tile_coordinates(level, (0, 0))
        return self.view.source(slide_level)[0]

    def needed_tiles(self, level: int, col: int, row: int) -> list[TileId]:
        """Magnification tiles the Deep Zoom tile reads (those not stored must be made first)."""
        # DeepZoomGenerator's own region computation (what get_tile reads), so what we
        # generate is exactly what rendering needs.
        l0_location, slide_level, l_size = self.dz.get_tile_coordinates(level, (col, row))
        ds = self.view.level_downsamples[slide_level]
        x, y = round(l0_location[0] / ds), round(l0_location[1] / ds)
        urcdm_level, factor = self.view.source(slide_level)
        box = (x, y, x + l_size[0], y + l_size[1])
        return self.slide.geometry.covering_tiles(urcdm_level, box, factor)

    def render(self, level: int, col: int, row: int, fmt: str) -> bytes:
        """Encoded tile (its magnification tiles must be stored, else they are made here)."""
        tile = self.dz.get_tile(level, (col, row))
        buf = io.BytesIO()
        if fmt == "JPEG":
            tile.save(buf, "JPEG", quality=self.quality)
        else:
            tile.save(buf, "PNG")
        return buf.getvalue()
