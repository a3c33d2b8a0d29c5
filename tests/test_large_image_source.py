"""The large_image tile source: a generated slide opened through large_image's own API
(``large_image.open`` finds it by entry point) gives the DZI export's pixels, lazily."""

from __future__ import annotations

import json

import large_image
import numpy as np
import pytest
from large_image.exceptions import TileSourceError

from lazyslide import URCDM, Slide, TileStore
from lazyslide.export import export
from lazyslide.large_image_source import LazySlideFileTileSource, write_slide_file
from lazyslide.materialize import materialize
from lazyslide.model import default_config


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A saved random-init model whose deepest canvas (312 px) spans 2 x 2 Deep Zoom tiles of
    254 px (edge tiles, two large_image levels), materialized and exported as a lossless DZI."""
    d = tmp_path_factory.mktemp("li")
    cfg = default_config("test")
    cfg["geometry"]["canvases"] = [32, 88, 312]
    cfg["sampling"].update(steps=[2, 1, 1], resample=[1, 1, 1])
    cfg["weights"] = {"random_init_seed": 0, "torch": "any"}
    URCDM(cfg, init_seed=0, source="random:li").save(d / "model")
    model = URCDM.from_spec(str(d / "model"))
    slide = Slide(model, 3, TileStore(d / "store"), make_level0=False)
    materialize(slide, show_progress=False)
    dzi = export(slide, d / "slide.dzi", "dzi", compression="deflate")  # PNG tiles: lossless
    assert 'Format="png"' in dzi.read_text() and not list((d / "slide_files").rglob("*.jpeg"))
    return d, model, dzi


def _tiles(src):
    meta = src.getMetadata()
    for z in range(meta["levels"]):
        scale = 2 ** (meta["levels"] - 1 - z)
        cols = -(-meta["sizeX"] // (meta["tileWidth"] * scale))
        rows = -(-meta["sizeY"] // (meta["tileHeight"] * scale))
        for y in range(rows):
            for x in range(cols):
                yield (x, y, z), src.getTile(x, y, z, numpyAllowed="always")[..., :3]


def test_large_image_opens_a_slide_file_as_the_dzi_export(made):
    d, model, dzi = made
    path = write_slide_file(d / "a.lazyslide", "model", 3, cache="store", fingerprint=model.fingerprint)
    ours = large_image.open(str(path))  # found by the entry point, not named
    assert isinstance(ours, LazySlideFileTileSource)
    ref = large_image.open(str(dzi))
    assert type(ref).__name__ == "DeepzoomFileTileSource"
    meta, rmeta = ours.getMetadata(), ref.getMetadata()
    for key in ("levels", "sizeX", "sizeY", "tileWidth", "tileHeight"):
        assert meta[key] == rmeta[key], key
    assert (meta["sizeX"], meta["levels"]) == (312, 2)
    mpp = model.geometry.mpp
    assert meta["mm_x"] == pytest.approx(mpp / 1000) and meta["mm_y"] == pytest.approx(mpp / 1000)
    assert ours.getInternalMetadata()["lazyslide"]["fingerprint"] == model.fingerprint

    theirs = dict(_tiles(ref))
    mine = dict(_tiles(ours))
    assert mine.keys() == theirs.keys() and len(mine) == 1 + 4
    for (x, y, z), tile in mine.items():  # the image's pixels; beyond it, padding
        scale = 2 ** (meta["levels"] - 1 - z)
        w = min(254, -(-312 // scale) - 254 * x)
        h = min(254, -(-312 // scale) - 254 * y)
        assert np.array_equal(tile[:h, :w], theirs[x, y, z][:h, :w, :3]), (x, y, z)
        assert (tile[h:] == 0xF2).all() and (tile[:, w:] == 0xF2).all()  # the slide's background

    region, _ = ours.getRegion(format=large_image.constants.TILE_FORMAT_NUMPY)
    rregion, _ = ref.getRegion(format=large_image.constants.TILE_FORMAT_NUMPY)
    assert region.shape[:2] == (312, 312)
    assert np.array_equal(region[..., :3], rregion[..., :3])
    box = {"left": 100, "top": 40, "width": 150, "height": 230}
    half = {"maxWidth": 75, "maxHeight": 115}  # read from the coarser large_image level
    a, _ = ours.getRegion(region=box, output=half, format="numpy")
    b, _ = ref.getRegion(region=box, output=half, format="numpy")
    assert a.shape[:2] == (115, 75) and np.array_equal(a[..., :3], b[..., :3])

    it = list(ours.tileIterator(tile_size={"width": 128}, format="numpy"))
    rit = list(ref.tileIterator(tile_size={"width": 128}, format="numpy"))
    assert len(it) == len(rit) == 9
    for t, r in zip(it, rit, strict=True):
        assert (t["x"], t["y"]) == (r["x"], r["y"])
        assert np.array_equal(t["tile"][..., :3], r["tile"][..., :3])


def test_a_deep_tile_from_an_empty_store_is_made_on_demand_and_equal(made, tmp_path):
    d, model, dzi = made
    path = write_slide_file(tmp_path / "b.lazyslide", str(d / "model"), 3, cache=str(tmp_path / "fresh"))
    src = large_image.open(str(path))
    tile = src.getTile(1, 1, 1, numpyAllowed="always")[..., :3]  # the corner: 58 x 58 px of slide
    ref = large_image.open(str(dzi)).getTile(1, 1, 1, numpyAllowed="always")[..., :3]
    assert np.array_equal(tile[:58, :58], ref[:58, :58])  # a tile is a pure function of its address
    fresh = Slide(model, 3, TileStore(tmp_path / "fresh"), make_level0=False)
    stored = [sum(fresh.is_stored(*t) for t in model.geometry.tiles(lv)) for lv in range(3)]
    assert stored[0] == 1 and 0 < stored[2] < 121  # what the corner needed, not the slide


def test_files_that_are_not_slide_files_are_refused_with_the_reason(made, tmp_path):
    d, model, _ = made
    other = tmp_path / "notes.lazyslide"
    other.write_text("hello")
    assert not LazySlideFileTileSource.canRead(str(other))
    with pytest.raises(TileSourceError, match="not JSON"):
        LazySlideFileTileSource(str(other))
    bad = tmp_path / "bad.lazyslide"
    bad.write_text(json.dumps({"lazyslide": 1, "model": "model", "sede": 1}))
    with pytest.raises(TileSourceError, match="unknown field"):
        LazySlideFileTileSource(str(bad))
    stale = write_slide_file(d / "stale.lazyslide", "model", 3, fingerprint="0123456789abcdef")
    with pytest.raises(TileSourceError, match="was written for 0123456789abcdef"):
        LazySlideFileTileSource(str(stale))
    gone = write_slide_file(tmp_path / "gone.lazyslide", "no-such-model", 0)
    with pytest.raises(TileSourceError, match="no such folder"):
        LazySlideFileTileSource(str(gone))
