"""The reader-study page: pairs of real and synthetic images, answers into SQLite.

Routes: ``/study`` (the page), ``/study/api/next?reader=ID`` (the reader's next unanswered
pair), ``/study/img/{pair}/{side}.png``, ``POST /study/api/answer`` with JSON
``{"reader", "pair", "choice": "left"|"right"}``. Bad input gets 400 with a message and records
nothing; readers are never told which image was real.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from aiohttp import web
from PIL import Image

from lazyslide.evaluation.study import Pair, StudyDB, StudyError

from .app import VIEWER_DIR

STUDY_KEY = web.AppKey("study", object)


class Study:
    def __init__(self, pairs: Sequence[Pair], db: StudyDB) -> None:
        self.pairs = {p.id: p for p in pairs}
        self.order = [p.id for p in pairs]
        self.db = db
        db.add_pairs(pairs)
        self._png: dict[tuple[str, str], bytes] = {}

    def png(self, pair: str, side: str) -> bytes:
        key = (pair, side)
        if key not in self._png:
            buf = io.BytesIO()
            Image.fromarray(self.pairs[pair].image(side)).save(buf, "PNG")
            self._png[key] = buf.getvalue()
        return self._png[key]

    def app(self) -> web.Application:
        app = web.Application(client_max_size=4096)
        app[STUDY_KEY] = self
        r = app.router
        r.add_get("/", to_study)
        r.add_get("/study", page)
        r.add_get("/study.js", asset)
        r.add_get("/style.css", asset)
        r.add_get("/favicon.ico", no_content)
        r.add_get("/study/api/next", next_pair)
        r.add_get("/study/img/{pair}/{side}.png", image)
        r.add_post("/study/api/answer", answer)
        return app


def _study(request: web.Request) -> Study:
    return request.app[STUDY_KEY]


async def to_study(request: web.Request) -> web.Response:
    raise web.HTTPFound("/study")


async def no_content(request: web.Request) -> web.Response:
    return web.Response(status=204)


async def page(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(VIEWER_DIR / "study.html")


async def asset(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(VIEWER_DIR / request.path.lstrip("/"))


async def next_pair(request: web.Request) -> web.Response:
    study = _study(request)
    reader = request.query.get("reader", "").strip()
    if not reader or len(reader) > 64:
        raise web.HTTPBadRequest(text="a reader id (1-64 characters) is required")
    done = study.db.answered(reader)
    left = [p for p in study.order if p not in done]
    body = {"answered": len(done & set(study.order)), "total": len(study.order), "done": not left}
    if left:
        p = study.pairs[left[0]]
        body.update(pair=p.id, level=p.level, mpp=round(p.mpp, 3),
                    left=f"/study/img/{p.id}/left.png", right=f"/study/img/{p.id}/right.png")
    return web.json_response(body, headers={"Cache-Control": "no-store"})


async def image(request: web.Request) -> web.Response:
    study = _study(request)
    pair, side = request.match_info["pair"], request.match_info["side"]
    if pair not in study.pairs or side not in ("left", "right"):
        raise web.HTTPNotFound(text="unknown pair or side")
    return web.Response(body=study.png(pair, side), content_type="image/png",
                        headers={"Cache-Control": "private, max-age=3600"})


async def answer(request: web.Request) -> web.Response:
    try:
        data = await request.json()
    except (ValueError, web.HTTPRequestEntityTooLarge):
        raise web.HTTPBadRequest(text="the body must be a small JSON object") from None
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(text="the body must be a JSON object")
    try:
        _study(request).db.record(data.get("reader"), data.get("pair"), data.get("choice"))
    except StudyError as e:
        raise web.HTTPBadRequest(text=str(e)) from None
    return web.json_response({"recorded": True})
