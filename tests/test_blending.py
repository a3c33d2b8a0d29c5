"""How generated pixels meet known ones: ``replace`` (RePaint) and ``poisson`` (gradient-domain)."""

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spl
import torch

from lazyslide import URCDM
from lazyslide.blending import BLENDS, _solve, _within, poisson, replace
from lazyslide.errors import ModelError
from lazyslide.evaluation.seams import seam_score
from lazyslide.geometry import TileId
from lazyslide.sampler import SAMPLERS, TileNoise, cosine_log_snr, parse_sampling, sample
from lazyslide.slide import Slide
from lazyslide.store import MemoryStore


def direct_solve(d: np.ndarray, known: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Poisson's equation ``sum over neighbours q of (h_p - h_q) = b_p`` on the unknown pixels by
    a sparse direct solve: ``d`` on the known pixels, no flux through the border (a neighbour
    outside is left out)."""
    n, m = d.shape
    free = np.argwhere(~known)
    index = -np.ones(d.shape, int)
    index[~known] = np.arange(len(free))
    rows, cols, vals, rhs = [], [], [], b[~known].astype(np.float64)
    for k, (i, j) in enumerate(free):
        degree = 0
        for a, b in ((i + 1, j), (i - 1, j), (i, j + 1), (i, j - 1)):
            if not (0 <= a < n and 0 <= b < m):
                continue
            degree += 1
            if known[a, b]:
                rhs[k] += d[a, b]
            else:
                rows.append(k), cols.append(index[a, b]), vals.append(-1.0)
        rows.append(k), cols.append(k), vals.append(float(degree))
    out = d.astype(np.float64).copy()
    out[~known] = spl.spsolve(sp.csr_matrix((vals, (rows, cols)), shape=(len(free),) * 2), rhs)
    return out


def masks(size: int = 48) -> torch.Tensor:
    """An L (top and left strips, as a later-phase tile has) and a right strip."""
    mask = torch.zeros(2, 1, size, size, dtype=torch.bool)
    mask[0, :, :6, :] = True
    mask[0, :, :, :6] = True
    mask[1, :, :, -6:] = True
    return mask


def texture(seed: int, size: int = 48) -> torch.Tensor:
    """(1, 3, size, size) in [-1, 1]: a gradient plus pixel noise (line differences everywhere alike)."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(-0.4, 0.4, size), torch.linspace(-0.3, 0.3, size), indexing="ij")
    return (x + y + 0.05 * torch.randn(3, size, size, generator=g))[None]


def test_the_multigrid_solve_is_within_half_a_uint8_level_of_a_direct_solve():
    mask = masks()
    g = torch.Generator().manual_seed(0)
    d = (0.2 * torch.randn(2, 3, 48, 48, generator=g) + 0.3) * mask
    rhs = 0.05 * torch.randn(2, 3, 48, 48, generator=g) * ~mask
    h = _solve(d, mask.float().expand_as(d), rhs)
    for i in range(2):
        for c in range(3):
            exact = direct_solve(d[i, c].numpy(), mask[i, 0].numpy(), rhs[i, c].numpy())
            assert np.abs(h[i, c].numpy() - exact).max() < 0.5 / 127.5


def u8(x: torch.Tensor) -> list[np.ndarray]:
    return [((i.permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8) for i in x]


def test_poisson_keeps_the_known_pixels_and_the_texture_and_removes_the_step():
    mask = masks()
    truth = torch.cat([texture(0), texture(1)])
    m = mask.expand_as(truth)
    # a sampler whose output came out lighter than the neighbours (on the known pixels too, as
    # the last step's x0 prediction does): replace leaves a 0.3 step where the known pixels end
    raw = truth + 0.3
    out = poisson(raw, truth, mask)
    assert torch.equal(out[m], truth[m])
    ms = [mask[i, 0].numpy() for i in range(2)]
    assert seam_score(u8(replace(raw, truth, mask)), ms) > 2
    # the boundary step is the sampler's own: like the texture's (1 would be exactly alike)
    assert 0.8 < seam_score(u8(out), ms) < 1.2
    # one band (6 px of 48) away from the known pixels the sampler's pixels are its own, shifted
    # by the tint its whole known border showed (0.3 lighter): as drawn, in the neighbours' tint
    far = ~_within(mask.float(), 6)
    assert torch.allclose(out[far.expand_as(out)], truth.clamp(-1, 1)[far.expand_as(raw)], atol=1e-5)


def strip_toy(size: int = 128, strip: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """The issue's toy tile: a known strip of ``strip`` columns on the left, value 0."""
    mask = torch.zeros(1, 1, size, size, dtype=torch.bool)
    mask[..., :strip] = True
    return torch.zeros(1, 3, size, size), mask


def test_poisson_neither_moves_the_tile_nor_turns_a_line_the_sampler_drew():
    """A +0.1 line in the first generated column (the sampler's, not a seam) stays +0.1 and the
    pixels beyond it do not move (the first version inverted it and moved them 24 levels)."""
    known, mask = strip_toy()
    raw = known.clone()
    raw[..., 16] = 0.1
    out = poisson(raw, known, mask)
    assert torch.allclose(out[..., 16], torch.tensor(0.1))
    assert float((out - raw)[..., 17:].abs().max()) < 1 / 127.5


def test_poisson_does_not_move_the_tile_past_a_decaying_bump():
    known, mask = strip_toy()
    raw = known.clone()
    cols = torch.arange(128, dtype=torch.float32)
    raw[...] = torch.where(cols >= 16, 0.1 * torch.exp(-(cols - 16) / 4), torch.zeros(()))
    out = poisson(raw, known, mask)
    assert float((out - raw)[..., 16:].abs().max()) < 1 / 127.5
    assert float(out[..., 16].mean()) > 0.099  # the bump is kept, not amplified or inverted


def test_a_mismatch_in_the_known_strip_fades_within_one_overlap():
    """A dark blob in the known strip that the generated pixels lack: the correction is held to a
    band one overlap (12.5 % of the side, 16 px here) wide; the first version left -0.11 (14
    levels) 24 px into the tile and corrections across the whole of it."""
    known, mask = strip_toy()
    known[..., 48:80, 0:16] = -0.5
    raw = torch.zeros_like(known)
    out = poisson(raw, known, mask)
    h = (out - raw)[0, 0]
    assert float(h[48:80, 16].mean()) < -0.2  # the seam is taken up next to the blob
    assert float(h[:, 16 + 16:].abs().max()) == 0  # and nothing moves from one overlap on
    assert float(h[:, 16 + 8:].abs().max()) < 0.5 * float(h[:, 16].abs().max())  # fading


def test_poisson_leaves_a_sample_without_known_pixels_alone():
    raw, known = texture(2).repeat(2, 1, 1, 1), texture(3).repeat(2, 1, 1, 1)
    mask = masks()
    mask[1] = False
    out = poisson(raw, known, mask)
    assert torch.equal(out[1], raw[1]) and not torch.equal(out[0], raw[0])
    assert torch.equal(poisson(raw, known, torch.zeros_like(mask)), raw)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_the_sampler_blends_after_its_last_step(sampler):
    """Every sampler: the known pixels stay exact, and ``replace`` is what sampling was before
    blends existed (the same pixels: stored tiles keep their fingerprints)."""

    def model(x: torch.Tensor, log_snr: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x.roll(1, dims=-1) * 0.7 + 0.1)

    shape, mask = (3, 48, 48), masks()
    known = torch.rand(2, *shape, generator=torch.Generator().manual_seed(4)) * 2 - 1
    kw = dict(log_snr=cosine_log_snr, steps=4, known=known, mask=mask, resample=2,
              step=SAMPLERS[sampler].step)
    default = sample(model, shape, TileNoise([1, 2]), **kw)
    assert torch.equal(default, sample(model, shape, TileNoise([1, 2]), blend=replace, **kw))
    blended = sample(model, shape, TileNoise([1, 2]), blend=poisson, **kw)
    m = mask.expand_as(blended)
    assert torch.equal(blended[m], known[m]) and not torch.equal(blended, default)


def test_blend_is_a_sampling_setting_in_the_fingerprint():
    model = URCDM.random("test", 0)
    assert model.sampling.blend == "replace" and "blend" not in model.config["sampling"]
    blended = model.with_sampling(blend="poisson")
    assert blended.fingerprint != model.fingerprint
    assert blended.config["sampling"]["blend"] == "poisson"
    with pytest.raises(ModelError, match="unknown blend 'nope'; choose from replace, poisson"):
        model.with_sampling(blend="nope")
    level2 = model.with_sampling(levels={2: parse_sampling("ancestral:2,1,1:1:poisson", 3)})
    assert level2.sampling.for_level(2).blend == "poisson" and level2.sampling.for_level(1).blend == "replace"
    assert set(BLENDS) == {"replace", "poisson"}


def test_a_blended_tile_is_a_pure_function_of_its_address_and_keeps_its_neighbours_bytes():
    model = URCDM.random("test", 0).with_sampling(blend="poisson")
    tile = TileId(2, 2, 1)
    a = Slide(model, seed=5, store=MemoryStore())
    pixels = a.tile(*tile)
    job = a._job(tile)
    assert job.mask.any() and np.array_equal(pixels[job.mask], job.known[job.mask])
    b = Slide(model, seed=5, store=MemoryStore())
    assert np.array_equal(b.tile(*tile), pixels)
    plain = Slide(URCDM.random("test", 0), seed=5, store=MemoryStore()).tile(*tile)
    assert not np.array_equal(plain, pixels)


def background_job(size: int = 64):
    """A level-1 background job: a noisy glass window, a lighter strip known on the left."""
    from lazyslide.generator import TileJob

    rng = np.random.default_rng(0)
    window = np.clip(rng.normal(236, 6, (size, size, 3)), 0, 255).astype(np.uint8)
    known = np.full((size, size, 3), 246, np.uint8)
    mask = np.zeros((size, size), bool)
    mask[:, :8] = True
    q = size / 4
    return TileJob(TileId(1, 1, 0), 0, known, mask, window, (q, q, 3 * q, 3 * q))


def test_a_background_tile_blends_into_its_neighbours_and_may_blur_its_parent():
    from dataclasses import replace as with_rule

    from lazyslide.generator import fill_background

    model = URCDM.random("test", 0)
    job = background_job(model.geometry.tile)
    plain = fill_background(model, job)
    assert np.array_equal(plain[job.mask], job.known[job.mask])
    step = np.abs(plain[:, 8].astype(float) - plain[:, 7]).mean()
    blended = fill_background(model.with_sampling(blend="poisson"), job)
    assert np.array_equal(blended[job.mask], job.known[job.mask])
    assert np.abs(blended[:, 8].astype(float) - blended[:, 7]).mean() < step / 2
    blurred_model = model.with_sampling()
    blurred_model._background = with_rule(model.background, fill_blur=2.0)
    blurred = fill_background(blurred_model, job)
    inside = (slice(None), slice(job.mask.shape[1] // 2, None))
    assert blurred[inside].std() < plain[inside].std() / 2  # the parent's pixel noise, not magnified


def test_fill_blur_is_in_the_fingerprint_only_when_set():
    from lazyslide.background import BackgroundRule
    from lazyslide.errors import LazySlideError

    assert "fill_blur" not in BackgroundRule().to_dict()
    assert BackgroundRule.from_dict({"fill_blur": 2.0}).to_dict()["fill_blur"] == 2.0
    for bad in (-1, 100, True, "2"):
        with pytest.raises(LazySlideError, match="fill_blur must be a radius"):
            BackgroundRule(fill_blur=bad)


def test_poisson_ramps_between_neighbours_of_two_tints():
    """Known strips on the left (0.1 lighter than the sampler drew) and on the right (0.1
    darker): the tile takes a smooth ramp between them, with no step where the bands end."""
    known, mask = strip_toy()
    mask[..., -16:] = True
    known[..., :16], known[..., -16:] = 0.1, -0.1
    raw = torch.zeros_like(known)
    out = poisson(raw, known, mask)[0, 0, 64]
    steps = out[16:-16].diff()
    assert float(out[16]) > 0.09 and float(out[-17]) < -0.09
    assert float(steps.max()) <= 0 and float(steps.abs().max()) < 0.01  # monotone, gentle
