"""Figure: does each magnification level agree with the one above? Whole level 0 and level 1 of
a few slides, side by side at one size (level 0 upsampled, level 1 area-downsampled), for one or
more models (e.g. the demo model and its previous version).

Level 1 is made in full (every tile of the level, background tiles filled from level 0), so
this costs about one home view per slide and model; with ``--store`` (the folder of an earlier
``bench/demo_quality.py --store`` run) stored tiles are reused.

    .venv/bin/python bench/overviews.py --model demo [--model OLD] [--seeds 0,1] \\
        [--store DIR] [--size 320] -o overviews.png
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from PIL import Image, ImageDraw

from lazyslide import URCDM, Slide, TileStore
from lazyslide.seeds import parse_seeds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", help="model spec (repeat for several)")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--store", default="cache/overviews")
    p.add_argument("--size", type=int, default=320)
    p.add_argument("-o", "--output", required=True)
    args = p.parse_args()
    models = [URCDM.from_spec(m) for m in (args.model or ["demo"])]
    store = TileStore(args.store)
    n, pad, label = args.size, 6, 18
    rows = []
    t0 = time.perf_counter()
    for seed in parse_seeds(args.seeds):
        row = []
        for spec, model in zip(args.model or ["demo"], models, strict=True):
            slide = Slide(model, seed, store)
            g = model.geometry
            level0 = Image.fromarray(slide.read_region(0, 0, 0, g.canvases[0], g.canvases[0]))
            level1 = Image.fromarray(slide.read_region(1, 0, 0, g.canvases[1], g.canvases[1]))
            for name, im, how in (("level 0", level0, Image.Resampling.BICUBIC),
                                  ("level 1", level1, Image.Resampling.BOX)):
                panel = Image.new("RGB", (n, n + label), "white")
                panel.paste(im.resize((n, n), how), (0, label))
                ImageDraw.Draw(panel).text((4, 3), f"{spec} seed {seed}: {name}", fill="black")
                row.append(np.asarray(panel))
        rows.append(np.concatenate([np.pad(r, ((0, 0), (0, pad), (0, 0)), constant_values=255)
                                    for r in row], axis=1))
    grid = np.concatenate([np.pad(r, ((0, pad), (0, 0), (0, 0)), constant_values=255) for r in rows])
    Image.fromarray(grid).save(args.output)
    print("command: .venv/bin/python " + " ".join(sys.argv))
    print(f"wrote {args.output} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
