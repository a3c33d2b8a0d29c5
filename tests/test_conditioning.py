"""What a level >= 1 unet sees of its parent: the window, and (window+footprint) the tile's
footprint in it, pixel-aligned with the tile; fine-tuning into the wider conditioning."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from lazyslide import URCDM, Slide
from lazyslide.conditioning import (
    centred_footprint,
    cond_image,
    crop_resize,
    known_image,
    resize,
    subsample_mask,
    to_model_space,
)
from lazyslide.errors import ModelError
from lazyslide.geometry import TileId
from lazyslide.networks import architecture, build_unet
from lazyslide.plan import ParityPlan
from lazyslide.store import MemoryStore


def _footprint_model(seed: int = 0) -> URCDM:
    config = copy.deepcopy(URCDM.random("test", seed).config)
    config["conditioning"] = "window+footprint"
    config["background"]["enabled"] = False  # every tile diffused, none filled from the parent
    return URCDM(config, init_seed=seed, source="random:test+footprint")


def test_footprint_channels_are_the_tiles_box_of_the_window_upsampled():
    """A window whose centre quarter is a checkerboard of 2 px cells: the footprint channels
    hold that checkerboard at 4x (8 px cells), aligned with the tile's pixels."""
    w = np.full((32, 32, 3), 200, np.uint8)
    yy, xx = np.mgrid[12:20, 12:20]
    w[12:20, 12:20] = np.where(((yy // 2 + xx // 2) % 2 == 0)[..., None], 40, 230)
    cond = cond_image([w], 32, "window+footprint", [(12.0, 12.0, 20.0, 20.0)])
    assert cond.shape == (1, 6, 32, 32)
    assert torch.equal(cond[:, :3], to_model_space([w]))
    foot = cond[0, 3:]
    cells = foot[0].reshape(4, 8, 4, 8)[:, 2:6, :, 2:6]  # cell centres, clear of bilinear edges
    expected = to_model_space([w[12:20:2, 12:20:2]])[0, 0]
    assert torch.allclose(cells.mean(dim=(1, 3)), expected, atol=1e-5)
    # the centred box of a window 4x coarser than its tile is this one
    assert centred_footprint(32, 4) == (12.0, 12.0, 20.0, 20.0)


def test_crop_resize_of_the_whole_image_at_its_size_is_the_identity():
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(crop_resize(x, [(0, 0, 16, 16)] * 2, 16), x, atol=1e-6)


def test_window_conditioning_is_unchanged():
    """The paper's conditioning is the area-resized window, as before the footprint existed."""
    w = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    out = cond_image(w, 8)
    assert torch.allclose(out, torch.nn.functional.avg_pool2d(to_model_space(w), 4), atol=1e-6)


def test_widened_weights_compute_what_they_did_whatever_the_footprint():
    """Weights trained with the window alone, loaded into a window+footprint unet: the new
    channels get zero weights, so the output does not depend on them (until fine-tuned)."""
    narrow = URCDM.random("test", 3)
    wide_cfg = copy.deepcopy(narrow.config)
    wide_cfg["conditioning"] = "window+footprint"
    source = narrow.unet(1, 0)
    wide = build_unet(wide_cfg, 1, 0)
    architecture(wide_cfg).load_widened(wide, source.state_dict(), 3)
    wide.eval()
    g = torch.Generator().manual_seed(0)
    x, cond = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    log_snr = torch.tensor([1.0, -2.0])
    with torch.no_grad():
        before = source(x, log_snr, cond_images=cond)
        for footprint in (torch.zeros(2, 3, 8, 8), torch.randn(2, 3, 8, 8, generator=g)):
            after = wide(x, log_snr, cond_images=torch.cat([cond, footprint], 1))
            assert torch.allclose(before, after, atol=1e-5)


def test_a_footprint_model_makes_pure_tiles_and_sees_the_footprint(tmp_path):
    model = _footprint_model()
    assert model.unet(1, 0).cond_images_channels == 6 and model.unet(0, 0).cond_images_channels == 0
    seen = []
    unet = model.unet(1, 2)
    hook = unet.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["cond_images"]), with_kwargs=True)
    a = Slide(model, seed=5, store=MemoryStore()).tile(1, 2, 3)
    hook.remove()
    b = Slide(_footprint_model(), seed=5, store=MemoryStore()).tile(1, 2, 3)
    assert np.array_equal(a, b)
    # the last stage saw the parent's pixels under the tile, upsampled onto the tile's grid
    g = model.geometry
    cond = seen[-1][0]  # the last tile made is the one asked for (after its neighbours)
    x0, y0, x1, y1 = g.footprint_in_window(1, 2, 3)
    slide = Slide(model, seed=5, store=MemoryStore())
    window = slide.read_region(0, *g.parent_window(1, 2, 3)[:2], g.tile, g.tile)
    expected = crop_resize(to_model_space([window]), [(x0, y0, x1, y1)], g.tile)[0]
    assert torch.allclose(cond[3:], expected, atol=1e-5)
    # the same weights but the window alone (the footprint's input weights unused): another
    # tile, so the footprint reaches the output
    narrow = copy.deepcopy(model.config)
    del narrow["conditioning"]
    assert not np.array_equal(a, Slide(URCDM(narrow, init_seed=0), seed=5, store=MemoryStore()).tile(1, 2, 3))


def test_unknown_conditioning_is_a_clear_error():
    config = copy.deepcopy(URCDM.random("test").config)
    config["conditioning"] = "everything"
    with pytest.raises(Exception, match="unknown conditioning 'everything'"):
        URCDM(config, init_seed=0)


def test_tile_id_footprint_in_window_is_the_parent_footprint_shifted():
    g = URCDM.random("test").geometry
    t = TileId(2, 5, 7)
    ox, oy, _, _ = g.parent_window(*t)
    fx0, fy0, fx1, fy1 = g.parent_footprint(*t)
    assert g.footprint_in_window(*t) == (float(fx0 - ox), float(fy0 - oy), float(fx1 - ox), float(fy1 - oy))


# -- trained inpainting --------------------------------------------------------------------------
def _trained_model(seed: int = 0) -> URCDM:
    config = copy.deepcopy(URCDM.random("test").config)
    config["inpainting"] = "trained"
    config["sampling"]["resample"] = [1, 1, 1]
    return URCDM(config, init_seed=seed)


def test_known_image_is_the_known_pixels_and_the_mask_at_the_stage_size():
    g = torch.Generator().manual_seed(0)
    known = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    mask = torch.zeros(2, 1, 32, 32, dtype=torch.bool)
    mask[0, :, :, :4] = True  # a left strip of 4 px: 1 px at 8 px
    img = known_image(resize(known, 8), subsample_mask(mask, 8))
    assert img.shape == (2, 4, 8, 8)
    assert torch.equal(img[:, 3:], mask[..., ::4, ::4].float())
    assert torch.allclose(img[0, :3, :, :1], resize(known, 8)[0, :, :, :1])
    assert not img[0, :3, :, 1:].any() and not img[1].any()  # zero where unknown


def test_plan_masks_are_the_union_of_the_known_boxes():
    g = URCDM.random("test").geometry
    plan = ParityPlan()
    for tile in (TileId(2, 0, 0), TileId(2, 1, 0), TileId(2, 1, 1), TileId(2, 2, 1), TileId(2, 45, 45)):
        mask = plan.known_mask(g, tile)
        want = np.zeros_like(mask)
        for _, (x0, y0, x1, y1) in plan.known_boxes(g, tile):
            want[y0:y1, x0:x1] = True
        assert np.array_equal(mask, want)
    assert not plan.known_mask(g, TileId(2, 0, 0)).any()  # first phase: nothing known
    frame = plan.known_mask(g, TileId(2, 2, 1))  # last phase, inside: the whole border
    o = g.overlap
    assert frame[:o].all() and frame[-o:].all() and frame[:, :o].all() and not frame[o:-o, o:-o].any()


def test_trained_inpainting_hands_the_unet_the_known_pixels_and_mask():
    """Levels with neighbours take 4 more conditioning channels (a one-tile level none); the
    generator fills them as ``known_image`` does from the stored neighbours; tiles stay pure
    functions of their address and carry the neighbours' bytes exactly."""
    model = _trained_model()
    assert model.unet(0, 0).cond_images_channels == 0 and model.unet(1, 0).cond_images_channels == 7
    assert model.fingerprint != URCDM.random("test").fingerprint
    seen = []
    unet = model.unet(2, 0)
    hook = unet.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["cond_images"]), with_kwargs=True)
    slide = Slide(model, seed=3, store=MemoryStore())
    tile = TileId(2, 2, 1)  # the last phase: every neighbour is known
    pixels = slide.tile(*tile)
    hook.remove()
    job = slide._job(tile)
    cond = seen[-1]  # made last, after its neighbours
    size = cond.shape[-1]
    want = known_image(resize(to_model_space([job.known]), size),
                       subsample_mask(torch.from_numpy(job.mask)[None, None], size))
    assert job.mask.any() and torch.allclose(cond[:, 3:], want, atol=1e-6)
    assert np.array_equal(pixels[job.mask], job.known[job.mask])
    assert np.array_equal(pixels, Slide(_trained_model(), seed=3, store=MemoryStore()).tile(*tile))


