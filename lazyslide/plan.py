"""Tile plan: which tiles a tile depends on. A pure dependency graph over ``Geometry``.

A tile inpaints exactly the pixels it shares with the overlapping neighbours that come *before*
it in the plan, and (level >= 1) is conditioned on the parent-level window around it. So the
pixels of a tile depend only on its address, never on the order tiles were requested in.

``ParityPlan`` colours the grid by ``(col % 2, row % 2)``: tiles of one colour never overlap
(overlap <= tile / 2), so each colour is a phase of independent tiles. With the phase order
below a cold tile needs at most 13 tiles of its own level, however large the grid.
``RasterPlan`` is the authors' order (row-major): a tile depends on everything above-left of it.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .geometry import Box, Geometry, TileId

#: Phase order of the parity colours; the best of the 24 orders (max closure 13, see tests).
PHASE_ORDER: tuple[tuple[int, int], ...] = ((0, 0), (1, 0), (1, 1), (0, 1))


class Plan:
    """Base: a tile depends on the overlapping neighbours of lower rank."""

    name = "base"

    def rank(self, geom: Geometry, level: int, col: int, row: int) -> int:
        raise NotImplementedError

    def earlier_neighbours(self, geom: Geometry, tile: TileId) -> list[TileId]:
        """Overlapping neighbours generated before ``tile`` (their pixels are known to it)."""
        if geom.overlap == 0:
            return []
        level, col, row = tile
        g = geom.grid(level)
        mine = self.rank(geom, level, col, row)
        out = []
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                c, r = col + dc, row + dr
                if (dc or dr) and 0 <= c < g and 0 <= r < g:
                    if self.rank(geom, level, c, r) < mine:
                        out.append(TileId(level, c, r))
        return out

    def known_boxes(self, geom: Geometry, tile: TileId) -> list[tuple[TileId, Box]]:
        """For each earlier neighbour, the tile-local box of pixels it fixed."""
        t, o = geom.tile, geom.overlap
        span = {-1: (0, o), 0: (0, t), 1: (t - o, t)}
        out = []
        for n in self.earlier_neighbours(geom, tile):
            (x0, x1), (y0, y1) = span[n.col - tile.col], span[n.row - tile.row]
            out.append((n, (x0, y0, x1, y1)))
        return out

    def known_mask(self, geom: Geometry, tile: TileId) -> np.ndarray:
        """(T, T) bool: True where an earlier neighbour fixed the pixel (what ``tile`` inpaints
        around; trained inpainting learns exactly these masks)."""
        mask = np.zeros((geom.tile, geom.tile), bool)
        for _, (x0, y0, x1, y1) in self.known_boxes(geom, tile):
            mask[y0:y1, x0:x1] = True
        return mask

    def dependencies(self, geom: Geometry, tile: TileId) -> list[TileId]:
        """Every tile that must exist before ``tile`` can be made."""
        deps = self.earlier_neighbours(geom, tile)
        if tile.level > 0:
            deps += geom.window_tiles(*tile)
        return deps

    def closure(self, geom: Geometry, tiles: Iterable[TileId]) -> set[TileId]:
        """``tiles`` and everything they depend on, transitively (what a cold request costs)."""
        seen: set[TileId] = set()
        stack = list(tiles)
        while stack:
            t = stack.pop()
            if t not in seen:
                seen.add(t)
                stack.extend(self.dependencies(geom, t))
        return seen

    def order(self, geom: Geometry, tiles: Iterable[TileId]) -> list[TileId]:
        """``tiles`` sorted so that every tile comes after its dependencies among them."""
        return sorted(tiles, key=lambda t: (t.level, self.rank(geom, *t), t.row, t.col))


class ParityPlan(Plan):
    """Four phases by ``(col % 2, row % 2)``; bounded cold-tile cost (at most 13 per level)."""

    name = "parity"

    def rank(self, geom: Geometry, level: int, col: int, row: int) -> int:
        return PHASE_ORDER.index((col % 2, row % 2))


class RasterPlan(Plan):
    """The authors' raster order: a cold bottom-right tile needs the whole grid."""

    name = "raster"

    def rank(self, geom: Geometry, level: int, col: int, row: int) -> int:
        return row * geom.grid(level) + col


class OutpaintPlan(RasterPlan):
    """The paper's outpainting baseline: raster order at the deepest level, inpainting the
    overlaps only; no parent level, so no window dependencies."""

    name = "outpaint"

    def dependencies(self, geom: Geometry, tile: TileId) -> list[TileId]:
        return self.earlier_neighbours(geom, tile)

