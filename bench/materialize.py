"""Benchmark: whole-slide generation throughput, and the TIFF writer at the paper's size.

1. Generation (random-init weights, this machine): tiles per second and the fraction of wall
   time the model is busy, single process, batch 1 vs batch 4, for the test and demo presets.
   The demo preset's full slide takes over an hour on 2 cores, so both presets run the first
   ``--tiles`` tiles in materialize order (levels 0 and 1 complete first).
2. The writer alone at the paper's 41344^2 geometry, fed by a fast synthetic tile source:
   seconds and peak RSS per format, in a fresh process each, against the RSS of that process
   (imports done) just before writing (goal: under 1 GiB beyond it, independent of canvas size).

    .venv/bin/python bench/materialize.py [--tiles 120] [--skip-writer]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def generation(preset: str, n_tiles: int, batch: int, device: str = "cpu") -> dict:
    import lazyslide.slide as slide_mod
    from lazyslide import URCDM, Slide, TileStore

    model = URCDM.random(preset, 0).to(device)
    for key in model.unet_keys():
        model.unet(*key)  # build outside the timing
    busy = 0.0
    real = slide_mod.generate

    def timed(*a, **k):
        nonlocal busy
        t0 = time.perf_counter()
        try:
            return real(*a, **k)
        finally:
            busy += time.perf_counter() - t0

    slide_mod.generate = timed
    try:
        with tempfile.TemporaryDirectory() as d:
            slide = Slide(model, 0, TileStore(d), make_level0=False)
            g, plan = slide.geometry, slide.plan
            order = [t for lv in range(g.levels) for t in plan.order(g, g.tiles(lv))][:n_tiles]
            t0 = time.perf_counter()
            i = 0
            while i < len(order):  # batches of independent tiles: same level, same phase
                head, j = order[i], i + 1
                while (j < len(order) and j - i < batch and order[j].level == head.level
                       and plan.rank(g, *order[j]) == plan.rank(g, *head)):
                    j += 1
                slide.make_batch(order[i:j])
                i = j
            wall = time.perf_counter() - t0
    finally:
        slide_mod.generate = real
    return {"preset": preset, "batch": batch, "tiles": len(order), "seconds": round(wall, 2),
            "tiles_per_s": round(len(order) / wall, 3), "model_busy": round(busy / wall, 3)}


class SyntheticSlide:
    """What the writer reads, at any geometry, with cheap pixels (no model, no store)."""

    def __init__(self, geometry) -> None:
        self.geometry = geometry
        self.levels = list(range(geometry.levels))
        self.seed = 0
        self.model = type("M", (), {"fingerprint": "synthetic"})()
        rng = np.random.default_rng(0)
        self._pattern = rng.integers(90, 230, (512, 512, 3), dtype=np.uint8)

    def read_region(self, level: int, x: int, y: int, w: int, h: int, *, factor: int = 1) -> np.ndarray:
        # reduced pages (factor > 1): the pattern sampled, not averaged (the writer is measured)
        xs, ys = (x + np.arange(w)) % 512, (y + np.arange(h)) % 512
        return self._pattern[np.ix_(ys, xs)]


def _status(field: str) -> float:
    """A /proc/self/status memory figure in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def writer(fmt: str, compression: str, out_dir: str) -> dict:
    from lazyslide.export import EXTENSIONS, export
    from lazyslide.geometry import preset

    slide = SyntheticSlide(preset("paper"))
    before = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    out = Path(out_dir) / f"paper{EXTENSIONS[fmt]}"
    t0 = time.perf_counter()
    export(slide, out, fmt, compression=compression)
    seconds = time.perf_counter() - t0
    peak = _status("VmHWM")
    size = out.stat().st_size
    return {"format": fmt, "compression": compression, "seconds": round(seconds, 1),
            "rss_before_mib": round(before), "peak_rss_mib": round(peak),
            "beyond_mib": round(peak - before), "file_mib": round(size / 2**20)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", type=int, default=120)
    ap.add_argument("--skip-writer", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--presets", nargs="*", default=["test", "demo"], help="none: writer only")
    ap.add_argument("--writer", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.writer:
        print(json.dumps(writer(*args.writer)))
        return
    print(f"generation, first {args.tiles} tiles in materialize order, random init, single process, "
          f"device {args.device}")
    print(f"{'preset':>8}{'batch':>7}{'tiles':>7}{'seconds':>9}{'tiles/s':>9}{'model busy':>12}")
    for preset in args.presets:
        base = None
        for b in args.batches:
            r = generation(preset, args.tiles, b, args.device)
            base = base or r["tiles_per_s"]
            print(f"{preset:>8}{b:>7}{r['tiles']:>7}{r['seconds']:>9}{r['tiles_per_s']:>9}"
                  f"{r['model_busy']:>12.0%}   x{r['tiles_per_s'] / base:.2f} vs batch 1")
    if args.skip_writer:
        return
    print("\nwriter alone, paper geometry 41344^2, synthetic tiles (fresh process each)")
    print(f"{'format':>10}{'codec':>9}{'seconds':>9}{'file MiB':>10}{'RSS before':>12}"
          f"{'peak RSS':>10}{'beyond':>8}")
    with tempfile.TemporaryDirectory() as d:
        for fmt, comp in (("tiff", "jpeg"), ("svs", "jpeg"), ("ome-tiff", "jpeg"), ("tiff", "deflate")):
            out = subprocess.run([sys.executable, __file__, "--writer", fmt, comp, d],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{fmt:>10}{comp:>9}{r['seconds']:>9}{r['file_mib']:>10}{r['rss_before_mib']:>12}"
                  f"{r['peak_rss_mib']:>10}{r['beyond_mib']:>8}")
            for f in Path(d).glob("paper*"):
                f.unlink()


if __name__ == "__main__":
    main()
