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
- seam score over the inpainted tiles (``lazyslide.evaluation.seams``; 1 = invisible), and
  the seam KID no blend can game (seam-centred vs interior crops, real tissue's value beside);
- FID at levels 1 and 2 to real patches at the same um/px (demo_quality's protocol and real
  patches, the same n in every row).

Rows that cost fewer evaluations than the baseline at no worse FID (both levels) and seam score
(or one <= 1.2) are marked with *. Each row is another fingerprint, so with ``--store`` its
tiles are kept apart and a rerun reuses them.

    .venv/bin/python bench/sampling.py [--model demo] [--seeds 4] [--block 3] \\
        [--data data/demo-dataset] [--store DIR] [--baseline paper | ancestral:64,32,32:3] \\
        [--row ddim:16,16,16:1 ...] [--row data/other-model@dpmpp-2m:16,16,16:1 ...]

Large counts on a GPU, where the FID weights cannot travel: make the tiles there and measure
them here. ``--device cuda --batch-size 256`` makes each row's tiles of one level and phase of
all seeds in shared network calls (``ensure_many``); ``--save-tiles DIR`` writes the rows' tiles
(lossless WebP), cost, seam sums and s/tile (timed there) and skips FID; ``--load-tiles DIR``
computes FID here and prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from demo_quality import real_patches  # noqa: E402

from lazyslide import URCDM, Slide  # noqa: E402
from lazyslide.errors import ModelError  # noqa: E402
from lazyslide.evaluation.features import InceptionFeatures  # noqa: E402
from lazyslide.evaluation.fid import fid, fid_bootstrap  # noqa: E402
from lazyslide.evaluation.kid import kid  # noqa: E402
from lazyslide.evaluation.samples import block_tiles, ensure_many, level_patches  # noqa: E402
from lazyslide.evaluation.seams import known_mask, seam_crops, seam_ratio, seam_sums  # noqa: E402
from lazyslide.generator import TileJob, generate  # noqa: E402
from lazyslide.model import SAMPLING_PRESETS  # noqa: E402
from lazyslide.sampler import parse_sampling  # noqa: E402
from lazyslide.store import MemoryStore, TileStore  # noqa: E402

DEFAULT_ROWS = ["ddim:16,16,16:1", "dpmpp-2m:16,16,16:1", "dpmpp-2m:8,8,8:1", "dpmpp-2m:16,16,16:2"]


def parse_row(text: str, stages: int) -> dict:
    """[MODEL@]SAMPLER:STEPS:RESAMPLE -> ``SamplingConfig`` fields (``parse_sampling``)."""
    try:
        return parse_sampling(text.rsplit("@", 1)[-1], stages)
    except ModelError as e:
        raise SystemExit(f"--row {e}") from None


def row_model(base: URCDM, text: str, stages: int, device: str | None = None) -> URCDM:
    """The row's model: ``base`` or the model before '@', its inpainted levels sampled as the
    row says and its one-tile levels (level 0) as the baseline's are, so that every row's
    levels 1-2 grow from the same level-0 pixels (``MODEL@`` alone: as that model's own config
    says, per-level settings included)."""
    model = base
    if "@" in text:
        model = URCDM.from_spec(text.rsplit("@", 1)[0])
        if device:
            model = model.to(device)
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


def time_rows(own: URCDM, rows: list, seeds: list[int], block: int, store, k: int) -> None:
    """``--time-only``: each row's s/tile on the same ``k`` jobs of ``own``'s level-2 blocks."""
    for seed in seeds:
        slide = Slide(own, seed, store)
        slide.ensure(block_tiles(slide, 2, block))
    jobs = timing_jobs(own, seeds, block, store, k)
    print("command: .venv/bin/python " + " ".join(sys.argv))
    print(f"s/tile: median of {len(jobs)} inpainted level-2 jobs of {own.source}'s own tiles, one per call")
    base = None
    for name, model in rows:
        t = seconds_per_tile(model, jobs)
        base = base or t
        print(f"{name:48s}{model.sampling.evaluations(2):8d} evals/inpainted{t:10.2f} s/tile"
              f"{t / base:8.2f} x", flush=True)


def measure(model: URCDM, seeds: list[int], block: int, store, batch_size: int = 1) -> dict:
    """Tiles of the blocks (``level_patches``, as demo_quality chooses them), with cost and seam
    numbers; with ``batch_size`` > 1 made first in calls shared across seeds (``ensure_many``)."""
    if batch_size > 1:  # a fixed batch is part of the sampling settings (its own tiles)
        model = model.with_sampling(batch=batch_size)
    slides = [Slide(model, seed, store, make_level0=False) for seed in seeds]
    if batch_size > 1:
        ensure_many(slides, [s.geometry.tiles(0) for s in slides])
        ensure_many(slides, [block_tiles(s, 1, block) + block_tiles(s, 2, block) for s in slides])
    tiles = {lv: level_patches(slides, lv, block) for lv in (1, 2)}
    inpainted, masks, by_level = [], [], {1: [], 2: []}
    for slide in slides:
        for level in (1, 2):
            for t in block_tiles(slide, level, block):
                mask = known_mask(model.geometry, slide.plan, t)
                if mask.any():
                    inpainted.append(slide.tile(*t))  # stored by level_patches
                    masks.append(mask)
                    by_level[level].append(mask)
    seam, interior = seam_crops(inpainted, masks, 2 * model.geometry.overlap)
    made = sum(s.generated[lv] for s in slides for lv in (1, 2))
    evals = sum(s.unet_evaluations[lv] for s in slides for lv in (1, 2))
    return {
        "tiles": tiles,
        "evals_inpainted": max(model.sampling.evaluations(lv) for lv in (1, 2)),
        "evals_per_tile": evals / made if made else float("nan"),
        "generated": made,
        "seam": seam_sums(inpainted, masks),
        "seam_crops": (seam, interior),
        "masks": by_level,
    }


MOSAIC_COLUMNS = 16  # tiles per mosaic row: WebP images are at most 16383 px on a side


def save_tiles(folder: Path, results: dict, meta: dict) -> None:
    """Each row's level-1 and level-2 tiles as lossless WebP mosaics, the rest as JSON."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (name, r) in enumerate(results.items()):
        counts = {}
        for lv in (1, 2):
            tiles = np.stack(r["tiles"][lv])
            n, t = len(tiles), tiles.shape[1]
            grid = np.zeros((-(-n // MOSAIC_COLUMNS) * MOSAIC_COLUMNS, t, t, 3), np.uint8)
            grid[:n] = tiles
            grid = grid.reshape(-1, MOSAIC_COLUMNS, t, t, 3).transpose(0, 2, 1, 3, 4)
            Image.fromarray(grid.reshape(-1, MOSAIC_COLUMNS * t, 3)).save(
                folder / f"row{i}_level{lv}.webp", lossless=True, quality=100, method=4)
            counts[lv] = n
        np.savez_compressed(folder / f"row{i}_seams.npz", seam=r["seam_crops"][0],
                            interior=r["seam_crops"][1],
                            **{f"masks{lv}": np.array(r["masks"][lv], bool).reshape(-1, *tiles.shape[1:3])
                               for lv in (1, 2)})
        rows.append({"name": name, "counts": counts, **{k: r[k] for k in (
            "evals_inpainted", "evals_per_tile", "generated", "seam", "seconds_per_tile")}})
    (folder / "meta.json").write_text(json.dumps({**meta, "rows": rows}, indent=1))


def load_tiles(folder: Path) -> tuple[dict, dict]:
    meta = json.loads((folder / "meta.json").read_text())
    results = {}
    for i, row in enumerate(meta.pop("rows")):
        r = dict(row, tiles={})
        for lv in (1, 2):
            grid = np.array(Image.open(folder / f"row{i}_level{lv}.webp").convert("RGB"))
            t = grid.shape[1] // MOSAIC_COLUMNS
            tiles = grid.reshape(-1, t, MOSAIC_COLUMNS, t, 3).transpose(0, 2, 1, 3, 4).reshape(-1, t, t, 3)
            r["tiles"][lv] = list(tiles[: row["counts"][str(lv)]])
        with np.load(folder / f"row{i}_seams.npz") as z:
            r["seam_crops"] = (z["seam"], z["interior"])
            r["masks"] = {lv: list(z[f"masks{lv}"]) for lv in (1, 2)}
        results[row["name"]] = r
    return results, meta


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--block", type=int, default=3)
    p.add_argument("--data", help="prepared dataset with the model's geometry (default: prepare now)")
    p.add_argument("--store", help="tile store folder (rows are kept apart by fingerprint)")
    p.add_argument("--baseline", help="the baseline row, SAMPLER:STEPS:RESAMPLE[:OPTION...] or a "
                   "sampling preset (paper: the authors' sampling and background rule) (default: "
                   "the model's own sampling)")
    p.add_argument("--row", action="append",
                   help=f"[MODEL@]SAMPLER:STEPS:RESAMPLE (default: {' '.join(DEFAULT_ROWS)})")
    p.add_argument("--time-tiles", type=int, default=6,
                   help="level-2 inpainted tiles each row is timed on (default 6)")
    p.add_argument("--device", help="torch device of the models (default: the CPU)")
    p.add_argument("--batch-size", type=int, default=1,
                   help="tiles per network call, shared across seeds (default 1: as a slide makes them)")
    p.add_argument("--save-tiles", type=Path, help="write the rows' tiles and numbers here, no FID")
    p.add_argument("--load-tiles", type=Path, help="FID and the table for tiles --save-tiles wrote")
    p.add_argument("--draws", type=int, default=200, help="bootstrap draws for the FID intervals")
    p.add_argument("--time-only", action="store_true",
                   help="only s/tile: every row timed on --time-tiles level-2 jobs of the model's "
                   "own tiles (made first if the store lacks them), no tiles made per row, no FID")
    args = p.parse_args()

    made_by = {"command": " ".join(sys.argv)}
    if args.load_tiles:
        results, made_by = load_tiles(args.load_tiles)
        rows = [(name, None) for name in results]
        base = URCDM.from_spec(made_by["model"])
        fingerprint, jobs_n = made_by["fingerprint"], made_by["time_tiles"]
        seeds_n, block = made_by["seeds"], made_by["block"]
    else:
        own = URCDM.from_spec(args.model)
        if args.device:
            own = own.to(args.device)
        stages = len(own.sampling.steps)
        if args.baseline in SAMPLING_PRESETS:  # e.g. paper: its sampling and background rule
            base = own.with_sampling_preset(args.baseline)
        elif args.baseline:
            base = own.with_sampling(**parse_row(args.baseline, stages))
        else:
            base = own
        rows = [("baseline " + (args.baseline or "(the model's)"), base)]
        for text in args.row or DEFAULT_ROWS:
            model = row_model(base, text, stages, args.device)
            if "@" not in text:  # the model's own background rule, whatever the baseline's
                model = model.with_background(**dataclasses.asdict(own.background))
            rows.append((text, model))
        seeds = list(range(args.seeds))
        store = TileStore(args.store) if args.store else MemoryStore()
        if args.time_only:
            time_rows(own, rows, seeds, args.block, store, args.time_tiles)
            return
        results = {}
        for name, model in rows:
            t0 = time.perf_counter()
            results[name] = measure(model, seeds, args.block, store, args.batch_size)
            print(f"{name}: {results[name]['generated']} tiles made in {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr, flush=True)
        jobs = timing_jobs(base, seeds, args.block, store, args.time_tiles)
        for name, model in rows:
            results[name]["seconds_per_tile"] = seconds_per_tile(model, jobs)
        fingerprint, jobs_n, seeds_n, block = base.fingerprint, len(jobs), args.seeds, args.block
        if args.save_tiles:
            save_tiles(args.save_tiles, results, {
                **made_by, "model": args.model, "fingerprint": fingerprint, "seeds": seeds_n,
                "block": block, "time_tiles": jobs_n, "device": str(base.device)})
            print(f"saved to {args.save_tiles}; measure with --load-tiles {args.save_tiles}")
            return
    n = {lv: min(len(r["tiles"][lv]) for r in results.values()) for lv in (1, 2)}
    real = real_patches(base, args.data, max(n.values()))
    n = {lv: min(n[lv], len(real[lv])) for lv in (1, 2)}
    extract = InceptionFeatures()
    real_feats = {lv: extract(real[lv][: n[lv]]) for lv in (1, 2)}
    feats = {name: {lv: extract(np.stack(r["tiles"][lv][: n[lv]])) for lv in (1, 2)}
             for name, r in results.items()}
    names = list(results)
    for lv in (1, 2):  # the noise floor: bootstrap draws, the same indices in every row
        boot = fid_bootstrap(real_feats[lv], [feats[name][lv] for name in names], args.draws)
        for i, name in enumerate(names):
            r = results[name]
            r.setdefault("fid", {})[lv] = fid(real_feats[lv], feats[name][lv])
            r.setdefault("ci", {})[lv] = np.percentile(boot[:, i], [2.5, 97.5])
            r.setdefault("delta", {})[lv] = np.percentile(boot[:, i] - boot[:, 0], [2.5, 97.5])

    # seams no blend can game: seam-centred against interior crops, and real patches of the
    # same levels cut at the baseline's positions (what a generator without seams scores)
    b0 = results[names[0]]
    real_seam = seam_crops([*real[1], *real[2]],
                           [b0["masks"][lv][i % len(b0["masks"][lv])] for lv in (1, 2)
                            for i in range(len(real[lv]))], 2 * base.geometry.overlap)
    seam_rows = {"real tissue, same positions": real_seam, **{k: r["seam_crops"] for k, r in results.items()}}
    seam_kids = {k: kid(extract(c[0]), extract(c[1])) if min(len(c[0]), len(c[1])) >= 4 else None
                 for k, c in seam_rows.items()}

    print("command: .venv/bin/python " + " ".join(sys.argv))
    if args.load_tiles:
        print(f"tiles made by: {made_by['command']} (device {made_by['device']}; s/tile timed there)")
    print(f"model {made_by.get('model', args.model)} ({fingerprint}), seeds {seeds_n}, block "
          f"{block}x{block}, FID n: level 1 {n[1]}, level 2 {n[2]} (same in every row), s/tile: "
          f"median of {jobs_n} level-2 inpainted tiles")
    cols = ["evals/inpainted", "evals/tile", "x evals", "s/tile", "x time", "seam", "FID L1", "FID L2"]
    print(f"{'':24s}" + "".join(f"{c:>16s}" for c in cols))
    b = results[rows[0][0]]
    for name, _ in rows:
        r = results[name]
        seam = seam_ratio(*r["seam"])
        better = (r["evals_inpainted"] < b["evals_inpainted"] and r["fid"][1] <= b["fid"][1]
                  and r["fid"][2] <= b["fid"][2] and seam <= max(seam_ratio(*b["seam"]), 1.2))
        vals = [r["evals_inpainted"], r["evals_per_tile"], r["evals_per_tile"] / b["evals_per_tile"],
                r["seconds_per_tile"], r["seconds_per_tile"] / b["seconds_per_tile"], seam,
                r["fid"][1], r["fid"][2]]
        print(f"{('* ' if better else '  ') + name:24s}" + "".join(
            f"{v:16.0f}" if i == 0 else f"{v:16.2f}" for i, v in enumerate(vals)))
    print("\n* fewer evaluations per inpainted tile than the baseline, FID at levels 1 and 2 no "
          "worse, seam score no worse (or <= 1.2)")
    print(f"\nFID with 95% bootstrap intervals ({args.draws} draws resampling real and generated "
          "features, the same indices in every row) and the row's paired difference to the baseline")
    print(f"{'':40s}{'FID L1':>24s}{'L1 - baseline':>20s}{'FID L2':>24s}{'L2 - baseline':>20s}")
    for name in names:
        r = results[name]
        cells = []
        for lv in (1, 2):
            lo, hi = r["ci"][lv]
            dlo, dhi = r["delta"][lv]
            cells += [f"{r['fid'][lv]:.1f} [{lo:.1f}, {hi:.1f}]", f"[{dlo:+.1f}, {dhi:+.1f}]"]
        print(f"{name:40s}" + "".join(f"{c:>{w}s}" for c, w in zip(cells, (24, 20, 24, 20), strict=True)))
    print("an interval of the difference that holds 0 means the bench cannot tell the row from the "
          "baseline at this n")
    print(f"\nseams: KID x 1000 between crops ({2 * base.geometry.overlap} px) centred on the "
          "known/generated boundary of inpainted level-1 and level-2 tiles and crops of their "
          "generated interiors (2.5-97.5 % over random halves); the real row cuts real patches "
          "at the baseline's positions: a row within its range shows no seam the features see")
    print(f"{'':40s}{'seam KID x 1000':>28s}{'n seam/interior':>20s}{'seam score':>12s}")
    for name, (sc, ic) in seam_rows.items():
        k = seam_kids[name]
        cell = "n/a" if k is None else f"{k[0]:.2f} [{k[1]:.2f}, {k[2]:.2f}]"
        score = seam_ratio(*results[name]["seam"]) if name in results else float("nan")
        print(f"{name:40s}{cell:>28s}{f'{len(sc)}/{len(ic)}':>20s}{score:12.2f}")


if __name__ == "__main__":
    main()
