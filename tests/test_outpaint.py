"""The paper's outpainting baseline: raster order at the deepest level, overlaps inpainted."""

from __future__ import annotations

import numpy as np
import pytest

from lazyslide import Slide
from lazyslide.errors import LazySlideError
from lazyslide.geometry import TileId
from lazyslide.store import MemoryStore


def test_outpaint_fills_the_canvas_in_raster_order_seamlessly(small_model):
    g = small_model.geometry
    deepest = g.levels - 1
    made: list[TileId] = []
    slide = Slide(small_model, 3, MemoryStore(), method="outpaint", progress=lambda t, k: made.append(t))
    n = g.grid(deepest)
    slide.ensure([TileId(deepest, n - 1, n - 1)], progress=lambda t, k: made.append(t))
    # the last tile of the raster needs every tile before it, made row by row; no other level
    assert made == [TileId(deepest, c, r) for r in range(n) for c in range(n)]
    assert slide.generated[deepest] == n * n and not slide.generated[0] and not slide.generated[1]
    # overlapping neighbours agree on every shared pixel (the canvas has no seams)
    s, t = g.stride, g.tile
    for r in range(n):
        for c in range(n - 1):
            a, b = slide.tile(deepest, c, r), slide.tile(deepest, c + 1, r)
            assert np.array_equal(a[:, s:], b[:, :t - s])
    for r in range(n - 1):
        a, b = slide.tile(deepest, 0, r), slide.tile(deepest, 0, r + 1)
        assert np.array_equal(a[s:], b[:t - s])
    # a pure function of (model, seed, tile): a fresh store gives the same pixels
    again = Slide(small_model, 3, MemoryStore(), method="outpaint")
    assert np.array_equal(again.tile(deepest, 1, 1), slide.tile(deepest, 1, 1))


def test_outpaint_and_urcdm_tiles_are_kept_apart(small_model):
    store = MemoryStore()
    g = small_model.geometry
    deepest = g.levels - 1
    a = Slide(small_model, 0, store, method="outpaint").tile(deepest, 0, 0)
    b = Slide(small_model, 0, store).tile(deepest, 0, 0)
    assert not np.array_equal(a, b)
    with pytest.raises(LazySlideError, match="outpaint method makes only level"):
        Slide(small_model, 0, store, method="outpaint").tile(0, 0, 0)
    with pytest.raises(LazySlideError, match="unknown method"):
        Slide(small_model, 0, store, method="raster")


def test_outpaint_materializes_and_exports(small_model, tmp_path):
    import openslide

    from lazyslide.export import export
    from lazyslide.materialize import materialize

    slide = Slide(small_model, 5, MemoryStore(), method="outpaint", make_level0=False)
    stats = materialize(slide, show_progress=False)
    assert [s.level for s in stats.levels] == [2] and stats.levels[0].generated == 49
    export(slide, tmp_path / "o.svs", "svs", compression="deflate")
    osr = openslide.OpenSlide(str(tmp_path / "o.svs"))
    assert osr.dimensions == (200, 200)
    region = np.asarray(osr.read_region((0, 0), 0, (200, 200)).convert("RGB"))
    assert np.array_equal(region, slide.read_region(2, 0, 0, 200, 200))


def test_outpaint_bad_cli_use_is_a_clear_error(tmp_path, capsys):
    from lazyslide.cli import main

    out = str(tmp_path / "o.tiff")
    assert main(["materialize", "--model", "random:test", "--method", "outpaint", "--workers", "2",
                 "-o", out, "--cache", str(tmp_path / "c")]) == 2
    assert "sequential" in capsys.readouterr().err
    assert main(["tile", "--model", "random:test", "--method", "outpaint", "--level", "0", "--col", "0",
                 "--row", "0", "-o", str(tmp_path / "t.png"), "--cache", str(tmp_path / "c")]) == 2
    assert "makes only level(s) 2" in capsys.readouterr().err
