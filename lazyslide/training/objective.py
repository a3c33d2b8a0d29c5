"""The diffusion training loss: the mirror image of ``lazyslide.sampler``.

Same continuous-time schedules, same network contract (``networks.Denoiser``), the same
low-resolution noise augmentation as the generator applies at sampling (there at a fixed level,
here at a random one) and imagen-pytorch's defaults: t ~ U[0, 1), one augmentation level per
batch, min-SNR loss weighting with gamma 5. Every random number comes from the caller's
``torch.Generator``, so a training step is a pure function of (weights, batch, seed): resuming
from a checkpoint continues the same run.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..networks import Denoiser
from ..sampler import alpha_sigma, q_sample

Schedule = Callable[[Tensor], Tensor]


def diffusion_loss(
    net: Denoiser,
    x0: Tensor,
    *,
    schedule: Schedule,
    objective: str,
    generator: torch.Generator,
    lowres: Tensor | None = None,
    lowres_schedule: Schedule | None = None,
    cond: Tensor | None = None,
    min_snr_gamma: float | None = 5.0,
) -> Tensor:
    """Mean weighted loss of one batch (model space tensors on the unet's device)."""
    b, device = x0.shape[0], x0.device

    def randn(shape) -> Tensor:
        return torch.randn(tuple(shape), generator=generator).to(device)

    t = torch.rand(b, generator=generator).to(device)
    log_snr = schedule(t)
    a, s = alpha_sigma(log_snr.view(-1, 1, 1, 1))
    noise = randn(x0.shape)
    x_t = a * x0 + s * noise
    lowres_noisy = lowres_ls = None
    if lowres is not None:
        if lowres_schedule is None:
            raise ValueError("a lowres image needs its noise schedule")
        aug_t = torch.rand(1, generator=generator).expand(b).to(device)
        lowres_ls = lowres_schedule(aug_t)
        lowres_noisy = q_sample(lowres, lowres_ls.view(-1, 1, 1, 1), randn(lowres.shape))
    pred = net(x_t, log_snr, lowres=lowres_noisy, lowres_log_snr=lowres_ls, cond=cond)
    if objective == "v":
        target = a * noise - s * x0
    elif objective == "noise":
        target = noise
    elif objective == "x_start":
        target = x0
    else:
        raise ValueError(f"unknown objective {objective!r}")
    losses = ((pred - target) ** 2).mean(dim=(1, 2, 3))
    snr = log_snr.exp()
    clipped = snr.clamp(max=min_snr_gamma) if min_snr_gamma else snr
    weight = {"v": clipped / (snr + 1), "noise": clipped / snr, "x_start": clipped}[objective]
    return (losses * weight).mean()
