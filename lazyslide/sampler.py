"""Reverse diffusion, owned by lazyslide: plain functions over a model callable.

Why not ``Imagen.sample``: imagen-pytorch 2.1.0 re-noises wrongly during RePaint resampling
(``q_sample_from_to`` injects ~5-13% of the forward-process noise std, upstream issue 293),
draws every random number from the global torch RNG (so a tile's pixels would depend on what
ran before it), and passes the conditioning image un-normalised. Here every tile has its own
``torch.Generator``, the jump back is the true forward process q(x_t | x_s), and the caller owns
normalisation. ``sample_imagen`` keeps imagen's loop (its jump, its order) with per-tile noise,
for the paper's sampling: how the authors made their slides.

The pieces, as in k-diffusion's ``sampling.py``: a time grid (``timesteps``), step functions
(one reverse step of one sampler family, registered in ``SAMPLERS``), and one inpainting wrapper
(``sample``: known-pixel replacement and RePaint resample jumps) that runs any step function and
decides per sample whether it inpaints. ``SamplingConfig`` is the validated, frozen description
of how a model samples; the model fingerprint hashes it. The schedules and the posterior are
imagen-pytorch's continuous-time ones; ``model(x_t, log_snr_t) -> x0`` is the only contract
with the network.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch
from torch import Tensor

from .blending import BLENDS, BlendFn
from .blending import replace as replace_pixels
from .errors import ModelError

X0Model = Callable[[Tensor, Tensor], Tensor]

#: Bounds on sampling settings: far above any useful value (the authors sample 1024/256/256 steps),
#: low enough that a typo fails with a message instead of an overflow or a run of years.
MAX_STEPS = 10_000
MAX_RESAMPLE = 100


# -- noise schedules (log SNR as a function of t in [0, 1]; identical to imagen-pytorch) ----------
def cosine_log_snr(t: Tensor, s: float = 0.008) -> Tensor:
    return -torch.log(((torch.cos((t + s) / (1 + s) * math.pi * 0.5) ** -2) - 1).clamp(min=1e-5))


def linear_log_snr(t: Tensor) -> Tensor:
    return -torch.log(torch.expm1(1e-4 + 10 * t**2))


SCHEDULES: dict[str, Callable[[Tensor], Tensor]] = {
    "cosine": cosine_log_snr,
    "linear": linear_log_snr,
}


def alpha_sigma(log_snr: Tensor) -> tuple[Tensor, Tensor]:
    return torch.sqrt(torch.sigmoid(log_snr)), torch.sqrt(torch.sigmoid(-log_snr))


# -- the forward process ------------------------------------------------------------------------
def q_sample(x0: Tensor, log_snr: Tensor, noise: Tensor) -> Tensor:
    """x_t ~ q(x_t | x_0)."""
    a, s = alpha_sigma(log_snr)
    return a * x0 + s * noise


def renoise(x_s: Tensor, log_snr_s: Tensor, log_snr_t: Tensor, noise: Tensor) -> Tensor:
    """x_t ~ q(x_t | x_s) for t later (noisier) than s: the RePaint jump back.

    x_t = (a_t / a_s) x_s + sqrt(sigma_t^2 - (a_t / a_s)^2 sigma_s^2) * noise. imagen-pytorch
    uses ``sigma_t - sigma_s * a_t / a_s`` as the noise coefficient instead (too little noise).
    """
    a_s, sig_s = alpha_sigma(log_snr_s)
    a_t, sig_t = alpha_sigma(log_snr_t)
    ratio = a_t / a_s
    std = torch.sqrt((sig_t**2 - ratio**2 * sig_s**2).clamp(min=0))
    return ratio * x_s + std * noise


def renoise_imagen(x_s: Tensor, log_snr_s: Tensor, log_snr_t: Tensor, noise: Tensor) -> Tensor:
    """imagen-pytorch's ``q_sample_from_to`` (1.18.5, as the authors sampled; 2.1.0 alike): noise
    coefficient ``sigma_t - sigma_s a_t / a_s``, about 5-13 % of the forward process's std."""
    a_s, sig_s = alpha_sigma(log_snr_s)
    a_t, sig_t = alpha_sigma(log_snr_t)
    ratio = a_t / a_s
    return ratio * x_s + (sig_t - sig_s * ratio) * noise


