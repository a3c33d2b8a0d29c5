"""The aiohttp application: viewer, slide API, Deep Zoom, server-sent events, metrics.

Every handler validates its input and answers 400/401/404/503 with a short text; generation
runs on the scheduler's backend (``backends``) and rendering in worker processes or the default
executor (``render``), never on the loop. With a token (``--token``), what can start generation
(opening a slide, tiles that are not made yet, the tile WebSocket) needs it;
``LazySlideServer.authorized`` says how.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from lazyslide import URCDM, Slide, TileId, TileStore
from lazyslide.deepzoom import FORMATS, MEDIA_TYPES, DeepZoom
from lazyslide.errors import LazySlideError
from lazyslide.seeds import MAX_SEED

from .backends import Backend, LocalBackend
from .cache import EncodedCache
from .metrics import Metrics
from .render import Renderer, SlideRef
from .scheduler import IDLE, PREFETCH, VISIBLE, Dropped, QueueFull, Scheduler

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
#: Where a browser keeps the token after opening the viewer's URL with ``?token=``.
TOKEN_COOKIE = "lazyslide_token"


@dataclass
class OpenedSlide:
    id: str
    seed: int
    slide: Slide
    dz: DeepZoom
    #: what a render process needs to read the slide (None: render in this process)
    ref: SlideRef | None = None


class LazySlideServer:
    """The state behind the app: open slides, the scheduler, caches, metrics, subscribers."""

    def __init__(self, model: URCDM, store: TileStore, *, max_slides: int = 8,
                 max_queue: int = 4096, cache_bytes: int = 256 << 20, quality: int = 90,
                 backend: Backend | None = None, render_processes: int = 0,
                 prefetch: bool = False, token: str | None = None,
                 public_warm: bool = False) -> None:
        for name, value, least in (("max_slides", max_slides, 1), ("max_queue", max_queue, 1),
                                   ("cache_bytes", cache_bytes, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise LazySlideError(f"--{name.replace('_', '-')} must be an integer >= {least}, "
                                     f"got {value!r}")
        if not 1 <= quality <= 100:
            raise LazySlideError(f"JPEG quality must be in 1..100, got {quality!r}")
        if token is not None and (not isinstance(token, str) or len(token) < 8):
            raise LazySlideError("--token must be at least 8 characters")
        self.model = model
        self.store = store
        self.max_slides = max_slides
        self.quality = quality
        self.token = token
        self.public_warm = public_warm
        self.prefetch = prefetch
        self.backend = backend if backend is not None else LocalBackend()
        self.renderer = Renderer(render_processes if getattr(store, "directory", None) else 0)
        #: recently viewed magnification tiles (slide id, tile), newest last, for ``prefetch``
        self.viewed: deque[tuple[str, TileId]] = deque(maxlen=256)
        self.slides: OrderedDict[str, OpenedSlide] = OrderedDict()
        self.metrics = Metrics()
        self.cache = EncodedCache(cache_bytes)
        self.subscribers: dict[str, set[asyncio.Queue]] = {}
        self.scheduler = Scheduler(self.backend, max_queue=max_queue, on_event=self._on_event,
                                   on_made=lambda t, k, s: self.metrics.tile_made(t.level, k, s))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opening: dict[int, asyncio.Future] = {}

    # -- slides --------------------------------------------------------------------------------
    def open_now(self, seed: int, progress=None) -> OpenedSlide:
        """Open a slide in this thread, level 0 made (on the backend) before returning (used at
        start-up)."""
        slide = Slide(self.model, seed, self.store, make_level0=False)
        for t in slide.missing(self.model.geometry.tiles(0)):
            self.backend.run([(slide, t)], progress or (lambda tile, kind: None))
        return self._register(seed, slide)

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
        ref = None
        if self.renderer.processes:
            ref = SlideRef(self.model.reference(), str(self.store.directory), seed,
                           slide.method.name, self.quality, getattr(self.store, "_memory_bytes", None))
        entry = OpenedSlide(str(seed), seed, slide, DeepZoom(slide, quality=self.quality), ref)
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
            # how many tiles a viewer should have generating to keep every slot's batch full
            "generate_at_once": self.backend.slots * self.model.sampling.batch + 1,
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

    # -- access ------------------------------------------------------------------------------
    def authorized(self, request: web.Request) -> bool:
        """Whether ``request`` may start generation: no token is set, or it brings the token (an
        ``Authorization: Bearer`` header, the viewer's cookie, or ``?token=``)."""
        if self.token is None:
            return True
        header = request.headers.get("Authorization", "")
        given = [header[7:] if header.startswith("Bearer ") else "",
                 request.cookies.get(TOKEN_COOKIE, ""), request.query.get("token", "")]
        return any(g and hmac.compare_digest(g.encode(), self.token.encode()) for g in given)

    # -- prefetch ----------------------------------------------------------------------------
    async def _prefetch_loop(self) -> None:
        """While nothing else is queued, make the missing neighbours of recently viewed tiles
        (lowest class: any request on screen or a viewer's prefetch goes first)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(0.5)
            if not self.scheduler.idle or not self.viewed:
                continue
            sid, tile = self.viewed.pop()
            entry = self.slides.get(sid)
            if entry is None:
                continue
            g = self.model.geometry
            near = [TileId(tile.level, tile.col + dc, tile.row + dr)
                    for dr in (-1, 0, 1) for dc in (-1, 0, 1)
                    if 0 <= tile.col + dc < g.grid(tile.level) and 0 <= tile.row + dr < g.grid(tile.level)]
            try:
                missing = await loop.run_in_executor(None, entry.slide.missing, near)
                if missing:
                    await self.scheduler.make(sid, entry.slide, missing, client="prefetch", cls=IDLE)
            except (QueueFull, Dropped):
                pass
            except Exception as e:  # a failed prefetch is no one's error; say so in the log
                print(f"lazyslide: prefetch around {tuple(tile)} failed: {e}", flush=True)

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
    if server.prefetch:
        server._prefetcher = asyncio.create_task(server._prefetch_loop())


async def _shutdown(app: web.Application) -> None:
    server = app[SERVER_KEY]
    task = getattr(server, "_prefetcher", None)
    if task is not None:
        task.cancel()
    # the running generation finishes into the store; queued ones are dropped
    await asyncio.get_running_loop().run_in_executor(None, server.scheduler.stop)
    server.renderer.close()


def _server(request: web.Request) -> LazySlideServer:
    return request.app[SERVER_KEY]


def _slide(request: web.Request) -> OpenedSlide:
    entry = _server(request).slides.get(request.match_info["id"])
    if entry is None:
        raise web.HTTPNotFound(text=f"unknown slide {request.match_info['id'][:40]!r}")
    return entry


def _unauthorized() -> web.HTTPUnauthorized:
    return web.HTTPUnauthorized(text="a token is needed to generate: open the viewer with "
                                "?token=..., or send Authorization: Bearer ...",
                                headers={"WWW-Authenticate": 'Bearer realm="lazyslide"'})


def _busy(message: str) -> web.HTTPServiceUnavailable:
    return web.HTTPServiceUnavailable(text=f"busy: {message}; retry later", headers={"Retry-After": "5"})


# -- handlers ----------------------------------------------------------------------------------
async def index(request: web.Request) -> web.StreamResponse:
    page = VIEWER_DIR / "index.html"
    if not page.is_file():
        raise web.HTTPNotFound(text="viewer not found: run `make install`")
    s = _server(request)
    if "token" in request.query and s.token is not None:
        # taken from the URL once: kept in a cookie (sent with the viewer's requests and its
        # WebSocket), and the URL shown without it
        if not hmac.compare_digest(request.query["token"].encode(), s.token.encode()):
            raise web.HTTPUnauthorized(text="wrong token")
        rest = {k: v for k, v in request.query.items() if k != "token"}
        resp = web.HTTPSeeOther(str(request.rel_url.with_query(rest)))
        resp.set_cookie(TOKEN_COOKIE, s.token, httponly=True, samesite="Strict", path="/")
        raise resp
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
    s.metrics.batches, s.metrics.batched_tiles = s.scheduler.batches, s.scheduler.batched_tiles
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
    if not s.authorized(request):
        raise _unauthorized()
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
                     fmt: str, *, generate: bool = True, client: str = "",
                     cls: int = VISIBLE) -> bytes:
    """An encoded Deep Zoom tile, generating what it needs (for ``client``, at class ``cls``);
    raises HTTP errors for bad input. ``generate=False``: only if nothing needs generating,
    else ``HTTPAccepted`` (202)."""
    if not entry.dz.valid(level, col, row):
        raise web.HTTPNotFound(text=f"no tile {col}_{row} at Deep Zoom level {level}")
    key = (entry.id, level, col, row, fmt)
    data = s.cache.get(key)
    if data is not None:
        s.metrics.count("cache_hits")
        return data
    data = await _render(s, entry, level, col, row, fmt)
    if isinstance(data, list):  # the magnification tiles to make first
        if not generate:
            raise web.HTTPAccepted(text="not generated yet")
        if cls == VISIBLE and s.prefetch:
            s.viewed.extend((entry.id, t) for t in entry.dz.needed_tiles(level, col, row))
        try:
            await s.scheduler.make(entry.id, entry.slide, data, client=client, cls=cls)
        except QueueFull as e:
            s.metrics.count("rejected")
            raise _busy(str(e)) from None
        except Dropped as e:
            raise _busy(str(e)) from None
        except Exception as e:  # a generation failure: say so, keep serving
            raise web.HTTPServiceUnavailable(text=f"tile generation failed: {e}") from None
        data = await _render(s, entry, level, col, row, fmt)
        if isinstance(data, list):  # deleted from the store meanwhile
            raise _busy("the tile's magnification tiles went missing")
    s.cache.put(key, data)
    return data


async def _render(s: LazySlideServer, entry: OpenedSlide, level: int, col: int, row: int,
                  fmt: str) -> bytes | list[TileId]:
    try:
        return await s.renderer.render(entry.dz, entry.ref, level, col, row, fmt)
    except Exception as e:  # e.g. a render process died: this tile fails, the server stays up
        raise web.HTTPServiceUnavailable(text=f"tile rendering failed: {e}") from None


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
    allowed = s.authorized(request)
    if not allowed and not s.public_warm:
        raise _unauthorized()
    try:
        data = await tile_bytes(s, entry, level, col, row, fmt, generate=allowed,
                                client=f"http:{request.remote}")
    except web.HTTPAccepted:  # public warm tiles only: this one needs generating
        raise _unauthorized() from None
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
    if not s.authorized(request):
        raise _unauthorized()
    client = f"ws:{id(request)}"
    ws = web.WebSocketResponse(heartbeat=30, max_msg_size=MAX_WS_MESSAGE)
    await ws.prepare(request)
    tasks: dict[int, asyncio.Task] = {}

    async def send_one(rid: int, level: int, col: int, row: int, generate: bool,
                       prefetch: bool) -> None:
        try:
            s.metrics.count("requests")
            data = await tile_bytes(s, entry, level, col, row, "JPEG", generate=generate,
                                    client=client, cls=PREFETCH if prefetch else VISIBLE)
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
                generate, prefetch = m.get("generate", True), m.get("prefetch", False)
                if not all(isinstance(v, int) and not isinstance(v, bool) for v in (level, col, row)) \
                        or not isinstance(generate, bool) or not isinstance(prefetch, bool):
                    raise ValueError
            except (ValueError, KeyError, TypeError, RecursionError):
                await ws.send_json({"id": None, "status": 400, "error": "bad message"})
                continue
            if rid not in tasks:
                tasks[rid] = asyncio.create_task(send_one(rid, level, col, row, generate, prefetch))
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
