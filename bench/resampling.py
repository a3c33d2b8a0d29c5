"""Benchmark: how far the authors' nearest-neighbour resampling (imagen-pytorch's
``resize_image_to``, the paper preset's ``resampling``) puts a unet's inputs from area averaging
(lazyslide's default): the parent windows of real level-1 training pairs, resized to each
cascade stage's size both ways. Printed: mean and 95th percentile of |nearest - area| in uint8
levels, and the n of windows.

    .venv/bin/python bench/resampling.py [--data DATASET] [--model demo] [--n 200]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from lazyslide import URCDM
from lazyslide.conditioning import resize, to_model_space
from lazyslide.training.dataset import PairDataset
from lazyslide.training.prepare import prepare


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="prepared dataset (default: prepare the bundled real slide now)")
    p.add_argument("--model", default="demo")
    p.add_argument("--n", type=int, default=200)
    args = p.parse_args()
    model = URCDM.from_spec(args.model)
    g = model.geometry
    data = args.data
    if data is None:
        sys.path.insert(0, str(Path(__file__).parent))
        from demo_quality import svs

        data = tempfile.mkdtemp(prefix="lazyslide-real-")
        prepare([svs()], data, g, preset=model.config.get("preset"), strides=[8, 32, 96],
                progress=False, report=lambda m: None)
    windows = PairDataset(data, 1).windows
    idx = np.random.default_rng(0).choice(len(windows), min(args.n, len(windows)), replace=False)
    x = to_model_space(windows[idx])
    print("command: .venv/bin/python " + " ".join(sys.argv))
    print(f"{len(idx)} level-1 parent windows of {g.tile} px")
    print(f"{'stage size':>12s}{'mean |nearest - area|':>24s}{'95th percentile':>18s}")
    for size in g.cascade:
        if size >= g.tile:
            continue
        d = ((resize(x, size, "area") - resize(x, size, "nearest")).abs() * 127.5).flatten().numpy()
        print(f"{size:12d}{d.mean():24.2f}{np.percentile(d, 95):18.2f}")


if __name__ == "__main__":
    main()
