"""Tile generation: one level's cascade (three unets) run over a batch of independent tiles.

Inputs are plain pixels (the known overlap, the parent window), so the generator neither knows
nor cares where they came from; the slide gathers them from the store. Every stage inpaints the
known pixels at its own resolution (area-downsampled from the stored neighbours), and the final
tile carries the stored neighbour pixels bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .conditioning import cond_image, resize, to_model_space, to_uint8
from .geometry import TileId
from .model import URCDM
from .sampler import SCHEDULES, TileNoise, X0Model, alpha_sigma, derive_seed, q_sample, sample


@dataclass
class TileJob:
    """Everything a tile's pixels depend on besides the model."""

    tile: TileId
    seed: int
    #: (T, T, 3) uint8; only pixels under ``mask`` are meaningful
    known: np.ndarray
    #: (T, T) bool, True where an earlier neighbour fixed the pixel
    mask: np.ndarray
    #: (T, T, 3) uint8 parent window for level >= 1, else None
    window: np.ndarray | None = None


def x0_predictor(unet: torch.nn.Module, objective: str, *, cond: Tensor | None = None,
                 lowres: Tensor | None = None, lowres_log_snr: Tensor | None = None) -> X0Model:
    """Wrap an imagen-pytorch Unet as ``(x_t, log_snr) -> x0`` (it is conditioned on log SNR)."""

    def predict(x: Tensor, log_snr: Tensor) -> Tensor:
        out = unet(x, log_snr, lowres_cond_img=lowres, lowres_noise_times=lowres_log_snr,
                   cond_images=cond)
        if objective == "x_start":
            return out
        a, s = alpha_sigma(log_snr.view(-1, 1, 1, 1))
        if objective == "v":
            return a * x - s * out
        return (x - s * out) / a.clamp(min=1e-8)

    return predict


@torch.no_grad()
def generate(model: URCDM, jobs: Sequence[TileJob], *, unet_level: int | None = None) -> list[np.ndarray]:
    """Generate a batch of tiles of one level; returns uint8 (T, T, 3) arrays.

    ``unet_level`` runs another level's cascade on these tiles (the outpainting baseline makes
    deepest-level tiles with level 0's unconditional unets); by default the tiles' own level.

    Each tile draws only from its own generators, so batching changes no random number; but
    the backends' kernels are not batch-invariant (on the CPU a batch may differ from single
    calls by 1 in a few uint8 values), so ``Slide`` makes canonical tiles one per call.
    """
    if not jobs:
        return []
    level = jobs[0].tile.level
    if any(j.tile.level != level for j in jobs):
        raise ValueError("a batch must hold tiles of one level")
    geom, cfg, device = model.geometry, model.config, model.device
    diff, samp = cfg["diffusion"], cfg["sampling"]
    t = geom.tile
    known = to_model_space([j.known for j in jobs])
    mask = torch.from_numpy(np.stack([j.mask for j in jobs]))[:, None]
    windows = [j.window for j in jobs] if jobs[0].window is not None else None
    unet_level = level if unet_level is None else unet_level
    if (windows is not None) != (unet_level > 0):
        raise ValueError(f"level {unet_level}'s unets {'need' if unet_level else 'take no'} parent windows")
    lowres_schedule = SCHEDULES[diff["lowres_noise_schedule"]]

    x = None
    for stage, size in enumerate(geom.cascade):
        f = t // size
        noise = TileNoise([derive_seed("tile", j.seed, *j.tile, stage) for j in jobs], device)
        cond = cond_image(windows, size).to(device) if windows is not None else None
        lowres = lowres_ls = None
        if stage > 0:
            lowres_ls = lowres_schedule(torch.full((len(jobs),), float(diff["lowres_noise_level"])))
            lowres_ls = lowres_ls.to(device)
            # imagen's augmentation: the upsampled previous stage, noised to a fixed level
            lowres = q_sample(resize(x, size), lowres_ls.view(-1, 1, 1, 1), noise((3, size, size)))
        predict = x0_predictor(model.unet(unet_level, stage), diff["objectives"][stage], cond=cond,
                               lowres=lowres, lowres_log_snr=lowres_ls)
        x = sample(
            predict,
            (3, size, size),
            noise,
            log_snr=SCHEDULES[diff["schedules"][stage]],
            steps=samp["steps"][stage],
            known=resize(known, size),
            mask=mask[..., ::f, ::f],
            resample=samp["resample"][stage],
            threshold=samp["threshold"],
        )
    tiles = to_uint8(x)
    for tile, job in zip(tiles, jobs, strict=True):
        tile[job.mask] = job.known[job.mask]  # exact: the stored neighbour bytes
    return list(tiles)

