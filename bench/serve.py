"""Benchmark: Deep Zoom serving, lazyslide vs openslide-python, plus a cold deepest tile.

1. Warm store (demo geometry, every tile present): p50/p99 latency and requests per second for
   Deep Zoom tiles under 32 concurrent clients (10k requests on loopback), against
   openslide's DeepZoomGenerator serving the same full-resolution pixels from a pyramidal TIFF
   through an equivalent aiohttp handler. Both servers run in their own process; ratios are
   lazyslide / openslide from the same run.
2. Cold: latency of one deepest-level Deep Zoom tile with the demo model (random weights) and an
   empty store but level 0.
3. Peak RSS (VmHWM) of each server process.

    .venv/bin/python bench/serve.py [--requests 10000] [--clients 32]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np

HERE = Path(__file__).resolve()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def warm_store(store_dir: str, tiff_path: str) -> None:
    """Fill a store with every tile of a demo-geometry slide; write the same pixels as a TIFF."""
    import tifffile
    from PIL import Image

    from lazyslide import URCDM, Slide, TileStore
    from lazyslide.store import tile_key

    model = URCDM.random("demo", 0)
    store = TileStore(store_dir)
    g = model.geometry
    rng = np.random.default_rng(0)
    # smooth random "tissue" per level, cut into overlapping tiles so overlaps agree
    for level, canvas in enumerate(g.canvases):
        small = rng.integers(60, 230, (canvas // 16 + 1, canvas // 16 + 1, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(small).resize((canvas, canvas), Image.Resampling.BICUBIC))
        img = (img.astype(np.int16) + rng.integers(-12, 12, img.shape)).clip(0, 255).astype(np.uint8)
        for t in g.tiles(level):
            x0, y0, x1, y1 = g.tile_box(*t)
            store.put(tile_key(model.fingerprint, 0, t), img[y0:y1, x0:x1])
    slide = Slide(model, 0, store)
    full = slide.read_region(2, 0, 0, g.canvases[-1], g.canvases[-1])
    levels = [full]
    while min(levels[-1].shape[:2]) > 256:
        h, w = levels[-1].shape[:2]
        levels.append(np.asarray(Image.fromarray(levels[-1]).resize((w // 2, h // 2), Image.Resampling.BOX)))
    with tifffile.TiffWriter(tiff_path, bigtiff=True) as tif:
        for i, data in enumerate(levels):
            tif.write(data, tile=(256, 256), photometric="rgb", compression="zlib",
                      subfiletype=1 if i else 0, resolution=(1e4 / g.mpp, 1e4 / g.mpp),
                      resolutionunit="CENTIMETER")


def run_openslide_server(tiff_path: str, port: int) -> None:
    """The baseline: openslide's DeepZoomGenerator behind an equivalent aiohttp handler."""
    import io

    import openslide
    from aiohttp import web
    from openslide.deepzoom import DeepZoomGenerator

    dz = DeepZoomGenerator(openslide.OpenSlide(tiff_path), tile_size=254, overlap=1, limit_bounds=False)

    def render(level: int, col: int, row: int) -> bytes:
        buf = io.BytesIO()
        dz.get_tile(level, (col, row)).save(buf, "JPEG", quality=90)
        return buf.getvalue()

    async def tile(request: web.Request) -> web.Response:
        level = int(request.match_info["level"])
        col, row = (int(v) for v in request.match_info["name"].split(".")[0].split("_"))
        data = await asyncio.get_running_loop().run_in_executor(None, render, level, col, row)
        return web.Response(body=data, content_type="image/jpeg")

    app = web.Application()
    app.router.add_get("/slides/0_files/{level}/{name}", tile)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


def run_lazyslide_server(store_dir: str, port: int, spec: str) -> None:
    from aiohttp import web

    from lazyslide import URCDM, TileStore
    from lazyslide.server import LazySlideServer

    server = LazySlideServer(URCDM.from_spec(spec), TileStore(store_dir))
    server.open_now(0)
    web.run_app(server.app(), host="127.0.0.1", port=port, print=None, handler_cancellation=True)


