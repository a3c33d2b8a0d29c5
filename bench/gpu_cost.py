"""Device bench: what an inpainted tile of the paper preset costs on a GPU, and a whole slide.

1. Background share: the bundled demo model makes levels 0-1 of ``--share-seeds`` slides in
   full (batched across slides); a level-1 tile is background when level 0 shows no tissue over
   it, a level-2 tile when level 1 does not (``background.has_tissue`` on its parent window).
2. Network: the paper preset's unets (random init, the authors' sizes), level 2's cascade,
   called as the sampler calls them (parent window, low-res image, noise level): ms per call
   at batch 1/4/8, fp32 and bf16 autocast.
3. Tiles: ``generate`` on B copies of one level-2 job with known pixels on two sides and a
   corner (the most a tile inpaints), at the new default sampling (the bundled model's:
   ancestral 16/16/16, one pass, poisson blend) for every batch and precision, and at the old
   one (128/64/64 x 3 RePaint) at batch 1 in bf16 while time is left; the other old cells are
   projected from (2) (evaluations per stage x ms per call / batch), and each projection is
   printed beside the measured cells it can be checked against; the authors' sampling
   (``--sampling-preset paper``: 1024/256/256 x 5, background skipped at level 2 only) is
   projected only.
4. GPU-hours of a 41344^2 slide: per level, tiles with tissue (1 - background share; level 0
   has none) x seconds per tile (tiles without known pixels take one pass), at each setting.

    python bench/gpu_cost.py [--out DIR] [--share-seeds 8 | --share L1,L2] [--budget 240]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from lazyslide import URCDM, Slide, TileId  # noqa: E402
from lazyslide.background import has_tissue  # noqa: E402
from lazyslide.evaluation.samples import ensure_many  # noqa: E402
from lazyslide.generator import TileJob, generate  # noqa: E402
from lazyslide.plan import ParityPlan  # noqa: E402
from lazyslide.store import MemoryStore  # noqa: E402

NEW = dict(sampler="ancestral", steps=[16, 16, 16], resample=[1, 1, 1], blend="poisson")
OLD = dict(sampler="ancestral", steps=[128, 64, 64], resample=[3, 3, 3])
BATCHES = (1, 4, 8)
DTYPES = ("fp32", "bf16")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def autocast(dtype: str, device: str):
    return torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=dtype == "bf16")


def background_share(device: str, seeds: int, batch: int) -> dict:
    model = URCDM.from_spec("demo").with_sampling(batch=batch).to(device)
    g = model.geometry
    slides = [Slide(model, s, MemoryStore(), make_level0=False) for s in range(seeds)]
    t0 = time.perf_counter()
    ensure_many(slides, [g.tiles(0) for _ in slides])
    ensure_many(slides, [g.tiles(1) for _ in slides])
    level2 = 0
    for slide in slides:
        for t in g.tiles(2):
            window = slide._compose(1, g.parent_window(*t))
            level2 += not has_tissue(window, g.footprint_in_window(*t), model.background)
    n1, n2 = len(g.tiles(1)) * seeds, len(g.tiles(2)) * seeds
    return {"model": model.fingerprint, "seeds": seeds, "seconds": round(time.perf_counter() - t0, 1),
            "level1": round(sum(s.background[1] for s in slides) / n1, 4),
            "level2": round(level2 / n2, 4)}


def out_of_memory(fn):
    """``fn()``, or None where the device runs out of memory (the 1024 px unet's middle
    attention at batch 8 in fp32 asks for 64 GiB in one piece)."""
    try:
        return fn()
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None


def forward_ms(model: URCDM, stage: int, batch: int, dtype: str, device: str) -> float:
    """ms per call of level 2's unet ``stage`` as the sampler calls it."""
    unet = model.unet(2, stage)
    size = model.geometry.cascade[stage]
    x = torch.randn(batch, 3, size, size, device=device)
    kw = {"cond_images": torch.randn_like(x)}
    if stage:
        kw.update(lowres_cond_img=torch.randn_like(x), lowres_noise_times=torch.zeros(batch, device=device))
    t = torch.rand(batch, device=device)
    with torch.no_grad(), autocast(dtype, device):
        for _ in range(2):
            unet(x, t, **kw)
        sync()
        n, t0 = 4, time.perf_counter()
        for _ in range(n):
            unet(x, t, **kw)
        sync()
    return (time.perf_counter() - t0) / n * 1000


def inpainted_job(model: URCDM, rng: np.random.Generator) -> TileJob:
    """A level-2 job with known pixels on two sides and a corner, a parent window of noise."""
    g, plan = model.geometry, ParityPlan()
    tile = max((TileId(2, c, r) for c in (1, 2) for r in (1, 2)),
               key=lambda t: plan.known_mask(g, t).sum())
    x0, y0, x1, y1 = g.parent_window(*tile)
    known = rng.integers(120, 250, (g.tile, g.tile, 3), dtype=np.uint8)
    window = rng.integers(120, 250, (y1 - y0, x1 - x0, 3), dtype=np.uint8)
    return TileJob(tile, 0, known, plan.known_mask(g, tile), window, g.footprint_in_window(*tile))


def tile_seconds(model: URCDM, job: TileJob, batch: int, dtype: str, device: str) -> float:
    """Seconds per tile of one ``generate`` call on ``batch`` copies of ``job``."""
    with autocast(dtype, device):
        sync()
        t0 = time.perf_counter()
        generate(model, [job] * batch)
        sync()
    return (time.perf_counter() - t0) / batch


