"""Faults of the tile store: a stored tile that does not decode is reported once, removed and
made again (its pixels are a pure function of its address), in the Python API, the CLI, the
server and render processes; a full disk is one line naming the store, no traceback."""

from __future__ import annotations

import logging
import resource
import subprocess
import sys

import diskcache
import numpy as np
import pytest
from PIL import Image

from lazyslide import URCDM, Slide, TileId, TileStore
from lazyslide.deepzoom import DeepZoom
from lazyslide.server import LazySlideServer
from lazyslide.server.render import render_if_stored

GARBAGE = b"\x89PNG\r\n\x1a\n not a tile any more"
SPEC = ["--model", "random:test", "--sampling-steps", "2,1,1"]


def corrupt(folder, keys) -> None:
    """Overwrite stored tiles with garbage bytes, as a bad disk or a stray write would."""
    with diskcache.Cache(str(folder)) as c:
        for key in keys:
            assert key in c
            c[key] = GARBAGE


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "lazyslide.cli", *args], capture_output=True,
                          text=True, timeout=600, **kw)


def test_an_undecodable_tile_is_reported_once_removed_and_made_again(small_model, tmp_path, caplog):
    folder = tmp_path / "store"
    first = Slide(small_model, 5, TileStore(folder), make_level0=False)
    want = first.tile(1, 1, 1).copy()
    # the tile itself and two of the neighbours whose pixels it inpaints
    bad = [TileId(1, 1, 1), TileId(1, 0, 0), TileId(1, 2, 0)]
    assert all(first.is_stored(*t) for t in bad)
    corrupt(folder, [first.key(t) for t in bad])

    again = Slide(small_model, 5, TileStore(folder), make_level0=False)  # nothing in memory
    with caplog.at_level(logging.WARNING, logger="lazyslide.store"):
        assert np.array_equal(again.tile(1, 1, 1), want)
    reports = [r.getMessage() for r in caplog.records if "does not decode" in r.getMessage()]
    assert sorted(reports) == sorted(set(reports)) and len(reports) == len(bad), reports
    for t in bad:
        assert any(again.key(t) in r for r in reports)
        assert np.array_equal(TileStore(folder).get(again.key(t)), first.store.get(first.key(t)))


def test_a_reader_that_may_not_generate_asks_for_the_lost_tile(small_model, tmp_path):
    folder = tmp_path / "store"
    maker = Slide(small_model, 2, TileStore(folder), make_level0=False)
    maker.ensure(list(small_model.geometry.tiles(1)))
    corrupt(folder, [maker.key(TileId(1, 2, 2))])
    reader = Slide(small_model, 2, TileStore(folder), make_level0=False, remake=False)
    dz = DeepZoom(reader)
    level = next(lv for lv in range(dz.level_count) if dz.magnification_level(lv) == 1)
    missing = render_if_stored(dz, level, 0, 0, "JPEG")  # a render process: it never generates
    assert missing == [TileId(1, 2, 2)]


def test_the_cli_makes_garbage_tiles_again_without_a_traceback(tmp_path):
    cache = tmp_path / "c"
    args = [*SPEC, "--level", "1", "--col", "3", "--row", "3", "--cache", str(cache)]
    r = cli("tile", *args, "-o", str(tmp_path / "a.png"))
    assert r.returncode == 0, r.stderr
    model = URCDM.from_spec("random:test").with_sampling(steps=[2, 1, 1])
    slide = Slide(model, 0, TileStore(cache), make_level0=False)
    others = [t for t in model.geometry.tiles(1) if t != (1, 3, 3) and slide.is_stored(*t)]
    bad = [TileId(1, 3, 3), *others[:2]]  # the tile and two neighbours it inpaints from
    assert len(bad) == 3
    corrupt(cache, [slide.key(t) for t in bad])
    r = cli("tile", *args, "-o", str(tmp_path / "b.png"))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.count("does not decode") == 3, r.stderr
    a, b = (np.asarray(Image.open(tmp_path / n)) for n in ("a.png", "b.png"))
    assert np.array_equal(a, b)


async def test_the_server_serves_over_garbage_tiles(small_model, tmp_path, aiohttp_client):
    folder = tmp_path / "store"
    srv = LazySlideServer(small_model, TileStore(folder))
    entry = srv.open_now(0)
    client = await aiohttp_client(srv.app())
    dz = entry.dz
    level = dz.level_count - 1  # the deepest: level-2 tiles, which inpaint level-2 neighbours
    url = f"/slides/0_files/{level}/0_0.png"
    r = await client.get(url)
    assert r.status == 200
    want = await r.read()
    needed = dz.needed_tiles(level, 0, 0)
    corrupt(folder, [entry.slide.key(t) for t in needed[:3]])
    await client.close()

    srv = LazySlideServer(small_model, TileStore(folder))  # restarted: nothing decoded in memory
    srv.open_now(0)
    client = await aiohttp_client(srv.app())
    r = await client.get(url)
    assert r.status == 200, await r.text()
    assert await r.read() == want


def test_a_full_disk_is_one_line_naming_the_store(small_model, tmp_path):
    small_model.save(tmp_path / "model")
    cache = tmp_path / "c"

    def limit():  # a disk with 64 KB left for each file
        resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, 64_000))

    r = cli("materialize", "--model", str(tmp_path / "model"), "-o", str(tmp_path / "s.tiff"),
            "--cache", str(cache), "--json", preexec_fn=limit)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("lazyslide: error:") and str(cache) in last and "disk" in last, last
    assert not (tmp_path / "s.tiff").exists()
    r = cli("materialize", "--model", str(tmp_path / "model"), "-o", str(tmp_path / "s.tiff"),
            "--cache", str(cache), "--json")  # space again: it resumes
    assert r.returncode == 0, r.stderr


@pytest.fixture(autouse=True)
def _no_claim_waits(monkeypatch):
    monkeypatch.setenv("LAZYSLIDE_CLAIM_SECONDS", "5")  # a claim left by the killed write lapses soon