def posterior(x0: Tensor, x_t: Tensor, log_snr_t: Tensor, log_snr_s: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance of q(x_s | x_t, x_0), s < t (Kingma et al. 2021, eq. 33)."""
    a_t, _ = alpha_sigma(log_snr_t)
    a_s, sig_s = alpha_sigma(log_snr_s)
    c = -torch.expm1(log_snr_t - log_snr_s)
    return a_s * (x_t * (1 - c) / a_t + c * x0), sig_s**2 * c


def dynamic_threshold(x0: Tensor, percentile: float) -> Tensor:
    """Imagen's dynamic thresholding: clip to the per-sample percentile of |x0|, rescale."""
    if percentile >= 1:
        return x0.clamp(-1, 1)
    s = torch.quantile(x0.reshape(x0.shape[0], -1).abs(), percentile, dim=-1).clamp(min=1)
    s = s.view(-1, *([1] * (x0.ndim - 1)))
    return x0.clamp(-s, s) / s


# -- per-tile randomness ------------------------------------------------------------------------
def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any address, stable across processes and platforms."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class TileNoise:
    """Gaussian noise for a batch, sample ``i`` drawn only from its own generator.

    Noise is drawn on the CPU so a tile's random numbers do not depend on the device or on the
    other tiles in its batch. ``only`` draws for some samples (zeros for the others, whose
    generators do not advance), so a sample draws the same numbers whatever its batch needs.
    """

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu"):
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.generators)

    def __call__(self, shape: Sequence[int], only: Sequence[bool] | None = None) -> Tensor:
        shape = tuple(shape)
        draws = [torch.randn(shape, generator=g) if only is None or only[i] else torch.zeros(shape)
                 for i, g in enumerate(self.generators)]
        return torch.stack(draws).to(self.device)


