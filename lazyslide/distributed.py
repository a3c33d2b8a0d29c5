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
from .slide import Slide
from .store import MemoryStore, tile_key

_MODELS: dict[str, object] = {}
_LOCK = threading.Lock()


def _worker_model(spec: str, fingerprint: str):
    """The model for ``spec`` on this worker, loaded once (on its GPU if it has one)."""
    with _LOCK:
        model = _MODELS.get(spec)
        if model is None:
            import torch

            from .model import URCDM

            model = URCDM.from_spec(spec)
            if torch.cuda.is_available():
                try:
                    from distributed import get_worker

                    index = int(str(get_worker().name).rsplit("-", 1)[-1])
                except (ValueError, ImportError):
                    index = 0
                model.to(f"cuda:{index % torch.cuda.device_count()}")
            _MODELS[spec] = model
    if model.fingerprint != fingerprint:
        raise LazySlideError(f"model {spec!r} on worker has fingerprint {model.fingerprint}, "
                             f"the client has {fingerprint}: different files?")
    return model


def make_tile_task(spec: str, fingerprint: str, seed: int, tile: TileId, deps: list[TileId],
                   *pixels: np.ndarray) -> tuple[TileId, str, np.ndarray]:
    """Run on a worker: make ``tile`` from its dependencies' pixels."""
    model = _worker_model(spec, fingerprint)
    # a dependency is a stored tile (array) or another task's result (tile, kind, pixels)
    arrays = [p[2] if isinstance(p, tuple) else p for p in pixels]
    store = MemoryStore({tile_key(fingerprint, seed, TileId(*d)): p
                         for d, p in zip(deps, arrays, strict=True)})
    slide = Slide(model, seed, store, make_level0=False)
    kind = slide._make(TileId(*tile))
    return tile, kind or "generated", store.get(tile_key(fingerprint, seed, TileId(*tile)))


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


def materialize_on(client, spec: str, slide: Slide, *, show_progress: bool = True) -> Stats:
    """Generate every missing tile of ``slide`` on the cluster behind ``client``."""
    from distributed import as_completed
    from tqdm import tqdm

    g, plan, store = slide.geometry, slide.plan, slide.store
    fp, seed = slide.model.fingerprint, slide.seed
    missing = slide.missing([t for lv in range(g.levels) for t in g.tiles(lv)])
    stats = Stats([LevelStats(lv, len(g.tiles(lv))) for lv in range(g.levels)])
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
                    scattered[d] = client.scatter(np.asarray(store.get(tile_key(fp, seed, d))))
                args.append(scattered[d])
        futures[t] = client.submit(make_tile_task, spec, fp, seed, tuple(t), deps, *args,
                                   key=f"lazyslide-{fp}-{seed}-{t.level}-{t.col}-{t.row}", pure=False)
    bars = [tqdm(total=st.tiles, initial=st.stored_before, desc=f"level {st.level}", unit="tile",
                 file=sys.stderr, disable=not show_progress, dynamic_ncols=True, position=st.level)
            for st in stats.levels]
    for fut in as_completed(list(futures.values())):
        tile, kind, pixels = fut.result()
        tile = TileId(*tile)
        store.put(tile_key(fp, seed, tile), pixels)
        st = stats.levels[tile.level]
        if kind == "generated":
            st.generated += 1
        else:
            st.background += 1
        bars[tile.level].update()
        bars[tile.level].set_postfix(generated=st.generated, background=st.background)
        del futures[tile]  # the scheduler keeps it as long as a dependent task needs it
    for bar in bars:
        bar.close()
    return stats
