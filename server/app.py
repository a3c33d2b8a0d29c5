"""The aiohttp application: viewer, slide API, Deep Zoom, server-sent events, metrics.

Every handler validates its input and answers 400/404/503 with a short text; generation runs
on the scheduler's worker thread and rendering in the default executor, never on the loop.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from lazyslide import URCDM, Slide, TileStore
from lazyslide.deepzoom import FORMATS, MEDIA_TYPES, DeepZoom
from lazyslide.errors import LazySlideError
from lazyslide.seeds import MAX_SEED

from .cache import EncodedCache
from .metrics import Metrics
from .scheduler import Dropped, QueueFull, Scheduler

VIEWER_DIR = Path(__file__).resolve().parent.parent / "viewer"
OSD_DIR = VIEWER_DIR / "node_modules" / "openseadragon" / "build" / "openseadragon"
# ASCII digits only: str.isdigit() and \d also accept superscripts, full-width and other scripts
# digits, which int() would read as other (aliased) tile addresses.
TILE_NAME = re.compile(r"^([0-9]{1,9})_([0-9]{1,9})\.([a-z]{1,5})$")
LEVEL_NAME = re.compile(r"^[0-9]{1,9}$")
#: Largest WebSocket message read at all; a tile request is far smaller (MAX_REQUEST).
MAX_WS_MESSAGE = 1 << 20
MAX_REQUEST = 1 << 12
IMMUTABLE = "public, max-age=31536000, immutable"

SERVER_KEY = web.AppKey("lazyslide", "LazySlideServer")


@dataclass
class OpenedSlide:
    id: str
    seed: int
    slide: Slide
    dz: DeepZoom


class LazySlideServer:
    """The state behind the app: open slides, the scheduler, caches, metrics, subscribers."""

    def __init__(self, model: URCDM, store: TileStore, *, max_slides: int = 8,
                 max_queue: int = 4096, cache_bytes: int = 256 << 20, quality: int = 90) -> None:
        for name, value, least in (("max_slides", max_slides, 1), ("max_queue", max_queue, 1),
                                   ("cache_bytes", cache_bytes, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise LazySlideError(f"--{name.replace('_', '-')} must be an integer >= {least}, "
                                     f"got {value!r}")
        if not 1 <= quality <= 100:
            raise LazySlideError(f"JPEG quality must be in 1..100, got {quality!r}")
        self.model = model
        self.store = store
        self.max_slides = max_slides
        self.quality = quality
        self.slides: OrderedDict[str, OpenedSlide] = OrderedDict()
        self.metrics = Metrics()
        self.cache = EncodedCache(cache_bytes)
        self.subscribers: dict[str, set[asyncio.Queue]] = {}
        self.scheduler = Scheduler(max_queue=max_queue, on_event=self._on_event,
                                   on_made=lambda t, k, s: self.metrics.tile_made(t.level, k, s))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opening: dict[int, asyncio.Future] = {}

    # -- slides --------------------------------------------------------------------------------
    def open_now(self, seed: int, progress=None) -> OpenedSlide:
        """Open a slide in this thread, level 0 made before returning (used at start-up)."""
        return self._register(seed, Slide(self.model, seed, self.store, progress=progress))

    async def open(self, seed: int) -> tuple[OpenedSlide, bool]:
        """Open (or find) the slide of ``seed``; its level 0 is made by the worker first."""
        sid = str(seed)
        if sid in self.slides:
            self.slides.move_to_end(sid)
            return self.slides[sid], False
        if seed in self._opening:
            await asyncio.shield(self._opening[seed])
            return self.slides[sid], False
        fut = asyncio.get_running_loop().create_future()
        self._opening[seed] = fut
        try:
            slide = Slide(self.model, seed, self.store, make_level0=False)
            await self.scheduler.make(sid, slide, slide.missing(self.model.geometry.tiles(0)))
            self._evict_for_one_more()
            entry = self._register(seed, slide)
            fut.set_result(None)
            return entry, True
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()
            raise
        finally:
            del self._opening[seed]

    def _register(self, seed: int, slide: Slide) -> OpenedSlide:
        entry = OpenedSlide(str(seed), seed, slide, DeepZoom(slide, quality=self.quality))
        self.slides[entry.id] = entry
        return entry

    def _evict_for_one_more(self) -> None:
        while len(self.slides) >= self.max_slides:
            idle = [sid for sid in self.slides if not self.scheduler.busy(sid)]
            if not idle:
                raise QueueFull(f"{len(self.slides)} slides open and all busy")
            del self.slides[idle[0]]  # least recently used first

    def describe(self, e: OpenedSlide) -> dict[str, Any]:
        g = self.model.geometry
        full = g.canvases[-1]
        return {
            "id": e.id, "seed": e.seed, "model": self.model.fingerprint, "width": full,
            "height": full, "dzi": f"/slides/{e.id}.dzi", "mpp": g.mpp, "tile": g.tile,
            "levels": [{"level": k, "canvas": c, "mpp": g.level_mpp(k), "downsample": full / c}
                       for k, c in enumerate(g.canvases)],
        }

    # -- events --------------------------------------------------------------------------------
    def _on_event(self, event: dict[str, Any]) -> None:
        """From the worker thread: add the tile's box in full-resolution pixels, fan out."""
        g = self.model.geometry
        scale = g.canvases[-1] / g.canvases[event["level"]]
        box = g.tile_box(event["level"], event["col"], event["row"])
        event["box"] = [round(v * scale) for v in box]
        self.metrics.queue_depth = event["queue"]
        if event["type"] == "dropped":
            self.metrics.count("dropped")
        elif event["type"] == "failed":
            self.metrics.count("failed")
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._fan_out, event)

    def _fan_out(self, event: dict[str, Any]) -> None:
        for q in self.subscribers.get(event["slide"], ()):
            if q.qsize() < q.maxsize - 1:
                q.put_nowait(event)

    # -- app -----------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        app[SERVER_KEY] = self
        r = app.router
        r.add_get("/", index)
        r.add_get("/app.js", viewer_file)
        r.add_get("/style.css", viewer_file)
        if OSD_DIR.is_dir():
            r.add_static("/osd/", OSD_DIR)
        r.add_get("/favicon.ico", no_content)
        r.add_get("/healthz", healthz)
        r.add_get("/metrics", metrics)
        r.add_get("/api/slides", list_slides)
        r.add_post("/api/slides", create_slide)
        r.add_get("/api/slides/{id}/events", events)
        r.add_get("/api/slides/{id}/tiles", tiles_socket)
        r.add_get("/slides/{id}.dzi", descriptor)
        r.add_get("/slides/{id}_files/{level}/{name}", dz_tile)
        app.on_startup.append(_startup)
        app.on_shutdown.append(_shutdown)
        return app


