"""The sampler: forward process, re-noising, inpainting, per-tile randomness."""

import pytest
import torch

from lazyslide._imagen import imagen
from lazyslide.sampler import (
    SAMPLERS,
    TileNoise,
    alpha_sigma,
    ancestral_step,
    cosine_log_snr,
    ddim_step,
    dpmpp_2m_step,
    linear_log_snr,
    q_sample,
    renoise,
    sample,
    timesteps,
)

N = 200_000


def renoise_std_errors(renoise_fn) -> tuple[float, float]:
    """Relative errors of (marginal, injected) noise std after re-noising x_s from s=0.3 to t=0.4.

    Marginal: x_t - a_t x0 must have std sigma_t. Injected: x_t - (a_t/a_s) x_s must have std
    sqrt(sigma_t^2 - (a_t/a_s)^2 sigma_s^2), the std of q(x_t | x_s).
    """
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(N, generator=g) * 2 - 1
    ls_s, ls_t = cosine_log_snr(torch.tensor(0.3)), cosine_log_snr(torch.tensor(0.4))
    x_s = q_sample(x0, ls_s, torch.randn(N, generator=g))
    x_t = renoise_fn(x_s, ls_s, ls_t, torch.randn(N, generator=g))
    (a_s, sig_s), (a_t, sig_t) = alpha_sigma(ls_s), alpha_sigma(ls_t)
    ratio = a_t / a_s
    marginal = float((x_t - a_t * x0).std()) / float(sig_t)
    injected = float((x_t - ratio * x_s).std()) / float(torch.sqrt(sig_t**2 - ratio**2 * sig_s**2))
    return abs(marginal - 1), abs(injected - 1)


def test_renoise_has_the_variance_of_the_forward_process():
    marginal, injected = renoise_std_errors(renoise)
    assert marginal < 0.01 and injected < 0.01


def test_the_same_check_catches_the_imagen_pytorch_bug():
    """imagen-pytorch's q_sample_from_to re-noises with far too little noise (issue 293)."""
    sched = imagen().imagen_pytorch.GaussianDiffusionContinuousTimes(noise_schedule="cosine")

    def upstream(x_s, ls_s, ls_t, noise):
        # same times as above, through the library's own function
        out = sched.q_sample_from_to(x_s[None], torch.tensor([0.3]), torch.tensor([0.4]), noise=noise[None])
        return out[0]

    marginal, injected = renoise_std_errors(upstream)
    assert marginal > 0.1 and injected > 0.5


def test_schedules_match_imagen_pytorch():
    ip = imagen().imagen_pytorch
    t = torch.linspace(0, 1, 101)
    assert torch.allclose(cosine_log_snr(t), ip.alpha_cosine_log_snr(t))
    assert torch.allclose(linear_log_snr(t), ip.beta_linear_log_snr(t))


def toy_model(x, log_snr):
    """A smooth deterministic x0-predictor standing in for a unet."""
    return torch.tanh(x.roll(1, dims=-1) * 0.7 + 0.1)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_known_pixels_are_preserved_exactly(sampler):
    shape = (3, 16, 16)
    known = torch.rand(2, *shape) * 2 - 1
    mask = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    mask[..., :4, :] = True
    mask[1, ..., :, -2:] = True
    out = sample(toy_model, shape, TileNoise([1, 2]), log_snr=cosine_log_snr, steps=6,
                 known=known, mask=mask, resample=3, step=SAMPLERS[sampler].step)
    m = mask.expand_as(out)
    assert torch.equal(out[m], known[m])
    assert not torch.equal(out[~m], known[~m])


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_noise_is_per_tile_and_reproducible(sampler):
    shape = (3, 8, 8)
    kw = dict(log_snr=cosine_log_snr, steps=4, step=SAMPLERS[sampler].step)
    a = sample(toy_model, shape, TileNoise([7, 8]), **kw)
    b = sample(toy_model, shape, TileNoise([9, 7]), **kw)
    torch.manual_seed(123)  # the global RNG must not matter
    c = sample(toy_model, shape, TileNoise([7]), **kw)
    assert torch.equal(a[0], b[1]) and torch.equal(a[0], c[0])
    assert not torch.equal(a[0], a[1])


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_inpainting_is_decided_per_sample(sampler):
    """A sample without known pixels batched with inpainting ones draws exactly its own random
    numbers: with a batch-invariant model its result equals the one it gets alone."""
    shape = (3, 8, 8)
    known = torch.rand(2, *shape) * 2 - 1
    mask = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    mask[1, ..., :3, :] = True  # sample 0 knows nothing, sample 1 a strip
    kw = dict(log_snr=cosine_log_snr, steps=5, resample=3, step=SAMPLERS[sampler].step)
    mixed = sample(toy_model, shape, TileNoise([3, 4]), known=known, mask=mask, **kw)
    alone0 = sample(toy_model, shape, TileNoise([3]), known=known[:1], mask=mask[:1], **kw)
    alone1 = sample(toy_model, shape, TileNoise([4]), known=known[1:], mask=mask[1:], **kw)
    assert torch.equal(mixed[0], alone0[0]) and torch.equal(mixed[1], alone1[0])
    nothing = sample(toy_model, shape, TileNoise([3]), **kw)  # no known pixels at all
    assert torch.equal(alone0[0], nothing[0])


