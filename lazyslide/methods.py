"""Generation methods: which tiles a slide has, in which order they are made, by which unets,
and under which store key. ``Slide`` delegates every such decision to its ``Method``; a new
method is one ``Method`` entry in ``METHODS`` (and a ``Plan`` if it needs another order)."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import LazySlideError
from .geometry import Geometry, TileId
from .plan import OutpaintPlan, ParityPlan, Plan, RasterPlan
from .store import tile_key


@dataclass(frozen=True)
class Method:
    name: str
    #: one line for --help and reports
    description: str
    #: the default dependency order of its tiles
    plan: Plan
    #: only the deepest, full-resolution canvas exists (else every level)
    deepest_only: bool = False
    #: the level whose cascade makes every tile (None: each tile's own level's cascade)
    unet_level: int | None = None
    #: level >= 1 tiles are conditioned on the parent window
    conditioned: bool = True
    #: independent tiles may be made in parallel (Dask); else strictly in plan order
    parallel: bool = True

    def __str__(self) -> str:
        return self.name

    def levels(self, geometry: Geometry) -> list[int]:
        return [geometry.levels - 1] if self.deepest_only else list(range(geometry.levels))

    def key(self, fingerprint: str, seed: int, tile: TileId) -> str:
        """The store key: the model's fingerprint, suffixed for any method but the paper's, so
        the tiles of different methods never mix."""
        return tile_key(fingerprint if self.name == "urcdm" else f"{fingerprint}/{self.name}",
                        seed, tile)


METHODS: dict[str, Method] = {
    "urcdm": Method("urcdm", "the cascade of magnification levels (URCDM, default)", ParityPlan()),
    "urcdm-raster": Method(
        "urcdm-raster", "URCDM in the authors' tile order: raster inpainting at every level (a "
        "tile needs every tile before it on its level; not lazy)", RasterPlan(), parallel=False),
    "outpaint": Method(
        "outpaint", "the paper's baseline: raster outpainting of the deepest level with level "
        "0's unconditional cascade", OutpaintPlan(), deepest_only=True, unet_level=0,
        conditioned=False, parallel=False),
}


def get_method(method: str | Method) -> Method:
    if isinstance(method, Method):
        return method
    if method not in METHODS:
        raise LazySlideError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    return METHODS[method]
