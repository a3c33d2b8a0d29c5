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
