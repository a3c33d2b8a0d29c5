"""The ``paper`` preset and the ``paper`` sampling preset are the authors' system: their nine
unets (scechnicka/URCDM scripts/train.py, built here through imagen-pytorch exactly as there),
their objectives, their sampling and their background rule."""

import json

import pytest
import torch

from lazyslide import URCDM
from lazyslide._imagen import imagen
from lazyslide.model import SAMPLING_PRESETS


def authors_imagen(level: int, device: str = "meta"):
    """The authors' ``init_imagen`` (all three unets), argument for argument."""
    ip = imagen()
    c = 3 if level > 0 else 0
    with torch.device(device):
        unets = (
            ip.Unet(dim=256, dim_mults=(1, 2, 3, 4), num_resnet_blocks=3,
                    layer_attns=(False, True, True, True), layer_cross_attns=(False, True, True, True),
                    cond_images_channels=c),
            ip.Unet(dim=128, dim_mults=(1, 2, 4, 8), num_resnet_blocks=2, memory_efficient=True,
                    layer_attns=(False, False, False, True), layer_cross_attns=(False, False, True, True),
                    init_conv_to_final_conv_residual=True, cond_images_channels=c),
            ip.Unet(dim=128, dim_mults=(1, 2, 4, 8), num_resnet_blocks=(2, 4, 6, 8), memory_efficient=True,
                    layer_attns=False, layer_cross_attns=(False, False, False, True),
                    init_conv_to_final_conv_residual=True, cond_images_channels=c),
        )
        return ip.Imagen(unets=unets, image_sizes=(64, 256, 1024), timesteps=(1024, 256, 256),
                         pred_objectives=("noise", "v", "v"), random_crop_sizes=(None, None, 256),
                         condition_on_text=False)


def test_paper_preset_has_the_authors_parameters_and_objectives():
    model = URCDM.random("paper")
    assert model.config["unets"][1] == model.config["unets"][2]  # level 2 is built as level 1
    for level in range(2):
        theirs = authors_imagen(level)
        with torch.device("meta"):
            ours = [model._construct(level, s) for s in range(3)]
        assert [sum(p.numel() for p in u.parameters()) for u in ours] == \
            [sum(p.numel() for p in u.parameters()) for u in theirs.unets]
    assert model.config["diffusion"]["objectives"] == ["noise", "v", "v"]
    assert model.config["diffusion"]["schedules"] == ["cosine", "cosine", "linear"]  # imagen's


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_paper_unets_compute_what_the_authors_compute(stage):
    """Same state-dict keys and shapes (a strict load), and with the same weights the same
    output for the same input: cross-attention over time tokens, memory-efficient blocks and the
    init-to-final residual all count. Level 1 (with the parent window); weights allocated once
    and shared, 32 px inputs."""
    model = URCDM.random("paper")
    theirs = authors_imagen(1).unets[stage].to_empty(device="cpu").eval()
    g = torch.Generator().manual_seed(stage)
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    with torch.device("meta"):
        ours = model._construct(1, stage)
    ours.load_state_dict(theirs.state_dict(), strict=True, assign=True)
    ours.eval()
    x, cond, lowres = (torch.randn(1, 3, 32, 32, generator=g) for _ in range(3))
    kw = dict(cond_images=cond)
    if stage:
        kw.update(lowres_cond_img=lowres, lowres_noise_times=torch.tensor([0.3]))
    t = torch.tensor([0.7])
    with torch.no_grad():
        assert torch.equal(ours(x, t, **kw), theirs(x, t, **kw))


def test_paper_sampling_is_the_authors(tmp_path):
    """imagen's sampler and loop at its full timesteps, R = 5, replacement, background skipped
    at the deepest level only and filled bilinearly; ``info`` shows it."""
    s = URCDM.random("paper").sampling
    assert (s.sampler, s.loop, s.steps, s.resample, s.blend, s.threshold) == \
        ("ancestral-imagen", "imagen", (1024, 256, 256), (5, 5, 5), "replace", 0.95)
    demo = URCDM.random("test").with_sampling_preset("paper")
    assert demo.sampling.steps == (1024, 256, 256) and demo.sampling.loop == "imagen"
    rule = demo.background
    assert (rule.levels, rule.fill, rule.sat_min, rule.fill_blur) == ("deepest", "bilinear", 0.02, 0)
    assert [rule.skips(lv, 3) for lv in range(3)] == [False, False, True]
    assert demo.fingerprint != URCDM.random("test").fingerprint
    assert SAMPLING_PRESETS["paper"]["sampling"]["steps"] == [1024, 256, 256]


def test_info_shows_the_paper_sampling(capsys):
    from lazyslide.cli import main

    assert main(["info", "--model", "random:paper", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["sampling"]["steps"] == [1024, 256, 256]
    assert info["sampling"]["sampler"] == "ancestral-imagen" and info["sampling"]["loop"] == "imagen"
    assert info["background"]["levels"] == "deepest"
    assert main(["info", "--model", "random:test", "--sampling-preset", "paper"]) == 0
    out = capsys.readouterr().out
    assert "ancestral-imagen, imagen loop, steps [1024, 256, 256], RePaint resamples [5, 5, 5]" in out
    assert "skipped at the deepest level, bilinear fill" in out


def test_raster_method_is_the_authors_tile_order(small_model, tmp_path):
    """``--method urcdm-raster``: a tile inpaints what its raster predecessors fixed (above
    and left), never a neighbour to its right, as in the authors' sampler."""
    from lazyslide import Slide, TileStore
    from lazyslide.geometry import TileId

    store = TileStore(tmp_path / "cache")
    model = small_model
    raster = Slide(model, 0, store, method="urcdm-raster", make_level0=False)
    parity = Slide(model, 0, store, make_level0=False)
    tile = TileId(2, 1, 0)
    deps = set(raster.plan.dependencies(model.geometry, tile))
    assert TileId(2, 0, 0) in deps and TileId(2, 2, 0) not in deps
    assert TileId(2, 2, 0) in set(parity.plan.dependencies(model.geometry, tile))
    raster.ensure([tile])
    assert raster.tile(*tile).shape == parity.tile(*tile).shape
    assert not (raster.tile(*tile) == parity.tile(*tile)).all()


def test_paper_preset_resamples_as_imagen_does():
    """imagen-pytorch goes between resolutions with nearest neighbours (``resize_image_to``):
    the paper preset's config says so, and ``resize`` then equals imagen's function."""
    from lazyslide.conditioning import resampling, resize

    assert resampling(URCDM.random("paper").config) == "nearest"
    assert resampling(URCDM.random("test").config) == "area"
    x = torch.rand(2, 3, 64, 64)
    ip = imagen().imagen_pytorch
    for size in (16, 128):
        assert torch.equal(resize(x, size, "nearest"), ip.resize_image_to(x, size))
    assert not torch.equal(resize(x, 16, "area"), ip.resize_image_to(x, 16))
