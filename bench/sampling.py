"""Benchmark: what does each way of sampling a tile cost, and what does it give?

Rows: a model sampled several ways (sampler family x steps per cascade stage x RePaint
resamples), the model's own setting first as the baseline, all in this run; a row may name
another model with the same geometry (``MODEL@SAMPLER:STEPS:RESAMPLE``, e.g. one trained with
trained inpainting, or ``MODEL@``: sampled as its config says). A row's settings apply to the
levels that inpaint; level 0 (one tile) is made as the baseline makes it in every row. For
each row the lazy engine makes the tiles ``bench/demo_quality.py`` measures (per seed the
level-0 overview and a block of level-1 and level-2 tiles around the slide's tissue, with every
dependency), and the table gives:

- evaluations per inpainted tile: network calls a tile with known pixels costs, sum over the
  cascade of steps x resamples (the wrapper's arithmetic; the measured mean per generated tile,
  counted at the network call, is beside it: tiles without known pixels take one pass);
- seconds per inpainted tile on this machine: ``generate`` timed on the same ``--time-tiles``
  level-2 jobs (the known pixels and parent window of the baseline's inpainted block tiles) for
  every row, one tile per call as the slide makes them, so a stored row is timed too;
- seam score over the inpainted tiles (``lazyslide.evaluation.seams``; 1 = invisible);
- FID at levels 1 and 2 to real patches at the same um/px (demo_quality's protocol and real
  patches, the same n in every row).

Rows that cost fewer evaluations than the baseline at no worse FID (both levels) and seam score
(or one <= 1.2) are marked with *. Each row is another fingerprint, so with ``--store`` its
tiles are kept apart and a rerun reuses them.

    .venv/bin/python bench/sampling.py [--model demo] [--seeds 4] [--block 3] \\
        [--data data/demo-dataset] [--store DIR] [--baseline ancestral:64,32,32:3] \\
        [--row ddim:16,16,16:1 ...] [--row data/other-model@dpmpp-2m:16,16,16:1 ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from demo_quality import real_patches  # noqa: E402

from lazyslide import URCDM, Slide  # noqa: E402
from lazyslide.errors import ModelError  # noqa: E402
from lazyslide.evaluation.features import InceptionFeatures  # noqa: E402
from lazyslide.evaluation.fid import fid  # noqa: E402
from lazyslide.evaluation.samples import block_tiles, level_patches  # noqa: E402
from lazyslide.evaluation.seams import known_mask, seam_score  # noqa: E402
from lazyslide.generator import TileJob, generate  # noqa: E402
from lazyslide.sampler import parse_sampling  # noqa: E402
from lazyslide.store import MemoryStore, TileStore  # noqa: E402

DEFAULT_ROWS = ["ddim:16,16,16:1", "dpmpp-2m:16,16,16:1", "dpmpp-2m:8,8,8:1", "dpmpp-2m:16,16,16:2"]


def parse_row(text: str, stages: int) -> dict:
    """[MODEL@]SAMPLER:STEPS:RESAMPLE -> ``SamplingConfig`` fields (``parse_sampling``)."""
    try:
        return parse_sampling(text.rsplit("@", 1)[-1], stages)
    except ModelError as e:
        raise SystemExit(f"--row {e}") from None


def row_model(base: URCDM, text: str, stages: int) -> URCDM:
    """The row's model: ``base`` or the model before '@', its inpainted levels sampled as the
    row says and its one-tile levels (level 0) as the baseline's are, so that every row's
    levels 1-2 grow from the same level-0 pixels (``MODEL@`` alone: as that model's own config
    says, per-level settings included)."""
    model = base
    if "@" in text:
        model = URCDM.from_spec(text.rsplit("@", 1)[0])
        if model.geometry != base.geometry:
            raise SystemExit(f"--row {text!r}: its model's geometry is not the baseline's")
        if text.endswith("@"):
            return model
    g = base.geometry
    single = {}
    for level in range(g.levels):
        if g.grid(level) == 1:
            s = base.sampling.for_level(level)
            single[level] = {"sampler": s.sampler, "steps": list(s.steps),
                             "resample": list(s.resample), "threshold": s.threshold}
    return model.with_sampling(**parse_row(text, stages), levels=single)


def timing_jobs(model: URCDM, seeds: list[int], block: int, store, k: int) -> list[TileJob]:
    """``k`` level-2 jobs with known pixels, from the blocks ``measure`` made for ``model``."""
    jobs = []
    for seed in seeds:
        slide = Slide(model, seed, store, make_level0=False)
        for t in block_tiles(slide, 2, block):
            job = slide._job(t)
            if job.mask.any() and slide._has_tissue(job):
                jobs.append(job)
    return jobs[:k]


def seconds_per_tile(model: URCDM, jobs: list[TileJob]) -> float:
    """Median seconds of ``generate`` per job, one job per call (as the slide makes tiles)."""
    times = []
    for job in jobs:
        t0 = time.perf_counter()
        generate(model, [job])
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) if times else float("nan")


def measure(model: URCDM, seeds: list[int], block: int, store) -> dict:
    """Tiles of the blocks (``level_patches``, as demo_quality chooses them), with cost and seam
    numbers."""
    slides = [Slide(model, seed, store, make_level0=False) for seed in seeds]
    tiles = {lv: level_patches(slides, lv, block) for lv in (1, 2)}
    inpainted, masks = [], []
    for slide in slides:
        for level in (1, 2):
            for t in block_tiles(slide, level, block):
                mask = known_mask(model.geometry, slide.plan, t)
                if mask.any():
                    inpainted.append(slide.tile(*t))  # stored by level_patches
                    masks.append(mask)
    made = sum(s.generated[lv] for s in slides for lv in (1, 2))
    evals = sum(s.unet_evaluations[lv] for s in slides for lv in (1, 2))
    return {
        "tiles": tiles,
        "evals_inpainted": max(model.sampling.evaluations(lv) for lv in (1, 2)),
        "evals_per_tile": evals / made if made else float("nan"),
        "generated": made,
        "seam": seam_score(inpainted, masks),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--block", type=int, default=3)
    p.add_argument("--data", help="prepared dataset with the model's geometry (default: prepare now)")
    p.add_argument("--store", help="tile store folder (rows are kept apart by fingerprint)")
    p.add_argument("--baseline", help="the baseline row, SAMPLER:STEPS:RESAMPLE (default: the "
                   "model's own sampling)")
    p.add_argument("--row", action="append",
                   help=f"[MODEL@]SAMPLER:STEPS:RESAMPLE (default: {' '.join(DEFAULT_ROWS)})")
    p.add_argument("--time-tiles", type=int, default=6,
                   help="level-2 inpainted tiles each row is timed on (default 6)")
    args = p.parse_args()

    base = URCDM.from_spec(args.model)
    stages = len(base.sampling.steps)
    if args.baseline:
        base = base.with_sampling(**parse_row(args.baseline, stages))
    rows = [("baseline " + (args.baseline or "(the model's)"), base)]
    for text in args.row or DEFAULT_ROWS:
        rows.append((text, row_model(base, text, stages)))
    seeds = list(range(args.seeds))
    store = TileStore(args.store) if args.store else MemoryStore()
    results = {}
    for name, model in rows:
        results[name] = measure(model, seeds, args.block, store)
        print(f"{name}: {results[name]['generated']} tiles made", file=sys.stderr, flush=True)
    jobs = timing_jobs(base, seeds, args.block, store, args.time_tiles)
    for name, model in rows:
        results[name]["seconds_per_tile"] = seconds_per_tile(model, jobs)
    n = {lv: min(len(r["tiles"][lv]) for r in results.values()) for lv in (1, 2)}
    real = real_patches(base, args.data, max(n.values()))
    extract = InceptionFeatures()
    real_feats = {lv: extract(real[lv][: n[lv]]) for lv in (1, 2)}
    for r in results.values():
        r["fid"] = {lv: fid(real_feats[lv], extract(np.stack(r["tiles"][lv][: n[lv]]))) for lv in (1, 2)}

    print("command: .venv/bin/python " + " ".join(sys.argv))
    print(f"model {args.model} ({base.fingerprint}), seeds {args.seeds}, block {args.block}x{args.block}, "
          f"FID n: level 1 {n[1]}, level 2 {n[2]} (same in every row), s/tile: median of "
          f"{len(jobs)} level-2 inpainted tiles")
    cols = ["evals/inpainted", "evals/tile", "x evals", "s/tile", "x time", "seam", "FID L1", "FID L2"]
    print(f"{'':24s}" + "".join(f"{c:>16s}" for c in cols))
    b = results[rows[0][0]]
    for name, _ in rows:
        r = results[name]
        better = (r["evals_inpainted"] < b["evals_inpainted"] and r["fid"][1] <= b["fid"][1]
                  and r["fid"][2] <= b["fid"][2] and r["seam"] <= max(b["seam"], 1.2))
        vals = [r["evals_inpainted"], r["evals_per_tile"], r["evals_per_tile"] / b["evals_per_tile"],
                r["seconds_per_tile"], r["seconds_per_tile"] / b["seconds_per_tile"], r["seam"],
                r["fid"][1], r["fid"][2]]
        print(f"{('* ' if better else '  ') + name:24s}" + "".join(
            f"{v:16.0f}" if i == 0 else f"{v:16.2f}" for i, v in enumerate(vals)))
    print("\n* fewer evaluations per inpainted tile than the baseline, FID at levels 1 and 2 no "
          "worse, seam score no worse (or <= 1.2)")


if __name__ == "__main__":
    main()
