"""Serving beyond one thread: fixed-size batches, a Dask backend, fair queues, tokens, render
processes and idle prefetch."""

from __future__ import annotations

import asyncio
import os
import signal

import aiohttp
import numpy as np
import pytest
import torch

from lazyslide import Slide, TileId, TileStore
from lazyslide.errors import LazySlideError
from lazyslide.materialize import materialize
from lazyslide.server import LazySlideServer, serve
from lazyslide.server.backends import DaskBackend, LocalBackend
from lazyslide.server.scheduler import PREFETCH, VISIBLE, Scheduler
from lazyslide.store import MemoryStore

from .test_materialize import run_cli

TOP = "/slides/0_files/8/0_0.jpeg"  # the small model's whole 200 px slide in one Deep Zoom tile


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes, one thread each (as one per GPU would be)."""
    from distributed import Client, LocalCluster

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    lc = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=50)
    client = Client(lc)
    yield client
    client.close()
    lc.close()


def tiles_of(store, model, seed: int = 0) -> dict:
    slide = Slide(model, seed, store, make_level0=False)
    g = model.geometry
    return {t: slide._stored(t) for lv in range(g.levels) for t in g.tiles(lv)}


async def make_everything(server: LazySlideServer, aiohttp_client) -> None:
    client = await aiohttp_client(server.app())
    r = await client.get(TOP)
    assert r.status == 200, await r.text()


async def test_server_materialize_and_dask_agree_byte_for_byte_at_one_batch(
        small_model, tmp_path, aiohttp_client, cluster):
    """At batch 2 the tiles are one pure function of (model, seed, address) whichever path made
    them and whichever tiles shared their batches: the scheduler's batches (its own grouping),
    materialize's (in phase order) and Dask's tasks (as materialize_on cuts them). On the CPU
    a batch's bytes also depend on torch's thread count (README), so this process runs with the
    workers' one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        await _agree(small_model, tmp_path, aiohttp_client, cluster)
    finally:
        torch.set_num_threads(threads)


async def _agree(small_model, tmp_path, aiohttp_client, cluster) -> None:
    model = small_model.with_sampling(batch=2)
    reference = MemoryStore()
    materialize(Slide(model, 0, reference, make_level0=False), show_progress=False)
    want = tiles_of(reference, model)
    assert len(want) == 59

    server = LazySlideServer(model, TileStore(tmp_path / "local"))
    server.open_now(0)
    await make_everything(server, aiohttp_client)
    assert server.scheduler.batched_tiles > server.scheduler.batches  # batches held several tiles
    got = tiles_of(server.store, model)
    assert all(np.array_equal(got[t], want[t]) for t in want)

    dask = LazySlideServer(model, TileStore(tmp_path / "dask"),
                           backend=DaskBackend(cluster, model.reference()))
    dask.open_now(0)
    await make_everything(dask, aiohttp_client)
    got = tiles_of(dask.store, model)
    assert all(np.array_equal(got[t], want[t]) for t in want)

    from lazyslide.distributed import materialize_on

    slide = Slide(model, 0, MemoryStore(), make_level0=False)
    materialize_on(cluster, model.reference(), slide, show_progress=False)
    got = tiles_of(slide.store, model)
    assert all(np.array_equal(got[t], want[t]) for t in want)


def _made(model) -> MemoryStore:  # a single process, one batch after another
    store = MemoryStore()
    materialize(Slide(model, 0, store, make_level0=False), show_progress=False)
    return store


async def test_a_worker_killed_mid_batch_loses_nothing(small_model, tmp_path, aiohttp_client, cluster):
    """The server's store only grows from finished batches; a batch whose worker is killed runs
    again on the other worker, and the slide comes out as a single process makes it."""
    model = small_model.with_sampling(steps=[8, 8, 8])  # batches long enough to kill one mid-way
    server = LazySlideServer(model, TileStore(tmp_path / "store"),
                             backend=DaskBackend(cluster, model.reference()))
    server.open_now(0)
    client = await aiohttp_client(server.app())
    request = asyncio.ensure_future(client.get("/slides/0_files/6/0_0.jpeg"))  # all of level 1
    pids = cluster.run(os.getpid)
    for _ in range(600):  # wait until both workers are busy, then kill one
        if len(server.scheduler.running) == 2:
            break
        await asyncio.sleep(0.05)
    assert len(server.scheduler.running) == 2
    before = len(server.store)
    os.kill(next(iter(pids.values())), signal.SIGKILL)
    r = await asyncio.wait_for(request, 600)
    assert r.status == 200, await r.text()
    assert len(server.store) >= before
    alone = Slide(model, 0, MemoryStore())
    made = Slide(model, 0, server.store, make_level0=False)
    for t in model.geometry.tiles(1):
        assert np.array_equal(made._stored(t), alone.tile(*t)), t


