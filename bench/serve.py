"""Benchmark: Deep Zoom serving, lazyslide vs openslide-python, plus a cold deepest tile.

1. Warm store (demo geometry, every tile present): p50/p99 latency and requests per second for
   Deep Zoom tiles under 32 concurrent clients (10k requests on loopback), against
   openslide's DeepZoomGenerator serving the same full-resolution pixels from a pyramidal TIFF
   through an equivalent aiohttp handler. Both servers run in their own process; ratios are
   lazyslide / openslide from the same run.
2. Cold: latency of one deepest-level Deep Zoom tile with the demo model (random weights) and an
   empty store but level 0.
3. Peak RSS (VmHWM) of each server process.
4. Zoom sessions (``--part session``): a fixed, seeded trace of viewports (home; zoom to level
   1; pan; zoom to level 2; pan, a screen each) replayed as a browser asks for them (every visible Deep Zoom
   tile over the viewer's WebSocket, generation on), by 1 and by 4 concurrent viewers (each on
   a slide of its own), against ``lazyslide serve`` with 1 local worker and with a 2-worker
   Dask LocalCluster, at batch 1 and 4, each on a fresh store: per viewport the seconds until
   every visible tile has arrived (p50, p95 over the viewers).

    .venv/bin/python bench/serve.py [--part warm|session|all] [--requests 10000] [--clients 32]
        [--model random:test] [--sampling-steps A,B,C] [--screen 640x480]
"""

from __future__ import annotations

import argparse
import asyncio
import os
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


def run_lazyslide_server(store_dir: str, port: int, spec: str, render: str = "0") -> None:
    from aiohttp import web

    from lazyslide import URCDM, TileStore
    from lazyslide.cli.slides import SERVER_MEMORY
    from lazyslide.server import LazySlideServer

    store = TileStore(store_dir, memory_bytes=SERVER_MEMORY)  # as `lazyslide serve` opens it
    server = LazySlideServer(URCDM.from_spec(spec), store, render_processes=int(render))
    server.open_now(0)
    web.run_app(server.app(), host="127.0.0.1", port=port, print=None, handler_cancellation=True)


