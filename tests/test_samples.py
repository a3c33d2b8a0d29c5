"""Evaluation samples made in network calls shared across slides (``ensure_many``)."""

from __future__ import annotations

import numpy as np
import pytest

from lazyslide import Slide, TileId
from lazyslide.evaluation.samples import ensure_many
from lazyslide.store import MemoryStore

TARGETS = [TileId(2, 3, 3), TileId(1, 2, 1)]


def test_batch_one_gives_each_slides_own_tiles(small_model):
    slides = [Slide(small_model, seed, MemoryStore(), make_level0=False) for seed in (0, 5)]
    ensure_many(slides, [TARGETS] * 2, 1)
    for slide in slides:
        alone = Slide(small_model, slide.seed, MemoryStore())
        for t in alone.missing(TARGETS) + TARGETS:
            assert np.array_equal(slide.tile(*t), alone.tile(*t)), (slide.seed, t)


def test_batched_slides_get_every_tile_with_their_neighbours_pixels(small_model):
    slides = [Slide(small_model, seed, MemoryStore(), make_level0=False) for seed in (0, 1, 2)]
    needed = [s.missing(TARGETS) for s in slides]
    ensure_many(slides, [TARGETS] * 3, 4)
    g, plan = small_model.geometry, slides[0].plan
    for slide, need in zip(slides, needed, strict=True):
        assert all(slide.is_stored(*t) for t in need)
        made = sum(slide.generated.values()) + sum(slide.background.values())
        assert made == len(need)  # nothing made twice, nothing left to the slide
        assert slide.unet_evaluations[2] > 0
        for t in need:  # the known pixels are the neighbours' stored bytes
            px = slide.tile(*t)
            for n, (x0, y0, x1, y1) in plan.known_boxes(g, t):
                dx, dy = (n.col - t.col) * g.stride, (n.row - t.row) * g.stride
                assert np.array_equal(px[y0:y1, x0:x1],
                                      slide.tile(*n)[y0 - dy:y1 - dy, x0 - dx:x1 - dx]), (t, n)
    assert not np.array_equal(slides[0].tile(*TARGETS[0]), slides[1].tile(*TARGETS[0]))


def test_batch_size_must_be_positive(small_model):
    with pytest.raises(ValueError, match="batch_size"):
        ensure_many([Slide(small_model, 0, MemoryStore(), make_level0=False)], [TARGETS], 0)
