"""Malformed paths and bodies never get a 5xx (hypothesis, against a live loopback server)."""

from __future__ import annotations

import http.client
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .live_server import LiveServer

segment = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=30)
junk_number = st.one_of(st.integers(-10**30, -1).map(str), st.integers(10**9, 10**40).map(str),
                        segment)


@pytest.fixture(scope="module")
def live(model, tmp_path_factory):
    fast = model.with_sampling(steps=[2, 1, 1], resample=[1, 1, 1])
    with LiveServer(fast, tmp_path_factory.mktemp("fuzz"), max_queue=64) as srv:
        yield srv


def request(live, method: str, path: str, body: bytes | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=60)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        return conn.getresponse().status
    finally:
        conn.close()


def quote(s: str) -> str:
    return urllib.parse.quote(s, safe="")


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(sid=segment, level=junk_number, name=segment)
def test_malformed_tile_paths(live, sid, level, name):
    for path in (f"/slides/{quote(sid)}_files/{quote(level)}/{quote(name)}",
                 f"/slides/0_files/{quote(level)}/{quote(name)}",
                 f"/slides/{quote(sid)}.dzi", f"/api/slides/{quote(sid)}/events",
                 f"/osd/{quote(name)}", f"/{quote(sid)}/{quote(name)}"):
        assert request(live, "GET", path) < 500, path


@FUZZ
@given(col=junk_number, row=junk_number, ext=st.sampled_from(["jpeg", "png", "gif", "", "JPEG"]))
def test_malformed_tile_addresses(live, col, row, ext):
    assert request(live, "GET", f"/slides/0_files/3/{quote(col)}_{quote(row)}.{ext}") < 500


@FUZZ
@given(body=st.one_of(st.binary(max_size=200),
                      st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(),
                                   lambda c: st.lists(c) | st.dictionaries(st.text(), c), max_leaves=8)
                      .map(lambda v: __import__("json").dumps(v).encode())))
def test_malformed_bodies(live, body):
    status = request(live, "POST", "/api/slides", body)
    assert status < 500 or status == 503  # 503: a valid seed while the queue is full


# Digits that str.isdigit() and int() accept but that are not ASCII: superscripts, full-width,
# Arabic-Indic, Devanagari, ... Only ASCII digits address tiles.
other_digits = st.text(st.characters(categories=["Nd", "No"], exclude_characters="0123456789"),
                       min_size=1, max_size=3)
digits_or_other = st.one_of(st.integers(0, 3).map(str), other_digits)


@FUZZ
@given(level=digits_or_other, col=digits_or_other, row=digits_or_other)
def test_non_ascii_digits_are_not_addresses(live, level, col, row):
    path = f"/slides/0_files/{quote(level)}/{quote(col)}_{quote(row)}.jpeg"
    status = request(live, "GET", path)
    if (level + col + row).isascii():
        assert status in (200, 404, 503), path
    else:
        assert status == 400, (path, status)


@pytest.mark.parametrize("depth", [10**3, 10**4, 10**5])
def test_nested_json_body_is_a_bad_request(live, depth):
    for body in ("[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth):
        assert request(live, "POST", "/api/slides", body.encode()) == 400
    assert request(live, "GET", "/healthz") == 200


def test_nested_json_on_the_websocket_keeps_the_socket(live):
    import asyncio

    import aiohttp

    async def session() -> tuple[bytes, list[dict]]:
        async with aiohttp.ClientSession() as http, \
                http.ws_connect(f"{live.url}/api/slides/0/tiles", max_msg_size=0) as ws:
            await ws.send_json({"op": "get", "id": 7, "level": 8, "col": 0, "row": 0})
            for depth in (10**3, 10**4, 10**5):
                await ws.send_str("[" * depth + "]" * depth)
                await ws.send_str('{"op":' * depth + "1" + "}" * depth)
            await ws.send_json({"op": "get", "id": 8, "level": 0, "col": 0, "row": 0})
            tiles, errors = {}, []
            while len(tiles) < 2 or len(errors) < 6:
                msg = await asyncio.wait_for(ws.receive(), 300)
                if msg.type == aiohttp.WSMsgType.BINARY:
                    tiles[int.from_bytes(msg.data[:4], "big")] = msg.data[4:]
                else:
                    assert msg.type == aiohttp.WSMsgType.TEXT, msg
                    errors.append(msg.json())
            return tiles, errors

    tiles, errors = asyncio.run(session())
    assert set(tiles) == {7, 8} and all(t[:2] == b"\xff\xd8" for t in tiles.values())
    assert errors == [{"id": None, "status": 400, "error": "bad message"}] * 6
    assert request(live, "GET", "/healthz") == 200
