"""Screenshots of the viewer in Chromium, as a new user sees it: the home view at 1280x800 (the
whole slide), then a view of each magnification level from 1 over tissue (2 screen px per pixel
of that level), for the model card.

A real server (``LazySlideServer``) on a loopback port with a tile store folder; with the store
of an earlier ``bench/demo_quality.py --store`` run its tiles are not made again.

    .venv/bin/python bench/screenshots.py [--model demo] [--seed 0] [--store DIR] \\
        [--out lazyslide/models/demo] [--prefix viewer_seed0_] [--format jpg]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lazyslide import URCDM, Slide, TileStore  # noqa: E402
from lazyslide.background import tissue_mask  # noqa: E402
from tests.live_server import LiveServer  # noqa: E402

CHROMIUM = "/usr/bin/chromium"


def wait_loaded(page, timeout_s: float) -> None:
    """Until every tile in view is drawn and the server's queue is idle, three polls running
    (OpenSeadragon asks for a new level's tiles a moment after the zoom)."""
    time.sleep(3)
    deadline, calm = time.time() + timeout_s, 0
    while time.time() < deadline:
        done = page.evaluate("""() => { const v = window.lazyslide.viewer;
                const item = v.world.getItemAt(0);
                return item && item.getFullyLoaded() && window.lazyslide.overlays.size === 0
                    && document.getElementById('queue-text').textContent === 'idle'; }""")
        calm = calm + 1 if done else 0
        if calm == 3:
            return
        time.sleep(1)
    raise TimeoutError(f"tiles did not finish loading in {timeout_s} s")


def tissue_point(model: URCDM, seed: int, store: TileStore) -> tuple[float, float]:
    """A deepest-level pixel over tissue: the level-0 tissue pixel nearest the tissue centroid."""
    level0 = Slide(model, seed, store).tile(0, 0, 0)
    mask = tissue_mask(level0, model.background)
    ys, xs = np.nonzero(mask)
    if not len(xs):
        ys, xs = np.array([level0.shape[0] / 2]), np.array([level0.shape[1] / 2])
    i = np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2)
    scale = model.geometry.canvases[-1] / model.geometry.canvases[0]
    return (xs[i] + 0.5) * scale, (ys[i] + 0.5) * scale


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--store", default="cache/screenshots")
    p.add_argument("--out", default=".")
    p.add_argument("--timeout", type=float, default=1800, help="seconds to wait for each view")
    p.add_argument("--prefix", default="viewer_", help="file names: PREFIX + home / level1 / ...")
    p.add_argument("--format", choices=("png", "jpg"), default="png",
                   help="jpg (quality 85) keeps a model card's figures small")
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    model = URCDM.from_spec(args.model)
    out = Path(args.out)
    quality = {"type": "jpeg", "quality": 85} if args.format == "jpg" else {}
    x, y = tissue_point(model, args.seed, TileStore(args.store))
    t0 = time.perf_counter()
    with LiveServer(model, args.store) as live, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"{live.url}/?seed={args.seed}")
        page.wait_for_function("window.lazyslide && window.lazyslide.viewer.world.getItemCount() > 0",
                               timeout=60_000)
        wait_loaded(page, args.timeout)
        home_level = page.inner_text("#level")
        shots = [out / f"{args.prefix}home.{args.format}"]
        page.screenshot(path=str(shots[0]), **quality)
        t_home = time.perf_counter() - t0
        canvases = model.geometry.canvases
        for level in range(max(1, int(home_level)), len(canvases)):  # the home view is whole
            zoom = 2.0 * canvases[level] / canvases[-1]  # 2 screen px per pixel of this level
            page.evaluate(f"""() => {{ const v = window.lazyslide.viewer, item = v.world.getItemAt(0);
                const c = item.imageToViewportCoordinates({x}, {y});
                v.viewport.panTo(c, true); v.viewport.zoomTo(item.imageToViewportZoom({zoom}), c); }}""")
            # animated, as a user's zoom: the viewer follows the animation's level changes
            page.wait_for_function(f"document.getElementById('level').textContent === '{level}'",
                                   timeout=30_000)
            wait_loaded(page, args.timeout)
            shots.append(out / f"{args.prefix}level{level}.{args.format}")
            page.screenshot(path=str(shots[-1]), **quality)
        browser.close()
    print("command: .venv/bin/python " + " ".join(sys.argv))
    print(f"home view (magnification level {home_level}) loaded in {t_home:.0f} s; the deeper levels "
          f"at ({x:.0f}, {y:.0f}) after {time.perf_counter() - t0 - t_home:.0f} s more")
    print("wrote " + ", ".join(str(s) for s in shots))


if __name__ == "__main__":
    main()
