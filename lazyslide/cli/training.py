"""Commands that make models: ``prepare``, ``train``, ``assemble``."""

from __future__ import annotations

import argparse
import sys

from ..conditioning import CONDITIONING, INPAINTING
from ..errors import LazySlideError
from ..networks import ARCHITECTURES, DEFAULT_ARCHITECTURE
from ..training.trainer import BALANCE
from .common import add_sampling_options, ints, sampling_overrides


def add_commands(sub: argparse._SubParsersAction) -> None:
    prep = sub.add_parser("prepare", help="cut training pairs from whole-slide images")
    prep.add_argument("slides", nargs="+", help="slide files (SVS, NDPI, TIFF, ... via tiatoolbox) or "
                      "packaged real sources by name (their training region; `lazyslide sources`)")
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
    prep.add_argument("--fragments", type=float, metavar="UM",
                      help="for crops of tissue without glass: cut each sample to a random smooth "
                      "fragment about UM micrometres across, on glass (synthetic augmentation)")
    prep.add_argument("--pen-marks", choices=["skip", "keep"], default="skip",
                      help="pairs touching blue or green pen ink: left out (default) or kept")
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
    train.add_argument("--init", metavar="MODEL",
                       help="fine-tune: start from this model's weights for the unet (a model "
                       "folder or 'demo'); a resumed run continues from its checkpoint")
    train.add_argument("--conditioning", choices=list(CONDITIONING),
                       help="what level >= 1 unets see of the parent (default: the preset's; "
                       "README, How it works)")
    train.add_argument("--inpainting", choices=list(INPAINTING),
                       help="how the unets learn the pixels neighbours fixed: 'repaint' (the "
                       "paper: they do not; the sampler resamples) or 'trained' (known pixels and "
                       "mask as conditioning channels; default: the preset's)")
    train.add_argument("--balance", choices=list(BALANCE), default=BALANCE[0],
                       help="draw batches over pairs (default, the paper's) or over slides first, "
                            "so a small source is not drowned by a large one")
    train.add_argument("--threads", type=int, help="torch CPU threads")
    train.add_argument("--device", help="'cpu' to force the CPU (default: accelerate's choice)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_train)

    asm = sub.add_parser("assemble", help="build a model folder from nine training runs")
    asm.add_argument("runs", nargs="+", help="run folders, one per (level, unet)")
    asm.add_argument("-o", "--output", required=True, help="model folder")
    asm.add_argument("--dtype", default="float32", help="float32 (default), float16 or bfloat16")
    add_sampling_options(asm)  # the model's default sampling (default: the preset's)
    asm.add_argument("--background-sat", type=float,
                     help="saturation above which the background rule sees tissue (default: the "
                     "paper's 0.02; raise it when generated glass is tinted above that)")
    asm.add_argument("--background-blur", type=float,
                     help="Gaussian blur radius in parent pixels before the parent is upscaled "
                     "into a background tile (default 0, as the authors'; smooth generated glass "
                     "next to the parent's magnified pixel noise shows the tile grid)")
    asm.add_argument("--architecture", choices=list(ARCHITECTURES),
                     help=f"how the unets are built and run (default: {DEFAULT_ARCHITECTURE}); entries "
                     "with the same parameters load the same weights, e.g. imagen-unet-channels-last "
                     "runs them 1.5x faster on a CPU (another fingerprint: outputs differ by ~3e-6)")
    asm.add_argument("--overwrite", action="store_true")
    asm.set_defaults(func=cmd_assemble)


def cmd_prepare(args: argparse.Namespace) -> int:
    import dataclasses

    from ..geometry import GeometryError, preset
    from ..training.prepare import prepare
    from ..wsi import PenRule, TissueRule

    try:
        geom = preset(args.preset)
        if args.mpp is not None:
            geom = dataclasses.replace(geom, mpp=args.mpp)
    except GeometryError as e:
        raise LazySlideError(str(e)) from None
    from ..realdata import parse_spec

    slides, missing = [], []
    for s in args.slides:  # packaged sources give their training region
        try:
            slides.append(parse_spec(s, default_region="training", slide_mpp=args.slide_mpp))
        except LazySlideError as e:
            missing.append(s)
            print(f"skipped: {s}: no such file or packaged source ({e})", file=sys.stderr)
    if not slides:
        raise LazySlideError("none of the given slides is a file or a packaged real source")
    failed: list[str] = []

    def report(msg: str) -> None:
        if msg.startswith("skipped:"):
            failed.append(msg)
            print(msg, file=sys.stderr)
        else:
            print(msg)

    manifest = prepare(
        slides, args.output, geom, preset=args.preset,
        levels=ints(args.levels, "--levels") if args.levels else None,
        strides=ints(args.stride, "--stride") if args.stride else None,
        slide_mpp=args.slide_mpp, tissue=TissueRule(min_fraction=args.min_tissue),
        tissue_method=args.tissue, fragments=args.fragments,
        pen=PenRule() if args.pen_marks == "skip" else None, progress=not args.quiet,
        report=report)
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
    from ..training.trainer import Trainer, TrainSettings

    if args.steps < 1 or args.batch_size < 1 or args.checkpoint_every < 1:
        raise LazySlideError("--steps, --batch-size and --checkpoint-every must be positive")
    if args.max_minutes is not None and not args.max_minutes > 0:
        raise LazySlideError(f"--max-minutes must be positive, got {args.max_minutes}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    settings = TrainSettings(batch_size=args.batch_size, lr=args.lr, seed=args.train_seed,
                             crop=args.crop, ema_beta=args.ema_beta, balance=args.balance)
    trainer = Trainer(args.data, args.output, args.level, args.unet, settings, device=args.device,
                      init=args.init, conditioning=args.conditioning,
                      inpainting=args.inpainting)
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
    from ..model import SAMPLING_PRESETS
    from ..training.assemble import assemble, describe
    from ..training.trainer import run_summary

    stages = len(run_summary(args.runs[0])["model"]["sampling"]["steps"])  # runs: nargs="+"
    named = SAMPLING_PRESETS.get(args.sampling_preset or "", {})
    model = assemble(args.runs, args.output, dtype=args.dtype, overwrite=args.overwrite,
                     sampling={**named.get("sampling", {}), **sampling_overrides(args, stages)},
                     background=named.get("background"), background_sat=args.background_sat,
                     background_blur=args.background_blur, architecture=args.architecture)
    print(f"{describe(args.output)}; fingerprint {model.fingerprint}")
    return 0
