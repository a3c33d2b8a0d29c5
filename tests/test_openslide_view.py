"""The OpenSlide-like interface, consumed by openslide-python's DeepZoomGenerator."""

import numpy as np
import pytest
from openslide.deepzoom import DeepZoomGenerator

from lazyslide import OpenSlideView, Slide


def test_interface_and_deepzoom(model, store):
    slide = Slide(model, 0, store)
    view = OpenSlideView(slide)
    g = model.geometry
    assert view.level_count == 3
    assert view.dimensions == (1292, 1292)
    assert view.level_dimensions == ((1292, 1292), (200, 200), (32, 32))
    assert view.level_downsamples[0] == 1.0 and view.level_downsamples[2] == 1292 / 32
    assert view.get_best_level_for_downsample(1) == 0
    assert view.get_best_level_for_downsample(7) == 1
    assert view.get_best_level_for_downsample(1000) == 2
    assert float(view.properties["openslide.mpp-x"]) == g.mpp

    # read_region in level-0 coordinates, translated to URCDM levels
    region = view.read_region((int(28 * 3 * 1292 / 200), 0), 1, (40, 20))
    assert region.mode == "RGBA" and region.size == (40, 20)
    assert np.array_equal(np.asarray(region)[..., :3], slide.read_region(1, 84, 0, 40, 20))
    outside = np.asarray(view.read_region((-10, -10), 0, (20, 20)))
    assert (outside[:10, :, 3] == 0).all() and (outside[10:, 10:, 3] == 255).all()

    dz = DeepZoomGenerator(view, tile_size=254, overlap=1)
    assert dz.level_count == 12  # ceil(log2(1292)) + 1
    assert dz.level_dimensions[-1] == (1292, 1292)
    top = dz.get_tile(dz.level_count - 1, (0, 0))
    assert top.size == (255, 255)
    thumb = view.get_thumbnail((16, 16))
    assert thumb.size == (16, 16)


# -- reduced levels: a pyramid between the magnification levels ---------------------------------
def _filled_slide(model, store, smooth: bool = False) -> Slide:
    """Every tile of every level stored, cut from one canvas per level (so overlaps agree),
    without the network."""
    from PIL import Image

    from lazyslide.store import tile_key

    g, rng = model.geometry, np.random.default_rng(0)
    for level, canvas in enumerate(g.canvases):
        if smooth:
            small = rng.integers(40, 240, (canvas // 64 + 2, canvas // 64 + 2, 3), dtype=np.uint8)
            img = np.asarray(Image.fromarray(small).resize((canvas, canvas), Image.Resampling.BICUBIC))
        else:
            img = rng.integers(0, 256, (canvas, canvas, 3), dtype=np.uint8)
        for t in g.tiles(level):
            x0, y0, x1, y1 = g.tile_box(*t)
            store.put(tile_key(model.fingerprint, 0, t), img[y0:y1, x0:x1])
    return Slide(model, 0, store, make_level0=False)


def test_reduced_reads_are_the_canvas_box_reduced(model, store):
    from PIL import Image

    from lazyslide import LazySlideError

    slide, g = _filled_slide(model, store), model.geometry
    for level, canvas in enumerate(g.canvases):
        full = np.asarray(Image.fromarray(slide.read_region(level, 0, 0, canvas, canvas)))
        for f in (2, 4):  # the test preset's overlap is 4 px
            assert g.reduction_valid(level, f)
            reduced = np.asarray(Image.fromarray(full).reduce(f))
            assert np.array_equal(slide.read_region(level, 0, 0, canvas // f, canvas // f, factor=f),
                                  reduced), (level, f)
            if canvas // f > 20:  # a window across tile seams
                assert np.array_equal(slide.read_region(level, 3, 5, 17, 13, factor=f),
                                      reduced[5:18, 3:20]), (level, f)
    for bad in (3, 8, 0):  # not a divisor of 1292, larger than overlap + 1, not positive
        with pytest.raises(LazySlideError, match="reduced"):
            slide.read_region(2, 0, 0, 8, 8, factor=bad)


def test_reduced_levels_read_the_same_magnification_level_and_only_needed_tiles(model, store):
    from lazyslide.deepzoom import DeepZoom

    slide = _filled_slide(model, store, smooth=True)
    plain = DeepZoomGenerator(OpenSlideView(slide), tile_size=254, overlap=1, limit_bounds=False)
    dz = DeepZoom(slide)
    view = dz.view
    assert view.level_dimensions == ((1292, 1292), (646, 646), (323, 323), (200, 200), (100, 100),
                                     (50, 50), (32, 32), (16, 16), (8, 8))
    assert dz.level_count == plain.level_count and dz.tile_count == plain.tile_count
    read: set = set()
    get = store.get
    store.get = lambda key: read.add(key) or get(key)
    for level in range(dz.level_count):
        # each Deep Zoom level shows the magnification level it showed without reduced levels
        _, plain_level, _ = plain.get_tile_coordinates(level, (0, 0))
        assert dz.magnification_level(level) == 2 - plain_level, level
        cols, rows = dz.level_tiles(level)
        # corners and the middle: edges, seams and clipping
        for col, row in {(0, 0), (cols // 2, rows // 2), (cols - 1, rows - 1), (cols - 1, 0)}:
            read.clear()
            ours = np.asarray(dz.dz.get_tile(level, (col, row)), np.int16)
            needed = {slide.key(t) for t in dz.needed_tiles(level, col, row)}
            assert read <= needed, (level, col, row)  # generating needed_tiles suffices
            theirs = np.asarray(plain.get_tile(level, (col, row)), np.int16)
            assert ours.shape == theirs.shape
            if view.source(dz.dz.get_tile_coordinates(level, (col, row))[1]) == (2, 1):
                assert np.array_equal(ours, theirs)  # full resolution: the same bytes
            assert np.abs(ours - theirs).mean() < 2.0, (level, col, row)  # the same picture