class Recording(LocalBackend):
    """The real local backend, recording which tiles each batch held."""

    def __init__(self) -> None:
        self.batches: list[list[TileId]] = []

    def run(self, items, progress) -> None:
        self.batches.append([t for _, t in items])
        super().run(items, progress)


async def test_clients_take_turns_and_the_screen_outranks_prefetch(small_model):
    """One client's deep zoom (many level-2 tiles) does not starve another's view: the second
    client's tile is made right after the batch running when it asked; and a viewer's
    prefetch waits for every client's on-screen tiles."""
    backend = Recording()
    scheduler = Scheduler(backend)
    scheduler.start()
    slide = Slide(small_model, 3, MemoryStore())
    deep = slide.missing([TileId(2, c, r) for c in range(7) for r in range(7)])
    first = asyncio.ensure_future(scheduler.make("3", slide, deep, client="a"))
    while not backend.batches:
        await asyncio.sleep(0.01)
    other = Slide(small_model, 4, MemoryStore())
    home = asyncio.ensure_future(scheduler.make("4", other, other.missing([TileId(1, 1, 1)]), client="b"))
    await home
    assert not first.done()  # b's view came back while a's deep zoom still runs
    at = next(i for i, b in enumerate(backend.batches) if TileId(1, 1, 1) in b and len(b) == 1)
    a_tiles_before = sum(len(b) for b in backend.batches[:at])
    assert a_tiles_before < len(deep) // 2
    await first

    backend.batches.clear()
    slide = Slide(small_model, 5, MemoryStore())
    ahead = asyncio.ensure_future(scheduler.make("5", slide, slide.missing([TileId(1, 2, 2)]), client="a"))
    while not backend.batches:
        await asyncio.sleep(0.01)
    wanted = [TileId(1, 0, 0), TileId(1, 2, 0), TileId(1, 0, 2)]
    prefetch = asyncio.ensure_future(scheduler.make("5", slide, wanted, client="a", cls=PREFETCH))
    screen = asyncio.ensure_future(scheduler.make("5", slide, [TileId(1, 4, 4)], client="b", cls=VISIBLE))
    await asyncio.gather(ahead, prefetch, screen)
    order = [t for b in backend.batches for t in b]
    assert order.index(TileId(1, 4, 4)) < min(order.index(t) for t in wanted)
    scheduler.stop()


async def test_a_token_guards_what_can_generate(small_model, tmp_path, aiohttp_client):
    server = LazySlideServer(small_model, TileStore(tmp_path / "s"), token="sesame-123",
                             public_warm=True)
    server.open_now(0)
    client = await aiohttp_client(server.app())
    assert (await client.get("/slides/0_files/5/0_0.jpeg")).status == 200  # warm (level 0): public
    cold = "/slides/0_files/7/0_0.jpeg"
    r = await client.get(cold)
    assert r.status == 401 and "token" in await r.text()
    assert (await client.post("/api/slides", json={"seed": 2})).status == 401
    with pytest.raises(aiohttp.WSServerHandshakeError):  # refused before the upgrade
        await client.ws_connect("/api/slides/0/tiles")
    bad = {"Authorization": "Bearer wrong-token"}
    assert (await client.post("/api/slides", json={"seed": 2}, headers=bad)).status == 401
    good = {"Authorization": "Bearer sesame-123"}
    assert (await client.post("/api/slides", json={"seed": 2}, headers=good)).status == 201
    # the viewer's URL carries the token once: kept in a cookie, the URL shown without it
    r = await client.get("/?token=sesame-123&seed=2", allow_redirects=False)
    assert r.status == 303 and "token" not in r.headers["Location"] and "seed=2" in r.headers["Location"]
    assert (await client.get("/?token=nope", allow_redirects=False)).status == 401
    assert (await client.get(cold)).status == 200  # the cookie now
    async with client.ws_connect("/api/slides/0/tiles") as ws:
        await ws.send_json({"op": "get", "id": 1, "level": 8, "col": 0, "row": 0})
        assert int.from_bytes((await ws.receive_bytes())[:4], "big") == 1

    private = LazySlideServer(server.model, TileStore(tmp_path / "s"), token="sesame-123")
    private.open_now(0)
    anonymous = await aiohttp_client(private.app())
    assert (await anonymous.get("/slides/0_files/5/0_0.jpeg")).status == 401  # not even warm tiles


