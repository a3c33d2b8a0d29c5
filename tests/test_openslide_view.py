"""The OpenSlide-like interface, consumed by openslide-python's DeepZoomGenerator."""

import numpy as np
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