def diffusers_dpmpp(model, x, log_snr, order: int) -> torch.Tensor:
    """diffusers' DPM-Solver++ multistep scheduler run on ``model`` (an x0 predictor) over our
    log-SNR grid: its sigmas are set to sigma / alpha = exp(-log_snr / 2), the only schedule
    values its update reads (step index -> sigma -> alpha, sigma, lambda), but for the last,
    which is diffusers' default final sigma, 0 (its last step returns the x0 prediction)."""
    from diffusers import DPMSolverMultistepScheduler

    steps = len(log_snr) - 1
    sched = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=order,
                                        prediction_type="sample")  # final sigma: its default, 0
    assert sched.config.final_sigmas_type == "zero"
    sched.set_timesteps(steps)
    sigmas = torch.exp(-log_snr.double() / 2).float()
    sched.sigmas = torch.cat([sigmas[:-1], torch.zeros(1)])  # the grid ends at sigma = 0
    for i, t in enumerate(sched.timesteps):
        x = sched.step(model(x, log_snr[i].expand(len(x))), t, x).prev_sample
    return x


@pytest.mark.parametrize("steps", [6, 20])  # below and above diffusers' lower_order_final (15)
@pytest.mark.parametrize(("step", "order"), [(dpmpp_2m_step, 2), (ddim_step, 1)])
def test_fast_solvers_match_diffusers(step, order, steps):
    """DPM-Solver++(2M) equals diffusers' (same model callable, schedule and first noise);
    deterministic DDIM equals its first-order member (Lu et al. 2022: DPM-Solver++(1) = DDIM)."""
    shape = (3, 8, 8)
    ours = sample(toy_model, shape, TileNoise([5, 6]), log_snr=cosine_log_snr, steps=steps,
                  step=step, threshold=1.0)
    ref = diffusers_dpmpp(toy_model, TileNoise([5, 6])(shape), timesteps(cosine_log_snr, steps), order)
    assert torch.allclose(ours, ref.clamp(-1, 1), atol=1e-5)
    if order == 2:  # the second-order correction is in play
        first = sample(toy_model, shape, TileNoise([5, 6]), log_snr=cosine_log_snr, steps=steps,
                       step=ddim_step, threshold=1.0)
        assert (ours - first).abs().max() > 1e-3


