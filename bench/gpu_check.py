"""Device check: the lazy engine on a GPU, and what a paper-size tile costs there.

1. test preset: a cold worst-case tile on the device, twice from empty stores (must be
   identical), and against the CPU (same random numbers, different kernels: not bitwise).
2. paper preset, random-init unets (the authors' sizes): forward time per unet at batch 1 and
   2, and a level-0 image plus one level-1 tile made for real, with reduced sampling steps;
   seconds per tile at the default sampling settings are extrapolated from unet evaluations.

    python bench/gpu_check.py [--out DIR] [--paper-steps 32 16 16]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lazyslide import URCDM, ParityPlan, Slide, TileId, TileStore


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def evaluations(model: URCDM, tiles) -> int:
    s = model.config["sampling"]
    plan = ParityPlan()
    return sum(
        sum(st * (r if plan.earlier_neighbours(model.geometry, t) else 1)
            for st, r in zip(s["steps"], s["resample"], strict=True))
        for t in tiles
    )


def check_test_preset(device: str, report: dict) -> None:
    target = TileId(2, 22, 25)
    outs = []
    for dev in (device, device, "cpu"):
        model = URCDM.random("test", 0).to(dev)
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            slide = Slide(model, 0, TileStore(d))
            outs.append(slide.tile(*target).copy())
            sync()
            report.setdefault("test_seconds", []).append(round(time.perf_counter() - t0, 2))
    report["test_device_repeatable"] = bool(np.array_equal(outs[0], outs[1]))
    diff = np.abs(outs[0].astype(int) - outs[2].astype(int))
    report["test_device_vs_cpu_max_abs_diff"] = int(diff.max())
    report["test_device_vs_cpu_equal_fraction"] = round(float((diff == 0).mean()), 4)


def time_forward(model: URCDM, level: int, stage: int, batch: int, device: str) -> float:
    unet = model.unet(level, stage)
    size = model.geometry.cascade[stage]
    x = torch.randn(batch, 3, size, size, device=device)
    kw = {}
    if stage:
        kw = dict(lowres_cond_img=torch.randn_like(x), lowres_noise_times=torch.zeros(batch, device=device))
    if level:
        kw["cond_images"] = torch.randn(batch, 3, size, size, device=device)
    t = torch.zeros(batch, device=device)
    with torch.no_grad():
        for _ in range(2):
            unet(x, t, **kw)
        sync()
        t0 = time.perf_counter()
        n = 5
        for _ in range(n):
            unet(x, t, **kw)
        sync()
    return (time.perf_counter() - t0) / n * 1000


def check_paper(device: str, steps: list[int], out: Path, report: dict) -> None:
    base = URCDM.random("paper", 0).to(device)
    counts = base.param_counts()
    report["paper_params_M"] = {f"{lv}.{st + 1}": round(n / 1e6, 1) for (lv, st), n in counts.items()}
    fwd = {}
    for stage in range(3):
        for batch in (1, 2):
            ms = time_forward(base, 1, stage, batch, device)
            fwd[f"level1_unet{stage + 1}_batch{batch}_ms"] = round(ms, 1)
    report["paper_forward"] = fwd
    if torch.cuda.is_available():
        report["paper_forward_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    model = base.with_sampling(steps=steps, resample=[2, 2, 2])
    with tempfile.TemporaryDirectory() as d:
        store = TileStore(d)
        sync()
        t0 = time.perf_counter()
        slide = Slide(model, 0, store)
        sync()
        t_level0 = time.perf_counter() - t0
        target = TileId(1, 1, 0)  # phase 1: inpaints its left/right overlaps, full cascade
        missing = slide.missing([target])
        t0 = time.perf_counter()
        tile = slide.tile(*target)
        sync()
        t_level1 = time.perf_counter() - t0
        Image.fromarray(slide.read_region(0, 0, 0, 1024, 1024)).save(out / "paper_level0.png")
        Image.fromarray(tile).save(out / "paper_level1_1_0.png")
    report["paper_reduced_steps"] = steps
    report["paper_level0_seconds"] = round(t_level0, 1)
    report["paper_level1_tiles"] = len(missing)
    report["paper_level1_seconds"] = round(t_level1, 1)
    per_eval = (t_level0 + t_level1) / (evaluations(model, [TileId(0, 0, 0)]) + evaluations(model, missing))
    report["paper_seconds_per_unet_eval_mixed"] = round(per_eval, 4)
    full = evaluations(base, [TileId(1, 1, 0)])
    report["paper_default_sampling"] = base.config["sampling"]
    report["paper_default_evals_inpainted_tile"] = full
    report["paper_default_seconds_per_inpainted_tile_est"] = round(full * per_eval, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/gpu_check")
    ap.add_argument("--paper-steps", nargs=3, type=int, default=[32, 16, 16])
    ap.add_argument("--skip-paper", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    report: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                    "torch": torch.__version__}
    t0 = time.perf_counter()
    check_test_preset(device, report)
    print(json.dumps(report), flush=True)
    if not args.skip_paper:
        check_paper(device, args.paper_steps, out, report)
    report["total_seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(report, indent=1))
    (out / "report.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
