"""Pixels in and out of model space, shared by sampling and training so both see the same.

Images are uint8 RGB ``(H, W, 3)`` arrays outside the model and float ``(B, 3, H, W)`` tensors
in [-1, 1] inside it. imagen-pytorch normalises the images it denoises but passes
``cond_images`` through as given; lazyslide always hands the unets normalised conditioning
windows, resized with area averaging (not imagen's nearest neighbour, which aliases a 1024 px
window down to 64 px).

What a level >= 1 unet sees of its parent is the model's ``conditioning`` (``CONDITIONING``):
- ``window`` (the paper): the parent window centred on the tile, resized to the unet's size.
  The tile itself is the central 1/scale of it: 5 px of a 32 px first stage in the demo preset,
  and random training crops of the later stages cut window pixels that are not where the tile is.
- ``window+footprint`` (a variant in the authors' public code): three more channels, the
  tile's footprint in that window upsampled to the tile, so each conditioning pixel lies over
  the tile pixel it describes. The unet no longer has to learn a 6x zoom of the window's
  centre to put tissue where the parent has it, and crops stay aligned.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import ModelError

#: conditioning name -> channels of the conditioning image
CONDITIONING: dict[str, int] = {"window": 3, "window+footprint": 6}
DEFAULT_CONDITIONING = "window"

#: inpainting mode -> channels it adds to the conditioning image (where a level inpaints)
INPAINTING: dict[str, int] = {"repaint": 0, "trained": 4}
#: How a cascade stage's images (targets, the previous stage's output, the parent window) go
#: to its resolution, as (down, up) modes of ``F.interpolate`` (a model config's
#: ``resampling``). ``area``: each pixel the mean of what it covers. ``nearest``: imagen-pytorch's
#: ``resize_image_to``, how the authors trained and sampled (a 1024 px window seen at 64 px is
#: every 16th pixel).
RESAMPLING: dict[str, tuple[str, str]] = {"area": ("area", "nearest"), "nearest": ("nearest", "nearest")}
DEFAULT_RESAMPLING = "area"
DEFAULT_INPAINTING = "repaint"

#: A footprint: (x0, y0, x1, y1) in window pixels.
Footprint = tuple[float, float, float, float]


def _named(config: dict, key: str, registry: dict, default: str) -> str:
    """The model config's ``key`` (absent: ``default``), one of ``registry``'s names."""
    name = config.get(key, default)
    if name not in registry:
        raise ModelError(f"model config: unknown {key} {name!r}; choose from {', '.join(registry)}")
    return name


def conditioning(config: dict) -> str:
    """The model config's conditioning (absent: the paper's window)."""
    return _named(config, "conditioning", CONDITIONING, DEFAULT_CONDITIONING)


def inpainting(config: dict) -> str:
    """The model config's inpainting mode (absent: the paper's RePaint)."""
    return _named(config, "inpainting", INPAINTING, DEFAULT_INPAINTING)


def resampling(config: dict) -> str:
    """The model config's resampling between resolutions (absent: ``area``)."""
    return _named(config, "resampling", RESAMPLING, DEFAULT_RESAMPLING)


def has_neighbours(config: dict, level: int) -> bool:
    """Whether tiles of ``level`` overlap neighbours (a one-tile level never inpaints)."""
    g = config["geometry"]
    return g["canvases"][level] > g["tile"] and g["overlap"] > 0


def trained_inpainting(config: dict, level: int) -> bool:
    """Whether the unets of ``level`` take the known pixels as conditioning: trained inpainting,
    on a level whose tiles have neighbours."""
    return inpainting(config) == "trained" and has_neighbours(config, level)


def cond_channels(config: dict, level: int) -> int:
    """Channels of the conditioning image of ``level``'s unets (0: none)."""
    window = CONDITIONING[conditioning(config)] if level > 0 else 0
    return window + (INPAINTING["trained"] if trained_inpainting(config, level) else 0)


def subsample_mask(mask: Tensor, size: int) -> Tensor:
    """A (B, 1, T, T) known-pixel mask at a cascade stage's ``size``: every (T / size)-th pixel
    (overlaps are whole multiples of it, so no stage pixel straddles the mask's edge)."""
    f = mask.shape[-1] // size
    return mask[..., ::f, ::f]


def known_image(known: Tensor, mask: Tensor) -> Tensor:
    """The trained-inpainting channels: known pixels (model space, zero where unknown) and the
    mask (1 known, 0 not), from the stage-size pixels (``resize``) and mask (``subsample_mask``)
    the sampler replaces, so the unet sees exactly what the sampler keeps."""
    m = mask.to(known.dtype)
    return torch.cat([known * m, m], dim=1)


def to_model_space(images: Sequence[np.ndarray] | np.ndarray) -> Tensor:
    """uint8 (H, W, 3) images -> float (B, 3, H, W) in [-1, 1]."""
    arr = np.ascontiguousarray(np.stack(list(images)) if not isinstance(images, np.ndarray) else images)
    if arr.ndim == 3:
        arr = arr[None]
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def to_uint8(x: Tensor) -> np.ndarray:
    """float (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3), rounded."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round()
    return x.to(torch.uint8).permute(0, 2, 3, 1).numpy()


def resize(x: Tensor, size: int, resampling: str = DEFAULT_RESAMPLING) -> Tensor:
    """To ``size`` x ``size`` by ``RESAMPLING[resampling]`` (down, up)."""
    if x.shape[-1] == size:
        return x
    down, up = RESAMPLING[resampling]
    return F.interpolate(x, size=(size, size), mode=down if size < x.shape[-1] else up)


def centred_footprint(window: int, scale: float) -> Footprint:
    """The footprint of a tile in a ``window`` px window centred on it, ``scale`` times finer."""
    half = window / (2 * scale)
    c = window / 2
    return (c - half, c - half, c + half, c + half)


def crop_resize(x: Tensor, boxes: Sequence[Footprint], size: int) -> Tensor:
    """Bilinear samples of each image's box (pixel-edge coordinates) on a ``size`` grid."""
    b, _, h, w = x.shape
    box = torch.tensor(boxes, dtype=x.dtype, device=x.device).view(b, 4)
    t = (torch.arange(size, dtype=x.dtype, device=x.device) + 0.5) / size  # pixel centres
    gx = box[:, 0:1] + t[None] * (box[:, 2:3] - box[:, 0:1])  # (B, size) window px
    gy = box[:, 1:2] + t[None] * (box[:, 3:4] - box[:, 1:2])
    grid = torch.stack(torch.broadcast_tensors(
        (gx / w * 2 - 1)[:, None, :], (gy / h * 2 - 1)[:, :, None]), dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def cond_image(windows: Sequence[np.ndarray] | np.ndarray, size: int, mode: str = DEFAULT_CONDITIONING,
               footprints: Sequence[Footprint] | None = None,
               resampling_: str = DEFAULT_RESAMPLING) -> Tensor:
    """Parent conditioning windows as a unet of resolution ``size`` takes them.

    Built at the window's own resolution, then resized to ``size`` (``resampling_``), so
    training (which builds it once and resizes per stage) and sampling see the same numbers. ``footprints``:
    each tile's box in its window (default: centred, as training pairs are cut).
    """
    w = to_model_space(windows)
    if mode == "window+footprint":
        if footprints is None:
            raise ValueError("window+footprint conditioning needs the tiles' footprints")
        w = torch.cat([w, crop_resize(w, footprints, w.shape[-1])], dim=1)
    elif mode not in CONDITIONING:
        raise ModelError(f"unknown conditioning {mode!r}")
    return resize(w, size, resampling_)
