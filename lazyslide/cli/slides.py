"""Commands that make slides: ``info``, ``tile``, ``demo``, ``serve``, ``materialize``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from ..errors import LazySlideError
from ..export import COMPRESSIONS, EXPORTERS
from ..geometry import TileId
from .common import (
    MODEL_HELP,
    Bar,
    add_batch_option,
    add_method_option,
    add_sampling_options,
    default_spec,
    load_model,
    open_store,
    seed_arg,
)


def add_commands(sub: argparse._SubParsersAction) -> None:
    info = sub.add_parser("info", help="geometry, parameter counts and fingerprint of a model")
    info.add_argument("--model", required=True, help=MODEL_HELP)
    info.add_argument("--json", action="store_true", help="print one JSON object")
    add_sampling_options(info)
    info.set_defaults(func=cmd_info)

    tile = sub.add_parser("tile", help="generate one tile (and what it depends on)")
    tile.add_argument("--model", required=True, help=MODEL_HELP)
    tile.add_argument("--seed", type=seed_arg, default=0, help="slide seed (default 0)")
    tile.add_argument("--level", type=int, required=True, help="magnification level, 0 = lowest")
    tile.add_argument("--col", type=int, required=True)
    tile.add_argument("--row", type=int, required=True)
    tile.add_argument("-o", "--output", required=True, help="output .png or .tif")
    tile.add_argument("--cache", help="tile store folder (default ~/.cache/lazyslide)")
    tile.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    add_sampling_options(tile)
    tile.add_argument("--json", action="store_true",
                      help="print one JSON object: generated_tiles per level, seconds, ...")
    add_method_option(tile)
    tile.set_defaults(func=cmd_tile)

    demo = sub.add_parser("demo", help="make the overview and a deep tile of a demo slide")
    demo.add_argument("--model", help="default: the bundled demo model, else random:demo")
    demo.add_argument("--seed", type=seed_arg, default=0)
    demo.add_argument("-o", "--output", default="out", help="output folder (default out/)")
    demo.add_argument("--cache", help="tile store folder (default ~/.cache/lazyslide)")
    demo.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    demo.set_defaults(func=cmd_demo)

    serve = sub.add_parser("serve", help="serve slides to the browser viewer and as Deep Zoom")
    serve.add_argument("--model", help="default: the bundled demo model, else random:demo")
    serve.add_argument("--seed", type=seed_arg, default=0, help="slide opened at start-up (default 0)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--cache", help="tile store folder (default ~/.cache/lazyslide)")
    serve.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    add_sampling_options(serve)
    serve.add_argument("--max-slides", type=int, default=8, help="slides open at once (default 8)")
    add_batch_option(serve)
    where = serve.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=0,
                       help="generate on a local Dask cluster of this many processes (one per GPU "
                       "where there are GPUs); the server keeps the store, caches and clients")
    where.add_argument("--scheduler", help="generate on a running Dask cluster (tcp://host:port)")
    serve.add_argument("--prefetch", action="store_true",
                       help="when idle, make the neighbours of recently viewed tiles (off by default: "
                       "on a CPU it competes with what the next view asks for)")
    serve.add_argument("--render-processes", type=int,
                       help="processes rendering Deep Zoom tiles (default 0: threads of the server "
                       "process, which share the generator's decoded tiles; on 2 cores neither was faster in "
                       "bench/serve.py; try half the cores on big machines)")
    serve.add_argument("--token", default=os.environ.get("LAZYSLIDE_TOKEN"),
                       help="secret that generation needs (header 'Authorization: Bearer T', or the "
                       "viewer's URL with ?token=T once); required with a --host other than loopback "
                       "(default: $LAZYSLIDE_TOKEN)")
    serve.add_argument("--no-auth", action="store_true",
                       help="serve a non-loopback --host without a token (anyone reaching it may "
                       "generate)")
    serve.add_argument("--public-warm", action="store_true",
                       help="with --token: tiles already made are served without the token")
    serve.add_argument("--threads", type=int,
                       help="torch CPU threads for generation (default: all cores but one, at least "
                       "one: the event loop and a browser on the same machine need a core; on 2 "
                       "cores the home view was sharp in 49 s with 1 thread, 65 s with 2)")
    serve.set_defaults(func=cmd_serve)

    mat = sub.add_parser("materialize", help="generate whole slides and export them")
    mat.add_argument("--model", required=True, help=MODEL_HELP)
    mat.add_argument("--seed", default="0", help="slide seed: N, A-B or a comma list (default 0)")
    mat.add_argument("-o", "--output", required=True,
                     help="output file (NAME.tiff/.svs/.ome.tiff/.dzi/.ome.zarr); a folder for several seeds")
    mat.add_argument("--format", choices=list(EXPORTERS), default="tiff",
                     help="; ".join(f"{k}: {e.layout}" for k, e in EXPORTERS.items()))
    mat.add_argument("--compression", choices=list(COMPRESSIONS), default="jpeg",
                     help="TIFF tiles and dzi: jpeg (lossy) or deflate (lossless; PNG tiles in a "
                     "dzi); ome-zarr is always lossless (default jpeg)")
    mat.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    add_batch_option(mat)
    mat.add_argument("--tiff-tile", type=int, default=256, help="TIFF tile size (default 256)")
    where = mat.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=0,
                       help="start a local Dask cluster: one worker per GPU, else K processes")
    where.add_argument("--scheduler", help="address of a running Dask scheduler (tcp://host:port)")
    mat.add_argument("--cache", help="tile store folder (default ~/.cache/lazyslide)")
    mat.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    add_sampling_options(mat)
    mat.add_argument("--overwrite", action="store_true", help="replace an existing output")
    mat.add_argument("--json", action="store_true", help="print one JSON report")
    add_method_option(mat)
    mat.set_defaults(func=cmd_materialize)


def cmd_info(args: argparse.Namespace) -> int:
    from ..conditioning import conditioning, inpainting, trained_inpainting
    from ..distribution import clash_warning
    from ..networks import DEFAULT_ARCHITECTURE

    model = load_model(args.model, "cpu", args)
    if warning := clash_warning():  # after the model: an error stays one line
        print(warning, file=sys.stderr)
    g = model.geometry
    counts = model.param_counts()
    info = {
        "model": model.source,
        "fingerprint": model.fingerprint,
        "preset": model.config.get("preset"),
        "tile": g.tile,
        "overlap": g.overlap,
        "cascade": list(g.cascade),
        "levels": [
            {"level": k, "canvas": c, "grid": g.grid(k), "mpp": round(g.level_mpp(k), 6),
             "unet_params": [counts[(k, s)] for s in range(len(g.cascade))]}
            for k, c in enumerate(g.canvases)
        ],
        "sampling": model.config["sampling"],
        "background": model.config["background"],
        "conditioning": conditioning(model.config),
        "inpainting": inpainting(model.config),
        "architecture": model.config.get("architecture", DEFAULT_ARCHITECTURE),
        "total_params": sum(counts.values()),
    }
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"model        {info['model']}\nfingerprint  {info['fingerprint']}")
    print(f"tile         {g.tile} px, overlap {g.overlap} px, cascade "
          f"{' -> '.join(map(str, g.cascade))}")
    for lv in info["levels"]:
        params = " / ".join(f"{p / 1e6:.2f}M" for p in lv["unet_params"])
        print(f"level {lv['level']}      {lv['canvas']}^2 px, {lv['grid']}x{lv['grid']} tiles, "
              f"{lv['mpp']} um/px, unets {params}")
    for level in range(g.levels):
        s = model.sampling.for_level(level)
        cost = (f"{model.sampling.evaluations(level)} evaluations per inpainted tile"
                if g.grid(level) > 1 else f"{sum(s.steps)} evaluations (one tile)")
        if trained_inpainting(model.config, level):
            cost += f", known-pixel channels {'on' if s.known_channels else 'off'}"
        if g.grid(level) > 1:
            cost += f", blend {s.blend}"
        loop = "" if s.loop == "repaint" else f", {s.loop} loop"
        print(f"sampling L{level}  {s.sampler}{loop}, steps {list(s.steps)}, RePaint resamples "
              f"{list(s.resample)}: {cost}")
    rule = model.background
    where = "every level >= 1" if rule.levels == "every" else "the deepest level"
    blur = f", blur {rule.fill_blur}" if rule.fill_blur else ""
    print(f"background   {f'skipped at {where}, {rule.fill} fill{blur}' if rule.enabled else 'off'}")
    print(f"conditioning {info['conditioning']}\ninpainting   {info['inpainting']}")
    print(f"network      {info['architecture']}, {info['total_params'] / 1e6:.2f}M parameters")
    return 0


def cmd_tile(args: argparse.Namespace) -> int:
    from PIL import Image

    from ..export import check_writable
    from ..slide import Slide

    started = time.perf_counter()
    model = load_model(args.model, args.device, args)
    model.geometry.check_tile(args.level, args.col, args.row)
    out = Path(args.output)
    if not out.parent.is_dir():
        raise LazySlideError(f"output folder {out.parent} does not exist")
    if out.suffix.lower() not in (".png", ".tif", ".tiff"):
        raise LazySlideError(f"output {out} must be .png or .tif (lossless)")
    if out.is_dir():
        raise LazySlideError(f"output {out} is a folder: give a file name")
    check_writable(out.parent)
    bar = Bar("tiles", enabled=not args.json)
    slide = Slide(model, args.seed, open_store(args.cache), progress=bar, method=args.method)
    tile = (args.level, args.col, args.row)
    bar.start(len(slide.missing([TileId(*tile)])))
    pixels = slide.tile(*tile, progress=bar)
    bar.close()
    try:
        Image.fromarray(pixels).save(out)
    except OSError as e:
        raise LazySlideError(f"cannot write {out}: {e.strerror or e} (the tile is stored; "
                             "rerun to write it without generating)") from None
    levels = range(model.geometry.levels)
    report = {
        "output": str(out),
        "model": model.fingerprint,
        "seed": args.seed,
        "tile": dict(zip(("level", "col", "row"), tile, strict=True)),
        "generated_tiles": {str(k): slide.generated[k] for k in levels},
        "background_tiles": {str(k): slide.background[k] for k in levels},
        "unet_evaluations": {str(k): slide.unet_evaluations[k] for k in levels},
        "sampling": model.config["sampling"],
        "seconds": round(time.perf_counter() - started, 3),
    }
    if args.json:
        print(json.dumps(report))
    else:
        made = sum(slide.generated.values())
        print(f"wrote {out} ({made} tiles generated, {report['seconds']} s)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The overview and one deepest tile of a slide as PNG files: a look without the viewer."""
    from PIL import Image

    from ..slide import Slide

    spec = args.model or default_spec()
    model = load_model(spec, args.device)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    g = model.geometry
    bar = Bar("tiles")
    slide = Slide(model, args.seed, open_store(args.cache), progress=bar)
    overview = out / f"slide{args.seed}_level0.png"
    Image.fromarray(slide.read_region(0, 0, 0, g.canvases[0], g.canvases[0])).save(overview)
    deepest = g.levels - 1
    mid = g.grid(deepest) // 2
    bar.start(len(slide.missing([TileId(deepest, mid, mid)])))
    tile = slide.tile(deepest, mid, mid, progress=bar)
    bar.close()
    deep = out / f"slide{args.seed}_level{deepest}_{mid}_{mid}.png"
    Image.fromarray(tile).save(deep)
    print(f"model {model.source} ({model.fingerprint}), seed {args.seed}\n"
          f"  overview: {overview}\n  level {deepest} tile ({mid}, {mid}): {deep}")
    return 0


