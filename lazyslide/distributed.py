"""Whole-slide generation on a Dask cluster: one task per tile, its arguments its dependencies.

Each task receives the pixels of the tiles it depends on (futures of other tasks, or stored
tiles scattered once), makes its tile on a worker that keeps the model loaded, and returns the
pixels; only the client writes the store (diskcache's SQLite must not be shared, e.g. over
NFS). Tiles are made one per model call exactly as in a single process, so the result is
byte-identical to it.
"""

from __future__ import annotations

import os
import sys
import threading

import numpy as np

from .errors import LazySlideError
from .geometry import TileId
from .materialize import LevelStats, Stats
from .model import ModelRef
from .slide import Slide
from .store import MemoryStore

_MODELS: dict[str, object] = {}
_LOCK = threading.Lock()


def _worker_model(ref: ModelRef):
    """The model ``ref`` names, loaded once per worker (on the worker's GPU unless ``ref`` fixes
    a device)."""
    key = f"{ref.fingerprint}@{ref.device}"
    with _LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = ref.load()
            if ref.device is None:
                import torch

                if torch.cuda.is_available():
                    try:
                        from distributed import get_worker

                        index = int(str(get_worker().name).rsplit("-", 1)[-1])
                    except (ValueError, ImportError):
                        index = 0
                    model.to(f"cuda:{index % torch.cuda.device_count()}")
            _MODELS[key] = model
    return model


def make_tile_task(ref: ModelRef, method: str, seed: int, tile: TileId, deps: list[TileId],
                   *pixels: np.ndarray) -> tuple[TileId, str, np.ndarray, int]:
    """Run on a worker: make ``tile`` from its dependencies' pixels. Returns the tile, its kind,
    its pixels and the network evaluations it took."""
    slide = Slide(_worker_model(ref), seed, MemoryStore(), make_level0=False, method=method)
    # a dependency is a stored tile (array) or another task's result (tile, kind, pixels)
    for d, p in zip(deps, pixels, strict=True):
        slide.store.put(slide.key(TileId(*d)), p[2] if isinstance(p, tuple) else p)
    tile = TileId(*tile)
    kind = slide.make(tile)
    return (tile, kind or "generated", slide.store.get(slide.key(tile)),
            sum(slide.unet_evaluations.values()))


def start_cluster(workers: int):
    """A LocalCluster: one worker per GPU if there are GPUs, else ``workers`` CPU processes."""
    import torch
    from distributed import Client, LocalCluster

    n = torch.cuda.device_count() or workers
    threads = max(1, (os.cpu_count() or 1) // n)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # inherited by worker processes
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=40)
    return Client(cluster)


def materialize_on(client, ref: ModelRef, slide: Slide, *, show_progress: bool = True) -> Stats:
    """Generate every missing tile of ``slide`` on the cluster behind ``client``; ``ref`` is
    ``slide.model.reference(...)`` (workers rebuild the model from it)."""
    from distributed import as_completed
    from tqdm import tqdm

    if not slide.method.parallel:
        raise LazySlideError(f"the {slide.method} method is sequential (it makes its tiles one after "
                             "another): run it without Dask")
    if ref.fingerprint != slide.model.fingerprint:
        raise LazySlideError("the model reference does not name the slide's model")
    g, plan, store = slide.geometry, slide.plan, slide.store
    seed = slide.seed
    missing = slide.missing([t for lv in slide.levels for t in g.tiles(lv)])
    stats = Stats([LevelStats(lv, len(g.tiles(lv))) for lv in slide.levels])
    for st in stats.levels:
        st.stored_before = st.tiles - sum(1 for t in missing if t.level == st.level)
    futures, scattered = {}, {}
    for t in missing:
        deps = plan.dependencies(g, t)
        args = []
        for d in deps:
            if d in futures:
                args.append(futures[d])
            else:
                if d not in scattered:
                    scattered[d] = client.scatter(np.asarray(store.get(slide.key(d))))
                args.append(scattered[d])
        futures[t] = client.submit(make_tile_task, ref, slide.method.name, seed, tuple(t), deps, *args,
                                   key=f"lazyslide-{slide.key(t).replace('/', '-')}", pure=False)
    bars = [tqdm(total=st.tiles, initial=st.stored_before, desc=f"level {st.level}", unit="tile",
                 file=sys.stderr, disable=not show_progress, dynamic_ncols=True, position=st.level)
            for st in stats.levels]
    for fut in as_completed(list(futures.values())):
        tile, kind, pixels, evaluations = fut.result()
        tile = TileId(*tile)
        store.put(slide.key(tile), pixels)
        st = stats.levels[slide.levels.index(tile.level)]
        st.unet_evaluations += evaluations
        if kind == "generated":
            st.generated += 1
        else:
            st.background += 1
        bar = bars[slide.levels.index(tile.level)]
        bar.update()
        bar.set_postfix(generated=st.generated, background=st.background)
        del futures[tile]  # the scheduler keeps it as long as a dependent task needs it
    for bar in bars:
        bar.close()
    return stats
