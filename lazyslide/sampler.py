"""Reverse diffusion, owned by lazyslide: plain functions over a model callable.

Why not ``Imagen.sample``: imagen-pytorch 2.1.0 re-noises wrongly during RePaint resampling
(``q_sample_from_to`` injects ~5-13% of the forward-process noise std, upstream issue 293),
draws every random number from the global torch RNG (so a tile's pixels would depend on what
ran before it), and passes the conditioning image un-normalised. Here every tile has its own
``torch.Generator``, the jump back is the true forward process q(x_t | x_s), and the caller owns
normalisation.

The schedules and the posterior are imagen-pytorch's continuous-time ones (models trained with
its ``Imagen`` class sample correctly here). ``model(x_t, log_snr_t) -> x0`` is the only
contract with the network.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

X0Model = Callable[[Tensor, Tensor], Tensor]


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
    other tiles in its batch.
    """

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu"):
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.device = torch.device(device)

    def __call__(self, shape: Sequence[int]) -> Tensor:
        draws = [torch.randn(tuple(shape), generator=g) for g in self.generators]
        return torch.stack(draws).to(self.device)


# -- the sampler --------------------------------------------------------------------------------
@torch.no_grad()
def sample(
    model: X0Model,
    shape: Sequence[int],
    noise: TileNoise,
    *,
    log_snr: Callable[[Tensor], Tensor],
    steps: int,
    known: Tensor | None = None,
    mask: Tensor | None = None,
    resample: int = 1,
    threshold: float = 0.95,
) -> Tensor:
    """Ancestral sampling of a batch of ``shape`` (C, H, W) images in [-1, 1].

    With ``known`` (B, C, H, W) and ``mask`` (B, 1, H, W, True = keep), RePaint inpainting: after
    every step the known pixels are replaced by a forward sample of ``known`` at the new noise
    level, and each step is repeated ``resample`` times, jumping back with the true forward
    process in between. The returned known pixels equal ``known`` exactly.
    """
    if steps < 1 or resample < 1:
        raise ValueError(f"steps and resample must be >= 1, got {steps} and {resample}")
    device = noise.device
    batch = len(noise.generators)
    inpaint = known is not None and mask is not None and bool(mask.any())
    if inpaint:
        known, mask = known.to(device), mask.to(device)
    times = torch.linspace(1.0, 0.0, steps + 1, device=device)
    lsnr = log_snr(times)

    x = noise(shape)
    if inpaint:
        x = torch.where(mask, q_sample(known, lsnr[0], noise(shape)), x)
    for i in range(steps):
        l_t, l_s, last = lsnr[i], lsnr[i + 1], i == steps - 1
        for r in range(resample if inpaint else 1):
            x0 = dynamic_threshold(model(x, l_t.expand(batch)), threshold)
            mean, var = posterior(x0, x, l_t, l_s)
            x_s = mean if last else mean + var.sqrt() * noise(shape)
            if inpaint:
                x_s = torch.where(mask, known if last else q_sample(known, l_s, noise(shape)), x_s)
            x = renoise(x_s, l_s, l_t, noise(shape)) if r < resample - 1 and inpaint else x_s
    x = x.clamp(-1, 1)
    if inpaint:
        x = torch.where(mask, known, x)
    return x
