"""Slide geometry: pure integer/rational arithmetic, no numpy, no torch.

A slide has ``n`` magnification levels (0 = lowest). Every level is a square canvas covering the
same physical extent; level ``k`` is a grid of square tiles of ``tile`` px overlapping by
``overlap`` px (stride ``tile - overlap``), so ``canvas_k = (grid_k - 1) * stride + tile``.
The scale between two levels is the exact ratio of their canvas sizes (a ``Fraction``), so there
is no integer drift across the slide (the authors' code truncated per-level scales).

Coordinates are ``(x, y)`` = ``(col, row)`` order everywhere; boxes are half-open
``(x0, y0, x1, y1)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import NamedTuple

from .errors import LazySlideError

#: Grey used outside the canvas in conditioning windows (the authors' 0.95 fill).
BACKGROUND_FILL = 242


class GeometryError(LazySlideError, ValueError):
    """An inconsistent geometry (the message names the offending value)."""


class TileId(NamedTuple):
    level: int
    col: int
    row: int


Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Geometry:
    """Sizes of one URCDM slide. Validated on construction."""

    tile: int
    overlap: int
    canvases: tuple[int, ...]
    cascade: tuple[int, ...]
    #: micrometres per pixel at the deepest level
    mpp: float = 0.25

    def __post_init__(self) -> None:
        object.__setattr__(self, "canvases", tuple(int(c) for c in self.canvases))
        object.__setattr__(self, "cascade", tuple(int(c) for c in self.cascade))
        t, o = self.tile, self.overlap
        if t <= 0:
            raise GeometryError(f"tile size must be positive, got {t}")
        if not 0 <= o <= t // 2:
            # More than half a tile would make tiles two apart overlap, breaking the 4-phase plan.
            raise GeometryError(f"overlap must be in [0, tile/2] = [0, {t // 2}], got {o}")
        if not self.canvases:
            raise GeometryError("a geometry needs at least one level")
        prev = 0
        for k, c in enumerate(self.canvases):
            if c < t or (c - t) % self.stride:
                raise GeometryError(
                    f"level {k} canvas {c} is not tile + n * stride "
                    f"(tile {t}, stride {self.stride}); nearest valid: "
                    f"{t + max(0, round((c - t) / self.stride)) * self.stride}"
                )
            if c <= prev:
                raise GeometryError(f"level {k} canvas {c} must be larger than level {k - 1}'s {prev}")
            prev = c
        if not self.cascade or self.cascade[-1] != t:
            raise GeometryError(f"the cascade must end at the tile size {t}, got {self.cascade}")
        for s in self.cascade:
            if t % s or (o * s) % t:
                raise GeometryError(
                    f"cascade stage {s} px must divide the tile ({t}) and give a whole-pixel "
                    f"overlap ({o} * {s} / {t})"
                )
        if list(self.cascade) != sorted(set(self.cascade)):
            raise GeometryError(f"cascade sizes must increase strictly, got {self.cascade}")
        if not self.mpp > 0:
            raise GeometryError(f"mpp must be positive, got {self.mpp}")

    # -- per level -----------------------------------------------------------------------------
    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    @property
    def levels(self) -> int:
        return len(self.canvases)

    def grid(self, level: int) -> int:
        """Tiles per side at ``level``."""
        return (self.canvases[self._level(level)] - self.tile) // self.stride + 1

    def scale(self, level: int) -> Fraction:
        """Pixels of ``level`` per pixel of ``level - 1`` (exact)."""
        self._level(level)
        if level == 0:
            raise GeometryError("level 0 has no parent level")
        return Fraction(self.canvases[level], self.canvases[level - 1])

    def level_mpp(self, level: int) -> float:
        return self.mpp * self.canvases[-1] / self.canvases[self._level(level)]

    # -- tiles ---------------------------------------------------------------------------------
    def check_tile(self, level: int, col: int, row: int) -> TileId:
        """Validate a tile address, returning it as a ``TileId``."""
        for name, v in (("level", level), ("col", col), ("row", row)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise GeometryError(f"{name} must be an integer, got {v!r}")
        self._level(level)
        g = self.grid(level)
        if not (0 <= col < g and 0 <= row < g):
            raise GeometryError(
                f"tile ({col}, {row}) is outside level {level}'s {g}x{g} grid "
                f"(col and row in 0..{g - 1})"
            )
        return TileId(level, col, row)

    def tiles(self, level: int) -> list[TileId]:
        g = self.grid(level)
        return [TileId(level, c, r) for r in range(g) for c in range(g)]

    def tile_box(self, level: int, col: int, row: int) -> Box:
        """The tile's pixels in its level's canvas."""
        x, y = col * self.stride, row * self.stride
        return (x, y, x + self.tile, y + self.tile)

    def cover(self, level: int, start: int, end: int, factor: int = 1) -> list[tuple[int, int, int]]:
        """Fewest tiles along one axis that cover canvas pixels [start, end), clipped.

        Returns ``(index, a, b)``: tile ``index`` provides pixels [a, b). Overlapping tiles agree
        on shared pixels, so any cover gives the same pixels; the greedy one (each time the
        tile reaching furthest) needs at most two tiles for a one-tile-wide window.

        ``factor`` f > 1 (a ``reduction_valid`` one): the same in the canvas reduced f times,
        where reduced pixel X averages canvas pixels [X f, X f + f); a tile provides the reduced
        pixels whose blocks lie inside it (``reduced_span``), and the overlap (at least f - 1 px)
        puts every block inside some tile.
        """
        n, s, f = self.grid(level), self.stride, factor
        x, end = max(0, start), min(self.canvases[level] // f, end)
        out = []
        while x < end:
            j = min(x * f // s, n - 1)
            b = min(end, (j * s + self.tile) // f)
            out.append((j, x, b))
            x = b
        return out

    def covering_tiles(self, level: int, box: Box, factor: int = 1) -> list[TileId]:
        """Tiles that compose ``box`` (clipped to the canvas, reduced ``factor`` times), row-major."""
        cols = self.cover(level, box[0], box[2], factor)
        rows = self.cover(level, box[1], box[3], factor)
        return [TileId(level, c, r) for r, _, _ in rows for c, _, _ in cols]

    def reduction_valid(self, level: int, factor: int) -> bool:
        """Whether ``level``'s canvas can be read reduced ``factor`` times from reduced tiles:
        whole blocks (the canvas a multiple of it), each inside one tile (overlap >= f - 1)."""
        return (isinstance(factor, int) and factor >= 1 and factor - 1 <= self.overlap
                and self.canvases[self._level(level)] % factor == 0)

    def reduced_span(self, index: int, factor: int) -> tuple[int, int]:
        """Reduced pixels [lo, hi) along one axis whose f x f blocks lie inside tile ``index``."""
        x0 = index * self.stride
        return -(-x0 // factor), (x0 + self.tile) // factor

    # -- conditioning ----------------------------------------------------------------------------
    def parent_footprint(self, level: int, col: int, row: int) -> tuple[Fraction, ...]:
        """The tile's box in parent-level pixels (exact, generally fractional)."""
        s = self.scale(level)
        return tuple(Fraction(v) / s for v in self.tile_box(level, col, row))

    def parent_window(self, level: int, col: int, row: int) -> Box:
        """The conditioning window: ``tile`` x ``tile`` parent pixels centred on the tile.

        The exact centre is generally fractional; the window origin is rounded half up, so the
        window centre is within half a parent pixel of the tile centre. Pixels of the window
        outside the parent canvas are filled with ``BACKGROUND_FILL``.
        """
        fx0, fy0, fx1, fy1 = self.parent_footprint(level, col, row)
        half = Fraction(self.tile, 2)
        ox = _round_half_up((fx0 + fx1) / 2 - half)
        oy = _round_half_up((fy0 + fy1) / 2 - half)
        return (ox, oy, ox + self.tile, oy + self.tile)

    def footprint_in_window(self, level: int, col: int, row: int) -> tuple[float, float, float, float]:
        """The tile's box inside its conditioning window (window pixels, x0 y0 x1 y1)."""
        ox, oy, _, _ = self.parent_window(level, col, row)
        fx0, fy0, fx1, fy1 = self.parent_footprint(level, col, row)
        return (float(fx0 - ox), float(fy0 - oy), float(fx1 - ox), float(fy1 - oy))

    def window_tiles(self, level: int, col: int, row: int) -> list[TileId]:
        """Parent-level tiles needed to compose the tile's conditioning window."""
        return self.covering_tiles(level - 1, self.parent_window(level, col, row))

    # -- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["canvases"] = list(self.canvases)
        d["cascade"] = list(self.cascade)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Geometry:
        try:
            return cls(
                tile=int(d["tile"]),
                overlap=int(d["overlap"]),
                canvases=tuple(d["canvases"]),
                cascade=tuple(d["cascade"]),
                mpp=float(d.get("mpp", 0.25)),
            )
        except (KeyError, TypeError) as e:
            raise GeometryError(f"geometry needs tile, overlap, canvases, cascade: {e}") from e

    def _level(self, level: int) -> int:
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level < self.levels:
            raise GeometryError(f"level must be in 0..{self.levels - 1}, got {level!r}")
        return level


def _round_half_up(v: Fraction) -> int:
    return int((v + Fraction(1, 2)).__floor__())


# Native 40x (0.25 um/px) region of 40000 px mapped onto the 41344 px deepest level (paper).
_PAPER_MPP = 0.25 * 40000 / 41344

PRESETS: dict[str, Geometry] = {
    "paper": Geometry(1024, 128, (1024, 6400, 41344), (64, 256, 1024), _PAPER_MPP),
    "demo": Geometry(128, 16, (128, 800, 5168), (32, 64, 128), _PAPER_MPP * 8),
    "test": Geometry(32, 4, (32, 200, 1292), (8, 16, 32), _PAPER_MPP * 32),
}


def preset(name: str) -> Geometry:
    try:
        return PRESETS[name]
    except KeyError:
        raise GeometryError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}") from None