# -- the time grid ------------------------------------------------------------------------------
def timesteps(schedule: Callable[[Tensor], Tensor], steps: int,
              device: torch.device | str = "cpu") -> Tensor:
    """log SNR at ``steps + 1`` equally spaced times from t = 1 (noise) to t = 0 (data)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return schedule(torch.linspace(1.0, 0.0, steps + 1, device=device))


# -- step functions: one reverse step x_t -> x_s of one sampler family ---------------------------
Prev = tuple[Tensor, Tensor]  # a multistep solver's memory: (x0 prediction, log SNR) of the last step


class Step(Protocol):
    def __call__(self, model: X0Model, x: Tensor, log_snr_t: Tensor, log_snr_s: Tensor,
                 noise: Callable[[], Tensor], *, threshold: float, last: bool,
                 prev: Prev | None) -> tuple[Tensor, Tensor]: ...


def _predict_x0(model: X0Model, x: Tensor, log_snr: Tensor, threshold: float) -> Tensor:
    return dynamic_threshold(model(x, log_snr.expand(len(x))), threshold)


def ancestral_step(model: X0Model, x: Tensor, log_snr_t: Tensor, log_snr_s: Tensor,
                   noise: Callable[[], Tensor], *, threshold: float, last: bool,
                   prev: Prev | None = None) -> tuple[Tensor, Tensor]:
    """DDPM's ancestral step: x_s ~ q(x_s | x_t, x0 = model(x_t)); the last step returns x0.

    The grid's last time, t = 0, still has sigma 0.0125 under the cosine schedule: the posterior
    mean there (``ancestral_imagen_step``) keeps a part of x_t's noise, 0.18 uint8 levels RMS
    with an oracle denoiser at 16 steps, 1.1 at 256 (tests/test_sampler.py)."""
    x0 = _predict_x0(model, x, log_snr_t, threshold)
    if last:
        return x0, x0
    mean, var = posterior(x0, x, log_snr_t, log_snr_s)
    return mean + var.sqrt() * noise(), x0


def ancestral_imagen_step(model: X0Model, x: Tensor, log_snr_t: Tensor, log_snr_s: Tensor,
                          noise: Callable[[], Tensor], *, threshold: float, last: bool,
                          prev: Prev | None = None) -> tuple[Tensor, Tensor]:
    """imagen-pytorch's ``p_sample`` (as the authors sampled): the ancestral step, but the last
    one returns the posterior mean at t = 0 rather than x0, so a little noise stays."""
    x0 = _predict_x0(model, x, log_snr_t, threshold)
    mean, var = posterior(x0, x, log_snr_t, log_snr_s)
    return (mean if last else mean + var.sqrt() * noise()), x0


def ddim_step(model: X0Model, x: Tensor, log_snr_t: Tensor, log_snr_s: Tensor,
              noise: Callable[[], Tensor], *, threshold: float, last: bool,
              prev: Prev | None = None, eta: float = 0.0) -> tuple[Tensor, Tensor]:
    """DDIM (Song et al. 2021, eq. 12): x_s = a_s x0 + sqrt(sigma_s^2 - v) eps + sqrt(v) z with
    v = eta^2 x the posterior variance. eta = 0 is deterministic (k-diffusion's Euler step in
    sigma = sigma_t / a_t); eta = 1 is ``ancestral_step`` exactly but at the last step, which
    returns the x0 prediction: the grid's last time, t = 0, still has sigma 0.0125 under the
    cosine schedule, and a_s x0 + sigma_s eps there left 1.6 uint8 levels RMS of noise.
    Registered at eta = 0; another eta is ``functools.partial(ddim_step, eta=...)``."""
    x0 = _predict_x0(model, x, log_snr_t, threshold)
    if last:  # the grid ends at sigma = 0 (diffusers' default final sigma): the data estimate
        return x0, x0
    a_t, sig_t = alpha_sigma(log_snr_t)
    a_s, sig_s = alpha_sigma(log_snr_s)
    eps = (x - a_t * x0) / sig_t
    if eta == 0:
        return a_s * x0 + sig_s * eps, x0
    var = eta**2 * sig_s**2 * -torch.expm1(log_snr_t - log_snr_s)
    mean = a_s * x0 + torch.sqrt((sig_s**2 - var).clamp(min=0)) * eps
    return (mean if last else mean + var.sqrt() * noise()), x0


def dpmpp_2m_step(model: X0Model, x: Tensor, log_snr_t: Tensor, log_snr_s: Tensor,
                  noise: Callable[[], Tensor], *, threshold: float, last: bool,
                  prev: Prev | None = None) -> tuple[Tensor, Tensor]:
    """DPM-Solver++(2M) (Lu et al. 2022, alg. 2) in lambda = log(a / sigma) = log_snr / 2, over
    data (x0) predictions: first order (= DDIM) without ``prev``, else the multistep second-order
    correction from the previous step's x0. Deterministic; as diffusers' and k-diffusion's,
    with their default final sigma of zero: the last step returns the x0 prediction."""
    x0 = _predict_x0(model, x, log_snr_t, threshold)
    if last:
        return x0, x0
    a_s, sig_s = alpha_sigma(log_snr_s)
    _, sig_t = alpha_sigma(log_snr_t)
    h = (log_snr_s - log_snr_t) / 2
    d = x0
    if prev is not None:
        x0_prev, log_snr_prev = prev
        r = (log_snr_t - log_snr_prev) / 2 / h
        d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_prev
    return sig_s / sig_t * x - a_s * torch.expm1(-h) * d, x0


@dataclass(frozen=True)
class Sampler:
    """A registered sampler family: its step function and the version its fingerprint carries
    (bump it when the same settings would give other pixels)."""

    step: Step
    version: str


#: The sampler families, by the name a model config and ``--sampler`` use.
SAMPLERS: dict[str, Sampler] = {
    # 2 (all three): the last step returns x0 (sigma = 0), not an estimate of x at t = 0
    "ancestral": Sampler(ancestral_step, version="2"),
    # ancestral version 1, kept: the authors' sampler (imagen-pytorch), for the paper's sampling
    "ancestral-imagen": Sampler(ancestral_imagen_step, version="1"),
    "ddim": Sampler(ddim_step, version="2"),
    "dpmpp-2m": Sampler(dpmpp_2m_step, version="2"),
}


# -- the inpainting loops -----------------------------------------------------------------------
def _loop_setup(noise: TileNoise, log_snr: Callable[[Tensor], Tensor], steps: int,
                known: Tensor | None, mask: Tensor | None, resample: int):
    """What both loops start from: the time grid, the known pixels on the noise's device, which
    samples inpaint, the passes per step, and the mask of samples whose first pass stands."""
    if steps < 1 or resample < 1:
        raise ValueError(f"steps and resample must be >= 1, got {steps} and {resample}")
    device = noise.device
    lsnr = timesteps(log_snr, steps, device)
    if known is None or mask is None:
        inpaint = [False] * len(noise)
    else:
        known, mask = known.to(device), mask.to(device)
        inpaint = mask.flatten(1).any(1).tolist()
    repeats = resample if any(inpaint) else 1
    keep_first = torch.tensor([not v for v in inpaint], device=device).view(-1, 1, 1, 1)
    return lsnr, known, mask, inpaint, repeats, keep_first


# -- the inpainting wrapper ---------------------------------------------------------------------
@torch.no_grad()
def sample(
    model: X0Model,
    shape: Sequence[int],
    noise: TileNoise,
    *,
    log_snr: Callable[[Tensor], Tensor],
    steps: int,
    step: Step = ancestral_step,
    known: Tensor | None = None,
    mask: Tensor | None = None,
    resample: int = 1,
    threshold: float = 0.95,
    blend: BlendFn = replace_pixels,
) -> Tensor:
    """A batch of ``shape`` (C, H, W) images in [-1, 1], ``step`` after ``step`` on the grid.

    With ``known`` (B, C, H, W) and ``mask`` (B, 1, H, W, True = keep), RePaint inpainting:
    after every step the known pixels are replaced by a forward sample of ``known`` at the new
    noise level, and each step is repeated ``resample`` times, jumping back with the true forward
    process in between. Decided per sample: one without known pixels draws exactly the random
    numbers it would draw alone (no replacement, no repeats), so its pixels do not depend on what
    it is batched with. The returned known pixels equal ``known`` exactly: ``blend`` (from
    ``lazyslide.blending``) joins them to the last step's output.
    """
    lsnr, known, mask, inpaint, repeats, keep_first = _loop_setup(
        noise, log_snr, steps, known, mask, resample)

    def replace_known(x: Tensor, log_snr_now: Tensor, exact: bool) -> Tensor:
        if not any(inpaint):
            return x
        target = known if exact else q_sample(known, log_snr_now, noise(shape, only=inpaint))
        return torch.where(mask, target, x)

    x = replace_known(noise(shape), lsnr[0], exact=False)
    prev: Prev | None = None  # the last step's x0 (multistep solvers); repeats of a step reuse it
    for i in range(steps):
        l_t, l_s, last = lsnr[i], lsnr[i + 1], i == steps - 1
        settled = None  # the step's result for samples that do not inpaint (their only pass)
        memory = prev  # the last step of every sampler returns x0: no correction there
        for r in range(repeats):
            active = None if r == 0 else inpaint
            raw, x0 = step(model, x, l_t, l_s, lambda a=active: noise(shape, only=a),
                           threshold=threshold, last=last, prev=memory)
            x_s = replace_known(raw, l_s, exact=last)
            if settled is None:
                settled, settled_x0 = x_s, x0
            else:
                x_s = torch.where(keep_first, settled, x_s)
                raw = torch.where(keep_first, settled, raw)
                x0 = torch.where(keep_first, settled_x0, x0)
            x = renoise(x_s, l_s, l_t, noise(shape, only=inpaint)) if r < repeats - 1 else x_s
        prev = (x0, l_t)
    if not any(inpaint):
        return x.clamp(-1, 1)
    return blend(raw.clamp(-1, 1), known, mask)


@torch.no_grad()
def sample_imagen(
    model: X0Model,
    shape: Sequence[int],
    noise: TileNoise,
    *,
    log_snr: Callable[[Tensor], Tensor],
    steps: int,
    step: Step = ancestral_imagen_step,
    known: Tensor | None = None,
    mask: Tensor | None = None,
    resample: int = 1,
    threshold: float = 0.95,
    blend: BlendFn = replace_pixels,
) -> Tensor:
    """imagen-pytorch's inpainting loop (``Imagen.p_sample_loop``, 1.18.5 as the authors sampled,
    2.1.0 alike), kept to reproduce them; ``sample`` is RePaint as its paper has it.

    It differs from ``sample`` in three ways: the known pixels are replaced *before* every pass,
    by a fresh forward sample at the pass's time t; the jump back from s to t is
    ``renoise_imagen`` (too little noise); and the last step's repeats are not jumped back, so
    each of them starts from the previous pass's output at t = 0. Per sample as ``sample``: one
    without known pixels makes one pass and draws what it would draw alone.
    """
    lsnr, known, mask, inpaint, repeats, keep_first = _loop_setup(
        noise, log_snr, steps, known, mask, resample)
    x = noise(shape)
    prev: Prev | None = None
    for i in range(steps):
        l_t, l_s, last = lsnr[i], lsnr[i + 1], i == steps - 1
        settled = None
        for r in range(repeats):
            if any(inpaint):
                x = torch.where(mask, q_sample(known, l_t, noise(shape, only=inpaint)), x)
            active = None if r == 0 else inpaint
            x_s, x0 = step(model, x, l_t, l_s, lambda a=active: noise(shape, only=a),
                           threshold=threshold, last=last, prev=prev)
            if settled is None:
                settled, settled_x0 = x_s, x0
            else:
                x_s = torch.where(keep_first, settled, x_s)
                x0 = torch.where(keep_first, settled_x0, x0)
            x = x_s
            if r < repeats - 1 and not last:
                x = renoise_imagen(x_s, l_s, l_t, noise(shape, only=inpaint))
        prev = (x0, l_t)
    if not any(inpaint):
        return x.clamp(-1, 1)
    return blend(x.clamp(-1, 1), known, mask)


#: The inpainting loops, by the name ``SamplingConfig.loop`` uses.
LOOPS: dict[str, Callable[..., Tensor]] = {
    "repaint": sample,  # RePaint (Lugmayr et al. 2022): replace after each step, forward jumps
    "imagen": sample_imagen,  # the authors' (imagen-pytorch's), to reproduce them
}


# -- how a model samples ------------------------------------------------------------------------
#: Settings added after the first models: at these values they are not written to a config.
_IMPLICIT = {"sampler": "ancestral", "known_channels": True, "blend": "replace", "batch": 1,
             "loop": "repaint"}
#: What a magnification level may sample differently (the batch size is one for the model).
_LEVEL_FIELDS = {"steps", "resample", "threshold", *_IMPLICIT} - {"batch"}
#: Largest fixed batch a model call may be padded to.
MAX_BATCH = 1024


#: The optional fields after SAMPLER:STEPS:RESAMPLE in the short form: a word -> the setting
#: (besides these, a blend's name in ``BLENDS`` sets ``blend``).
OPTIONS: dict[str, tuple[str, Any]] = {
    "channels": ("known_channels", True), "no-channels": ("known_channels", False),
    **{f"loop-{name}": ("loop", name) for name in ("repaint", "imagen")},
}


def parse_sampling(text: str, stages: int) -> dict[str, Any]:
    """``SamplingConfig`` fields from the short form SAMPLER:STEPS:RESAMPLE[:OPTION...] (one
    resample value: every stage; OPTION ``channels`` or ``no-channels``: ``known_channels``, a
    blend name (``replace``, ``poisson``): ``blend``, ``loop-imagen`` or ``loop-repaint``:
    ``loop``), e.g. ``dpmpp-2m:16,16,16:1`` or
    ``ancestral:64,32,32:2,2,1`` or ``ancestral:16,16,16:1:no-channels:poisson``."""
    parts = text.split(":")
    try:
        if len(parts) < 3:
            raise ValueError
        sampler, steps, resample = parts[:3]
        steps_ = [int(v) for v in steps.split(",")]
        resample_ = [int(v) for v in resample.split(",")]
    except ValueError:
        raise ModelError(f"{text!r}: expected SAMPLER:STEPS:RESAMPLE[:OPTION...], e.g. "
                         "dpmpp-2m:16,16,16:1") from None
    options: dict[str, Any] = {}
    words = {**OPTIONS, **{name: ("blend", name) for name in BLENDS}}
    for word in parts[3:]:
        if word not in words:
            raise ModelError(f"{text!r}: an option after RESAMPLE must be one of "
                             f"{', '.join(words)}, got {word!r}")
        name, value = words[word]
        if name in options:
            raise ModelError(f"{text!r}: {name} given twice")
        options[name] = value
    if len(steps_) != stages or len(resample_) not in (1, stages):
        raise ModelError(f"{text!r}: expected {stages} step counts and 1 or {stages} resample "
                         "counts (one per cascade stage)")
    out = {"sampler": sampler, "steps": steps_,
           "resample": resample_ * stages if len(resample_) == 1 else resample_, **options}
    SamplingConfig.from_dict(out)  # names a known sampler, counts in range
    return out


@dataclass(frozen=True)
class SamplingConfig:
    """Sampler family, steps and RePaint resamples per cascade stage, dynamic-threshold
    percentile, whether trained inpainting's known-pixel channels are used and the blend, with what differs
    at some magnification levels (``levels``): everything besides the weights (and the
    network's inputs, which the model config decides: ``conditioning.inpainting``) that decides
    a tile.

    ``to_dict`` is what a model config stores and the fingerprint hashes. Fields at the values
    that models had before they existed (sampler "ancestral", known-pixel channels on, blend
    "replace", no per-level settings) are left out of it, so those models keep their fingerprints and stored
    tiles.
    """

    steps: tuple[int, ...]
    resample: tuple[int, ...]
    threshold: float = 0.95
    sampler: str = "ancestral"
    #: whether a model with trained inpainting gets the known pixels as input channels. False:
    #: the channels are zero (as in its training samples without a mask) and the known pixels
    #: enter by replacement alone, as in RePaint. On the demo model the channels made the
    #: first generated pixel line worse than no channels did (bench/inpainting_edge.py).
    known_channels: bool = True
    #: how the generated pixels meet the known ones after the last step (``lazyslide.blending``):
    #: ``replace`` puts the known pixels back (RePaint), ``poisson`` also blends the seam away
    blend: str = "replace"
    #: the inpainting loop (``LOOPS``): ``repaint`` (``sample``) or ``imagen`` (``sample_imagen``,
    #: how the authors sampled)
    loop: str = "repaint"
    #: per magnification level, the settings that differ there (e.g. level 0, one tile made
    #: once per slide, sampled with more steps than the inpainted tiles below it)
    levels: Mapping[int, Mapping[str, Any]] = field(default_factory=dict, hash=False)
    #: tiles per network call, always: a call with fewer tiles ready is padded with throw-away
    #: rows (``slide.produce``). The backends' kernels are not batch-invariant (a batch of 4 may
    #: differ from single calls by 1 in a few uint8 values), so a tile's bytes depend on the
    #: call's size, never on which tiles shared it; the fingerprint holds it unless it is 1.
    batch: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(self.steps))
        object.__setattr__(self, "resample", tuple(self.resample))
        if self.sampler not in SAMPLERS:
            raise ModelError(f"unknown sampler {self.sampler!r}; choose from {', '.join(SAMPLERS)}")
        if len(self.resample) != len(self.steps):
            raise ModelError(f"sampling: {len(self.steps)} step counts but {len(self.resample)} "
                             "resample counts (one each per cascade stage)")
        for name, values, most in (("steps", self.steps, MAX_STEPS),
                                   ("resample", self.resample, MAX_RESAMPLE)):
            for v in values:
                if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= most:
                    raise ModelError(f"sampling {name} must be integers >= 1 (at most {most}) per "
                                     f"cascade stage, got {v!r}")
        b = self.batch
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= MAX_BATCH:
            raise ModelError(f"sampling batch must be an integer in 1..{MAX_BATCH}, got {b!r}")
        if self.loop not in LOOPS:
            raise ModelError(f"unknown sampling loop {self.loop!r}; choose from {', '.join(LOOPS)}")
        if self.blend not in BLENDS:
            raise ModelError(f"unknown blend {self.blend!r}; choose from {', '.join(BLENDS)}")
        if not isinstance(self.known_channels, bool):
            raise ModelError(f"sampling known_channels must be true or false, got {self.known_channels!r}")
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 1:
            raise ModelError(f"sampling threshold must be a percentile in (0, 1], got {t!r}")
        if not isinstance(self.levels, Mapping):
            raise ModelError(f"sampling levels must map a level to its settings, got {self.levels!r}")
        levels = {}
        for key, changes in self.levels.items():
            if not str(key).isdigit() or not isinstance(changes, Mapping) or not changes:
                raise ModelError(f"sampling levels: expected a level number and the settings that "
                                 f"differ there, got {key!r}: {changes!r}")
            unknown = set(changes) - _LEVEL_FIELDS
            if unknown:
                raise ModelError(f"sampling level {key}: unknown settings {sorted(unknown)}")
            levels[int(key)] = dict(changes)
        object.__setattr__(self, "levels", levels)
        for level in levels:
            self.for_level(level)  # each level's settings must be valid on their own

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SamplingConfig:
        unknown = set(d) - {"steps", "resample", "threshold", "levels", *_IMPLICIT}
        if unknown:
            raise ModelError(f"unknown sampling settings {sorted(unknown)}")
        try:
            return cls(steps=tuple(d["steps"]), resample=tuple(d["resample"]),
                       **{k: d[k] for k in ("threshold", "levels", *_IMPLICIT) if k in d})
        except KeyError as e:
            raise ModelError(f"model config sampling: missing {e}") from None
        except TypeError as e:
            raise ModelError(f"model config sampling: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"steps": list(self.steps), "resample": list(self.resample),
                               "threshold": self.threshold}
        out.update({k: getattr(self, k) for k, v in _IMPLICIT.items() if getattr(self, k) != v})
        if self.levels:
            out["levels"] = {str(lv): {k: list(v) if isinstance(v, tuple) else v
                                       for k, v in changes.items()}
                             for lv, changes in sorted(self.levels.items())}
        return out

    def for_level(self, level: int) -> SamplingConfig:
        """How tiles of magnification ``level`` sample (this config with that level's changes)."""
        changes = self.levels.get(level)
        if not changes:
            return self if not self.levels else replace(self, levels={})
        try:
            return replace(self, levels={}, **changes)
        except ModelError as e:
            raise ModelError(f"sampling level {level}: {e}") from None

    def with_changes(self, **changes: Any) -> SamplingConfig:
        """These settings at every level (a level's own value for a changed setting is dropped);
        ``levels=`` replaces the per-level settings."""
        levels = changes.pop("levels", None)
        if levels is None:
            levels = {lv: {k: v for k, v in c.items() if k not in changes}
                      for lv, c in self.levels.items()}
            levels = {lv: c for lv, c in levels.items() if c}
        return SamplingConfig.from_dict({**self.to_dict(), **changes, "levels": levels})

    def evaluations(self, level: int) -> int:
        """Network evaluations of one inpainted tile of ``level``: steps x resamples, summed over
        the cascade (a tile without known pixels takes one pass)."""
        s = self.for_level(level)
        return sum(a * b for a, b in zip(s.steps, s.resample, strict=True))

    @property
    def version(self) -> str:
        """What the fingerprint appends for the samplers' code."""
        out = SAMPLERS[self.sampler].version
        for level, changes in sorted(self.levels.items()):
            if "sampler" in changes:
                out += f",{level}:{SAMPLERS[changes['sampler']].version}"
        blends = {self.blend} | {c["blend"] for c in self.levels.values() if "blend" in c}
        for name in sorted(blends - {"replace"}):  # absent for RePaint: old fingerprints stay
            out += f",{name}:{BLENDS[name].version}"
        return out

    def stage(self, i: int) -> dict[str, Any]:
        """The keyword arguments of ``sample`` for cascade stage ``i``."""
        return {"steps": self.steps[i], "resample": self.resample[i], "threshold": self.threshold,
                "step": SAMPLERS[self.sampler].step, "blend": BLENDS[self.blend].fn}
