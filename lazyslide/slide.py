"""The lazy slide: any tile on demand, dependencies resolved, every result stored.

``Slide(model, seed, store)`` makes level 0 when opened; any other tile is made when first
asked for, after the tiles it depends on (``plan``): the earlier-phase neighbours whose pixels
it inpaints and the parent tiles that compose its conditioning window. A tile's pixels are a
pure function of (model, seed, level, col, row): its random numbers are seeded from that
address and its inputs are read back from the store.

``method`` (``methods.METHODS``) decides which levels exist, the order, the unets and the store
key: "urcdm" by default, or "outpaint", the paper's baseline (only the deepest level, filled in
raster order by level 0's unconditional cascade, stored under its own key).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image

from .background import has_tissue
from .errors import LazySlideError, TileMissing
from .generator import TileJob, fill_background, generate
from .geometry import BACKGROUND_FILL, Box, TileId
from .methods import Method, get_method
from .model import URCDM
from .plan import Plan
from .seeds import check_seed
from .store import TileStore

#: Largest region ``read_region`` composes at once (pixels), to fail early instead of swapping.
MAX_REGION_PIXELS = 1 << 28

#: ``progress(tile, kind)`` with kind "generated" or "background", after each tile is stored.
Progress = Callable[[TileId, str], None]


class Slide:
    """One synthetic slide of a model, identified by its seed."""

    def __init__(self, model: URCDM, seed: int = 0, store: TileStore | None = None, *,
                 plan: Plan | None = None, progress: Progress | None = None,
                 make_level0: bool = True, method: str | Method = "urcdm", remake: bool = True) -> None:
        """``remake=False``: never generate a tile found missing while reading (``TileMissing``
        instead), for readers without the model's weights."""
        check_seed(seed)
        self.model = model
        self.seed = seed
        self.remake = remake
        self.method = get_method(method)
        self.store = store if store is not None else TileStore()
        self.geometry = model.geometry
        self.plan: Plan = plan if plan is not None else self.method.plan
        #: the levels this slide makes (outpainting has only the full-resolution canvas)
        self.levels = self.method.levels(self.geometry)
        make_level0 = make_level0 and 0 in self.levels
        #: tiles this object generated (diffusion) and filled as background, per level
        self.generated: Counter[int] = Counter()
        self.background: Counter[int] = Counter()
        #: network evaluations (tiles x unet calls) this object made, per level of the tile
        self.unet_evaluations: Counter[int] = Counter()
        self._locks: dict[TileId, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._model_lock = threading.Lock()  # one generation at a time on the model's device
        if make_level0:  # a server passes False and has its worker make level 0 instead
            self.ensure(self.geometry.tiles(0), progress=progress)

    # -- public API ------------------------------------------------------------------------------
    def tile(self, level: int, col: int, row: int, *, progress: Progress | None = None) -> np.ndarray:
        """The tile's uint8 RGB pixels (T, T, 3), generating what it needs."""
        tile = self.geometry.check_tile(level, col, row)
        self._check_level(level)
        self.ensure([tile], progress=progress)
        return self._stored(tile)

    def read_region(self, level: int, x: int, y: int, w: int, h: int, *,
                    factor: int = 1) -> np.ndarray:
        """uint8 RGB (h, w, 3) of ``level``'s canvas at (x, y); outside is background grey.

        ``factor`` f > 1: the canvas reduced f times (each pixel the mean of an f x f block, x
        and y in reduced pixels), read from reduced copies of the tiles kept beside them in the
        store's memory, as a pyramidal TIFF's lower levels: a coarse Deep Zoom level reads a
        few reduced pixels instead of f^2 times as many full ones.
        """
        for name, v in (("x", x), ("y", y), ("w", w), ("h", h), ("factor", factor)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise LazySlideError(f"{name} must be an integer, got {v!r}")
        self.geometry.check_tile(level, 0, 0)
        self._check_level(level)
        if w <= 0 or h <= 0 or w * h > MAX_REGION_PIXELS:
            raise LazySlideError(f"region size must be positive and at most {MAX_REGION_PIXELS} "
                                 f"pixels, got {w}x{h}")
        if not self.geometry.reduction_valid(level, int(factor)):
            raise LazySlideError(f"level {level} cannot be read reduced {factor} times (the "
                                 f"factor must divide the canvas and be at most overlap + 1)")
        box = (int(x), int(y), int(x) + int(w), int(y) + int(h))
        self.ensure(self.geometry.covering_tiles(level, box, int(factor)))
        return self._compose(level, box, int(factor))

    def missing(self, tiles: Iterable[TileId]) -> list[TileId]:
        """Tiles that must be made for ``tiles`` to exist, in a valid making order."""
        need: set[TileId] = set()
        stack = list(tiles)
        while stack:
            t = stack.pop()
            if t in need or self.key(t) in self.store:
                continue
            need.add(t)
            stack.extend(self.plan.dependencies(self.geometry, t))
        return self.plan.order(self.geometry, need)

    def ensure(self, tiles: Iterable[TileId], *, progress: Progress | None = None) -> None:
        """Make every missing tile needed for ``tiles`` (safe to call from many threads)."""
        for t in self.missing(tiles):
            kind = self.make(t)
            if progress is not None and kind:
                progress(t, kind)

    def store_made(self, tile: TileId, kind: str, pixels: np.ndarray, evaluations: int = 0) -> None:
        """Store a tile made from this slide's model (here, or by a Dask task) and count it:
        ``kind`` "generated" (``evaluations`` network evaluations) or "background"."""
        self.store.put(self.key(tile), pixels)
        if kind == "generated":
            self.generated[tile.level] += 1
            self.unet_evaluations[tile.level] += evaluations
        else:
            self.background[tile.level] += 1

    def is_stored(self, level: int, col: int, row: int) -> bool:
        return self.key(TileId(level, col, row)) in self.store

    def key(self, tile: TileId) -> str:
        """The tile's store key (model fingerprint, method, seed, address)."""
        return self.method.key(self.model.fingerprint, self.seed, tile)

    def wait_for(self, tile: TileId) -> bool:
        """Wait while another process makes ``tile`` (True once stored; False if its claim
        lapsed unmade, so it is free to make)."""
        return self.store.wait_for(self.key(tile))

    def make_batch(self, tiles: list[TileId], *, progress: Progress | None = None) -> list[str]:
        """Make independent tiles of one level (dependencies stored) with one model call.

        Used by batch export. Tiles that another process has claimed are left to it (see
        ``TileStore.claim``); the caller comes back for them once they are stored. Returns the
        kind of each tile made here. Network calls always hold the model's ``sampling.batch``
        tiles (``produce``), so a tile's bytes do not depend on how many are passed here.
        """
        with claimed([(self, t) for t in tiles]) as (mine, _):
            return self._produce([t for _, t in mine], progress) if mine else []

    # -- making one tile -------------------------------------------------------------------------
    def make(self, tile: TileId) -> str | None:
        """Make and store ``tile`` unless it exists; its dependencies must be stored. Returns
        "generated" or "background", or None if it was stored already (or meanwhile).

        One thread of this process (a lock per tile) and one process of all those sharing the
        store (a claim in the store) makes it; the others wait and read it back.
        """
        key = self.key(tile)
        try:
            with self._lock_for(tile):
                while key not in self.store:
                    if not self.store.claim(key):
                        self.store.wait_for(key)  # stored, or the claim lapsed: look again
                        continue
                    try:
                        if key in self.store:
                            break
                        return self._produce([tile])[0]
                    finally:
                        self.store.release(key)
                return None  # made meanwhile by another thread (or process)
        finally:
            with self._locks_guard:
                self._locks.pop(tile, None)

    def _produce(self, tiles: list[TileId], progress: Progress | None = None) -> list[str]:
        """Make and store independent tiles whose dependencies are stored (``produce``)."""
        return produce([(self, t) for t in tiles], progress)

    def _job(self, tile: TileId) -> TileJob:
        t = self.geometry.tile
        known = np.zeros((t, t, 3), np.uint8)
        for n, (x0, y0, x1, y1) in self.plan.known_boxes(self.geometry, tile):
            # neighbour pixels in this tile's frame: shift by the neighbour's offset
            dx = (n.col - tile.col) * self.geometry.stride
            dy = (n.row - tile.row) * self.geometry.stride
            known[y0:y1, x0:x1] = self._stored(n)[y0 - dy:y1 - dy, x0 - dx:x1 - dx]
        mask = self.plan.known_mask(self.geometry, tile)
        window = footprint = None
        if tile.level > 0 and self.method.conditioned:
            window = self._compose(tile.level - 1, self.geometry.parent_window(*tile))
            footprint = self.geometry.footprint_in_window(*tile)
        return TileJob(tile, self.seed, known, mask, window, footprint)

    def _has_tissue(self, job: TileJob) -> bool:
        return has_tissue(job.window, job.footprint, self.model.background)

    def _background_tile(self, job: TileJob) -> np.ndarray:
        return fill_background(self.model, job)

    # -- reading ---------------------------------------------------------------------------------
    def _check_level(self, level: int) -> None:
        if level not in self.levels:
            raise LazySlideError(f"the {self.method} method makes only level(s) "
                                 f"{', '.join(map(str, self.levels))}, not level {level}")

    def _stored(self, tile: TileId) -> np.ndarray:
        return self._read(tile, lambda: self.store.get(self.key(tile)))

    def _read(self, tile: TileId, read: Callable[[], np.ndarray | None]) -> np.ndarray:
        """``read()``, and if the store lost the tile after it was found there (deleted, or
        discarded because it did not decode), ``read()`` again after making it again: its
        pixels are a pure function of its address. A slide that may not generate
        (``remake=False``: a render process) says which tile is missing."""
        pixels = read()
        if pixels is None:
            if not self.remake:
                raise TileMissing(tile)
            self.ensure([tile])
            pixels = read()
        if pixels is None:
            raise LazySlideError(f"tile {tuple(tile)} is not in the store and could not be made again")
        return pixels

    def _compose(self, level: int, box: Box, factor: int = 1) -> np.ndarray:
        """Canvas pixels of ``box`` from stored tiles (reduced ``factor`` times); outside the
        canvas, background grey."""
        x0, y0, x1, y1 = box
        out = np.full((y1 - y0, x1 - x0, 3), BACKGROUND_FILL, np.uint8)
        g = self.geometry
        for row, ya, yb in g.cover(level, y0, y1, factor):
            oy = g.reduced_span(row, factor)[0]
            for col, xa, xb in g.cover(level, x0, x1, factor):
                tile = TileId(level, col, row)
                pixels = self._stored(tile) if factor == 1 else self._reduced(tile, factor)
                ox = g.reduced_span(col, factor)[0]
                out[ya - y0:yb - y0, xa - x0:xb - x0] = pixels[ya - oy:yb - oy, xa - ox:xb - ox]
        return out

    def _reduced(self, tile: TileId, factor: int) -> np.ndarray:
        """The tile's blocks reduced ``factor`` times (its reduced pixels ``reduced_span``)."""
        g = self.geometry
        (cx, cx1), (ry, ry1) = g.reduced_span(tile.col, factor), g.reduced_span(tile.row, factor)
        ox, oy = cx * factor - tile.col * g.stride, ry * factor - tile.row * g.stride

        def reduce(pixels: np.ndarray) -> np.ndarray:
            box = (ox, oy, ox + (cx1 - cx) * factor, oy + (ry1 - ry) * factor)
            return np.asarray(Image.fromarray(pixels).reduce(factor, box=box))

        return self._read(tile, lambda: self.store.derived(self.key(tile), f"reduced{factor}", reduce))

    def _lock_for(self, tile: TileId) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(tile, threading.Lock())


def produce(items: list[tuple[Slide, TileId]], progress: Progress | None = None) -> list[str]:
    """Make and store independent tiles of one level whose dependencies are stored, of one
    slide or of several slides of one model and method (evaluation batches across slides):
    background tiles from the parent, the others in network calls of exactly the model's
    ``sampling.batch`` tiles, the last call padded with throw-away copies, so that a tile's
    bytes never depend on how many tiles were ready with it. Returns each tile's kind.
    """
    jobs = [slide._job(t) for slide, t in items]
    background = [j.window is not None
                  and slide.model.background.skips(j.tile.level, slide.model.geometry.levels)
                  and not slide._has_tissue(j)
                  for (slide, _), j in zip(items, jobs, strict=True)]
    diffuse = [j for j, bg in zip(jobs, background, strict=True) if not bg]
    first = items[0][0] if items else None
    made: list = []
    per_tile = 0
    if diffuse:
        size = first.model.sampling.batch
        evaluations: Counter[int] = Counter()  # every row of a call is counted alike
        with first._model_lock:
            for i in range(0, len(diffuse), size):
                call = diffuse[i:i + size]
                padded = call + [call[-1]] * (size - len(call))
                made += generate(first.model, padded, unet_level=first.method.unet_level,
                                 evaluations=evaluations)[:len(call)]
        calls = -(-len(diffuse) // size)
        per_tile = sum(evaluations.values()) // (calls * size)  # the padding's rows not counted
    made_iter = iter(made)
    kinds = []
    for (slide, t), job, bg in zip(items, jobs, background, strict=True):
        pixels = slide._background_tile(job) if bg else next(made_iter)
        kind = "background" if bg else "generated"
        slide.store_made(t, kind, pixels, 0 if bg else per_tile)
        kinds.append(kind)
        if progress is not None:
            progress(t, kind)
    return kinds


@contextmanager
def claimed(items: list[tuple[Slide, TileId]]) -> Iterator[tuple[list, list]]:
    """Claim in the store the items not stored yet: yields ``(mine, others)``, the items this
    caller now makes and those another holder is making (``TileStore.claim``); stored items are
    in neither. ``mine`` are released on exit, made or not."""
    mine, others = [], []
    try:
        for slide, t in items:
            key = slide.key(t)
            if key in slide.store:
                continue
            if not slide.store.claim(key):
                others.append((slide, t))
            elif key in slide.store:  # stored between the check and the claim
                slide.store.release(key)
            else:
                mine.append((slide, t))
        yield mine, others
    finally:
        for slide, t in mine:
            slide.store.release(slide.key(t))
