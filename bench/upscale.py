"""How far the viewer may upscale a magnification level before it asks for the next: detail kept
against deep tiles to generate, per upscale factor.

At upscale factor f the screen shows the coarser level k at f screen px per level px; the
alternative is level k + 1 (``ratio`` times finer) downsampled by ``ratio / f``. For regions over
tissue (the 3 x 3 blocks ``lazyslide evaluate`` samples, so a store of ``bench/demo_quality.py``
already holds them) this prints, per f: the detail the upscaled view keeps (mean Sobel gradient
magnitude of its luminance over that of the deeper level at the same screen scale: 1 = as sharp),
and how many deeper-level tiles a 1280 x 800 view needs at the switch. ``--data`` adds the same
numbers on real tissue: each deepest-level training target against the centre of its parent
window (a briefly trained model's deep level has less detail than real tissue, so the detail an
upscaled view keeps is higher on generated tissue).

    .venv/bin/python bench/upscale.py [--model demo] [--seeds 4] [--store data/bench-store] \
        [--data data/demo-dataset]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lazyslide import URCDM, Slide, TileStore  # noqa: E402
from lazyslide.evaluation.samples import block_tiles  # noqa: E402
from lazyslide.training.dataset import PairDataset  # noqa: E402
from lazyslide.training.prepare import TissueRule  # noqa: E402

FACTORS = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0)


def detail(rgb: np.ndarray) -> float:
    """Mean gradient magnitude (Sobel) of the luminance."""
    y = np.asarray(Image.fromarray(rgb).convert("L"), np.float64)
    gx = (y[1:-1, 2:] - y[1:-1, :-2]) * 2 + (y[:-2, 2:] - y[:-2, :-2]) + (y[2:, 2:] - y[2:, :-2])
    gy = (y[2:, 1:-1] - y[:-2, 1:-1]) * 2 + (y[2:, :-2] - y[:-2, :-2]) + (y[2:, 2:] - y[:-2, 2:])
    return float(np.hypot(gx, gy).mean())


def kept(coarse: np.ndarray, fine: np.ndarray, f: float) -> float:
    """Detail of ``coarse`` upscaled by ``f`` (bicubic, as the browser draws) over that of
    ``fine`` (the same region) downsampled to the same size."""
    size = round(coarse.shape[0] * f)
    up = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC))
    down = np.asarray(Image.fromarray(fine).resize((size, size), Image.Resampling.BOX))
    return detail(up) / detail(down)


def real_pairs(data: str, level: int, ratio: float, n: int = 36) -> list[tuple[np.ndarray, np.ndarray]]:
    """(parent window centre, target) of ``n`` real deepest-level pairs with tissue."""
    ds = PairDataset(data, level)
    rule, t = TissueRule(), ds.geometry.tile
    keep = [i for i in np.random.default_rng(0).permutation(len(ds)) if rule.keeps(ds.targets[i])][:n]
    m = int(t / ratio)  # window px across the target's footprint
    a = (t - m) // 2
    side = round(m * ratio)
    b = (t - side) // 2
    return [(ds.windows[i][a:a + m, a:a + m], ds.targets[i][b:b + side, b:b + side]) for i in keep]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--store", default="data/bench-store")
    p.add_argument("--screen", default="1280x800")
    p.add_argument("--data", help="a prepared dataset: the same numbers on its real pairs")
    args = p.parse_args()
    model = URCDM.from_spec(args.model)
    g = model.geometry
    width, height = map(int, args.screen.split("x"))
    rows = {f: [] for f in FACTORS}
    deep = g.levels - 1
    ratio = g.canvases[deep] / g.canvases[deep - 1]
    for seed in range(args.seeds):
        slide = Slide(model, seed, TileStore(args.store), make_level0=False)
        tiles = block_tiles(slide, deep, 3)
        x0 = min(t.col for t in tiles) * g.stride
        y0 = min(t.row for t in tiles) * g.stride
        span = 2 * g.stride + g.tile  # the block
        n = int(span / ratio) - 1  # coarse pixels across the region (inside the block)
        cx, cy = math.ceil(x0 / ratio), math.ceil(y0 / ratio)
        fx, fy, fs = round(cx * ratio), round(cy * ratio), round(n * ratio)
        fine = slide.read_region(deep, fx, fy, fs, fs)
        coarse = slide.read_region(deep - 1, cx, cy, n, n)
        for f in FACTORS:
            rows[f].append(kept(coarse, fine, f))
    real = {f: [kept(c, t, f) for c, t in real_pairs(args.data, deep, ratio)] for f in FACTORS} \
        if args.data else None
    print("command: .venv/bin/python " + " ".join(sys.argv))
    print(f"model {model.source} ({model.fingerprint}), levels {deep - 1} -> {deep} ({ratio:.2f}x), "
          f"{args.seeds} regions of {n} x {n} level-{deep - 1} px over tissue")
    head = f"| upscale factor | detail kept, generated (median, min-max, n={args.seeds}) |"
    if real:
        head += f" real (n={len(real[FACTORS[0]])}) |"
    print(head + f" level-{deep} tiles per {width} x {height} view at the switch |")
    print("|---|---|" + ("---|" if real else "") + "---|")
    for f in FACTORS:
        v = np.array(rows[f])
        s = ratio / f  # deepest-level px per screen px at the switch
        tiles = math.ceil(width * s / g.stride + 1) * math.ceil(height * s / g.stride + 1)
        r = f" {np.median(real[f]):.2f} ({np.min(real[f]):.2f}-{np.max(real[f]):.2f}) |" if real else ""
        print(f"| {f:g} | {np.median(v):.2f} ({v.min():.2f}-{v.max():.2f}) |{r} {tiles} |")


if __name__ == "__main__":
    main()
