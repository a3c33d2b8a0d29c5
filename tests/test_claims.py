"""Several processes on one tile store make each tile once (claims with a lease), and a process
killed while holding claims blocks nobody for longer than its lease."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from lazyslide import Slide, TileStore

CLAIM_AND_DIE = """
import os, signal, sys
from lazyslide import TileStore
store = TileStore(sys.argv[1], lease=float(sys.argv[2]))
assert store.claim("k")
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_claim_excludes_others_until_released(tmp_path):
    a, b = TileStore(tmp_path, lease=1), TileStore(tmp_path, lease=1)
    assert a.claim("k") and not b.claim("k") and b.claimed("k")
    time.sleep(2.5)  # a's renewer keeps the lease alive past its length
    assert not b.claim("k")
    a.release("k")
    assert b.claim("k") and not a.claim("k")
    b.release("k")
    assert len(a) == 0  # claims are not tiles


def test_the_claim_of_a_killed_process_lapses_after_its_lease(tmp_path):
    r = subprocess.run([sys.executable, "-c", CLAIM_AND_DIE, str(tmp_path), "2"], timeout=120)
    assert r.returncode == -signal.SIGKILL
    store = TileStore(tmp_path)
    assert store.claimed("k") and not store.claim("k")
    started = time.monotonic()
    assert store.wait_for("k", timeout=30) is False  # not stored: the claim lapsed
    assert time.monotonic() - started < 10
    assert store.claim("k")


def test_two_slides_on_one_store_make_each_tile_once(small_model, tmp_path):
    """Two independent store handles (as two server processes have) ask for the same tiles."""
    slides = [Slide(small_model, 4, TileStore(tmp_path), make_level0=False) for _ in range(2)]
    wanted = [(2, 3, 3), (2, 4, 4), (1, 2, 2)]
    threads = [threading.Thread(target=lambda s=s: [s.tile(*t) for t in wanted]) for s in slides]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    made = sum(sum(s.generated.values()) + sum(s.background.values()) for s in slides)
    assert made == len(TileStore(tmp_path)) > 0
    for t in wanted:
        assert (slides[0].tile(*t) == slides[1].tile(*t)).all()


def materialize_cmd(folder, out, cache):
    return [sys.executable, "-m", "lazyslide.cli", "materialize", "--model", str(folder), "--seed",
            "2", "--format", "tiff", "--compression", "deflate", "--tiff-tile", "64", "-o", str(out),
            "--cache", str(cache), "--json"]


def test_two_materialize_processes_generate_each_tile_once(small_model, tmp_path):
    folder = tmp_path / "model"
    small_model.save(folder)
    cache = tmp_path / "shared"
    procs = [subprocess.Popen(materialize_cmd(folder, tmp_path / f"p{i}.tiff", cache),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    reports = [json.loads(o) for o, _ in outs]
    made = [sum(lv["generated"] + lv["background"] for lv in r["levels"].values()) for r in reports]
    assert sum(made) == 59 == len(TileStore(cache)), made  # 1 + 9 + 49 tiles, each made once
    ref = subprocess.run(materialize_cmd(folder, tmp_path / "ref.tiff", tmp_path / "alone"),
                         capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr
    expected = (tmp_path / "ref.tiff").read_bytes()
    assert (tmp_path / "p0.tiff").read_bytes() == expected == (tmp_path / "p1.tiff").read_bytes()


def test_a_process_killed_while_holding_claims_does_not_block_the_other(small_model, tmp_path):
    folder = tmp_path / "model"
    small_model.save(folder)
    cache = tmp_path / "shared"
    env = {**os.environ, "LAZYSLIDE_CLAIM_SECONDS": "4"}
    victim = subprocess.Popen(materialize_cmd(folder, tmp_path / "v.tiff", cache), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = TileStore(cache)
    deadline = time.time() + 300
    while len(store) < 12 and time.time() < deadline and victim.poll() is None:
        time.sleep(0.02)
    survivor = subprocess.Popen(materialize_cmd(folder, tmp_path / "s.tiff", cache), env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not len(store._claims_db) and time.time() < deadline and victim.poll() is None:
        time.sleep(0.01)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    out, err = survivor.communicate(timeout=600)
    assert survivor.returncode == 0, err
    assert len(store) == 59
    ref = subprocess.run(materialize_cmd(folder, tmp_path / "ref.tiff", tmp_path / "alone"),
                         capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr
    assert (tmp_path / "s.tiff").read_bytes() == (tmp_path / "ref.tiff").read_bytes()


def test_claimed_leaves_stored_tiles_and_others_claims_and_releases_its_own(small_model, tmp_path):
    import numpy as np

    from lazyslide import TileId
    from lazyslide.slide import claimed

    a, b = TileStore(tmp_path, lease=5), TileStore(tmp_path, lease=5)
    slide = Slide(small_model, 0, a, make_level0=False)
    stored, theirs, free = TileId(1, 0, 0), TileId(1, 1, 0), TileId(1, 2, 0)
    a.put(slide.key(stored), np.zeros((32, 32, 3), np.uint8))
    assert b.claim(slide.key(theirs))
    with claimed([(slide, t) for t in (stored, theirs, free)]) as (mine, others):
        assert mine == [(slide, free)] and others == [(slide, theirs)]
        assert not b.claim(slide.key(free))  # held while the caller makes it
    assert b.claim(slide.key(free))  # released on exit, made or not
    with pytest.raises(RuntimeError), claimed([(slide, TileId(1, 0, 1))]) as (mine, _):
        raise RuntimeError("making failed")
    assert b.claim(slide.key(TileId(1, 0, 1)))