async def _startup(app: web.Application) -> None:
    server = app[SERVER_KEY]
    server._loop = asyncio.get_running_loop()
    server.scheduler.start()


async def _shutdown(app: web.Application) -> None:
    # the running generation finishes into the store; queued ones are dropped
    await asyncio.get_running_loop().run_in_executor(None, app[SERVER_KEY].scheduler.stop)


def _server(request: web.Request) -> LazySlideServer:
    return request.app[SERVER_KEY]


def _slide(request: web.Request) -> OpenedSlide:
    entry = _server(request).slides.get(request.match_info["id"])
    if entry is None:
        raise web.HTTPNotFound(text=f"unknown slide {request.match_info['id'][:40]!r}")
    return entry


def _busy(message: str) -> web.HTTPServiceUnavailable:
    return web.HTTPServiceUnavailable(text=f"busy: {message}; retry later", headers={"Retry-After": "5"})


# -- handlers ----------------------------------------------------------------------------------
async def index(request: web.Request) -> web.StreamResponse:
    page = VIEWER_DIR / "index.html"
    if not page.is_file():
        raise web.HTTPNotFound(text="viewer not found: run `make install`")
    return web.FileResponse(page)


async def viewer_file(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(VIEWER_DIR / request.path.lstrip("/"))


async def no_content(request: web.Request) -> web.Response:
    return web.Response(status=204)


async def healthz(request: web.Request) -> web.Response:
    s = _server(request)
    return web.json_response({"status": "ok", "slides": len(s.slides), "queue": s.scheduler.depth})


async def metrics(request: web.Request) -> web.Response:
    s = _server(request)
    s.metrics.queue_depth = s.scheduler.depth
    return web.Response(text=s.metrics.render(s.model.geometry.levels),
                        content_type="text/plain", charset="utf-8")


async def list_slides(request: web.Request) -> web.Response:
    s = _server(request)
    return web.json_response([s.describe(e) for e in s.slides.values()])


async def create_slide(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError):
        # RecursionError: deeply nested arrays/objects exhaust the JSON parser's stack
        raise web.HTTPBadRequest(text='body must be JSON like {"seed": 1}') from None
    seed = body.get("seed") if isinstance(body, dict) else None
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise web.HTTPBadRequest(text=f'"seed" must be an integer in 0..{MAX_SEED}')
    s = _server(request)
    try:
        entry, created = await s.open(seed)
    except QueueFull as e:
        s.metrics.count("rejected")
        raise _busy(str(e)) from None
    return web.json_response(s.describe(entry), status=201 if created else 200)


async def descriptor(request: web.Request) -> web.Response:
    entry = _slide(request)
    return web.Response(text=entry.dz.descriptor(), content_type="application/xml")


def _parse_tile(level_text: str, name: str) -> tuple[int, int, int, str]:
    m = TILE_NAME.match(name)
    if LEVEL_NAME.match(level_text) is None or m is None:
        raise web.HTTPBadRequest(text="tile path must be /slides/ID_files/LEVEL/COL_ROW.jpeg")
    fmt = FORMATS.get(m[3])
    if fmt is None:
        raise web.HTTPBadRequest(text=f"unknown format {m[3]!r}: use jpeg or png")
    return int(level_text), int(m[1]), int(m[2]), fmt


async def tile_bytes(s: LazySlideServer, entry: OpenedSlide, level: int, col: int, row: int,
                     fmt: str, *, generate: bool = True) -> bytes:
    """An encoded Deep Zoom tile, generating what it needs; raises HTTP errors for bad input.
    ``generate=False``: only if nothing needs generating, else ``HTTPAccepted`` (202)."""
    if not entry.dz.valid(level, col, row):
        raise web.HTTPNotFound(text=f"no tile {col}_{row} at Deep Zoom level {level}")
    key = (entry.id, level, col, row, fmt)
    data = s.cache.get(key)
    if data is not None:
        s.metrics.count("cache_hits")
        return data
    loop = asyncio.get_running_loop()
    missing = await loop.run_in_executor(None, entry.slide.missing, entry.dz.needed_tiles(level, col, row))
    if missing and not generate:
        raise web.HTTPAccepted(text="not generated yet")
    if missing:
        try:
            await s.scheduler.make(entry.id, entry.slide, missing)
        except QueueFull as e:
            s.metrics.count("rejected")
            raise _busy(str(e)) from None
        except Dropped as e:
            raise _busy(str(e)) from None
        except Exception as e:  # a generation failure: say so, keep serving
            raise web.HTTPServiceUnavailable(text=f"tile generation failed: {e}") from None
    data = await loop.run_in_executor(None, entry.dz.render, level, col, row, fmt)
    s.cache.put(key, data)
    return data


async def dz_tile(request: web.Request) -> web.Response:
    s = _server(request)
    entry = _slide(request)
    level, col, row, fmt = _parse_tile(request.match_info["level"], request.match_info["name"])
    if not entry.dz.valid(level, col, row):
        raise web.HTTPNotFound(text=f"no tile {col}_{row} at Deep Zoom level {level}")
    s.metrics.count("requests")
    ext = request.match_info["name"].rsplit(".", 1)[1]
    etag = f'"{s.model.fingerprint}-{entry.seed}-{level}-{col}-{row}-{ext}-q{s.quality}"'
    headers = {"ETag": etag, "Cache-Control": IMMUTABLE}
    if etag in {t.strip() for t in request.headers.get("If-None-Match", "").split(",")}:
        s.metrics.count("not_modified")
        return web.Response(status=304, headers=headers)
    data = await tile_bytes(s, entry, level, col, row, fmt)
    return web.Response(body=data, content_type=MEDIA_TYPES[fmt], headers=headers)


async def tiles_socket(request: web.Request) -> web.WebSocketResponse:
    """Deep Zoom tiles over one WebSocket, for the viewer.

    A browser opens at most six HTTP/1.1 connections to a host; tiles that wait for generation
    would hold them all and starve the tiles that are ready. Here the viewer sends
    ``{"op": "get", "id": N, "level": L, "col": C, "row": R}`` (or ``"cancel"``) and receives a
    binary frame (4-byte big-endian id, then the JPEG) or ``{"id": N, "status": S, "error": E}``.
    With ``"generate": false`` a tile that needs generation is answered with status 202 instead
    of queued: the viewer asks for every tile so, then for the ones to generate a few at a time,
    in the order of what is on screen now (viewer/app.js). Closing the socket cancels everything
    it asked for.
    """
    s = _server(request)
    entry = _slide(request)
    ws = web.WebSocketResponse(heartbeat=30, max_msg_size=MAX_WS_MESSAGE)
    await ws.prepare(request)
    tasks: dict[int, asyncio.Task] = {}

    async def send_one(rid: int, level: int, col: int, row: int, generate: bool) -> None:
        try:
            s.metrics.count("requests")
            data = await tile_bytes(s, entry, level, col, row, "JPEG", generate=generate)
            await ws.send_bytes(rid.to_bytes(4, "big") + data)
        except web.HTTPException as e:
            if isinstance(e, web.HTTPAccepted):  # asked again to generate: one request, not two
                s.metrics.count("requests", -1)
            await ws.send_json({"id": rid, "status": e.status, "error": e.text})
        except (ConnectionResetError, ConnectionError):
            pass
        finally:
            tasks.pop(rid, None)

    try:
        async for msg in ws:
            if msg.type != web.WSMsgType.TEXT:
                continue
            try:
                if len(msg.data) > MAX_REQUEST:
                    raise ValueError
                m = json.loads(msg.data)
                op, rid = m["op"], m["id"]
                if not isinstance(rid, int) or not 0 <= rid < 2**32 or op not in ("get", "cancel"):
                    raise ValueError
                if op == "cancel":
                    task = tasks.pop(rid, None)
                    if task is not None:
                        task.cancel()
                    continue
                level, col, row = (m[k] for k in ("level", "col", "row"))
                generate = m.get("generate", True)
                if not all(isinstance(v, int) and not isinstance(v, bool) for v in (level, col, row)) \
                        or not isinstance(generate, bool):
                    raise ValueError
            except (ValueError, KeyError, TypeError, RecursionError):
                await ws.send_json({"id": None, "status": 400, "error": "bad message"})
                continue
            if rid not in tasks:
                tasks[rid] = asyncio.create_task(send_one(rid, level, col, row, generate))
    finally:
        for task in list(tasks.values()):
            task.cancel()
    return ws


async def events(request: web.Request) -> web.StreamResponse:
    s = _server(request)
    entry = _slide(request)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    queue: asyncio.Queue = asyncio.Queue(maxsize=1024)
    s.subscribers.setdefault(entry.id, set()).add(queue)
    try:
        hello = {"type": "hello", "slide": entry.id, "queue": s.scheduler.depth,
                 "eta": s.scheduler.eta(), "time": time.time()}
        await resp.write(f"event: hello\ndata: {json.dumps(hello)}\n\n".encode())
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), timeout=15)
            except TimeoutError:
                await resp.write(b": keep-alive\n\n")
                continue
            await resp.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
    except (ConnectionResetError, ConnectionError):
        pass
    finally:
        s.subscribers.get(entry.id, set()).discard(queue)
    return resp
