import itertools

from lazyslide import plan as planmod
from lazyslide.geometry import TileId, preset
from lazyslide.plan import ParityPlan, RasterPlan


def same_level_closure(p, g, tile):
    return {t for t in p.closure(g, [tile]) if t.level == tile.level}


def test_parity_cold_tile_needs_at_most_13_of_its_level():
    g, p = preset("paper"), ParityPlan()
    sizes = [len(same_level_closure(p, g, t)) for t in g.tiles(2)]
    assert max(sizes) == 13


def test_chosen_phase_order_is_the_best_of_all_24(monkeypatch):
    assert planmod.PHASE_ORDER == ((0, 0), (1, 0), (1, 1), (0, 1))
    g = preset("test")
    centre = [TileId(2, 20 + dc, 20 + dr) for dc in (0, 1) for dr in (0, 1)]
    best = {}
    for order in itertools.permutations([(0, 0), (1, 0), (0, 1), (1, 1)]):
        monkeypatch.setattr(planmod, "PHASE_ORDER", order)
        best[order] = max(len(same_level_closure(ParityPlan(), g, t)) for t in centre)
    chosen = ((0, 0), (1, 0), (1, 1), (0, 1))
    assert min(best.values()) == 13 == best[chosen]


def test_raster_order_needs_the_whole_grid():
    g = preset("paper")
    corner = TileId(2, 45, 45)
    assert len(same_level_closure(RasterPlan(), g, corner)) == 46 * 46
    assert len(same_level_closure(ParityPlan(), g, corner)) <= 13


def test_tiles_of_one_phase_never_overlap():
    g, p = preset("test"), ParityPlan()
    for t in g.tiles(1):
        for n in p.earlier_neighbours(g, t):
            assert p.rank(g, *n) < p.rank(g, *t)
        for dc in (-1, 0, 1):
            for dr in (-1, 0, 1):
                if (dc or dr) and 0 <= t.col + dc < 7 and 0 <= t.row + dr < 7:
                    assert p.rank(g, 1, t.col + dc, t.row + dr) != p.rank(g, *t)


def test_known_boxes_are_exactly_the_overlaps_with_earlier_neighbours():
    g, p = preset("test"), ParityPlan()
    for t in g.tiles(2)[:200]:
        expected = set()
        tx0, ty0, _, _ = g.tile_box(*t)
        for n in p.earlier_neighbours(g, t):
            a, b = g.tile_box(*t), g.tile_box(*n)
            for y in range(max(a[1], b[1]), min(a[3], b[3])):
                for x in range(max(a[0], b[0]), min(a[2], b[2])):
                    expected.add((x - tx0, y - ty0))
        got = set()
        for _, (x0, y0, x1, y1) in p.known_boxes(g, t):
            got |= {(x, y) for y in range(y0, y1) for x in range(x0, x1)}
        assert got == expected


def test_dependencies_come_first_in_plan_order():
    g, p = preset("test"), ParityPlan()
    tiles = p.closure(g, [TileId(2, 21, 22), TileId(1, 3, 4)])
    order = p.order(g, tiles)
    pos = {t: i for i, t in enumerate(order)}
    for t in order:
        for d in p.dependencies(g, t):
            assert pos[d] < pos[t]