#: Decoded magnification tiles the server keeps in memory (bytes): the demo's whole deepest level
#: fits, so a coarse Deep Zoom tile decodes each of its (up to a hundred) tiles once, not each time.
SERVER_MEMORY = 512 << 20


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from lazyslide.server import serve
        from lazyslide.server.backends import DaskBackend
    except ImportError as e:
        raise LazySlideError(f"the server is not installed ({e}); run `make install`") from None
    spec = args.model or default_spec()
    if not 0 < args.port < 65536:
        raise LazySlideError(f"--port must be in 1..65535, got {args.port}")
    threads = args.threads if args.threads is not None else max(1, (os.cpu_count() or 1) - 1)
    if threads < 1:
        raise LazySlideError(f"--threads must be >= 1, got {threads}")
    render = args.render_processes or 0
    if render < 0:
        raise LazySlideError(f"--render-processes must be >= 0, got {render}")
    if args.workers < 0:
        raise LazySlideError(f"--workers must be positive, got {args.workers}")
    import torch

    torch.set_num_threads(threads)
    model = load_model(spec, args.device, args)
    backend = None
    if args.workers or args.scheduler:
        backend = DaskBackend(_dask_client(args), model.reference(args.device))
    bar = Bar(f"opening slide {args.seed}")
    bar.start(len(model.geometry.tiles(0)))
    try:
        serve(model, open_store(args.cache, SERVER_MEMORY), seed=args.seed, host=args.host, port=args.port,
              max_slides=args.max_slides, progress=bar, on_ready=bar.close, backend=backend,
              render_processes=render, prefetch=args.prefetch, token=args.token,
              no_auth=args.no_auth, public_warm=args.public_warm)
    except OSError as e:
        raise LazySlideError(f"cannot serve on {args.host}:{args.port}: {e.strerror or e}") from None
    finally:
        bar.close()
        if backend is not None:
            backend.close()
    return 0


