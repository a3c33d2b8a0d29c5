"""Evaluation samples made in network calls shared across slides (``ensure_many``)."""

from __future__ import annotations

import numpy as np
import pytest

from lazyslide import Slide, TileId
from lazyslide.errors import ModelError
from lazyslide.evaluation.samples import ensure_many
from lazyslide.store import MemoryStore

TARGETS = [TileId(2, 3, 3), TileId(1, 2, 1)]


@pytest.mark.parametrize("batch", [1, 4])
def test_shared_calls_give_each_slides_own_tiles(small_model, batch):
    """A tile's bytes are those its slide makes alone, one tile at a time, whichever tiles of
    other slides shared its network calls: every call holds exactly ``batch`` rows."""
    model = small_model.with_sampling(batch=batch)
    slides = [Slide(model, seed, MemoryStore(), make_level0=False) for seed in (0, 5, 6)]
    ensure_many(slides, [TARGETS] * 3)
    for slide in slides:
        alone = Slide(model, slide.seed, MemoryStore())
        for t in alone.missing(TARGETS) + TARGETS:
            assert np.array_equal(slide.tile(*t), alone.tile(*t)), (slide.seed, t)


def test_batched_slides_get_every_tile_with_their_neighbours_pixels(small_model):
    model = small_model.with_sampling(batch=4)
    slides = [Slide(model, seed, MemoryStore(), make_level0=False) for seed in (0, 1, 2)]
    needed = [s.missing(TARGETS) for s in slides]
    ensure_many(slides, [TARGETS] * 3)
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


def test_the_batch_is_a_fingerprinted_sampling_setting(small_model):
    """Batch 1 keeps the old fingerprint (stored tiles stay valid); another batch is its own
    model, its tiles stored apart; a batch that is no positive integer is refused by name."""
    assert small_model.with_sampling(batch=1).fingerprint == small_model.fingerprint
    assert small_model.with_sampling(batch=4).fingerprint != small_model.fingerprint
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ModelError, match="sampling batch"):
            small_model.with_sampling(batch=bad)
