"""Commands that judge models: ``evaluate``, ``compare`` and the reader ``study``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import LazySlideError
from .common import MODEL_HELP, add_method_option, add_sampling_options, load_model, open_store


def add_commands(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("evaluate", help="FID, pFID, improved precision/recall against real slides")
    ev.add_argument("--model", required=True, help=MODEL_HELP)
    ev.add_argument("--real", nargs="+", help="real references: slide files or packaged sources by name "
                    "(their held-out region; NAME:training or NAME:all for others; `lazyslide sources`). "
                    "Default: every packaged held-out region the model did not learn from, its training "
                    "organ and other organs in separate rows")
    ev.add_argument("--shift", nargs="+", help="with --real: a second reference group, read as domain "
                    "shift (e.g. other organs)")
    ev.add_argument("--training", nargs="+", help="what the memorisation audit compares with (default: "
                    "the model's record of what it learnt from)")
    ev.add_argument("--no-audit", dest="audit", action="store_false", help="no memorisation audit")
    ev.add_argument("--features", default="inception",
                    help="feature extractor: inception (default, the FID Inception-v3), a TorchScript "
                    "file, or timm:ARCH with --features-weights (e.g. a pathology encoder you have)")
    ev.add_argument("--features-weights", help="with --features timm:ARCH: the weights file")
    ev.add_argument("--features-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="with timm:ARCH: a timm.create_model argument (repeatable), e.g. init_values=1e-5")
    ev.add_argument("--seeds", default="0-3", help="generated slide seeds: N, A-B or a list (default 0-3)")
    ev.add_argument("--n", type=int, default=32, help="real patches per level (default 32; paper ~10k)")
    ev.add_argument("--pfid-n", type=int, help="crops for pFID (default --n; paper 50k)")
    ev.add_argument("--block", type=int, default=3,
                    help="generated tiles per level and seed: a BLOCK x BLOCK block (default 3)")
    add_method_option(ev)
    add_sampling_options(ev)
    ev.add_argument("--slide-mpp", type=float, help="mpp for real slides whose files do not say")
    ev.add_argument("--samples", help="measure another generator's output instead of the engine: a "
                    "slide file (anything tiatoolbox reads, e.g. an export) or a folder of level0/, "
                    "level1/, level2/ images (the model sets the levels' um/px and the tile size)")
    ev.add_argument("--name", help="the row's name in the tables (default: the method, or the "
                    "samples' file or folder name)")
    ev.add_argument("--mpp", type=float, help="with --samples: um/px of a folder holding one level's "
                    "images, or of a slide file that does not say")
    ev.add_argument("--no-pfid", dest="pfid", action="store_false",
                    help="make no generated pFID crops (pFID n/a; real crops are drawn all the same): "
                    "for generators whose crops cost hours, e.g. outpainting a large canvas on a CPU")
    ev.add_argument("--draws", type=int, default=50,
                    help="bootstrap draws behind each FID interval (default and minimum 50)")
    ev.add_argument("-o", "--output", required=True, help="report folder")
    ev.add_argument("--cache", help="tile store folder (default ~/.cache/lazyslide)")
    ev.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    ev.add_argument("--json", action="store_true", help="print the report as JSON")
    ev.set_defaults(func=cmd_evaluate)

    so = sub.add_parser("sources", help="the packaged real H&E: organ, um/px, training and held-out regions")
    so.set_defaults(func=cmd_sources)

    cp = sub.add_parser("compare", help="several evaluate reports as one table and figure")
    cp.add_argument("reports", nargs="+", help="report folders of `lazyslide evaluate -o`")
    cp.add_argument("-o", "--output", required=True, help="folder for compare.md, .json, .png")
    cp.set_defaults(func=cmd_compare)

    st = sub.add_parser("study", help="reader study: serve real/synthetic pairs; `study report DB`")
    st.add_argument("action", nargs="*", help="`report DB` prints Table 2 from a study database")
    st.add_argument("--model", help=MODEL_HELP)
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


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..evaluation.evaluate import evaluate
    from ..evaluation.features import load_extractor
    from ..realdata import parse_spec
    from ..seeds import parse_seeds

    if args.n < 4 or (args.pfid_n is not None and args.pfid_n < 2) or args.block < 1:
        raise LazySlideError("--n must be >= 4 (k = 3 neighbours), --pfid-n >= 2, --block >= 1")
    specs = {}
    for key, region in (("real", "held-out"), ("shift", "held-out"), ("training", "training")):
        items = getattr(args, key) or []
        specs[key] = [parse_spec(s, default_region=region, slide_mpp=args.slide_mpp) for s in items] or None
    options = {}
    for item in args.features_arg:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise LazySlideError(f"--features-arg {item!r}: give KEY=VALUE")
        options[k] = v
    if args.samples is not None and not Path(args.samples).exists():
        raise LazySlideError(f"--samples {args.samples}: no such file or folder")
    if args.mpp is not None and (args.samples is None or not args.mpp > 0):
        raise LazySlideError("--mpp goes with --samples and must be positive")
    model = load_model(args.model, args.device, args)
    extractor = load_extractor(args.features, weights=args.features_weights, options=options,
                               device=str(model.device))
    report = evaluate(model, specs["real"], args.output, shift=specs["shift"] or (),
                      training=specs["training"], extractor=extractor, audit=args.audit,
                      seeds=parse_seeds(args.seeds), n=args.n,
                      pfid_n=args.pfid_n, block=args.block, method=args.method,
                      store=open_store(args.cache) if args.samples is None else None,
                      slide_mpp=args.slide_mpp, progress=not args.json, samples=args.samples,
                      name=args.name, samples_mpp=args.mpp, draws=args.draws, pfid=args.pfid)
    if args.json:
        print(json.dumps(report))
    else:
        print((Path(args.output) / "report.md").read_text())
        print(f"report: {args.output}/report.md ({report['seconds']} s)")
    return 0


def cmd_sources(args: argparse.Namespace) -> int:
    from ..realdata import real_data_dir, table

    print(table())
    print(f"\narchives: {real_data_dir()} (make install downloads them; LAZYSLIDE_REAL_DATA overrides)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ..evaluation.compare import compare

    print(compare(args.reports, args.output))
    print(f"table: {args.output}/compare.md, figure: {args.output}/compare.png")
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from ..evaluation.study import StudyDB, build_pairs, format_report, study_report

    if args.action:
        if args.action[0] != "report" or len(args.action) != 2:
            raise LazySlideError("usage: lazyslide study report DB  (or lazyslide study --model M "
                                 "--real SLIDE ... to serve the study)")
        print(format_report(study_report(args.action[1])))
        return 0
    if not args.model or not args.real:
        raise LazySlideError("the study needs --model and --real SLIDE ...")
    from aiohttp import web

    from ..seeds import parse_seeds
    from ..server.study import Study
    from ..wsi import SlideReader, SlideReadError

    try:
        readers = [SlideReader(Path(p), args.slide_mpp) for p in args.real]
    except SlideReadError as e:
        raise LazySlideError(f"real slide: {e}") from None
    model = load_model(args.model, args.device)
    levels = [args.level] if args.level is not None else list(range(model.geometry.levels))
    if args.pairs < 1:
        raise LazySlideError(f"--pairs must be positive, got {args.pairs}")
    print(f"lazyslide: making {args.pairs} pair(s) per level for levels {levels} ...", flush=True)
    pairs = build_pairs(model, readers, levels, args.pairs, seeds=parse_seeds(args.seeds),
                        store=open_store(args.cache))
    study = Study(pairs, StudyDB(args.db))
    shown = "localhost" if args.host in ("127.0.0.1", "::1") else args.host
    print(f"lazyslide: reader study with {len(pairs)} pairs, answers in {args.db}\n"
          f"  open http://{shown}:{args.port}/study  (Ctrl-C to stop)", flush=True)
    try:
        web.run_app(study.app(), host=args.host, port=args.port, print=None)
    except OSError as e:
        raise LazySlideError(f"cannot serve on {args.host}:{args.port}: {e.strerror or e}") from None
    return 0
