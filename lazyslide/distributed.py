"""Generation on a Dask cluster: one task per batch of tiles, its arguments their dependencies.

Each task makes up to the model's ``sampling.batch`` tiles of one level and phase: it receives
the pixels of the tiles they depend on (futures of other tasks, or stored tiles scattered once),
makes them on a worker that keeps the model loaded, in network calls of exactly that batch
(``produce``), and returns the pixels; only the client writes the store (diskcache's SQLite
must not be shared, e.g. over NFS). So the result is byte-identical to a single process's at
the same batch, and the tile server's generation on a cluster (``server/backends.py``) uses
the same task.
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
from .slide import Slide, produce
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


Item = tuple[int, tuple[int, int, int]]  # (slide seed, tile address): picklable, no objects
Result = tuple[int, tuple[int, int, int], str, np.ndarray]


def make_batch_task(ref: ModelRef, method: str, items: list[Item], deps: list[Item | None],
                    *pixels: np.ndarray | tuple[list[Result], int]) -> tuple[list[Result], int]:
    """Run on a worker: make independent tiles of one level and phase (of one or several slides
    of the model) from their dependencies' pixels, in the model's fixed-size network calls
    (``produce``). ``pixels[i]`` is the stored tile ``deps[i]`` or, where ``deps[i]`` is None,
    another batch task's result. Returns each tile's (seed, address, kind, pixels) and the
    network evaluations the batch took."""
    model = _worker_model(ref)
    store = MemoryStore()  # keys hold the seed: one store serves every slide of the batch
    slides: dict[int, Slide] = {}

    def slide(seed: int) -> Slide:
        if seed not in slides:
            slides[seed] = Slide(model, seed, store, make_level0=False, method=method)
        return slides[seed]

    for dep, p in zip(deps, pixels, strict=True):
        for seed, tile, _, px in ([(*dep, None, p)] if dep is not None else p[0]):
            store.put(slide(seed).key(TileId(*tile)), px)
    work = [(slide(seed), TileId(*tile)) for seed, tile in items]
    kinds = produce(work)
    results = [(s.seed, tuple(t), kind, store.get(s.key(t)))
               for (s, t), kind in zip(work, kinds, strict=True)]
    return results, sum(sum(s.unet_evaluations.values()) for s in slides.values())


def submit_batch(client, ref: ModelRef, items: list[tuple[Slide, TileId]],
                 pending: dict | None = None, scattered: dict | None = None, **kwargs):
    """Submit ``make_batch_task`` for ``items`` (``Slide`` objects of one model and method).
    A dependency found in ``pending`` (tile -> future of the batch that makes it) is passed as
    that future; any other is read from its slide's store (scattered once if ``scattered`` is
    given)."""
    first = items[0][0]
    deps: list[Item | None] = []
    args: list = []
    seen: set = set()
    for slide, tile in items:
        for d in slide.plan.dependencies(slide.geometry, tile):
            key = (slide.seed, d)
            if key in seen:
                continue
            seen.add(key)
            future = (pending or {}).get(key)
            if future is not None:
                if any(a is future for a in args):
                    continue
                deps.append(None)
                args.append(future)
                continue
            pixels = np.asarray(slide._stored(d))
            if scattered is not None:
                if key not in scattered:
                    scattered[key] = client.scatter(pixels)
                pixels = scattered[key]
            deps.append((slide.seed, tuple(d)))
            args.append(pixels)
    work = [(slide.seed, tuple(tile)) for slide, tile in items]
    return client.submit(make_batch_task, ref, first.method.name, work, deps, *args, pure=False,
                         **kwargs)


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
    g, plan = slide.geometry, slide.plan
    seed = slide.seed
    missing = slide.missing([t for lv in slide.levels for t in g.tiles(lv)])
    stats = Stats([LevelStats(lv, len(g.tiles(lv))) for lv in slide.levels])
    for st in stats.levels:
        st.stored_before = st.tiles - sum(1 for t in missing if t.level == st.level)
    batch = slide.model.sampling.batch
    futures: dict = {}  # (seed, tile) -> future of the batch making it
    scattered: dict = {}
    phases: dict[tuple[int, int], list[TileId]] = {}
    for t in missing:  # in making order: a phase's tiles after the phases they depend on
        phases.setdefault((t.level, plan.rank(g, *t)), []).append(t)
    batches = []
    for tiles in phases.values():
        for i in range(0, len(tiles), batch):
            chunk = tiles[i:i + batch]
            fut = submit_batch(client, ref, [(slide, t) for t in chunk], futures, scattered,
                               key=f"lazyslide-{slide.key(chunk[0]).replace('/', '-')}-x{len(chunk)}")
            for t in chunk:
                futures[(seed, t)] = fut
            batches.append(fut)
    bars = [tqdm(total=st.tiles, initial=st.stored_before, desc=f"level {st.level}", unit="tile",
                 file=sys.stderr, disable=not show_progress, dynamic_ncols=True, position=st.level)
            for st in stats.levels]
    for fut in as_completed(batches):
        results, evaluations = fut.result()
        for _, tile, kind, pixels in results:
            tile = TileId(*tile)
            slide.store_made(tile, kind, pixels)
            st = stats.levels[slide.levels.index(tile.level)]
            if kind == "generated":
                st.generated += 1
            else:
                st.background += 1
            bars[slide.levels.index(tile.level)].update()
        st.unet_evaluations += evaluations
        bar = bars[slide.levels.index(tile.level)]
        bar.set_postfix(generated=st.generated, background=st.background)
        for _, tile, _, _ in results:  # the scheduler keeps it while a dependent task needs it
            futures.pop((seed, TileId(*tile)), None)
    for bar in bars:
        bar.close()
    return stats
