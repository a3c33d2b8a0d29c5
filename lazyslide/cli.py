"""The ``lazyslide`` command line: ``info``, ``tile``, ``serve`` and ``demo``.

Errors users can fix (bad model spec, tile out of range, unreadable store) print one line and
exit with code 2; nothing already stored is lost.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .errors import LazySlideError
from .geometry import TileId

STEPS_HELP = ("sampling steps per cascade stage, e.g. 16,8,8 (default: the model's); fewer is "
              "faster and coarser, and makes other tiles (another fingerprint)")


def _model(spec: str, device: str | None = None, sampling_steps: str | None = None):
    import torch

    from .model import URCDM

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:
        raise LazySlideError(f"device {device!r} is not usable here: {str(e).splitlines()[0]}") from None
    model = URCDM.from_spec(spec).to(device)
    if sampling_steps:
        steps = _ints(sampling_steps, "--sampling-steps")
        if len(steps) != len(model.config["sampling"]["steps"]):
            raise LazySlideError(f"--sampling-steps needs {len(model.config['sampling']['steps'])} "
                                 f"integers (one per cascade stage), got {sampling_steps!r}")
        model = model.with_sampling_steps(steps)
    return model


def _seed_arg(text: str) -> int:
    """argparse type of --seed: ASCII digits in the one seed range (lazyslide.seeds)."""
    from .seeds import check_seed, parse_seeds

    try:
        (seed,) = parse_seeds(text)
        return check_seed(seed)
    except (LazySlideError, ValueError):
        from .seeds import MAX_SEED

        raise argparse.ArgumentTypeError(f"must be one integer in 0..{MAX_SEED}, got {text!r}") from None


def _store(cache: str | None):
    from .store import TileStore

    return TileStore(cache)


class _Bar:
    """A tqdm bar on stderr for tiles being made (silent when nothing is missing)."""

    def __init__(self, desc: str, enabled: bool = True) -> None:
        self.desc, self.enabled, self.bar = desc, enabled, None

    def start(self, total: int) -> None:
        if self.enabled and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.desc, unit="tile", file=sys.stderr)

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update()

    def __call__(self, tile, kind: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"level {tile.level} ({tile.col},{tile.row}) {kind}")
            self.bar.update()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _default_spec() -> str:
    """The bundled demo model where it exists, else random weights of the demo preset."""
    from .model import DEMO_MODEL_DIR

    if (DEMO_MODEL_DIR / "config.json").is_file():
        return "demo"
    print("lazyslide: no trained demo model is bundled yet: using random:demo (random weights: "
          "noise, not tissue). Train one (see README) and pass --model FOLDER.", file=sys.stderr)
    return "random:demo"


def cmd_info(args: argparse.Namespace) -> int:
    model = _model(args.model)
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
    s = model.config["sampling"]
    print(f"sampling     steps {s['steps']}, RePaint resamples {s['resample']}")
    print(f"parameters   {info['total_params'] / 1e6:.2f}M")
    return 0


def cmd_tile(args: argparse.Namespace) -> int:
    from PIL import Image

    from .export import check_writable
    from .slide import Slide

    started = time.perf_counter()
    model = _model(args.model, args.device, args.sampling_steps)
    model.geometry.check_tile(args.level, args.col, args.row)
    out = Path(args.output)
    if not out.parent.is_dir():
        raise LazySlideError(f"output folder {out.parent} does not exist")
    if out.suffix.lower() not in (".png", ".tif", ".tiff"):
        raise LazySlideError(f"output {out} must be .png or .tif (lossless)")
    if out.is_dir():
        raise LazySlideError(f"output {out} is a folder: give a file name")
    check_writable(out.parent)
    bar = _Bar("tiles", enabled=not args.json)
    slide = Slide(model, args.seed, _store(args.cache), progress=bar, method=args.method)
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
        "seconds": round(time.perf_counter() - started, 3),
    }
    if args.json:
        print(json.dumps(report))
    else:
        made = sum(slide.generated.values())
        print(f"wrote {out} ({made} tiles generated, {report['seconds']} s)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Until the tile server exists: the overview and one deepest tile of a demo slide."""
    from PIL import Image

    from .slide import Slide

    spec = args.model or _default_spec()
    model = _model(spec, args.device)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    g = model.geometry
    bar = _Bar("tiles")
    slide = Slide(model, args.seed, _store(args.cache), progress=bar)
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


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from lazyslide.server import serve
    except ImportError as e:
        raise LazySlideError(f"the server is not installed ({e}); run `make install`") from None
    spec = args.model or _default_spec()
    if not 0 < args.port < 65536:
        raise LazySlideError(f"--port must be in 1..65535, got {args.port}")
    model = _model(spec, args.device, args.sampling_steps)
    bar = _Bar(f"opening slide {args.seed}")
    bar.start(len(model.geometry.tiles(0)))
    try:
        serve(model, _store(args.cache), seed=args.seed, host=args.host, port=args.port,
              max_slides=args.max_slides, progress=bar, on_ready=bar.close)
    except OSError as e:
        raise LazySlideError(f"cannot serve on {args.host}:{args.port}: {e.strerror or e}") from None
    finally:
        bar.close()
    return 0


