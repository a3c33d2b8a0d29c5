"""One cascade stage, shared by the generator and the trainer's sample grid: the low-resolution
input's noise augmentation, the network as an x0 predictor, and the sampler."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .networks import Denoiser
from .sampler import LOOPS, SCHEDULES, SamplingConfig, TileNoise, X0Model, alpha_sigma, q_sample


def x0_predictor(denoiser: Denoiser, objective: str, *, cond: Tensor | None = None,
                 lowres: Tensor | None = None, lowres_log_snr: Tensor | None = None) -> X0Model:
    """``(x_t, log_snr) -> x0`` from a network trained for ``objective`` (v, noise or x_start)."""

    def predict(x: Tensor, log_snr: Tensor) -> Tensor:
        out = denoiser(x, log_snr, lowres=lowres, lowres_log_snr=lowres_log_snr, cond=cond)
        if objective == "x_start":
            return out
        a, s = alpha_sigma(log_snr.view(-1, 1, 1, 1))
        if objective == "v":
            return a * x - s * out
        return (x - s * out) / a.clamp(min=1e-8)

    return predict


@dataclass(frozen=True)
class Stage:
    """How cascade stage ``index`` of a model samples: its objective and schedule, the low-res
    input's augmentation, and the sampling settings."""

    index: int
    objective: str
    schedule: Callable[[Tensor], Tensor]
    lowres_schedule: Callable[[Tensor], Tensor]
    lowres_level: float
    sampling: SamplingConfig

    @classmethod
    def from_config(cls, config: dict[str, Any], index: int,
                    sampling: SamplingConfig | None = None) -> Stage:
        diff = config["diffusion"]
        return cls(index, diff["objectives"][index], SCHEDULES[diff["schedules"][index]],
                   SCHEDULES[diff["lowres_noise_schedule"]], float(diff["lowres_noise_level"]),
                   sampling or SamplingConfig.from_dict(config["sampling"]))

    @torch.no_grad()
    def run(self, denoiser: Denoiser, noise: TileNoise, size: int, *, lowres: Tensor | None = None,
            cond: Tensor | None = None, known: Tensor | None = None,
            mask: Tensor | None = None) -> Tensor:
        """Sample ``len(noise)`` images of ``size`` px. ``lowres``: the previous stage's output
        at this size, noised here to the fixed augmentation level (imagen's, as in training)."""
        lowres_ls = None
        if lowres is not None:
            lowres_ls = self.lowres_schedule(torch.full((len(noise),), self.lowres_level))
            lowres_ls = lowres_ls.to(noise.device)
            lowres = q_sample(lowres, lowres_ls.view(-1, 1, 1, 1), noise((3, size, size)))
        predict = x0_predictor(denoiser, self.objective, cond=cond, lowres=lowres,
                               lowres_log_snr=lowres_ls)
        loop = LOOPS[self.sampling.loop]
        return loop(predict, (3, size, size), noise, log_snr=self.schedule, known=known,
                    mask=mask, **self.sampling.stage(self.index))