def wait_listening(proc: subprocess.Popen, port: int, seconds: float,
                   what: str) -> tuple[subprocess.Popen, int]:
    """``(proc, port)`` once ``port`` accepts connections; an error if ``proc`` exits or
    ``seconds`` pass first."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"{what} did not start")


def start(role: str, *args: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(HERE), "--role", role, str(port), *args])
    return wait_listening(proc, port, 120, role)


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


# -- zoom sessions ------------------------------------------------------------------------------
TRACE = ("home", "level 1", "pan", "level 2", "pan")


def dz_levels(width: int) -> int:
    return int(np.ceil(np.log2(width))) + 1


def visible(width: int, level: int, cx: float, cy: float,
            screen: tuple[int, int]) -> list[tuple[int, int]]:
    """Deep Zoom tiles (254 px, as the server cuts them) of ``level`` that a ``screen``-sized
    view centred at (cx, cy) (fractions of the slide) shows."""
    size = int(np.ceil(width / 2 ** (dz_levels(width) - 1 - level)))
    x0 = min(max(0, int(cx * size - screen[0] / 2)), max(0, size - screen[0]))
    y0 = min(max(0, int(cy * size - screen[1] / 2)), max(0, size - screen[1]))
    x1, y1 = min(size, x0 + screen[0]), min(size, y0 + screen[1])
    cols, rows = range(x0 // 254, (x1 - 1) // 254 + 1), range(y0 // 254, (y1 - 1) // 254 + 1)
    return [(c, r) for r in rows for c in cols]


def trace(desc: dict, viewer: int, screen: tuple[int, int]) -> list[tuple[str, int, list]]:
    """The viewer's seeded viewports: (name, Deep Zoom level, tiles). Home fits the slide on the
    screen; "level k" is the Deep Zoom level at magnification level k's own resolution (the
    sharpest one read from it), centred on a seeded point; a pan moves one screen."""
    width, n = desc["width"], dz_levels(desc["width"])
    rng = random.Random(1000 + viewer)
    def native(k: int) -> int:  # the sharpest Deep Zoom level read from magnification level k
        return n - 1 - int(np.ceil(np.log2(desc["levels"][k]["downsample"]) - 1e-9))

    # home fits the slide on the screen, but reads no deeper than level 1 (as the viewer does)
    home = min(native(1), max(lv for lv in range(n) if np.ceil(width / 2 ** (n - 1 - lv)) <= min(screen)))
    out = [("home", home, visible(width, home, 0.5, 0.5, screen))]
    for k in (1, 2):
        level = native(k)
        size = np.ceil(width / 2 ** (n - 1 - level))
        cx, cy = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7)
        out.append((f"level {k}", level, visible(width, level, cx, cy, screen)))
        if k == 2:
            cx += screen[0] / size
        else:
            cy += screen[1] / size
        out.append(("pan", level, visible(width, level, cx, cy, screen)))
    return out


async def viewer_session(port: int, viewer: int, screen: tuple[int, int]) -> list[float]:
    """One viewer: open its slide (seed = viewer), then each viewport of its trace; the seconds
    until every visible tile has come back, per viewport (home includes opening the slide)."""
    timeout = aiohttp.ClientTimeout(total=3600)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", timeout=timeout) as session:
        t0 = time.perf_counter()
        async with session.post("/api/slides", json={"seed": viewer}) as r:
            desc = await r.json()
        seconds = []
        async with session.ws_connect(f"/api/slides/{desc['id']}/tiles", max_msg_size=0) as ws:
            rid = 0
            for _, level, tiles in trace(desc, viewer, screen):
                pending = set()
                for c, r in tiles:
                    rid += 1
                    pending.add(rid)
                    await ws.send_json({"op": "get", "id": rid, "level": level, "col": c, "row": r})
                while pending:
                    msg = await ws.receive()
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        pending.discard(int.from_bytes(msg.data[:4], "big"))
                    else:
                        raise RuntimeError(f"viewer {viewer}: {msg.data}")
                seconds.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
        return seconds


def start_cli_server(store: Path, args: argparse.Namespace, workers: int,
                     batch: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd = [str(Path(sys.executable).parent / "lazyslide"), "serve", "--model", args.model,
           "--cache", str(store), "--port", str(port), "--batch-size", str(batch),
           "--max-slides", "16", "--device", "cpu"]
    if args.sampling_steps:
        cmd += ["--sampling-steps", args.sampling_steps]
    if workers:
        cmd += ["--workers", str(workers)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return wait_listening(proc, port, 900, " ".join(cmd))


def sessions(args: argparse.Namespace, work: Path) -> None:
    screen = tuple(int(v) for v in args.screen.split("x"))
    rows = []
    grid = [tuple(int(v) for v in c.split(":")) for c in args.configs.split(",")]
    for workers, batch, viewers in grid:
        if True:
            if True:
                store = work / f"session-{workers}-{batch}-{viewers}"
                proc, port = start_cli_server(store, args, workers, batch)
                try:
                    t0 = time.perf_counter()

                    async def run(port: int = port, viewers: int = viewers) -> list[list[float]]:
                        return await asyncio.gather(*(viewer_session(port, v, screen)
                                                      for v in range(viewers)))

                    per_viewer = asyncio.run(run())
                    wall = time.perf_counter() - t0
                finally:
                    proc.terminate()
                    proc.wait(60)
                name = f"{'local 1 worker' if not workers else 'Dask 2 workers'}, batch {batch}"
                rows.append((name, viewers, per_viewer, wall))
                print(f"{name}, {viewers} viewer(s): {wall:.0f} s", file=sys.stderr, flush=True)
    print(f"\nzoom sessions: model {args.model}, sampling steps {args.sampling_steps or '(the model)'}, "
          f"screen {args.screen}; seconds until every visible tile arrived, p50/p95 over viewers")
    head = "".join(f"{name:>14}" for name in TRACE)
    print(f"{'server':>28}{'viewers':>8}{head}{'wall s':>9}{'ratio':>7}")
    base = {}
    for name, viewers, per_viewer, wall in rows:
        cells = ""
        for i in range(len(TRACE)):
            v = [s[i] for s in per_viewer]
            p50, p95 = float(np.percentile(v, 50)), float(np.percentile(v, 95))
            cells += f"{p50:>7.1f}/{p95:<6.1f}"
        base.setdefault(viewers, wall)
        print(f"{name:>28}{viewers:>8}{cells}{wall:>9.0f}{wall / base[viewers]:>7.2f}")
    print("(ratio: wall time / the local 1-worker batch-1 row with as many viewers, same run)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["warm", "session", "all"], default="all")
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--model", default="random:test",
                    help="zoom sessions' model (default random:test: small tiles, many of them, cheap)")
    ap.add_argument("--sampling-steps", default="",
                    help="zoom sessions' sampling steps, e.g. 2,2,2 (default: the model's)")
    ap.add_argument("--screen", default="640x480", help="zoom sessions' viewport in pixels")
    ap.add_argument("--configs", default="0:1:1,0:1:4,0:4:1,0:4:4,2:1:1,2:1:4,2:4:1,2:4:4",
                    help="zoom sessions' servers, WORKERS:BATCH:VIEWERS each (0 workers: local)")
    ap.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role:
        role, port, *rest = args.role
        if role == "openslide":
            run_openslide_server(rest[0], int(port))
        else:
            run_lazyslide_server(rest[0], int(port), *rest[1:])
        return
    print("command: .venv/bin/python bench/serve.py " + " ".join(sys.argv[1:]))
    work = Path(tempfile.mkdtemp(prefix="lazyslide-bench-"))
    if args.part in ("warm", "all"):
        warm(args, work)
    if args.part in ("session", "all"):
        sessions(args, work)


def warm(args: argparse.Namespace, work: Path) -> None:
    t0 = time.perf_counter()
    warm_store(str(work / "store"), str(work / "slide.tiff"))
    print(f"prepared a warm demo-geometry store and a pyramidal TIFF in {time.perf_counter() - t0:.1f} s")
    paths = tile_paths(args.requests)
    results = {}
    render = str(max(1, (os.cpu_count() or 1) // 2))
    for name, role, extra in (("lazyslide", "lazyslide", [str(work / "store"), "random:demo", "0"]),
                              ("lazyslide-procs", "lazyslide", [str(work / "store"), "random:demo", render]),
                              ("openslide", "openslide", [str(work / "slide.tiff")])):
        proc, port = start(role, *extra)
        try:
            asyncio.run(load(port, paths[:200], args.clients))  # warm-up
            for run in ("first", "again"):  # first: ~600 first renders among the requests
                lat, seconds = asyncio.run(load(port, paths, args.clients))
                q = statistics.quantiles(lat, n=100)
                results[name, run] = dict(p50=q[49] * 1000, p99=q[98] * 1000,
                                          rps=len(lat) / seconds, rss=peak_rss_mib(proc))
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"\nwarm Deep Zoom tiles, {args.requests} requests, {args.clients} concurrent clients, loopback;"
          f" 'first': the first pass over {len(set(paths))} distinct tiles (each rendered once),"
          f" 'again': the same requests once more")
    print(f"{'':>16}{'pass':>7}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>10}{'peak RSS MiB':>14}")
    for (name, run), r in results.items():
        print(f"{name:>16}{run:>7}{r['p50']:>10.2f}{r['p99']:>10.2f}{r['rps']:>10.0f}{r['rss']:>14.0f}")
    for run in ("first", "again"):
        b = results["openslide", run]
        for name in ("lazyslide", "lazyslide-procs"):
            a = results[name, run]
            print(f"{'ratio':>16}{run:>7}{a['p50'] / b['p50']:>10.2f}{a['p99'] / b['p99']:>10.2f}"
                  f"{a['rps'] / b['rps']:>10.2f}   ({name} / openslide)")
    print(f"(lazyslide renders in the server's threads, as `lazyslide serve` does by default; "
          f"lazyslide-procs in {render} render process(es))")

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
