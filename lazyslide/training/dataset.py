"""Prepared pairs -> the tensors one cascade stage sees, exactly as the generator builds them.

Stage ``s`` of a level learns to make the target at ``cascade[s]`` px (area-downsampled, as the
generator downsamples stored neighbours), from the previous stage's size upsampled by nearest
neighbour (as the generator upsamples its previous stage) and, for levels >= 1, the parent
window through ``conditioning.cond_image``. Augmentation: the 8 dihedral transforms (paper),
applied to target and window together (both are centred on the same point, so they stay
aligned), and optional random crops for super-resolution stages (imagen's ``random_crop_sizes``).

With trained inpainting, each pair also gets the known-pixel channels (``conditioning.known_image``)
of a tile drawn at random from the level's grid: the mask its tile plan gives that tile (strips
and corners its earlier neighbours fix, fewer at the canvas border, none for a first-phase tile),
applied after the dihedral transform, with the target's own pixels as the known ones (in a real
slide, neighbours agree with the tile where they overlap).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..conditioning import centred_footprint, cond_image, known_image, resize, subsample_mask, to_model_space
from ..geometry import Geometry, TileId
from ..plan import Plan
from .prepare import DatasetError, load_manifest


@dataclass
class StageBatch:
    x0: Tensor
    lowres: Tensor | None
    cond: Tensor | None


def dihedral(x: Tensor, k: int) -> Tensor:
    """One of the 8 symmetries of the square (k in 0..7) on (..., H, W)."""
    x = torch.rot90(x, k % 4, dims=(-2, -1))
    return x.flip(-1) if k >= 4 else x


#: Trained inpainting on crops: the share of crops placed over the line where a sample's known
#: pixels end. Uniform crops of a large tile rarely hold it (demo stage 3: a 32 px crop of a
#: 128 px tile holds the 16 px strip's edge in about one crop in six, at 1/32 of its pixels), so
#: the unet learned to continue the known pixels slowly and left a line there.
BOUNDARY_CROPS = 0.5


def boundary_crop(mask: Tensor, crop: int, generator: torch.Generator | None) -> tuple[int, int]:
    """(ox, oy) of a ``crop`` px square in a (size, size) known-pixel mask: with probability
    ``BOUNDARY_CROPS`` (where the mask has an edge) one holding a random first generated pixel
    next to a known one, else uniform. Draws the same random numbers either way."""
    size = mask.shape[-1]
    u = float(torch.rand(1, generator=generator))
    pick = float(torch.rand(1, generator=generator))
    jx, jy = torch.randint(crop, (2,), generator=generator).tolist()
    ox, oy = torch.randint(size - crop + 1, (2,), generator=generator).tolist()
    known = mask.bool()
    edge = torch.zeros_like(known)
    edge[:, 1:] |= known[:, :-1] & ~known[:, 1:]
    edge[:, :-1] |= known[:, 1:] & ~known[:, :-1]
    edge[1:, :] |= known[:-1, :] & ~known[1:, :]
    edge[:-1, :] |= known[1:, :] & ~known[:-1, :]
    ys, xs = edge.nonzero(as_tuple=True)
    if len(ys) and u < BOUNDARY_CROPS:
        k = min(int(pick * len(ys)), len(ys) - 1)
        ox = min(max(int(xs[k]) - jx, 0), size - crop)
        oy = min(max(int(ys[k]) - jy, 0), size - crop)
    return ox, oy


class PairDataset:
    """All pairs of one level of a prepared dataset, in memory (uint8)."""

    def __init__(self, folder: str | Path, level: int, conditioning: str = "window",
                 inpainting: Plan | None = None) -> None:
        self.folder = Path(folder)
        self.manifest = load_manifest(self.folder)
        try:
            self.geometry = Geometry.from_dict(self.manifest["geometry"])
        except Exception as e:
            raise DatasetError(f"{folder}: bad geometry in manifest.json ({e})") from None
        self.preset = self.manifest.get("preset")
        self.level = level
        #: what the unets see of the parent window (``conditioning.CONDITIONING``)
        self.conditioning = conditioning
        #: trained inpainting: the plan whose known-pixel masks the unets learn (None: RePaint)
        self.inpainting = inpainting
        #: how images go between resolutions (``conditioning.RESAMPLING``)
        self.resampling = "area"
        if str(level) not in self.manifest["levels"]:
            have = ", ".join(sorted(self.manifest["levels"])) or "none"
            raise DatasetError(f"{folder} has no level {level} pairs (levels prepared: {have})")
        shards = [s for s in self.manifest["shards"] if s["level"] == level]
        if not shards:
            raise DatasetError(f"{folder}: level {level} holds no pairs (every target was background "
                               "or no slide could be read)")
        targets, windows, slides = [], [], []
        for s in shards:
            base = self.folder / s["file"]
            try:
                targets.append(np.load(f"{base}.targets.npy"))
                slides.append(np.full(len(targets[-1]), s.get("slide", 0)))
                if level > 0:
                    windows.append(np.load(f"{base}.windows.npy"))
            except (OSError, ValueError) as e:
                raise DatasetError(f"{base}: unreadable shard ({e})") from None
        self.targets = np.concatenate(targets)
        #: the manifest's slide index of every pair (``draw_by_slide``)
        self.slide = np.concatenate(slides)
        self.windows = np.concatenate(windows) if level > 0 else None
        t = self.geometry.tile
        if self.targets.shape[1:] != (t, t, 3):
            raise DatasetError(f"{folder}: level {level} targets are {self.targets.shape[1:]}, "
                               f"the geometry's tile is {t}")

    def __len__(self) -> int:
        return len(self.targets)

    @cached_property
    def _by_slide(self) -> tuple[Tensor, Tensor, Tensor]:
        """Pair indices grouped by slide, each slide's first position in them and its count
        (once per dataset, not per training step)."""
        order = torch.from_numpy(np.argsort(self.slide, kind="stable"))
        counts = torch.from_numpy(np.unique(self.slide, return_counts=True)[1])
        return order, torch.cumsum(counts, 0) - counts, counts

    def draw_by_slide(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` pair indices: a slide uniformly among those with pairs, then one of its pairs."""
        order, starts, counts = self._by_slide
        which = torch.randint(len(counts), (n,), generator=generator)
        offset = (torch.rand(n, generator=generator) * counts[which]).long().clamp_max(counts[which] - 1)
        return order[starts[which] + offset]

    def stage_batch(self, index: Tensor, stage: int, *, generator: torch.Generator | None = None,
                    augment: bool = True, crop: int | None = None) -> StageBatch:
        """Inputs and target of cascade ``stage`` for the pairs ``index``."""
        g = self.geometry
        size = g.cascade[stage]
        idx = index.tolist()
        x = to_model_space(self.targets[idx])
        w = None
        if self.windows is not None:  # at the window's resolution; resized per stage below
            footprint = centred_footprint(g.tile, float(g.scale(self.level)))
            w = cond_image(self.windows[idx], g.tile, self.conditioning, [footprint] * len(idx),
                           self.resampling)
        if augment:
            ks = torch.randint(8, (len(idx),), generator=generator).tolist()
            x = torch.stack([dihedral(xi, k) for xi, k in zip(x, ks, strict=True)])
            if w is not None:
                w = torch.stack([dihedral(wi, k) for wi, k in zip(w, ks, strict=True)])
        r = self.resampling
        x0 = resize(x, size, r)
        lowres = resize(resize(x, g.cascade[stage - 1], r), size, r) if stage > 0 else None
        conds = [resize(w, size, r)] if w is not None else []
        masks = None
        if self.inpainting is not None:
            n = g.grid(self.level)
            cells = torch.randint(n * n, (len(idx),), generator=generator).tolist()
            masks = np.stack([self.inpainting.known_mask(g, TileId(self.level, c % n, c // n))
                              for c in cells])
            masks = subsample_mask(torch.from_numpy(masks)[:, None], size)
            conds.append(known_image(x0, masks))
        cond = torch.cat(conds, dim=1) if conds else None
        if crop is not None and crop < size:
            if masks is None:
                ox, oy = torch.randint(size - crop + 1, (2,), generator=generator).tolist()
                x0, lowres, cond = (None if v is None else v[..., oy:oy + crop, ox:ox + crop]
                                    for v in (x0, lowres, cond))
            else:
                boxes = [boundary_crop(m[0], crop, generator) for m in masks]
                x0, lowres, cond = (None if v is None else torch.stack(
                    [vi[..., oy:oy + crop, ox:ox + crop] for vi, (ox, oy) in zip(v, boxes, strict=True)])
                    for v in (x0, lowres, cond))
        return StageBatch(x0, lowres, cond)