def start(role: str, *args: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(HERE), "--role", role, str(port), *args])
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"{role} did not start")


def peak_rss_mib(proc: subprocess.Popen) -> float:
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def load(port: int, paths: list[str], clients: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    queue = list(paths)
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", connector=connector) as session:
        async def client() -> None:
            while queue:
                path = queue.pop()
                t0 = time.perf_counter()
                async with session.get(path) as r:
                    await r.read()
                    assert r.status == 200, (path, r.status)
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return latencies, time.perf_counter() - started


def tile_paths(n: int) -> list[str]:
    """Random Deep Zoom tiles of a 5168 px slide, every level (Deep Zoom arithmetic)."""
    size = 5168
    levels = int(np.ceil(np.log2(size))) + 1
    all_tiles = []
    for level in range(levels):
        w = int(np.ceil(size / 2 ** (levels - 1 - level)))
        t = int(np.ceil(w / 254))
        all_tiles += [f"/slides/0_files/{level}/{c}_{r}.jpeg" for c in range(t) for r in range(t)]
    rng = random.Random(0)
    return [rng.choice(all_tiles) for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role:
        role, port, *rest = args.role
        if role == "openslide":
            run_openslide_server(rest[0], int(port))
        else:
            run_lazyslide_server(rest[0], int(port), rest[1])
        return

    work = Path(tempfile.mkdtemp(prefix="lazyslide-bench-"))
    t0 = time.perf_counter()
    warm_store(str(work / "store"), str(work / "slide.tiff"))
    print(f"prepared a warm demo-geometry store and a pyramidal TIFF in {time.perf_counter() - t0:.1f} s")
    paths = tile_paths(args.requests)
    results = {}
    for name, role, extra in (("lazyslide", "lazyslide", [str(work / "store"), "random:demo"]),
                              ("openslide", "openslide", [str(work / "slide.tiff")])):
        proc, port = start(role, *extra)
        try:
            asyncio.run(load(port, paths[:200], args.clients))  # warm-up (and fill caches)
            lat, seconds = asyncio.run(load(port, paths, args.clients))
            q = statistics.quantiles(lat, n=100)
            results[name] = dict(p50=q[49] * 1000, p99=q[98] * 1000, rps=len(lat) / seconds,
                                 rss=peak_rss_mib(proc))
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"\nwarm Deep Zoom tiles, {args.requests} requests, {args.clients} concurrent clients, loopback")
    print(f"{'':>12}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>10}{'peak RSS MiB':>14}")
    for name, r in results.items():
        print(f"{name:>12}{r['p50']:>10.2f}{r['p99']:>10.2f}{r['rps']:>10.0f}{r['rss']:>14.0f}")
    a, b = results["lazyslide"], results["openslide"]
    print(f"{'ratio':>12}{a['p50'] / b['p50']:>10.2f}{a['p99'] / b['p99']:>10.2f}{a['rps'] / b['rps']:>10.2f}"
          f"   (lazyslide / openslide; goal: p50 ratio <= 1)")

    # cold deepest-level tile with the demo model (random weights), fresh store
    proc, port = start("lazyslide", str(work / "cold"), "random:demo")
    try:
        async def one() -> float:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1800)) as s:
                t = time.perf_counter()
                async with s.get(f"http://127.0.0.1:{port}/slides/0_files/13/10_10.jpeg") as r:
                    await r.read()
                    assert r.status == 200
                return time.perf_counter() - t
        cold = asyncio.run(one())
        async def metrics() -> str:
            async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
                return await r.text()
        text = asyncio.run(metrics())
        made = sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith("lazyslide_tiles_generated_total"))
        print(f"\ncold deepest-level Deep Zoom tile (13/10_10), demo model, empty store: {cold:.1f} s, "
              f"{made:.0f} magnification tiles generated; server peak RSS {peak_rss_mib(proc):.0f} MiB")
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