def projected(model: URCDM, ms: dict, batch: int, dtype: str) -> float:
    """Seconds per inpainted tile from ms per call: steps x resamples per stage (None where a
    call ran out of memory)."""
    s = model.sampling.for_level(2)
    if any(ms[f"{stage}/{batch}/{dtype}"] is None for stage in range(3)):
        return None
    return sum(st * r * ms[f"{stage}/{batch}/{dtype}"] for stage, (st, r)
               in enumerate(zip(s.steps, s.resample, strict=True))) / 1000 / batch


def slide_hours(model: URCDM, per_inpainted: float, share: dict) -> float:
    """GPU-hours of every level: tiles with tissue x seconds (one pass where nothing is known)."""
    g, plan = model.geometry, ParityPlan()
    s = model.sampling.for_level(2)
    one_pass = sum(s.steps) / model.sampling.evaluations(2)
    seconds = 0.0
    for level in range(g.levels):  # background is skipped where the model's rule says
        skipped = model.background.skips(level, g.levels)
        tissue = 1.0 - (share.get(f"level{level}", 0.0) if skipped else 0.0)
        for t in g.tiles(level):
            known = plan.known_mask(g, t).any()
            seconds += tissue * per_inpainted * (1.0 if known else one_pass)
    return seconds / 3600


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/gpu_cost")
    ap.add_argument("--share-seeds", type=int, default=8)
    ap.add_argument("--share", help="LEVEL1,LEVEL2 background shares measured before: skip (1)")
    ap.add_argument("--preset", default="paper", help="random-init preset timed (tiny: test)")
    ap.add_argument("--budget", type=float, default=240.0,
                    help="seconds after which the optional old-default tile is skipped")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    started = time.perf_counter()
    report: dict = {"command": "python " + " ".join(sys.argv), "torch": torch.__version__,
                    "device": torch.cuda.get_device_name() if device == "cuda" else "cpu"}

    def save() -> None:
        (out / "report.json").write_text(json.dumps(report, indent=1))

    if args.share:
        l1, l2 = (float(v) for v in args.share.split(","))
        share = {"model": "given", "seeds": args.share_seeds, "level1": l1, "level2": l2}
    else:
        share = background_share(device, args.share_seeds, 64)
    report["background_share"] = share
    print(json.dumps(share), flush=True)
    save()

    base = URCDM.random(args.preset, 0).to(device)
    new, old = base.with_sampling(**NEW), base.with_sampling(**OLD)
    authors = base.with_sampling_preset("paper")  # projected only: minutes per tile
    ms = {}
    for d in DTYPES:
        for b in BATCHES:
            for stage in range(3):
                v = out_of_memory(lambda s=stage, b=b, d=d: forward_ms(base, s, b, d, device))
                ms[f"{stage}/{b}/{d}"] = None if v is None else round(v, 2)
    report["forward_ms"] = ms
    if device == "cuda":
        report["forward_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    print(json.dumps(ms), flush=True)
    save()

    job = inpainted_job(base, np.random.default_rng(0))
    rows = []
    for name, model in (("new", new), ("old", old), ("authors", authors)):
        for d in DTYPES:
            for b in BATCHES:
                measured = None
                if name == "new" or (name == "old" and b == 1 and d == "bf16"
                                     and time.perf_counter() - started < args.budget):
                    if name == "new" and b == 1:  # warm-up: first-call allocations and kernels
                        tile_seconds(model, job, 1, d, device)
                    measured = out_of_memory(lambda m=model, b=b, d=d: tile_seconds(m, job, b, d, device))
                pro = projected(model, ms, b, d)
                best = measured if measured is not None else pro
                hours = None if best is None else round(slide_hours(model, best, share), 2)
                rows.append({"sampling": name, "evals": model.sampling.evaluations(2), "batch": b,
                             "dtype": d, "measured_s": None if measured is None else round(measured, 3),
                             "projected_s": None if pro is None else round(pro, 3),
                             "slide_gpu_hours": hours})
                print(json.dumps(rows[-1]), flush=True)
                report["tiles"] = rows
                save()
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    save()
    print(f"\n{report['command']}\n{report['device']}, torch {report['torch']}, {args.preset} preset "
          f"(random init), level-2 tile with known pixels on two sides and a corner")
    print(f"background share (demo model, {share['seeds']} slides): level 1 {share['level1']:.3f}, "
          f"level 2 {share['level2']:.3f}")
    print(f"{'sampling':>9s} {'evals':>6s} {'batch':>6s} {'dtype':>6s} {'s/tile':>9s} "
          f"{'projected':>10s} {'slide GPU-h':>12s}")
    for r in rows:
        m, p, h = (f"{r[k]:{w}.2f}" if r[k] is not None else f"{'-':>{w}s}"
                   for k, w in (("measured_s", 9), ("projected_s", 10), ("slide_gpu_hours", 12)))
        print(f"{r['sampling']:>9s} {r['evals']:6d} {r['batch']:6d} {r['dtype']:>6s} {m} {p} {h}")
    print("s/tile: measured (one generate call on B copies of the job, / B); projected: evaluations "
          "x ms per unet call / B; GPU-h from the measured value where there is one; -: out of "
          "device memory, or not run")


if __name__ == "__main__":
    main()