def _dask_client(args: argparse.Namespace):
    """A client of the cluster that --workers starts or --scheduler names."""
    from ..distributed import start_cluster

    try:
        if args.scheduler:
            from distributed import Client

            return Client(args.scheduler, timeout=30)
        return start_cluster(args.workers)
    except OSError as e:
        raise LazySlideError(f"cannot reach the Dask scheduler {args.scheduler}: {e}") from None


def cmd_materialize(args: argparse.Namespace) -> int:
    from ..export import EXTENSIONS, check_export, export, tile_count
    from ..materialize import materialize
    from ..methods import get_method
    from ..seeds import parse_seeds
    from ..slide import Slide

    seeds = parse_seeds(args.seed)
    out = Path(args.output)
    if len(seeds) > 1:
        if not out.is_dir():
            raise LazySlideError(f"with several seeds, -o must be an existing folder: {out}")
        targets = [out / f"seed{s}{EXTENSIONS[args.format]}" for s in seeds]
    else:
        targets = [out]
    options = dict(compression=args.compression, quality=args.quality, tile=args.tiff_tile,
                   overwrite=args.overwrite)
    for target in targets:  # every option and output checked before the first tile is made
        check_export(target, args.format, **options)
    model = load_model(args.model, args.device, args)
    store = open_store(args.cache)
    client = None
    if args.workers or args.scheduler:
        if not get_method(args.method).parallel:
            raise LazySlideError(f"--method {args.method} is sequential (it makes its tiles one after "
                                 "another): run it without --workers/--scheduler")
        if args.workers < 0:
            raise LazySlideError(f"--workers must be positive, got {args.workers}")
        client = _dask_client(args)
    report = []
    for seed, target in zip(seeds, targets, strict=True):
        started = time.perf_counter()
        slide = Slide(model, seed, store, make_level0=False, method=args.method)
        if client is not None:
            from ..distributed import materialize_on

            stats = materialize_on(client, model.reference(args.device), slide,
                                   show_progress=not args.json)
        else:
            stats = materialize(slide, show_progress=not args.json)
        bar = Bar(f"writing {target.name}", enabled=not args.json)
        bar.start(tile_count(slide, args.format, args.tiff_tile))
        export(slide, target, args.format, progress=bar.step, **options)
        bar.close()
        entry = {"seed": seed, "output": str(target), "model": model.fingerprint,
                 "levels": stats.to_dict(), "seconds": round(time.perf_counter() - started, 3)}
        report.append(entry)
        if not args.json:
            made = sum(s.generated for s in stats.levels)
            print(f"wrote {target} ({made} tiles generated, {entry['seconds']} s)")
    if client is not None:
        client.close()
    if args.json:
        print(json.dumps(report[0] if len(report) == 1 else report))
    return 0
