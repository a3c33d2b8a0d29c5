"""lazyslide: lazy, zoom-driven gigapixel synthetic histopathology slides (URCDM).

Pipeline: ``geometry`` (arithmetic) -> ``plan`` / ``methods`` (tile dependencies, how a slide is
made) -> ``generator`` (``model`` + ``sampler``, one ``stage`` at a time) -> ``store`` ->
consumers (``Slide``, ``OpenSlideView``, ``deepzoom``, ``export``, the CLI and the server).
Importing this package is cheap and offline: imagen-pytorch is imported on first model use.
"""

from .distribution import VERSION as __version__
from .errors import LazySlideError, ModelError, StoreError
from .geometry import PRESETS, Geometry, GeometryError, TileId, preset
from .model import URCDM
from .openslide_view import OpenSlideView
from .plan import ParityPlan, RasterPlan
from .slide import Slide
from .store import TileStore

__all__ = [
    "PRESETS", "URCDM", "Geometry", "GeometryError", "LazySlideError", "ModelError",
    "OpenSlideView", "ParityPlan", "RasterPlan", "Slide", "StoreError", "TileId", "TileStore",
    "__version__", "preset",
]
