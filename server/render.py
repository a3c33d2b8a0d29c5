"""Deep Zoom tiles rendered off the event loop: in the loop's thread pool, or in processes.

A first render reads a Deep Zoom tile's magnification tiles (reduced ones for coarse levels,
``OpenSlideView(reduced_levels=True)``), decoding each PNG the first time, composes them and
encodes a JPEG (milliseconds with the tiles in memory). In threads that work shares the
server's GIL; in worker processes (``--render-processes N``) it has its own. On 2 cores neither
was faster (``bench/serve.py``; figures in docs/benchmarks.md), so threads, which share the
generator's decoded tiles, are the default. A worker process reads the store on disk (diskcache is safe across
processes) through a model built from the config alone: it reads tiles, never generates (no
weights are loaded); tiles not yet stored are reported, not made.
"""

from __future__ import annotations

import asyncio
import copy
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from lazyslide import URCDM, Slide, TileId, TileStore
from lazyslide.deepzoom import DeepZoom
from lazyslide.errors import TileMissing
from lazyslide.model import ModelRef


@dataclass(frozen=True)
class SlideRef:
    """What a render process needs to read one slide: the model's config, the store folder."""

    model: ModelRef
    store: str
    seed: int
    method: str
    quality: int
    #: the decoded-tile memory of the process's store (as the server's own)
    memory_bytes: int | None = None


    def key(self) -> tuple:
        return (self.model.fingerprint, self.store, self.seed, self.method, self.quality)


_OPEN: dict[tuple, DeepZoom] = {}


def _deep_zoom(ref: SlideRef) -> DeepZoom:
    dz = _OPEN.get(ref.key())
    if dz is None:
        if len(_OPEN) > 16:
            _OPEN.clear()
        model = URCDM(copy.deepcopy(ref.model.config), {}, source=ref.model.source)  # no weights
        if model.fingerprint != ref.model.fingerprint:
            raise RuntimeError(f"render process rebuilt model {model.fingerprint}, expected "
                               f"{ref.model.fingerprint}")
        store = TileStore(ref.store, memory_bytes=ref.memory_bytes)
        slide = Slide(model, ref.seed, store, make_level0=False, method=ref.method, remake=False)
        dz = _OPEN[ref.key()] = DeepZoom(slide, quality=ref.quality)
    return dz


def render_if_stored(dz: DeepZoom, level: int, col: int, row: int, fmt: str) -> bytes | list[TileId]:
    """The encoded tile, or the magnification tiles to make first (``Slide.missing``: those it
    reads that are not stored, with what they need, in making order)."""
    missing = dz.slide.missing(dz.needed_tiles(level, col, row))
    if missing:
        return missing
    try:
        return dz.render(level, col, row, fmt)
    except TileMissing:  # stored when asked, then discarded: it did not decode (TileStore.get)
        return dz.slide.missing(dz.needed_tiles(level, col, row))


def _render_in_process(ref: SlideRef, level: int, col: int, row: int, fmt: str) -> bytes | list[TileId]:
    return render_if_stored(_deep_zoom(ref), level, col, row, fmt)


class Renderer:
    """Renders Deep Zoom tiles in ``processes`` worker processes (0: the loop's thread pool)."""

    def __init__(self, processes: int = 0) -> None:
        if isinstance(processes, bool) or not isinstance(processes, int) or processes < 0:
            raise ValueError(f"render processes must be an integer >= 0, got {processes!r}")
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None
        if processes:  # spawn: forking a process that holds torch's and asyncio's threads is unsafe
            self._pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"))

    async def render(self, dz: DeepZoom, ref: SlideRef | None, level: int, col: int, row: int,
                     fmt: str) -> bytes | list[TileId]:
        loop = asyncio.get_running_loop()
        if self._pool is not None and ref is not None:
            return await loop.run_in_executor(self._pool, _render_in_process, ref, level, col, row, fmt)
        return await loop.run_in_executor(None, render_if_stored, dz, level, col, row, fmt)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)  # a render takes milliseconds
