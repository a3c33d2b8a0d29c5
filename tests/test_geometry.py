from fractions import Fraction

import pytest

from lazyslide.geometry import PRESETS, Geometry, GeometryError, preset


@pytest.mark.parametrize("name", list(PRESETS))
def test_tiles_cover_each_canvas_exactly(name):
    g = preset(name)
    for level, canvas in enumerate(g.canvases):
        n = g.grid(level)
        boxes = [g.tile_box(level, c, r) for r in range(n) for c in range(n)]
        assert boxes[0][:2] == (0, 0)
        assert boxes[-1][2:] == (canvas, canvas)
        # consecutive tiles overlap by exactly the overlap: no gap, 12.5% shared
        for c in range(n - 1):
            assert g.tile_box(level, c, 0)[2] - g.tile_box(level, c + 1, 0)[0] == g.overlap
        # the cover of the whole canvas is every tile, contiguous, each within its tile
        spans = g.cover(level, 0, canvas)
        assert [j for j, _, _ in spans] == list(range(n))
        assert spans[0][1] == 0 and spans[-1][2] == canvas
        for (j, a, b), (_, a2, _) in zip(spans, spans[1:], strict=False):
            assert b == a2 and g.tile_box(level, j, 0)[0] <= a < b <= g.tile_box(level, j, 0)[2]


def test_paper_numbers():
    g = preset("paper")
    assert [g.grid(k) for k in range(3)] == [1, 7, 46]
    assert g.canvases == (1024, 6400, 41344) and g.stride == 896
    assert Fraction(g.overlap, g.tile) == Fraction(1, 8)
    assert g.cascade == (64, 256, 1024)
    assert preset("demo").canvases == (128, 800, 5168)
    assert preset("test").canvases == (32, 200, 1292)
    for name in ("demo", "test"):
        d = preset(name)
        assert [d.grid(k) for k in range(3)] == [1, 7, 46]
        assert Fraction(d.overlap, d.tile) == Fraction(1, 8)


@pytest.mark.parametrize("name", list(PRESETS))
def test_levels_cover_the_same_physical_extent(name):
    g = preset(name)
    extents = {Fraction(g.level_mpp(k)).limit_denominator(10**9) * g.canvases[k]
               for k in range(g.levels)}
    assert max(extents) - min(extents) < Fraction(1, 10**6)
    for k in range(1, g.levels):
        assert g.scale(k) == Fraction(g.canvases[k], g.canvases[k - 1])
        n = g.grid(k)
        # the footprints of the first and last tile reach exactly the parent canvas edges
        assert g.parent_footprint(k, 0, 0)[:2] == (0, 0)
        assert g.parent_footprint(k, n - 1, n - 1)[2:] == (g.canvases[k - 1],) * 2


@pytest.mark.parametrize("name", list(PRESETS))
def test_windows_are_centred_and_one_tile_wide(name):
    g = preset(name)
    for k in range(1, g.levels):
        for c in range(g.grid(k)):
            x0, y0, x1, y1 = g.parent_window(k, c, c)
            assert x1 - x0 == y1 - y0 == g.tile
            fx0, _, fx1, _ = g.parent_footprint(k, c, c)
            assert abs(Fraction(x0 + x1, 2) - (fx0 + fx1) / 2) <= Fraction(1, 2)


def test_window_tiles_compose_the_window():
    g = preset("test")
    for k in (1, 2):
        for c in range(g.grid(k)):
            for r in (0, g.grid(k) // 2, g.grid(k) - 1):
                win = g.parent_window(k, c, r)
                tiles = g.window_tiles(k, c, r)
                assert 1 <= len(tiles) <= 4  # at most 2 per axis
                cx0 = max(0, win[0])
                cx1 = min(g.canvases[k - 1], win[2])
                covered = set()
                for t in tiles:
                    x0, _, x1, _ = g.tile_box(k - 1, t.col, t.row)
                    covered |= set(range(max(x0, cx0), min(x1, cx1)))
                assert covered == set(range(cx0, cx1))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(tile=32, overlap=20, canvases=(32, 200), cascade=(32,)), "overlap"),
        (dict(tile=32, overlap=4, canvases=(32, 201), cascade=(32,)), "canvas 201"),
        (dict(tile=32, overlap=4, canvases=(200, 32), cascade=(32,)), "larger"),
        (dict(tile=32, overlap=4, canvases=(32, 200), cascade=(8, 16)), "end at the tile"),
        (dict(tile=32, overlap=4, canvases=(32, 200), cascade=(12, 32)), "stage 12"),
        (dict(tile=32, overlap=2, canvases=(32, 212), cascade=(8, 32)), "stage 8"),
        (dict(tile=0, overlap=0, canvases=(32,), cascade=(32,)), "positive"),
    ],
)
def test_inconsistent_custom_geometry_is_rejected(kwargs, message):
    with pytest.raises(GeometryError, match=message):
        Geometry(**kwargs)


def test_custom_geometry_two_levels():
    g = Geometry(tile=64, overlap=16, canvases=(64, 304), cascade=(16, 64), mpp=0.5)
    assert g.levels == 2 and g.grid(1) == 6 and g.level_mpp(0) == pytest.approx(0.5 * 304 / 64)
    assert Geometry.from_dict(g.to_dict()) == g


def test_tile_address_errors_name_the_problem():
    g = preset("test")
    with pytest.raises(GeometryError, match="outside level 2's 46x46"):
        g.check_tile(2, 46, 0)
    with pytest.raises(GeometryError, match="level must be in 0..2"):
        g.check_tile(3, 0, 0)
    with pytest.raises(GeometryError, match="integer"):
        g.check_tile(1, "1", 0)
    with pytest.raises(GeometryError, match="unknown preset"):
        preset("huge")
