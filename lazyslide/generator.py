"""Tile generation: one level's cascade (three unets) run over a batch of independent tiles.

Inputs are plain pixels (the known overlap, the parent window), so the generator neither knows
nor cares where they came from; the slide gathers them from the store. Every stage inpaints the
known pixels at its own resolution (area-downsampled from the stored neighbours; a model with
trained inpainting also hands them to the unet as conditioning unless its sampling turns the
channels off), and the final tile carries the
stored neighbour pixels bit for bit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageFilter

from .background import FILLS
from .blending import BLENDS
from .conditioning import (
    centred_footprint,
    cond_image,
    conditioning,
    known_image,
    resampling,
    resize,
    subsample_mask,
    to_model_space,
    to_uint8,
    trained_inpainting,
)
from .geometry import TileId
from .model import URCDM
from .networks import Denoiser
from .sampler import TileNoise, derive_seed
from .stage import Stage


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
    #: the tile's box in ``window`` (window pixels); None: centred, as training pairs are cut
    footprint: tuple[float, float, float, float] | None = None


def counted(denoiser: Denoiser, evaluations: Counter[int] | None, level: int) -> Denoiser:
    """``denoiser``, adding the batch size to ``evaluations[level]`` at each call."""
    if evaluations is None:
        return denoiser

    def call(x_t: torch.Tensor, log_snr: torch.Tensor, **kwargs) -> torch.Tensor:
        evaluations[level] += len(x_t)
        return denoiser(x_t, log_snr, **kwargs)

    return call


@torch.no_grad()
def generate(model: URCDM, jobs: Sequence[TileJob], *, unet_level: int | None = None,
             evaluations: Counter[int] | None = None) -> list[np.ndarray]:
    """Generate a batch of tiles of one level; returns uint8 (T, T, 3) arrays.

    ``evaluations[level]`` grows by one per tile per network call (counted where the network is
    called, so every sampler, resample jump and cascade stage is in it).

    ``unet_level`` runs another level's cascade on these tiles (the outpainting baseline makes
    deepest-level tiles with level 0's unconditional unets); by default the tiles' own level.

    Each tile draws only from its own generators, so batching changes no random number; but
    the backends' kernels are not batch-invariant (on the CPU a batch may differ from single
    calls by 1 in a few uint8 values), so ``slide.produce`` calls this with exactly the model's
    ``sampling.batch`` tiles, padded: a row's result depends on the call's size, not on the
    other rows.
    """
    if not jobs:
        return []
    level = jobs[0].tile.level
    if any(j.tile.level != level for j in jobs):
        raise ValueError("a batch must hold tiles of one level")
    geom, device = model.geometry, model.device
    t = geom.tile
    known = to_model_space([j.known for j in jobs])
    mask = torch.from_numpy(np.stack([j.mask for j in jobs]))[:, None]
    windows = [j.window for j in jobs] if jobs[0].window is not None else None
    unet_level = level if unet_level is None else unet_level
    if (windows is not None) != (unet_level > 0):
        raise ValueError(f"level {unet_level}'s unets {'need' if unet_level else 'take no'} parent windows")

    mode, resample_mode = conditioning(model.config), resampling(model.config)
    footprints = None
    if windows is not None:
        centred = centred_footprint(t, float(geom.scale(level)))
        footprints = [centred if j.footprint is None else j.footprint for j in jobs]
    sampling = model.sampling.for_level(level)
    trained = trained_inpainting(model.config, unet_level)
    x = None
    for index, size in enumerate(geom.cascade):
        stage = Stage.from_config(model.config, index, sampling)
        noise = TileNoise([derive_seed("tile", j.seed, *j.tile, index) for j in jobs], device)
        known_s, mask_s = resize(known, size), subsample_mask(mask, size)
        conds = [cond_image(windows, size, mode, footprints, resample_mode)] if windows is not None else []
        if trained:  # the known pixels as the unet was trained to take them (``known_image``),
            # or zero as in its samples without a mask (``SamplingConfig.known_channels``)
            shown = mask_s if sampling.known_channels else torch.zeros_like(mask_s)
            conds.append(known_image(known_s, shown))
        x = stage.run(
            counted(model.denoiser(unet_level, index), evaluations, level),
            noise,
            size,
            lowres=None if x is None else resize(x, size, resample_mode),
            cond=torch.cat(conds, dim=1).to(device) if conds else None,
            known=known_s,
            mask=mask_s,
        )
    tiles = to_uint8(x)
    for tile, job in zip(tiles, jobs, strict=True):
        tile[job.mask] = job.known[job.mask]  # exact: the stored neighbour bytes
    return list(tiles)


def fill_background(model: URCDM, job: TileJob) -> np.ndarray:
    """A tile whose parent shows no tissue, without diffusion: the parent (blurred by the
    background rule's ``fill_blur``) upscaled over the tile's footprint, joined to the known
    neighbour pixels by the level's blend (as a generated tile is), the known pixels kept
    exactly.

    With ``replace``, the upscaled parent meets the neighbours with whatever step there is; where
    generated glass is lighter than the parent's, that drew the tile grid in glass. ``poisson``
    lets the filled tile take up the difference smoothly."""
    t = model.geometry.tile
    window = Image.fromarray(job.window)
    if model.background.fill_blur:
        window = window.filter(ImageFilter.GaussianBlur(model.background.fill_blur))
    up = window.resize((t, t), FILLS[model.background.fill], box=job.footprint)
    pixels = np.array(up)
    blend = model.sampling.for_level(job.tile.level).blend
    if blend != "replace" and job.mask.any():
        mask = torch.from_numpy(job.mask)[None, None]
        raw, known = to_model_space([pixels]), to_model_space([job.known])
        pixels = to_uint8(BLENDS[blend].fn(raw, known, mask))[0]
    pixels[job.mask] = job.known[job.mask]
    return pixels
