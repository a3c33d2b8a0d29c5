"""How a stage's generated pixels meet the pixels its neighbours fixed.

After the last sampling step, the known pixels of an inpainted tile are put back exactly. Where
the sampler's own output differs from them (a slightly other tint, the noise of a few steps), the
step from known to generated pixels is a line the eye finds (the seam score of
``lazyslide.evaluation.seams``: 1.25 on the demo model at 48 evaluations per tile, where real
tissue scores 0.98). ``poisson`` removes that step without touching either side's texture:
gradient-domain blending (Pérez, Gangnet and Blake, "Poisson image editing", 2003), the
generated pixels keeping the sampler's gradients and taking up the known pixels' values within
a band one overlap wide. Written here because the piece at hand (OpenCV's ``seamlessClone``)
works on one uint8 image at a time and spreads its correction over the whole cloned region, not
on a batch of model-space tensors at every cascade stage with a correction held to a band.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

#: (raw output, known pixels, mask True = known) -> the stage's output; all (B, C, H, W) but
#: the mask, (B, 1, H, W). The known pixels of the result equal ``known`` exactly.
BlendFn = Callable[[Tensor, Tensor, Tensor], Tensor]

#: Multigrid: damped-Jacobi weight (4/5, the classic smoother of the 5-point Laplacian), sweeps
#: before and after each coarse-grid correction, V-cycles. Eight cycles leave the correction within
#: half a uint8 level of the exact solution (tests/test_blending.py checks against a direct solve).
OMEGA, SWEEPS, CYCLES = 0.8, 3, 8


def replace(raw: Tensor, known: Tensor, mask: Tensor) -> Tensor:
    """The known pixels put back as they are (RePaint, the paper)."""
    return torch.where(mask, known, raw)


def poisson(raw: Tensor, known: Tensor, mask: Tensor) -> Tensor:
    """Gradient-domain blending confined to a band: the generated pixels become ``raw + h``,
    where ``h`` equals the mismatch ``known - raw`` on the known pixels, is zero from ``BAND``
    pixels away from them on, and is harmonic in between (the generated texture keeps every
    gradient of the sampler's output, and the step across the boundary is the sampler's own).

    Why this form. The first version guided the step across the boundary by the next step inside
    the generated pixels and let the correction spread over the whole tile (no flux through the
    tile's border): an artefact in the first generated column was counted twice and shifted the
    whole tile (a +0.1 line became a -0.1 one and the tile moved by -0.19, 24 uint8 levels).
    Here the guidance is the raw output's own gradient everywhere, so a line or bump the sampler
    drew stays as drawn, and the correction is pinned to zero one band away from the known
    pixels, so no artefact moves a tile: a mismatch in the known strip (a blob the generated
    pixels lack) fades out within the band.

    One thing does move a tile: its tint. First the generated pixels are shifted by ``_tint``:
    per edge of the tile, the median of ``known - raw`` over the known pixels there, which a line
    or a blob (a minority of them) does not change but a tile drawn a little lighter or darker
    than a neighbour all along their border does, spread smoothly over the tile. Without it the
    glass of the bundled demo model showed the tile grid as tiles one or two levels apart in the
    home view (the band smooths their edges, not their tints).
    """
    inpaint = mask.flatten(1).any(1)
    if not inpaint.any():
        return raw
    m = mask.to(raw.dtype)
    tint = _tint(known - raw, mask)
    raw = raw + tint
    band = _within(m, max(2, round(mask.shape[-1] * BAND))) & (m <= 0)
    fixed = (~band).to(raw.dtype).expand_as(raw)
    h = _solve((known - raw) * m.expand_as(raw), fixed, torch.zeros_like(raw))
    out = torch.where(mask, known, (raw + h).clamp(-1, 1))
    return torch.where(inpaint.view(-1, 1, 1, 1), out, raw - tint)


def _tint(diff: Tensor, mask: Tensor) -> Tensor:
    """The tile's tint against its neighbours, per channel: on the known pixels nearest each
    edge of the tile, the median of ``diff`` there (what no line or blob, a minority of them,
    moves), spread smoothly over the tile (harmonic, no flux through its border), so a tile
    between a lighter and a darker neighbour takes a gentle ramp, not steps; 0 without any."""
    b, c, height, width = diff.shape
    y = torch.arange(height, device=diff.device).view(-1, 1).expand(height, width)
    x = torch.arange(width, device=diff.device).view(1, -1).expand(height, width)
    # each pixel's nearest edge: 0 left, 1 right, 2 top, 3 bottom
    edge = torch.stack([x, width - 1 - x, y, height - 1 - y]).argmin(0)
    values = torch.zeros_like(diff)
    for e in range(4):
        where = mask & (edge == e)
        d = torch.where(where, diff, torch.full_like(diff, float("nan"))).reshape(b, c, -1)
        med = torch.nan_to_num(d.nanmedian(dim=-1).values).view(b, c, 1, 1)
        values = torch.where(where, med, values)
    m = mask.to(diff.dtype).expand_as(diff)
    return _solve(values, m, torch.zeros_like(diff))


#: Width of the blend's band, as a share of the tile's side (at least 2 px): the overlap of every
#: preset (12.5 %), the strip two tiles were meant to agree on. Beyond it the sampler's pixels
#: are left exactly as drawn.
BAND = 0.125


def _within(m: Tensor, width: int) -> Tensor:
    """Pixels closer than ``width`` (chessboard distance) to a pixel where ``m`` > 0."""
    return F.max_pool2d(m, 2 * width - 1, stride=1, padding=width - 1) > 0


def _neighbour_mean(h: Tensor) -> Tensor:
    """Mean of the four neighbours; the border reflects (zero flux through the tile's edge)."""
    p = F.pad(h, (1, 1, 1, 1), mode="replicate")
    return (p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]) / 4


def _smooth(h: Tensor, f: Tensor, free: Tensor, n: int) -> Tensor:
    """``n`` damped-Jacobi sweeps of ``4 (mean(h) - h) = f`` on the ``free`` pixels."""
    for _ in range(n):
        h = torch.where(free, h + OMEGA * (_neighbour_mean(h) - f / 4 - h), h)
    return h


def _vcycle(h: Tensor, f: Tensor, free: Tensor) -> Tensor:
    """One multigrid V-cycle: smooth, solve for the residual's correction on a 2x coarser grid
    (a coarse pixel is free where most of its pixels are), smooth again."""
    height, width = h.shape[-2:]
    if min(height, width) <= 4:
        return _smooth(h, f, free, 100)
    h = _smooth(h, f, free, SWEEPS)
    residual = torch.where(free, f - 4 * (_neighbour_mean(h) - h), torch.zeros_like(h))
    coarse_free = F.avg_pool2d(free.to(h.dtype), 2, ceil_mode=True) > 0.5
    # the coarse grid's spacing is 2: its 5-point Laplacian is 1/4 of the fine one's per pixel
    r2 = F.avg_pool2d(residual, 2, ceil_mode=True) * 4
    e2 = _vcycle(torch.zeros_like(r2), r2, coarse_free)
    e = F.interpolate(e2, scale_factor=2, mode="bilinear", align_corners=False)[..., :height, :width]
    return _smooth(torch.where(free, h + e, h), f, free, SWEEPS)


def _solve(d: Tensor, m: Tensor, b: Tensor) -> Tensor:
    """``h`` with ``sum over neighbours q of (h_p - h_q) = b_p`` where ``m`` = 0 (neighbours
    outside the tile left out: zero flux) and ``h = d`` where ``m`` = 1; started from the mean
    of ``d`` over the known pixels."""
    free = m <= 0
    start = (d * m).sum((-2, -1), keepdim=True) / m.sum((-2, -1), keepdim=True).clamp(min=1)
    h = torch.where(free, start.expand_as(d), d)
    for _ in range(CYCLES):
        h = _vcycle(h, -b, free)
    return h


@dataclass(frozen=True)
class Blend:
    """A registered blend and the version its fingerprint carries (bump it when the same
    settings would give other pixels)."""

    fn: BlendFn
    version: str


#: The blends, by the name a model config and ``--blend`` use.
BLENDS: dict[str, Blend] = {
    "replace": Blend(replace, version="1"),
    # 2: background-filled tiles blend too (``generator.fill_background``)
    # 3: the correction confined to a band one overlap wide, guided by the raw gradients alone
    # 4: the tile's tint (median mismatch per edge, spread smoothly) taken up before the band
    "poisson": Blend(poisson, version="4"),
}
