"""The lazy slide: purity, order independence, seams, cold-tile cost, background, sharing."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from lazyslide import URCDM, LazySlideError, ParityPlan, Slide, TileId, TileStore
from lazyslide.store import tile_key

# A 3x3 block of deepest-level tiles plus a few level-1 tiles, in the middle of the small slide
# (``small_model``'s 1 + 9 + 49 tiles): their closure is most of it.
REQUEST = [TileId(2, c, r) for r in (2, 3, 4) for c in (2, 3, 4)] + [
    TileId(1, 0, 0), TileId(1, 1, 0), TileId(1, 0, 1)
]


@pytest.fixture(scope="module")
def repaint_model(small_model) -> URCDM:
    """The small slide with two RePaint resamples: every random draw of the inpainting loop."""
    return small_model.with_sampling(resample=[2, 2, 2])


def digests(slide: Slide, tiles) -> dict[TileId, str]:
    return {t: hashlib.sha256(slide.tile(*t).tobytes()).hexdigest() for t in tiles}


def made_in_order(model, path, order) -> dict[TileId, str]:
    slide = Slide(model, 5, TileStore(path))
    for t in order:
        slide.tile(*t)
    closure = ParityPlan().closure(model.geometry, REQUEST) | set(model.geometry.tiles(0))
    return digests(slide, sorted(closure))


def test_tiles_do_not_depend_on_request_order(repaint_model, tmp_path):
    model = repaint_model
    model.save(tmp_path / "model")
    orders = {"raster": sorted(REQUEST, key=lambda t: (t.level, t.row, t.col))}
    orders["reverse"] = orders["raster"][::-1]
    orders["shuffled"] = random.Random(3).sample(REQUEST, len(REQUEST))
    results = {name: made_in_order(model, tmp_path / name, o) for name, o in orders.items()}
    assert results["raster"] == results["reverse"] == results["shuffled"]

    # A new process generating from an empty store, and one reading the first store back.
    script = """
