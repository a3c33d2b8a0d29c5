"""Benchmark: the cost of one cold tile, parity plan vs the paper's raster order.

For the test and demo presets (random-init weights): tiles generated and unet evaluations for a
cold tile at the deepest level's bottom-right corner under each plan (from the dependency
graphs), their ratio, the parity plan's worst tile anywhere, and measured seconds per tile on
this machine (the parity closure is generated for real from an empty store; the raster cost
is that closure size times the measured seconds per tile).

    .venv/bin/python bench/cold_tile.py [--presets test demo]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from lazyslide import URCDM, ParityPlan, RasterPlan, Slide, TileId, TileStore


def unet_evaluations(model: URCDM, plan, tiles) -> int:
    """Forward passes of the unets to make ``tiles``: steps x RePaint resamples per stage."""
    steps, resample = model.config["sampling"]["steps"], model.config["sampling"]["resample"]
    total = 0
    for t in tiles:
        inpaints = bool(plan.earlier_neighbours(model.geometry, t))
        total += sum(s * (r if inpaints else 1) for s, r in zip(steps, resample, strict=True))
    return total


def run(preset: str) -> None:
    model = URCDM.random(preset, 0)
    g = model.geometry
    deepest = g.levels - 1
    corner = TileId(deepest, g.grid(deepest) - 1, g.grid(deepest) - 1)
    parity, raster = ParityPlan(), RasterPlan()
    cold = {p.name: p.closure(g, [corner]) for p in (parity, raster)}
    evals = {name: unet_evaluations(model, parity if name == "parity" else raster, tiles)
             for name, tiles in cold.items()}
    worst_tile = max(g.tiles(deepest), key=lambda t: len(parity.closure(g, [t])))
    worst = parity.closure(g, [worst_tile])

    for level, stage in model.unet_keys():
        model.unet(level, stage)  # build (and import imagen-pytorch) outside the timing
    with tempfile.TemporaryDirectory() as d:
        started = time.perf_counter()
        slide = Slide(model, 0, TileStore(d))
        slide.tile(*corner)
        seconds = time.perf_counter() - started
    made = sum(slide.generated.values()) + sum(slide.background.values())
    per_tile = seconds / made

    print(f"\n== preset {preset}: {g.canvases[-1]}^2 px deepest level, {g.grid(deepest)}^2 tiles, "
          f"sampling steps {model.config['sampling']['steps']} resample "
          f"{model.config['sampling']['resample']}, torch threads {torch.get_num_threads()}")
    print(f"cold corner tile {tuple(corner)}")
    print(f"{'':>28}{'parity':>12}{'raster':>12}{'raster/parity':>15}")
    for label, a, b in [
        ("tiles generated (all levels)", len(cold["parity"]), len(cold["raster"])),
        (f"tiles of level {deepest}", sum(t.level == deepest for t in cold["parity"]),
         sum(t.level == deepest for t in cold["raster"])),
        ("unet evaluations", evals["parity"], evals["raster"]),
        ("seconds (raster estimated)", round(seconds, 1), round(len(cold["raster"]) * per_tile, 1)),
    ]:
        print(f"{label:>28}{a:>12}{b:>12}{b / a:>15.1f}")
    print(f"parity plan, worst cold tile anywhere: {tuple(worst_tile)} needs {len(worst)} tiles "
          f"({sum(t.level == deepest for t in worst)} of level {deepest}), "
          f"{unet_evaluations(model, parity, worst)} unet evaluations")
    print(f"measured: {made} tiles in {seconds:.2f} s = {per_tile:.3f} s per tile")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["test", "demo"])
    for preset in ap.parse_args().presets:
        run(preset)


if __name__ == "__main__":
    main()