def oracle_residual(step, steps: int, resample: int = 1) -> float:
    """uint8 levels RMS between the output and the data when the denoiser knows the data (a
    point mass): what a sampler itself leaves of the noise, nothing of the network's error."""
    shape = (3, 16, 16)
    data = torch.rand(1, *shape, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8
    mask = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    mask[..., :2, :] = True
    out = sample(lambda x, log_snr: data.expand_as(x), shape, TileNoise([1]), log_snr=cosine_log_snr,
                 steps=steps, step=step, known=data, mask=mask, resample=resample, threshold=1.0)
    return float(((out - data)[~mask.expand_as(out)] * 127.5).pow(2).mean().sqrt())


@pytest.mark.parametrize("steps", [4, 16, 64, 256])
@pytest.mark.parametrize("sampler", [name for name in SAMPLERS if name != "ancestral-imagen"])
def test_samplers_end_without_noise(sampler, steps):
    """The time grid ends at t = 0, where the cosine schedule's sigma is still 0.0125: a sampler
    must return the data estimate there, not a noisy x (DDIM and DPM-Solver++ left 1.6 uint8
    levels RMS, ancestral 0.18 at 16 steps and 1.1 at 256, before they did)."""
    assert oracle_residual(SAMPLERS[sampler].step, steps, resample=2) < 0.2


def test_imagens_sampler_keeps_its_residual_noise():
    """``ancestral-imagen`` is imagen-pytorch's step as the authors sampled: its last step
    returns the posterior mean at t = 0, which keeps noise that grows with the step count."""
    step = SAMPLERS["ancestral-imagen"].step
    few, many = oracle_residual(step, 16), oracle_residual(step, 256)
    assert 0.1 < few < many and many > 0.8


def test_ddim_eta_one_is_ancestral():
    """DDIM with eta = 1 is DDPM's ancestral sampler, random numbers included."""
    from functools import partial

    shape = (3, 8, 8)
    kw = dict(log_snr=cosine_log_snr, steps=7, threshold=0.95)
    a = sample(toy_model, shape, TileNoise([11]), step=ancestral_step, **kw)
    d = sample(toy_model, shape, TileNoise([11]), step=partial(ddim_step, eta=1.0), **kw)
    assert torch.allclose(a, d, atol=1e-5)


def test_sampling_config_keeps_old_fingerprints():
    from lazyslide import URCDM
    from lazyslide.errors import ModelError
    from lazyslide.sampler import SAMPLERS, SamplingConfig

    model = URCDM.random("test", 0)
    cfg = model.sampling
    assert cfg.sampler == "ancestral" and "ancestral" in SAMPLERS
    # fields at their original values are not written, so configs (and fingerprints) of models
    # made before they existed are unchanged
    assert cfg.to_dict() == {"steps": [4, 2, 2], "resample": [2, 2, 2], "threshold": 0.95}
    # the config is the one before the split: with the sampler version it had then (ancestral
    # 1), it hashes to the fingerprint it had; ancestral 2 (ends at x0) must change it
    import hashlib
    import json

    def fingerprint(version: str) -> str:
        payload = json.dumps(model.config, sort_keys=True) + f"|sampler={version}"
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    assert fingerprint("1") == "cc6a429a00691de2"  # this preset's fingerprint before the split
    assert model.fingerprint == fingerprint("2") == "3ea8b936ceb355ff"
    assert SamplingConfig.from_dict(cfg.to_dict()) == cfg
    for bad in ({"steps": [1, 1], "resample": [1, 1, 1]}, {"steps": [0], "resample": [1]},
                {"steps": [1], "resample": [1], "sampler": "nope"}, {"steps": [1], "resample": [1],
                                                                      "colour": 1}):
        with pytest.raises(ModelError):
            SamplingConfig.from_dict(bad)


def test_a_level_may_sample_otherwise():
    """Per-level settings (level 0, made once per slide, with more steps): the level's tiles
    use them, the others the model's; explicit settings apply at every level."""
    from lazyslide import URCDM
    from lazyslide.errors import ModelError
    from lazyslide.sampler import SamplingConfig

    model = URCDM.random("test", 0)
    tuned = model.with_sampling(levels={0: {"steps": [6, 3, 3], "resample": [1, 1, 1]}})
    assert tuned.fingerprint != model.fingerprint
    assert tuned.config["sampling"]["levels"] == {"0": {"steps": [6, 3, 3], "resample": [1, 1, 1]}}
    assert tuned.sampling.for_level(0).steps == (6, 3, 3)
    assert tuned.sampling.for_level(1) == model.sampling
    assert tuned.sampling.evaluations(0) == 12 and tuned.sampling.evaluations(2) == 16
    assert SamplingConfig.from_dict(tuned.config["sampling"]) == tuned.sampling
    everywhere = tuned.with_sampling(steps=[2, 2, 2])  # as --sampling-steps does
    assert everywhere.sampling.for_level(0).steps == (2, 2, 2)
    assert everywhere.sampling.for_level(0).resample == (1, 1, 1)  # not changed: still level 0's
    for bad in ({5: {"steps": [1, 1, 1]}}, {0: {"steps": [1, 1]}}, {0: {"colour": 1}},
                {0: {"sampler": "nope"}}, {"x": {"steps": [1, 1, 1]}}):
        with pytest.raises(ModelError):
            model.with_sampling(levels=bad)


def test_level_sampling_reaches_the_generator():
    """The level's settings are what its tiles are sampled with (counted at the network)."""
    from collections import Counter

    import numpy as np

    from lazyslide import URCDM
    from lazyslide.generator import TileJob, generate
    from lazyslide.geometry import TileId

    model = URCDM.random("test", 0).with_sampling(
        levels={0: {"steps": [3, 1, 1], "resample": [1, 1, 1]}})
    t = model.geometry.tile
    job = TileJob(TileId(0, 0, 0), 0, np.zeros((t, t, 3), np.uint8), np.zeros((t, t), bool))
    counts: Counter[int] = Counter()
    generate(model, [job], evaluations=counts)
    assert counts[0] == 5


def test_imagen_loop_is_imagen_pytorchs(monkeypatch):
    """``loop="imagen"`` with ``ancestral-imagen`` is ``Imagen.p_sample_loop`` (the authors'
    sampler), inpainting and RePaint resamples included: the same tiny unet, and every random
    draw on both sides the same tensor, so only the arithmetic and its order are compared."""
    from lazyslide._imagen import ImagenDenoiser
    from lazyslide.sampler import LOOPS
    from lazyslide.stage import x0_predictor

    ip = imagen()
    torch.manual_seed(0)
    unet = ip.Unet(dim=8, dim_mults=(1, 2), num_resnet_blocks=1, layer_attns=False,
                   layer_cross_attns=False, channels=3)
    model = ip.Imagen(unets=(unet,), image_sizes=(16,), timesteps=6, condition_on_text=False,
                      pred_objectives="v").eval()
    for p in model.unets[0].parameters():  # imagen zero-initialises its output convolution
        torch.nn.init.normal_(p, std=0.05)
    shape = (3, 16, 16)
    fixed = torch.randn(1, *shape, generator=torch.Generator().manual_seed(3))
    known = torch.rand(1, *shape, generator=torch.Generator().manual_seed(4))
    mask = torch.zeros(1, 16, 16, dtype=torch.bool)
    mask[:, :4] = True
    monkeypatch.setattr(torch, "randn_like", lambda x, **kw: fixed.clone())
    monkeypatch.setattr(torch, "randn", lambda *a, **kw: fixed.clone())
    with torch.no_grad():
        theirs = model.p_sample_loop(model.unets[0], (1, *shape), noise_scheduler=model.noise_schedulers[0],
                                     inpaint_images=known, inpaint_masks=mask, inpaint_resample_times=3,
                                     pred_objective="v", use_tqdm=False)
    monkeypatch.undo()

    class Fixed(TileNoise):
        def __call__(self, shape, only=None):
            return fixed.clone() if only is None or only[0] else torch.zeros_like(fixed)

    predict = x0_predictor(ImagenDenoiser(model.unets[0]), "v")
    ours = LOOPS["imagen"](predict, shape, Fixed([0]), log_snr=cosine_log_snr, steps=6,
                           step=SAMPLERS["ancestral-imagen"].step, known=known * 2 - 1,
                           mask=mask[:, None], resample=3, threshold=0.95)
    assert torch.allclose(ours * 0.5 + 0.5, theirs, atol=1e-5)
    repaint = sample(predict, shape, Fixed([0]), log_snr=cosine_log_snr, steps=6, known=known * 2 - 1,
                     mask=mask[:, None], resample=3, threshold=0.95)
    assert (repaint * 0.5 + 0.5 - theirs).abs().max() > 1e-2  # RePaint's loop is another