import hashlib, json, sys
from lazyslide import URCDM, Slide, TileStore, TileId
slide = Slide(URCDM.from_spec(sys.argv[3]), 5, TileStore(sys.argv[1]))
tiles = [TileId(*t) for t in json.loads(sys.argv[2])]
print(json.dumps([hashlib.sha256(slide.tile(*t).tobytes()).hexdigest() for t in tiles]))
"""
    tiles = sorted(results["raster"])
    expected = [results["raster"][t] for t in tiles]
    for store in (tmp_path / "fresh", tmp_path / "raster"):
        out = subprocess.run([sys.executable, "-c", script, str(store), json.dumps(tiles),
                              str(tmp_path / "model")],
                             capture_output=True, text=True, check=True)
        assert json.loads(out.stdout) == expected


def test_overlaps_between_neighbours_are_identical(repaint_model, store):
    slide = Slide(repaint_model, 1, store)
    g = repaint_model.geometry
    s, t = g.stride, g.tile
    for level, (c0, r0) in ((1, (0, 0)), (2, (3, 2))):
        tiles = {(c, r): slide.tile(level, c, r) for c in range(c0, c0 + 3) for r in range(r0, r0 + 3)}
        for (c, r), a in tiles.items():
            if (c + 1, r) in tiles:
                assert np.array_equal(a[:, s:], tiles[(c + 1, r)][:, : t - s])
            if (c, r + 1) in tiles:
                assert np.array_equal(a[s:, :], tiles[(c, r + 1)][: t - s, :])
            if (c + 1, r + 1) in tiles:
                assert np.array_equal(a[s:, s:], tiles[(c + 1, r + 1)][: t - s, : t - s])
        # read_region across the block agrees with the tiles it covers
        region = slide.read_region(level, c0 * s, r0 * s, 2 * s + t, 2 * s + t)
        for (c, r), a in tiles.items():
            x, y = (c - c0) * s, (r - r0) * s
            assert np.array_equal(region[y:y + t, x:x + t], a)


def test_a_cold_tile_costs_its_plan_closure(model, store):
    g = model.geometry
    slide = Slide(model, 2, store)
    before = dict(slide.generated)
    target = TileId(2, 22, 25)  # (even, odd): the last phase, the largest closure
    closure = ParityPlan().closure(g, [target])
    slide.tile(*target)
    made = {lv: slide.generated[lv] + slide.background[lv] - before.get(lv, 0) for lv in (1, 2)}
    assert made[2] == sum(1 for t in closure if t.level == 2) == 13
    assert made[1] == sum(1 for t in closure if t.level == 1)
    assert made[1] <= 4 * 13  # at most 2x2 window tiles, each with its own closure
    # warm: nothing more is generated
    n = sum(slide.generated.values())
    slide.tile(*target)
    assert sum(slide.generated.values()) == n


def test_background_tiles_are_not_generated(model, store):
    """A level-0 image that is white on its left half: left tiles below it are not diffused."""
    g = model.geometry
    rng = np.random.default_rng(0)
    level0 = np.full((g.tile, g.tile, 3), 250, np.uint8)
    tissue = rng.integers(0, 255, (g.tile, g.tile // 2, 3), dtype=np.uint8)
    tissue[..., 0] = np.maximum(tissue[..., 0], 180)  # pink/purple: hue > 0.5, saturated
    tissue[..., 2] = np.maximum(tissue[..., 2], 150)
    level0[:, g.tile // 2:] = tissue
    store.put(tile_key(model.fingerprint, 9, TileId(0, 0, 0)), level0)
    slide = Slide(model, 9, store)
    assert slide.generated[0] == 0
    left = slide.tile(1, 0, 3)
    assert slide.generated[1] == 0 and slide.background[1] >= 1
    assert left.std() < 3 and abs(float(left.mean()) - 250) < 3
    slide.tile(1, 6, 3)
    assert slide.generated[1] >= 1


def test_different_models_never_share_tiles(model, store):
    a = Slide(model, 0, store).tile(1, 2, 2)
    other = URCDM.random("test", 1)
    assert other.fingerprint != model.fingerprint
    b = Slide(other, 0, store)
    assert not b.is_stored(1, 2, 2)
    assert not np.array_equal(a, b.tile(1, 2, 2))
    slower = model.with_sampling(steps=[4, 3, 2])
    assert slower.fingerprint != model.fingerprint
    assert not Slide(slower, 0, store).is_stored(1, 2, 2)


def test_seeds_give_different_slides(model, store):
    assert not np.array_equal(Slide(model, 0, store).tile(0, 0, 0), Slide(model, 1, store).tile(0, 0, 0))


def test_concurrent_requests_make_a_tile_once(model, store):
    slide = Slide(model, 3, store)
    results, errors = [], []

    def ask():
        try:
            results.append(slide.tile(2, 10, 11))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    closure = ParityPlan().closure(model.geometry, [TileId(2, 10, 11)])
    assert sum(slide.generated.values()) + sum(slide.background.values()) == len(closure)
    assert all(np.array_equal(r, results[0]) for r in results)


def test_bad_requests_raise_clear_errors(model, store):
    slide = Slide(model, 0, store)
    with pytest.raises(LazySlideError, match="outside level 2"):
        slide.tile(2, -1, 0)
    with pytest.raises(LazySlideError, match="region size"):
        slide.read_region(1, 0, 0, 0, 5)
    with pytest.raises(LazySlideError, match="seed"):
        Slide(model, -1, store)


def test_read_region_outside_the_canvas_is_background(model, store):
    slide = Slide(model, 0, store)
    r = slide.read_region(0, -4, -4, 8, 8)
    assert (r[:4] == 242).all() and np.array_equal(r[4:, 4:], slide.tile(0, 0, 0)[:4, :4])


def test_tile_png_roundtrip_is_lossless(model, store, tmp_path):
    tile = Slide(model, 0, store).tile(0, 0, 0)
    Image.fromarray(tile).save(tmp_path / "t.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "t.png")), tile)


def test_children_follow_their_parent(model, tmp_path):
    """Level-1 pixels depend on the stored level-0 image they are conditioned on."""
    g = model.geometry
    tiles = []
    for i, colour in enumerate(((200, 120, 180), (120, 60, 160))):
        store = TileStore(tmp_path / str(i))
        level0 = np.zeros((g.tile, g.tile, 3), np.uint8) + np.array(colour, np.uint8)
        store.put(tile_key(model.fingerprint, 4, TileId(0, 0, 0)), level0)
        tiles.append(Slide(model, 4, store).tile(1, 3, 3))
    assert not np.array_equal(tiles[0], tiles[1])


def test_independent_tiles_batch_like_single_calls(model, store):
    """A batch of same-phase tiles gives each its own pixels (up to float rounding)."""
    from lazyslide.generator import generate

    slide = Slide(model, 6, store)
    tiles = [TileId(1, c, r) for c, r in ((0, 0), (2, 0), (0, 2), (4, 4))]
    jobs = [slide._job(t) for t in tiles]
    singles = [generate(model, [j])[0] for j in jobs]
    batch = generate(model, jobs)
    for a, b in zip(singles, batch, strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert not np.array_equal(batch[0], batch[1])


def test_a_mixed_batch_gives_each_tile_its_own_pixels(model, store):
    """A phase-0 tile (nothing known) batched with a phase-1 tile (inpainting) gets the pixels it
    gets alone (up to the backends' +-1 batch rounding), though only one of them inpaints."""
    from lazyslide.generator import generate

    slide = Slide(model, 6, store)
    slide.ensure(slide.plan.dependencies(slide.geometry, TileId(1, 1, 0)))  # what it inpaints
    jobs = [slide._job(TileId(1, 2, 2)), slide._job(TileId(1, 1, 0))]
    assert not jobs[0].mask.any() and jobs[1].mask.any()
    singles = [generate(model, [j])[0] for j in jobs]
    batch = generate(model, jobs)
    for a, b in zip(singles, batch, strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
        assert (a != b).mean() < 0.01
