"""The viewer in a real browser: Debian's Chromium driven by Playwright.

Opens the page, zooms to the deepest magnification level, waits for the generated tiles, and
checks that what is on screen is not blank and differs from the upscaled parent level.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .live_server import LiveServer

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM) and not os.environ.get("CI"),
    reason="Debian's chromium is not installed (`make test` installs it)",
)


def screenshot(page, path: Path) -> np.ndarray:
    page.screenshot(path=str(path), clip={"x": 0, "y": 44, "width": 480, "height": 316})
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def wait_loaded(page, timeout_s: float = 240) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if page.evaluate("""() => { const v = window.lazyslide.viewer;
                const item = v.world.getItemAt(0);
                return item && item.getFullyLoaded() && window.lazyslide.overlays.size === 0; }"""):
            return
        time.sleep(0.5)
    raise AssertionError("tiles did not finish loading")


def test_zoom_to_the_deepest_level_in_a_real_browser(model, tmp_path):
    from playwright.sync_api import sync_playwright

    assert shutil.which(CHROMIUM) or os.path.exists(CHROMIUM)
    out = Path(os.environ.get("LAZYSLIDE_TEST_OUTPUT", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    with LiveServer(model, tmp_path / "store") as live, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 480, "height": 360})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(live.url + "/")
        page.wait_for_function("window.lazyslide && window.lazyslide.viewer.world.getItemCount() > 0",
                               timeout=60_000)
        assert "seed 0" in page.inner_text("#slide-info")
        # zoom to 2 screen px per full-resolution px, centred inside one Deep Zoom tile
        page.evaluate("""() => { const v = window.lazyslide.viewer, vp = v.viewport;
            const c = v.world.getItemAt(0).imageToViewportCoordinates(635, 635);
            vp.zoomTo(v.world.getItemAt(0).imageToViewportZoom(2.0), c, true); vp.panTo(c, true); }""")
        page.wait_for_function("document.getElementById('level').textContent === '2'", timeout=10_000)
        wait_loaded(page)
        deep = screenshot(page, out / "viewer_level2.png")
        assert page.inner_text("#queue-text") == "idle"
        # the same view with Deep Zoom levels limited to those read from level 1: the upscaled parent
        page.evaluate("""() => { const v = window.lazyslide.viewer, item = v.world.getItemAt(0);
            window.lazyslide.dzMax = 8; item.source.maxLevel = 8; item.reset();
            v.viewport.panBy(new OpenSeadragon.Point(1e-9, 0), true); }""")
        wait_loaded(page)
        time.sleep(1)
        parent = screenshot(page, out / "viewer_level1_upscaled.png")
        browser.close()
    assert not errors, errors
    assert deep.std() > 10, "the deepest level is blank"
    assert np.abs(deep - parent).mean() > 5, "the deepest level looks like the upscaled parent"


def test_the_viewer_generates_the_views_centre_first_two_at_a_time(model, tmp_path):
    """After a zoom, the first generation the viewer starts is the tile at the view's centre,
    each one started is the waiting tile nearest the centre, at most two generate at once, and
    the navigator's tiles are not marked as the view's (viewer/app.js, TileSocket.dispatch)."""
    from playwright.sync_api import sync_playwright

    with LiveServer(model, tmp_path / "store") as live, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM,
                                    args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 480, "height": 360})
        page.goto(live.url + "/")
        page.wait_for_function("window.lazyslide && window.lazyslide.viewer.world.getItemCount() > 0",
                               timeout=60_000)
        wait_loaded(page)
        page.evaluate("""() => { const s = window.lazyslide, v = s.viewer, item = v.world.getItemAt(0);
            s.trace.length = 0;
            const c = item.imageToViewportCoordinates(640, 640);
            v.viewport.panTo(c, true); v.viewport.zoomTo(item.imageToViewportZoom(0.5), c); }""")
        page.wait_for_function("document.getElementById('level').textContent === '2'", timeout=10_000)
        page.wait_for_function("window.lazyslide.trace.length >= 2", timeout=60_000)
        time.sleep(2)
        trace = page.evaluate("window.lazyslide.trace")
        browser.close()
    assert trace[0]["priority"] < 0.05, trace  # the centre (distance in view widths)
    assert all(t["nextBest"] is None or t["priority"] <= t["nextBest"] for t in trace), trace
    assert max(t["generating"] for t in trace) <= 2
    assert all(t["priority"] < 1e6 for t in trace), "view tiles taken for the navigator's"
