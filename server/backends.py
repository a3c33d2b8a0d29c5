"""Where the scheduler's batches run: on this process's device, or on a Dask cluster.

A backend makes a batch of independent tiles (one level and phase, their dependencies stored)
and stores them; ``slots`` is how many batches it runs at once (the scheduler keeps a worker
thread per slot). Either way the tiles come out of ``lazyslide.slide.produce`` at the model's
fixed batch, so a tile's bytes are the same whichever backend made it.
"""

from __future__ import annotations

from typing import Protocol

from lazyslide import Slide, TileId
from lazyslide.model import ModelRef
from lazyslide.slide import Progress, produce


class Backend(Protocol):
    slots: int

    def run(self, items: list[tuple[Slide, TileId]], progress: Progress) -> None:
        """Make and store ``items``, calling ``progress(tile, kind)`` as each is stored."""

    def close(self) -> None: ...


class LocalBackend:
    """This process's device: one batch at a time (the model's lock serialises them anyway)."""

    slots = 1

    def run(self, items: list[tuple[Slide, TileId]], progress: Progress) -> None:
        produce(items, progress)

    def close(self) -> None:
        pass


class DaskBackend:
    """A Dask cluster: one batch per worker at a time; each task carries its dependencies'
    pixels and returns the tiles' (``lazyslide.distributed.make_batch_task``, as materialize
    runs), and only this process writes the store. A worker that dies mid-batch loses nothing
    stored; Dask runs its task again on another worker."""

    def __init__(self, client, ref: ModelRef, *, retries: int = 2) -> None:
        self.client = client
        self.ref = ref
        self.retries = retries
        workers = client.scheduler_info().get("workers", {})
        self.slots = max(1, sum(w.get("nthreads", 1) for w in workers.values()))

    def run(self, items: list[tuple[Slide, TileId]], progress: Progress) -> None:
        from lazyslide.distributed import submit_batch

        results, evaluations = submit_batch(self.client, self.ref, items, retries=self.retries).result()
        per_tile = evaluations // max(1, sum(kind == "generated" for *_, kind, _ in results))
        for (slide, tile), (_, _, kind, pixels) in zip(items, results, strict=True):
            slide.store_made(tile, kind, pixels, per_tile)
            progress(tile, kind)

    def close(self) -> None:
        self.client.close()