def test_unknown_inpainting_is_a_clear_error():
    config = copy.deepcopy(URCDM.random("test").config)
    config["inpainting"] = "guess"
    with pytest.raises(Exception, match="unknown inpainting 'guess'"):
        URCDM(config, init_seed=0)


def test_known_channels_off_hands_the_unet_zero_channels():
    """Sampling with ``known_channels`` off (e.g. ``--known-channels off``): the trained unet
    gets zero known-pixel channels, as in its training samples without a mask, and the known
    pixels enter by replacement alone; another fingerprint, the neighbours' bytes still exact,
    and a model without trained inpainting refuses the setting."""
    from lazyslide.sampler import parse_sampling

    model = _trained_model()
    off = model.with_sampling(known_channels=False)
    assert off.fingerprint != model.fingerprint and off.config["sampling"]["known_channels"] is False
    assert "known_channels" not in model.config["sampling"]  # old configs keep their fingerprints
    seen = []
    hook = off.unet(2, 2).register_forward_pre_hook(lambda m, a, kw: seen.append(kw["cond_images"]),
                                                   with_kwargs=True)
    slide = Slide(off, seed=3, store=MemoryStore())
    tile = TileId(2, 2, 1)
    pixels = slide.tile(*tile)
    hook.remove()
    job = slide._job(tile)
    assert job.mask.any() and seen and not seen[-1][:, 3:].any()
    assert np.array_equal(pixels[job.mask], job.known[job.mask])
    on = Slide(model, seed=3, store=MemoryStore()).tile(*tile)
    assert not np.array_equal(pixels, on)
    level2 = model.with_sampling(levels={2: parse_sampling("ancestral:2,2,2:1:no-channels", 3)})
    assert not level2.sampling.for_level(2).known_channels and level2.sampling.for_level(1).known_channels
    with pytest.raises(ModelError, match="only a model with trained inpainting"):
        URCDM.random("test", 0).with_sampling(known_channels=False)
    for bad, msg in (("ancestral:2,2,2:1:maybe", "must be one of channels, no-channels, loop-repaint"),
                     ("ancestral:2,2,2:1:no-channels:x", "got 'x'"),
                     ("ancestral:2,2,2:1:no-channels:channels", "known_channels given twice")):
        with pytest.raises(ModelError, match=msg):
            parse_sampling(bad, 3)
