"""The tile server: endpoints, Deep Zoom geometry, single flight, dropping, caching, errors."""

from __future__ import annotations

import asyncio
import io
import re

import numpy as np
import openslide
import pytest
import tifffile
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image

from lazyslide import TileStore
from lazyslide.server import LazySlideServer


@pytest.fixture
def server(model, tmp_path):
    srv = LazySlideServer(FAST(model), TileStore(tmp_path / "store"), max_slides=3)
    srv.open_now(0)
    return srv


@pytest.fixture
async def client(server, aiohttp_client):
    return await aiohttp_client(server.app())


def FAST(model):  # noqa: N802 - fewer sampling steps: the server does not care about quality
    return model.with_sampling(steps=[2, 1, 1], resample=[1, 1, 1])


def metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    return float(m[1]) if m else 0.0


async def generated(client) -> float:
    text = await (await client.get("/metrics")).text()
    return sum(metric(text, "lazyslide_tiles_generated_total", f'{{level="{k}"}}') for k in range(3))


async def test_pages_health_and_slide_api(client):
    r = await client.get("/")
    assert r.status == 200 and "openseadragon" in (await r.text()).lower()
    assert (await client.get("/osd/openseadragon.min.js")).status == 200
    assert (await (await client.get("/healthz")).json())["status"] == "ok"
    slides = await (await client.get("/api/slides")).json()
    assert [s["id"] for s in slides] == ["0"]
    s = slides[0]
    assert s["width"] == s["height"] == 1292 and s["dzi"] == "/slides/0.dzi" and len(s["model"]) == 16
    r = await client.post("/api/slides", json={"seed": 7})
    assert r.status == 201 and (await r.json())["id"] == "7"
    r = await client.post("/api/slides", json={"seed": 7})
    assert r.status == 200
    for body in (b"not json", b'{"seed": -1}', b'{"seed": "3"}', b'{"seed": true}', b"[1]",
                 b'{"seed": 1e400}', b'{"seed": 99999999999999999999999}', b"{}"):
        r = await client.post("/api/slides", data=body, headers={"Content-Type": "application/json"})
        assert r.status == 400, body
        assert "seed" in await r.text()


async def test_open_slides_are_bounded(client, server):
    for seed in (1, 2, 3, 4):
        assert (await client.post("/api/slides", json={"seed": seed})).status == 201
    ids = [s["id"] for s in await (await client.get("/api/slides")).json()]
    assert len(ids) == 3 and ids[-1] == "4"
    assert (await client.get("/slides/0.dzi")).status == 404  # evicted: least recently used