def cmd_materialize(args: argparse.Namespace) -> int:
    from .export import EXTENSIONS, check_export, export, tile_count
    from .materialize import materialize
    from .methods import get_method
    from .seeds import parse_seeds
    from .slide import Slide

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
    if args.batch_size < 1:
        raise LazySlideError(f"--batch-size must be >= 1, got {args.batch_size}")
    model = _model(args.model, args.device, args.sampling_steps)
    store = _store(args.cache)
    client = None
    if args.workers or args.scheduler:
        if args.batch_size != 1:
            raise LazySlideError("--batch-size is for single-process runs: on Dask each tile is a "
                                 "task of its own")
        if not get_method(args.method).parallel:
            raise LazySlideError(f"--method {args.method} is sequential (it makes its tiles one after "
                                 "another): run it without --workers/--scheduler")
        if args.workers < 0:
            raise LazySlideError(f"--workers must be positive, got {args.workers}")
        from .distributed import start_cluster

        try:
            if args.scheduler:
                from distributed import Client

                client = Client(args.scheduler, timeout=30)
            else:
                client = start_cluster(args.workers)
        except OSError as e:
            raise LazySlideError(f"cannot reach the Dask scheduler {args.scheduler}: {e}") from None
    report = []
    for seed, target in zip(seeds, targets, strict=True):
        started = time.perf_counter()
        slide = Slide(model, seed, store, make_level0=False, method=args.method)
        if client is not None:
            from .distributed import materialize_on

            stats = materialize_on(client, model.reference(args.device), slide,
                                   show_progress=not args.json)
        else:
            stats = materialize(slide, batch_size=args.batch_size, show_progress=not args.json)
        bar = _Bar(f"writing {target.name}", enabled=not args.json)
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


