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
    ev.add_argument("--real", nargs="+", required=True, help="real whole-slide images")
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
    from ..seeds import parse_seeds

    if args.n < 4 or (args.pfid_n is not None and args.pfid_n < 2) or args.block < 1:
        raise LazySlideError("--n must be >= 4 (k = 3 neighbours), --pfid-n >= 2, --block >= 1")
    missing = [s for s in args.real if not Path(s).exists()]
    if missing:
        raise LazySlideError(f"real slide {missing[0]}: no such file")
    if args.samples is not None and not Path(args.samples).exists():
        raise LazySlideError(f"--samples {args.samples}: no such file or folder")
    if args.mpp is not None and (args.samples is None or not args.mpp > 0):
        raise LazySlideError("--mpp goes with --samples and must be positive")
    model = load_model(args.model, args.device, args)
    report = evaluate(model, args.real, args.output, seeds=parse_seeds(args.seeds), n=args.n,
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