async def test_deep_zoom_geometry_matches_openslide(client, server, tmp_path):
    dzi = await (await client.get("/slides/0.dzi")).text()
    assert 'TileSize="254"' in dzi and 'Overlap="1"' in dzi and 'Width="1292"' in dzi
    # a real slide file of the same size, read by openslide itself
    path = tmp_path / "same_size.tiff"
    tifffile.imwrite(path, np.zeros((1292, 1292, 3), np.uint8), tile=(256, 256), photometric="rgb")
    reference = DeepZoomGenerator(openslide.OpenSlide(str(path)), tile_size=254, overlap=1)
    ours = server.slides["0"].dz.dz
    assert reference.level_count == ours.level_count == 12
    assert reference.level_dimensions == ours.level_dimensions
    assert reference.level_tiles == ours.level_tiles
    served = [(lv, c, r) for lv in range(9) for c, r in
              {(0, 0), (reference.level_tiles[lv][0] - 1, reference.level_tiles[lv][1] - 1)}]
    served.append((11, 5, 5))  # a full-resolution corner tile (few tiles to generate)
    for level, col, row in served:
        r = await client.get(f"/slides/0_files/{level}/{col}_{row}.jpeg")
        assert r.status == 200
        size = Image.open(io.BytesIO(await r.read())).size
        assert size == reference.get_tile_dimensions(level, (col, row))
    for level in range(reference.level_count):
        cols, rows = reference.level_tiles[level]
        for col, row in ((0, 0), (cols - 1, rows - 1), (cols // 2, 0)):
            expected = reference.get_tile_dimensions(level, (col, row))
            assert ours.get_tile_dimensions(level, (col, row)) == expected
        assert (await client.get(f"/slides/0_files/{level}/{cols}_0.jpeg")).status == 404
    assert (await client.get(f"/slides/0_files/{reference.level_count}/0_0.jpeg")).status == 404


async def test_levels_below_the_magnification_boundary_generate_nothing(client, server):
    before = await generated(client)
    # Deep Zoom levels 0..5 (downsample >= 64 > 40.4) are read from the level-0 image only
    for level in range(6):
        assert (await client.get(f"/slides/0_files/{level}/0_0.jpeg")).status == 200
    assert await generated(client) == before
    dz = server.slides["0"].dz
    assert [dz.magnification_level(lv) for lv in range(12)] == [0] * 6 + [1] * 3 + [2] * 3


async def test_single_flight_for_a_cold_tile(client, server):
    entry = server.slides["0"]
    level, col, row = 11, 2, 3
    missing = entry.slide.missing(entry.dz.needed_tiles(level, col, row))
    assert missing
    before = await generated(client)
    responses = await asyncio.gather(*(client.get(f"/slides/0_files/{level}/{col}_{row}.jpeg")
                                       for _ in range(64)))
    bodies = {await r.read() for r in responses}
    assert all(r.status == 200 for r in responses) and len(bodies) == 1
    assert await generated(client) - before == len(missing)  # each tile once, not 64 times


async def test_http_caching(client):
    url = "/slides/0_files/8/0_0.jpeg"
    r = await client.get(url)
    etag = r.headers["ETag"]
    assert r.status == 200 and etag.startswith('"') and "immutable" in r.headers["Cache-Control"]
    body = await r.read()
    r = await client.get(url, headers={"If-None-Match": etag})
    assert r.status == 304 and r.headers["ETag"] == etag
    before = await generated(client)
    r = await client.get(url)
    assert await r.read() == body and await generated(client) == before
    text = await (await client.get("/metrics")).text()
    assert metric(text, "lazyslide_cache_hits_total") >= 1
    assert metric(text, "lazyslide_not_modified_total") == 1


async def test_full_queue_answers_503(model, tmp_path, aiohttp_client):
    srv = LazySlideServer(FAST(model), TileStore(tmp_path / "s"), max_queue=2)
    srv.open_now(0)
    client = await aiohttp_client(srv.app())
    r = await client.get("/slides/0_files/11/2_2.jpeg")  # needs many tiles
    assert r.status == 503 and r.headers["Retry-After"] == "5"
    assert "busy" in await r.text()


async def test_abandoned_queued_work_is_dropped(client, server):
    entry = server.slides["0"]
    slow = entry.slide.missing(entry.dz.needed_tiles(11, 4, 4))
    first = asyncio.ensure_future(client.get("/slides/0_files/11/4_4.jpeg"))
    await asyncio.sleep(0.3)  # the worker is busy with the first request's tiles
    second = asyncio.ensure_future(client.get("/slides/0_files/11/0_4.jpeg"))
    await asyncio.sleep(0.3)
    second.cancel()  # the client goes away: its queued tiles have no requester left
    await asyncio.gather(second, return_exceptions=True)
    assert (await first).status == 200
    for _ in range(100):
        if server.scheduler.idle:
            break
        await asyncio.sleep(0.1)
    text = await (await client.get("/metrics")).text()
    assert metric(text, "lazyslide_jobs_dropped_total") >= 1
    assert slow and all(entry.slide.is_stored(*t) for t in slow)


async def test_events_stream_reports_generation(client):
    events = await client.get("/api/slides/0/events")
    assert events.headers["Content-Type"].startswith("text/event-stream")
    tile = asyncio.ensure_future(client.get("/slides/0_files/11/3_0.jpeg"))
    seen = []
    while "done" not in seen:
        line = (await asyncio.wait_for(events.content.readline(), 60)).decode().strip()
        if line.startswith("event: "):
            seen.append(line[7:])
    assert seen[0] == "hello" and "queued" in seen and "started" in seen
    assert (await tile).status == 200
    events.close()


async def test_tiles_over_websocket(client):
    http = await (await client.get("/slides/0_files/8/0_0.jpeg")).read()
    async with client.ws_connect("/api/slides/0/tiles") as ws:
        await ws.send_json({"op": "get", "id": 5, "level": 8, "col": 0, "row": 0})
        msg = await ws.receive_bytes()
        assert int.from_bytes(msg[:4], "big") == 5 and msg[4:] == http
        await ws.send_json({"op": "get", "id": 6, "level": 99, "col": 0, "row": 0})
        error = {"id": 6, "status": 404, "error": "no tile 0_0 at Deep Zoom level 99"}
        assert (await ws.receive_json()) == error
        await ws.send_str("garbage")
        assert (await ws.receive_json())["status"] == 400
        await ws.send_json({"op": "get", "id": 7, "level": 8, "col": 0, "row": 0, "generate": "no"})
        assert (await ws.receive_json())["status"] == 400


async def test_websocket_tiles_that_need_generation_wait_for_the_viewer_to_ask(client, server):
    """``"generate": false`` answers a tile that needs generation with 202 and queues nothing
    (the viewer orders generation itself); a tile whose pixels exist comes back at once."""
    async with client.ws_connect("/api/slides/0/tiles") as ws:
        await ws.send_json({"op": "get", "id": 1, "level": 11, "col": 2, "row": 3, "generate": False})
        assert (await ws.receive_json()) == {"id": 1, "status": 202, "error": "not generated yet"}
        assert server.scheduler.depth == 0 and not server.scheduler.busy("0")
        await ws.send_json({"op": "get", "id": 2, "level": 11, "col": 2, "row": 3})  # generate
        made = await ws.receive_bytes()
        await ws.send_json({"op": "get", "id": 3, "level": 11, "col": 2, "row": 3, "generate": False})
        again = await ws.receive_bytes()
        assert made[4:] == again[4:] and int.from_bytes(again[:4], "big") == 3
    assert server.metrics.requests == 2  # the 202 and its generating retry count once


@pytest.mark.parametrize("path, status", [
    ("/slides/9.dzi", 404), ("/slides/9_files/0/0_0.jpeg", 404), ("/slides/0_files/x/0_0.jpeg", 400),
    ("/slides/0_files/0/0_0.gif", 400), ("/slides/0_files/0/a_b.jpeg", 400),
    ("/slides/0_files/0/0_0", 400), ("/slides/0_files/-1/0_0.jpeg", 400),
    ("/slides/0_files/99999999999999999999/0_0.jpeg", 400), ("/slides/0_files/0/5_0.jpeg", 404),
    ("/osd/../../../etc/passwd", 404), ("/osd/%2e%2e/%2e%2e/pyproject.toml", 404),
    ("/api/slides/nope/events", 404), ("/api/slides/0/nothing", 404),
])
async def test_bad_requests(client, path, status):
    r = await client.get(path)
    assert r.status == status, (path, r.status)
    assert len(await r.text()) < 300