def _ints(text: str, name: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise LazySlideError(f"{name} must be integers separated by commas, got {text!r}") from None


def cmd_prepare(args: argparse.Namespace) -> int:
    import dataclasses

    from .geometry import GeometryError, preset
    from .training.prepare import TissueRule, prepare

    try:
        geom = preset(args.preset)
        if args.mpp is not None:
            geom = dataclasses.replace(geom, mpp=args.mpp)
    except GeometryError as e:
        raise LazySlideError(str(e)) from None
    missing = [s for s in args.slides if not Path(s).exists()]
    for s in missing:
        print(f"skipped: {s}: no such file", file=sys.stderr)
    slides = [s for s in args.slides if Path(s).exists()]
    if not slides:
        raise LazySlideError("none of the given slide paths exists")
    failed: list[str] = []

    def report(msg: str) -> None:
        if msg.startswith("skipped:"):
            failed.append(msg)
            print(msg, file=sys.stderr)
        else:
            print(msg)

    manifest = prepare(
        slides, args.output, geom, preset=args.preset,
        levels=_ints(args.levels, "--levels") if args.levels else None,
        strides=_ints(args.stride, "--stride") if args.stride else None,
        slide_mpp=args.slide_mpp, tissue=TissueRule(min_fraction=args.min_tissue),
        tissue_method=args.tissue, progress=not args.quiet, report=report)
    if len(failed) == len(slides):
        raise LazySlideError(f"none of the {len(args.slides)} slide(s) could be read")
    counts = {lv: sum(sh["count"] for sh in manifest["shards"] if sh["level"] == int(lv))
              for lv in manifest["levels"]}
    ok = sum(s["status"] == "ok" for s in manifest["slides"])
    print(f"{args.output}: {ok} slide(s), pairs per level "
          + ", ".join(f"{lv}: {n}" for lv, n in counts.items()))
    # 1: made what it could, but some inputs were skipped (listed above)
    return 1 if failed or missing else 0


def cmd_train(args: argparse.Namespace) -> int:
    from .training.trainer import Trainer, TrainSettings

    if args.steps < 1 or args.batch_size < 1 or args.checkpoint_every < 1:
        raise LazySlideError("--steps, --batch-size and --checkpoint-every must be positive")
    if args.max_minutes is not None and not args.max_minutes > 0:
        raise LazySlideError(f"--max-minutes must be positive, got {args.max_minutes}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    settings = TrainSettings(batch_size=args.batch_size, lr=args.lr, seed=args.train_seed,
                             crop=args.crop, ema_beta=args.ema_beta)
    trainer = Trainer(args.data, args.output, args.level, args.unet, settings, device=args.device)
    if trainer.step:
        print(f"resuming {args.output} at step {trainer.step}")
    if trainer.step >= args.steps:
        print(f"{args.output}: already at step {trainer.step} >= --steps {args.steps}")
        return 0
    result = trainer.fit(args.steps, checkpoint_every=args.checkpoint_every,
                         sample_every=args.sample_every, progress=not args.quiet,
                         max_seconds=None if args.max_minutes is None else 60 * args.max_minutes)
    stopped = " (time limit reached; run again to resume)" if result["stopped_early"] else ""
    print(f"{args.output}: step {result['steps']} ({result['new_steps']} new in "
          f"{result['seconds']:.0f} s), last loss {result['loss']:.4f}{stopped}")
    return 0


def cmd_assemble(args: argparse.Namespace) -> int:
    from .training.assemble import assemble, describe

    steps = _ints(args.sampling_steps, "--sampling-steps") if args.sampling_steps else None
    model = assemble(args.runs, args.output, dtype=args.dtype, overwrite=args.overwrite, steps=steps,
                     background_sat=args.background_sat)
    print(f"{describe(args.output)}; fingerprint {model.fingerprint}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation.evaluate import evaluate
    from .seeds import parse_seeds

    if args.n < 4 or (args.pfid_n is not None and args.pfid_n < 2) or args.block < 1:
        raise LazySlideError("--n must be >= 4 (k = 3 neighbours), --pfid-n >= 2, --block >= 1")
    missing = [s for s in args.real if not Path(s).exists()]
    if missing:
        raise LazySlideError(f"real slide {missing[0]}: no such file")
    model = _model(args.model, args.device)
    report = evaluate(model, args.real, args.output, seeds=parse_seeds(args.seeds), n=args.n,
                      pfid_n=args.pfid_n, block=args.block, method=args.method,
                      store=_store(args.cache), slide_mpp=args.slide_mpp, progress=not args.json)
    if args.json:
        print(json.dumps(report))
    else:
        print((Path(args.output) / "report.md").read_text())
        print(f"report: {args.output}/report.md ({report['seconds']} s)")
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from .evaluation.study import StudyDB, build_pairs, format_report, study_report

    if args.action:
        if args.action[0] != "report" or len(args.action) != 2:
            raise LazySlideError("usage: lazyslide study report DB  (or lazyslide study --model M "
                                 "--real SLIDE ... to serve the study)")
        print(format_report(study_report(args.action[1])))
        return 0
    if not args.model or not args.real:
        raise LazySlideError("the study needs --model and --real SLIDE ...")
    from aiohttp import web

    from .seeds import parse_seeds
    from .server.study import Study
    from .training.prepare import DatasetError, SlideReader

    try:
        readers = [SlideReader(Path(p), args.slide_mpp) for p in args.real]
    except DatasetError as e:
        raise LazySlideError(f"real slide: {e}") from None
    model = _model(args.model, args.device)
    levels = [args.level] if args.level is not None else list(range(model.geometry.levels))
    if args.pairs < 1:
        raise LazySlideError(f"--pairs must be positive, got {args.pairs}")
    print(f"lazyslide: making {args.pairs} pair(s) per level for levels {levels} ...", flush=True)
    pairs = build_pairs(model, readers, levels, args.pairs, seeds=parse_seeds(args.seeds),
                        store=_store(args.cache))
    study = Study(pairs, StudyDB(args.db))
    shown = "localhost" if args.host in ("127.0.0.1", "::1") else args.host
    print(f"lazyslide: reader study with {len(pairs)} pairs, answers in {args.db}\n"
          f"  open http://{shown}:{args.port}/study  (Ctrl-C to stop)", flush=True)
    try:
        web.run_app(study.app(), host=args.host, port=args.port, print=None)
    except OSError as e:
        raise LazySlideError(f"cannot serve on {args.host}:{args.port}: {e.strerror or e}") from None
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lazyslide", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    model_help = "model folder, 'demo', or random:PRESET[:INIT_SEED] (PRESET: paper, demo, test)"

    info = sub.add_parser("info", help="geometry, parameter counts and fingerprint of a model")
    info.add_argument("--model", required=True, help=model_help)
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(func=cmd_info)

    tile = sub.add_parser("tile", help="generate one tile (and what it depends on)")
    tile.add_argument("--model", required=True, help=model_help)
    tile.add_argument("--seed", type=_seed_arg, default=0, help="slide seed (default 0)")
    tile.add_argument("--level", type=int, required=True, help="magnification level, 0 = lowest")
    tile.add_argument("--col", type=int, required=True)
    tile.add_argument("--row", type=int, required=True)
    tile.add_argument("-o", "--output", required=True, help="output .png or .tif")
    tile.add_argument("--cache", help="tile store folder (default ~/.cache/lazyslide)")
    tile.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    tile.add_argument("--sampling-steps", help=STEPS_HELP)
    tile.add_argument("--json", action="store_true",
                      help="print one JSON object: generated_tiles per level, seconds, ...")
    tile.add_argument("--method", choices=["urcdm", "outpaint"], default="urcdm",
                     help="urcdm (default) or the paper's baseline: raster outpainting of the "
                     "deepest level with level 0's unconditional cascade")
    tile.set_defaults(func=cmd_tile)

    serve = sub.add_parser("serve", help="serve slides to the browser viewer and as Deep Zoom")
    serve.add_argument("--model", help="default: the bundled demo model, else random:demo")
    serve.add_argument("--seed", type=_seed_arg, default=0, help="slide opened at start-up (default 0)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--cache", help="tile store folder (default ~/.cache/lazyslide)")
    serve.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    serve.add_argument("--sampling-steps", help=STEPS_HELP)
    serve.add_argument("--max-slides", type=int, default=8, help="slides open at once (default 8)")
    serve.set_defaults(func=cmd_serve)

    mat = sub.add_parser("materialize", help="generate whole slides and export them")
    mat.add_argument("--model", required=True, help=model_help)
    mat.add_argument("--seed", default="0", help="slide seed: N, A-B or a comma list (default 0)")
    mat.add_argument("-o", "--output", required=True,
                     help="output file (NAME.tiff/.svs/.ome.tiff/.dzi); a folder for several seeds")
    mat.add_argument("--format", choices=["tiff", "svs", "ome-tiff", "dzi"], default="tiff")
    mat.add_argument("--compression", choices=["jpeg", "deflate"], default="jpeg")
    mat.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    mat.add_argument("--batch-size", type=int, default=1,
                     help="independent tiles per model call (default 1; see README on batching)")
    mat.add_argument("--tiff-tile", type=int, default=256, help="TIFF tile size (default 256)")
    where = mat.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=0,
                       help="start a local Dask cluster: one worker per GPU, else K processes")
    where.add_argument("--scheduler", help="address of a running Dask scheduler (tcp://host:port)")
    mat.add_argument("--cache", help="tile store folder (default ~/.cache/lazyslide)")
    mat.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    mat.add_argument("--sampling-steps", help=STEPS_HELP)
    mat.add_argument("--overwrite", action="store_true", help="replace an existing output")
    mat.add_argument("--json", action="store_true", help="print one JSON report")
    mat.add_argument("--method", choices=["urcdm", "outpaint"], default="urcdm",
                     help="urcdm (default) or the paper's baseline: raster outpainting of the "
                     "deepest level with level 0's unconditional cascade")
    mat.set_defaults(func=cmd_materialize)

    demo = sub.add_parser("demo", help="make the overview and a deep tile of a demo slide")
    demo.add_argument("--model", help="default: the bundled demo model, else random:demo")
    demo.add_argument("--seed", type=_seed_arg, default=0)
    demo.add_argument("-o", "--output", default="out", help="output folder (default out/)")
    demo.add_argument("--cache", help="tile store folder (default ~/.cache/lazyslide)")
    demo.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    demo.set_defaults(func=cmd_demo)

    ev = sub.add_parser("evaluate", help="FID, pFID, improved precision/recall against real slides")
    ev.add_argument("--model", required=True, help=model_help)
    ev.add_argument("--real", nargs="+", required=True, help="real whole-slide images")
    ev.add_argument("--seeds", default="0-3", help="generated slide seeds: N, A-B or a list (default 0-3)")
    ev.add_argument("--n", type=int, default=32, help="real patches per level (default 32; paper ~10k)")
    ev.add_argument("--pfid-n", type=int, help="crops for pFID (default --n; paper 50k)")
    ev.add_argument("--block", type=int, default=3,
                    help="generated tiles per level and seed: a BLOCK x BLOCK block (default 3)")
    ev.add_argument("--method", choices=["urcdm", "outpaint"], default="urcdm")
    ev.add_argument("--slide-mpp", type=float, help="mpp for real slides whose files do not say")
    ev.add_argument("-o", "--output", required=True, help="report folder")
    ev.add_argument("--cache", help="tile store folder (default ~/.cache/lazyslide)")
    ev.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    ev.add_argument("--json", action="store_true", help="print the report as JSON")
    ev.set_defaults(func=cmd_evaluate)

    st = sub.add_parser("study", help="reader study: serve real/synthetic pairs; `study report DB`")
    st.add_argument("action", nargs="*", help="`report DB` prints Table 2 from a study database")
    st.add_argument("--model", help=model_help)
    st.add_argument("--real", nargs="+", help="real whole-slide images")
    st.add_argument("--level", type=int, help="magnification level (default: every level)")
    st.add_argument("--pairs", type=int, default=20, help="pairs per level (default 20)")
    st.add_argument("--seeds", default="0-3", help="generated slide seeds (default 0-3)")
    st.add_argument("--db", default="study.sqlite", help="answers database (default study.sqlite)")
    st.add_argument("--slide-mpp", type=float, help="mpp for real slides whose files do not say")
    st.add_argument("--host", default="127.0.0.1")
    st.add_argument("--port", type=int, default=8001)
    st.add_argument("--cache", help="tile store folder (default ~/.cache/lazyslide)")
    st.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    st.set_defaults(func=cmd_study)

    prep = sub.add_parser("prepare", help="cut training pairs from whole-slide images")
    prep.add_argument("slides", nargs="+", help="slide files (SVS, NDPI, TIFF, ... via tiatoolbox)")
    prep.add_argument("-o", "--output", required=True, help="dataset folder (created or resumed)")
    prep.add_argument("--preset", required=True, help="geometry preset: paper, demo or test")
    prep.add_argument("--mpp", type=float,
                      help="micrometres per pixel of the deepest level (default: the preset's)")
    prep.add_argument("--levels", help="levels to prepare, e.g. 0,1,2 (default: all)")
    prep.add_argument("--stride", help="pixels between targets: one value or one per level "
                      "(default: a quarter tile)")
    prep.add_argument("--slide-mpp", type=float, help="mpp for slides whose files do not say")
    prep.add_argument("--min-tissue", type=float, default=0.05,
                      help="least tissue fraction of a kept target (default 0.05)")
    prep.add_argument("--tissue", choices=["hsv", "otsu"], default="hsv",
                      help="tissue test: the paper's HSV rule per target (default) or a slide-level "
                      "Otsu mask (tiatoolbox's method)")
    prep.add_argument("--quiet", action="store_true", help="no progress bars")
    prep.set_defaults(func=cmd_prepare)

    train = sub.add_parser("train", help="train one of the nine unets (resumes a run folder)")
    train.add_argument("--data", required=True, help="dataset folder from `lazyslide prepare`")
    train.add_argument("--level", type=int, required=True, choices=[0, 1, 2])
    train.add_argument("--unet", type=int, required=True, choices=[1, 2, 3])
    train.add_argument("-o", "--output", required=True, help="run folder (resumed if it exists)")
    train.add_argument("--steps", type=int, default=1000, help="total steps (default 1000)")
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument("--lr", type=float, default=1e-4)
    train.add_argument("--crop", type=int, help="random crop size (default: the preset's)")
    train.add_argument("--ema-beta", type=float, default=0.9999)
    train.add_argument("--train-seed", type=int, default=0)
    train.add_argument("--checkpoint-every", type=int, default=250)
    train.add_argument("--sample-every", type=int, default=0, help="sample grid every N steps")
    train.add_argument("--max-minutes", type=float,
                       help="stop after this much wall-clock time (checkpointed; resumable)")
    train.add_argument("--threads", type=int, help="torch CPU threads")
    train.add_argument("--device", help="'cpu' to force the CPU (default: accelerate's choice)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_train)

    asm = sub.add_parser("assemble", help="build a model folder from nine training runs")
    asm.add_argument("runs", nargs="+", help="run folders, one per (level, unet)")
    asm.add_argument("-o", "--output", required=True, help="model folder")
    asm.add_argument("--dtype", default="float32", help="float32 (default), float16 or bfloat16")
    asm.add_argument("--sampling-steps", help="sampling steps per cascade stage, e.g. 16,16,16 "
                     "(default: the preset's)")
    asm.add_argument("--background-sat", type=float,
                     help="saturation above which the background rule sees tissue (default: the "
                     "paper's 0.02; raise it when generated glass is tinted above that)")
    asm.add_argument("--overwrite", action="store_true")
    asm.set_defaults(func=cmd_assemble)
    return p


def _attach_dash_values(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``--opt -1,1,1`` -> ``--opt=-1,1,1`` for options that take a value.

    argparse reads a value that starts with '-' as the next option unless it is a plain negative
    number, and then says "expected one argument"; attached, the value reaches the option's own
    check, whose message names what is wrong with it.
    """
    takes_value: set[str] = set()
    stack = [parser]
    while stack:
        p = stack.pop()
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
            elif action.nargs is None and action.option_strings:
                takes_value.update(action.option_strings)
    out, i = [], 0
    while i < len(argv):
        if argv[i] in takes_value and i + 1 < len(argv) and argv[i + 1][:1] == "-" \
                and argv[i + 1][1:2].isdigit():
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(_attach_dash_values(parser, argv))
    try:
        return args.func(args)
    except LazySlideError as e:
        print(f"lazyslide: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lazyslide: interrupted (stored tiles are kept)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
