"""A new user's session in a real browser, timed: open the viewer, wait until the home view is
sharp, mouse-wheel zoom into tissue until the deepest magnification level shows, wait until that
view is sharp. Chromium at 1280x800 against ``lazyslide serve`` (its own process, as ``make demo``
runs it) on a fresh tile store.

"Sharp": OpenSeadragon has every tile of the view at the level it wants
(``getFullyLoaded``) and no generation overlay is left. The wheel is a user's: one notch
(OpenSeadragon: 1.2x zoom about the cursor) every ``--wheel-interval`` seconds, the cursor over
the tissue nearest its centroid in level 0.

    .venv/bin/python bench/viewer_session.py [--model demo] [--seed 0] [--out DIR] [serve options]

Prints both times, the wheel notches and the tiles generated per level (the server's /metrics),
and keeps the final screenshots (home.png, deepest.png) under ``--out``.
"""

from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).parent))

from screenshots import CHROMIUM, tissue_point  # noqa: E402

from lazyslide import URCDM, TileStore  # noqa: E402

SHARP = """() => { const s = window.lazyslide, item = s.viewer.world.getItemAt(0);
    return !!item && item.getFullyLoaded() && s.overlays.size === 0; }"""


def wait_sharp(page, timeout_s: float) -> float:
    """Seconds until the view is sharp, three polls in a row (OpenSeadragon asks for a new
    level's tiles a moment after a zoom)."""
    t0, calm = time.perf_counter(), 0
    while time.perf_counter() - t0 < timeout_s:
        calm = calm + 1 if page.evaluate(SHARP) else 0
        if calm == 3:
            return time.perf_counter() - t0 - 1.0  # the two confirming polls
        time.sleep(0.5)
    raise TimeoutError(f"the view was not sharp after {timeout_s:.0f} s")


def generated(url: str) -> dict[str, int]:
    text = urllib.request.urlopen(f"{url}/metrics", timeout=30).read().decode()
    return {m[1]: int(float(m[2])) for m in
            re.finditer(r'lazyslide_tiles_generated_total\{level="(\d+)"\} (\S+)', text)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="cache/viewer-session")
    p.add_argument("--store", help="tile store folder (default: a fresh temporary one)")
    p.add_argument("--wheel-interval", type=float, default=0.3, help="seconds between wheel notches")
    p.add_argument("--timeout", type=float, default=3600, help="seconds to wait for each view")
    p.add_argument("serve_args", nargs="*", help="after --: more `lazyslide serve` options")
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = args.store or tempfile.mkdtemp(prefix="lazyslide-session-")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    t_start = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "lazyslide.cli", "serve", "--model", args.model,
                               "--seed", str(args.seed), "--port", str(port), "--cache", store,
                               *args.serve_args])
    try:
        while True:
            try:
                urllib.request.urlopen(f"{url}/healthz", timeout=5)
                break
            except OSError:
                if server.poll() is not None:
                    raise SystemExit("the server exited") from None
                time.sleep(0.5)
        t_ready = time.perf_counter() - t_start
        # where to zoom: level 0 (made at start-up, read from the shared store)
        model = URCDM.from_spec(args.model)
        x, y = tissue_point(model, args.seed, TileStore(store))
        deepest = str(model.geometry.levels - 1)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"])
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            t0 = time.perf_counter()
            page.goto(f"{url}/?seed={args.seed}")
            page.wait_for_function("window.lazyslide && window.lazyslide.viewer.world.getItemCount() > 0",
                                   timeout=60_000)
            wait_sharp(page, args.timeout)
            t_home = time.perf_counter() - t0
            home_level = page.inner_text("#level")
            page.screenshot(path=str(out / "home.png"))
            made_home = generated(url)
            sx, sy = page.evaluate(f"""() => {{ const v = window.lazyslide.viewer;
                const p = v.viewport.imageToViewerElementCoordinates(new OpenSeadragon.Point({x}, {y}));
                const r = v.element.getBoundingClientRect();
                return [p.x + r.left, p.y + r.top]; }}""")
            page.mouse.move(sx, sy)
            notches = 0
            while page.inner_text("#level") != deepest:
                page.mouse.wheel(0, -100)
                notches += 1
                time.sleep(args.wheel_interval)
                if notches > 100:
                    raise SystemExit("100 wheel notches and the deepest level never showed")
            magnification = page.inner_text("#magnification")
            try:
                deep = f"sharp {wait_sharp(page, args.timeout):.0f} s after the last notch"
            except TimeoutError:
                deep = f"NOT sharp {args.timeout:.0f} s after the last notch (--timeout)"
            page.screenshot(path=str(out / "deepest.png"))
            browser.close()
        made = generated(url)
    finally:
        server.terminate()
        server.wait(30)
    print("command: .venv/bin/python " + " ".join(sys.argv))
    print(f"server ready (model loaded, level 0 made) {t_ready:.0f} s after start")
    print(f"home view (magnification level {home_level}) sharp {t_home:.0f} s after opening the page; "
          f"tiles generated {made_home}")
    print(f"{notches} wheel notches ({args.wheel_interval} s apart) to level {deepest} at {magnification} "
          f"over ({x:.0f}, {y:.0f}); {deep}; tiles generated "
          f"{ {k: made.get(k, 0) - made_home.get(k, 0) for k in made} }")
    print(f"screenshots: {out / 'home.png'}, {out / 'deepest.png'}")
    if errors:
        print("page errors:", errors)


if __name__ == "__main__":
    main()