def test_exposed_hosts_need_a_token(model, tmp_path):
    for kwargs, message in (({}, "--token"), ({"token": "x" * 8, "no_auth": True}, "contradict")):
        with pytest.raises(LazySlideError, match=message):
            serve(model, MemoryStore(), host="0.0.0.0", port=1, **kwargs)
    with pytest.raises(LazySlideError, match="public-warm"):
        serve(model, MemoryStore(), public_warm=True, port=1)
    r = run_cli("serve", "--model", "random:test", "--host", "0.0.0.0", "--cache", str(tmp_path / "c"))
    assert r.returncode == 2 and "--token" in r.stderr and "Traceback" not in r.stderr


async def test_render_processes_give_the_threads_bytes(small_model, tmp_path, aiohttp_client):
    fast = small_model
    threads = LazySlideServer(fast, TileStore(tmp_path / "s"))
    threads.open_now(0)
    procs = LazySlideServer(fast, TileStore(tmp_path / "s"), render_processes=1)
    procs.open_now(0)
    a, b = await aiohttp_client(threads.app()), await aiohttp_client(procs.app())
    try:
        for path in ("/slides/0_files/5/0_0.jpeg", "/slides/0_files/7/0_0.jpeg", TOP,
                     "/slides/0_files/3/0_0.png"):
            x, y = await a.get(path), await b.get(path)
            assert x.status == y.status == 200
            assert await x.read() == await y.read(), path
    finally:
        procs.renderer.close()


async def test_idle_prefetch_makes_the_neighbours_of_what_was_viewed(model, tmp_path, aiohttp_client):
    fast = model.with_sampling(steps=[2, 1, 1], resample=[1, 1, 1])
    server = LazySlideServer(fast, TileStore(tmp_path / "s"), prefetch=True)
    server.open_now(0)
    client = await aiohttp_client(server.app())
    assert (await client.get("/slides/0_files/5/0_0.jpeg")).status == 200  # warm: nothing viewed
    assert not server.viewed
    slide = server.slides["0"].slide
    seen = TileId(1, 3, 3)  # as a view that needed generation records it
    server.viewed.append(("0", seen))
    around = [TileId(1, 3 + dc, 3 + dr) for dc in (-1, 0, 1) for dr in (-1, 0, 1)]
    for _ in range(300):
        if all(slide.is_stored(*n) for n in around):
            break
        await asyncio.sleep(0.1)
    assert all(slide.is_stored(*n) for n in around)
    assert not slide.is_stored(2, 3, 3)  # neighbours at the viewed level, nothing deeper
    text = await (await client.get("/metrics")).text()
    assert "lazyslide_batches_total" in text


def test_the_servers_tile_memory_is_bounded_in_bytes(tmp_path):
    """The server keeps decoded tiles up to a byte budget (a coarse Deep Zoom tile reads up to a
    hundred of them): tiles of any size, never more than the budget, the newest kept."""
    store = TileStore(tmp_path / "s", memory_bytes=10 * 32 * 32 * 3)
    for i in range(25):
        store.put(f"k{i}", np.full((32, 32, 3), i, np.uint8))
    assert store._memory_size <= 10 * 32 * 32 * 3 and list(store._memory)[-1] == "k24"
    assert len(store._memory) == 10
    store.put("big", np.zeros((64, 64, 3), np.uint8))  # a bigger tile evicts four small ones
    assert len(store._memory) == 7 and store._memory_size <= 10 * 32 * 32 * 3
    assert int(store.get("k0")[0, 0, 0]) == 0  # evicted from memory, read back from disk
