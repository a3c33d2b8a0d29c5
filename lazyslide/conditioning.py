"""Pixels in and out of model space, shared by sampling and training so both see the same.

Images are uint8 RGB ``(H, W, 3)`` arrays outside the model and float ``(B, 3, H, W)`` tensors
in [-1, 1] inside it. imagen-pytorch normalises the images it denoises but passes
``cond_images`` through as given; lazyslide always hands the unets normalised conditioning
windows, resized with area averaging (not imagen's nearest neighbour, which aliases a 1024 px
window down to 64 px).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


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


def resize(x: Tensor, size: int) -> Tensor:
    """Area-average down (or nearest up) to ``size`` x ``size``."""
    if x.shape[-1] == size:
        return x
    mode = "area" if size < x.shape[-1] else "nearest"
    return F.interpolate(x, size=(size, size), mode=mode)


def cond_image(windows: Sequence[np.ndarray] | np.ndarray, size: int) -> Tensor:
    """Parent conditioning windows as a unet of resolution ``size`` takes them."""
    return resize(to_model_space(windows), size)
