"""What the command groups share: loading a model with the command line's overrides, the tile
store, progress bars, and argument types."""

from __future__ import annotations

import argparse
import sys

from ..errors import LazySlideError

MODEL_HELP = "model folder, 'demo', or random:PRESET[:INIT_SEED] (PRESET: paper, demo, test)"
STEPS_HELP = ("sampling steps per cascade stage, e.g. 16,8,8 (default: the model's); fewer is "
              "faster and coarser, and makes other tiles (another fingerprint)")


def add_sampling_options(parser: argparse.ArgumentParser) -> None:
    """--sampling-preset, --sampler, --sampling-steps, --resample, --known-channels, --blend,
    --loop, --level-sampling: the
    same weights sampled otherwise (another fingerprint, so the tiles are stored apart)."""
    from ..blending import BLENDS
    from ..model import SAMPLING_PRESETS
    from ..sampler import LOOPS, SAMPLERS

    parser.add_argument("--sampling-preset", choices=list(SAMPLING_PRESETS),
                        help="a named way to sample (sampling and background rule), applied "
                        "before the options below: paper = the authors' (imagen's ancestral "
                        "sampler and inpainting loop, 1024,256,256 steps, 5 resamples, "
                        "background skipped at the deepest level only)")
    parser.add_argument("--sampler", choices=list(SAMPLERS),
                        help="sampler family (default: the model's)")
    parser.add_argument("--sampling-steps", help=STEPS_HELP)
    parser.add_argument("--resample", help="RePaint resamples of an inpainted tile's steps, one "
                        "for every cascade stage or one per stage, e.g. 1 or 3,2,2 (default: the "
                        "model's)")
    parser.add_argument("--known-channels", choices=["on", "off"],
                        help="a model with trained inpainting: hand the unets the known pixels "
                        "(on) or zero channels, the known pixels entering by replacement alone "
                        "as in RePaint (off) (default: the model's)")
    parser.add_argument("--blend", choices=list(BLENDS),
                        help="how an inpainted tile's generated pixels meet its neighbours' after "
                        "the last step: replace (put the known pixels back, RePaint) or poisson "
                        "(also blend the seam away, gradient-domain) (default: the model's)")
    parser.add_argument("--loop", choices=list(LOOPS),
                        help="the inpainting loop: repaint (RePaint's: known pixels replaced "
                        "after each step, forward-process jumps) or imagen (imagen-pytorch's, "
                        "as the authors sampled) (default: the model's)")
    parser.add_argument("--level-sampling", action="append",
                        metavar="LEVEL=SAMPLER:STEPS:RESAMPLE[:OPTION...]",
                        help="how one magnification level samples, e.g. 0=ancestral:64,32,32:1 or "
                        "2=ancestral:16,16,16:1:no-channels:poisson (options: channels, "
                        "no-channels, a blend, loop-repaint, loop-imagen; repeatable; replaces "
                        "the model's per-level settings)")


def add_batch_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int,
                        help="tiles per network call, always (fewer ready tiles are padded), so "
                        "a tile's bytes depend on the size, never on its batch-mates: the same "
                        "slide at the same size from serve, materialize and Dask; sizes other "
                        "than 1 store their tiles apart (default 1 on the CPU, 4 on a GPU; see README)")


def add_method_option(parser: argparse.ArgumentParser) -> None:
    from ..methods import METHODS

    parser.add_argument("--method", choices=list(METHODS), default="urcdm",
                        help="; ".join(f"{k}: {m.description}" for k, m in METHODS.items()))


#: ``--batch-size`` where a command that takes it runs on a GPU and none is given: the largest
#: batch whose paper-size 1024 px stage fit in one GPU's memory and ran faster per tile than
#: batch 1 (docs/benchmarks.md, bench/gpu_cost.py). On the CPU, 1.
GPU_BATCH = 4


def load_model(spec: str, device: str | None = None, sampling: argparse.Namespace | None = None):
    """The model of ``spec`` on ``device``, with the sampling overrides of ``sampling`` (the
    parsed --sampler, --sampling-steps, --resample, --known-channels, --blend, --level-sampling of
    ``add_sampling_options``)."""
    import torch

    from ..model import URCDM

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:
        raise LazySlideError(f"device {device!r} is not usable here: {str(e).splitlines()[0]}") from None
    model = URCDM.from_spec(spec).to(device)
    if getattr(sampling, "sampling_preset", None):
        model = model.with_sampling_preset(sampling.sampling_preset)
    overrides = sampling_overrides(sampling, len(model.sampling.steps))
    if sampling is not None and hasattr(sampling, "batch_size") and sampling.batch_size is None \
            and str(device).startswith("cuda"):
        overrides["batch"] = GPU_BATCH
    return model.with_sampling(**overrides) if overrides else model


def sampling_overrides(sampling: argparse.Namespace | None, stages: int) -> dict:
    """``SamplingConfig`` fields from the parsed options of ``add_sampling_options`` (the ones
    given), checked for the model's number of cascade stages."""
    from ..errors import ModelError
    from ..sampler import parse_sampling

    overrides: dict = {}
    steps, resample, sampler = (getattr(sampling, k, None) for k in ("sampling_steps", "resample", "sampler"))
    if steps:
        values = ints(steps, "--sampling-steps")
        if len(values) != stages:
            raise LazySlideError(f"--sampling-steps needs {stages} integers (one per cascade "
                                 f"stage), got {steps!r}")
        overrides["steps"] = values
    if resample:
        values = ints(resample, "--resample")
        if len(values) not in (1, stages):
            raise LazySlideError(f"--resample needs 1 or {stages} integers (one per cascade "
                                 f"stage), got {resample!r}")
        overrides["resample"] = values * stages if len(values) == 1 else values
    if sampler:
        overrides["sampler"] = sampler
    batch = getattr(sampling, "batch_size", None)
    if batch is not None:
        if batch < 1:
            raise LazySlideError(f"--batch-size must be >= 1, got {batch}")
        if batch != 1:  # the default: left out, so the model keeps its fingerprint
            overrides["batch"] = batch
    if getattr(sampling, "known_channels", None):
        overrides["known_channels"] = sampling.known_channels == "on"
    if getattr(sampling, "blend", None):
        overrides["blend"] = sampling.blend
    if getattr(sampling, "loop", None):
        overrides["loop"] = sampling.loop
    levels = {}
    for text in getattr(sampling, "level_sampling", None) or []:
        level, _, spec = text.partition("=")
        if not level.isdigit() or not spec:
            raise LazySlideError(f"--level-sampling {text!r}: expected "
                                 "LEVEL=SAMPLER:STEPS:RESAMPLE[:OPTION...], e.g. 0=ancestral:64,32,32:1")
        try:
            levels[int(level)] = parse_sampling(spec, stages)
        except ModelError as e:
            raise LazySlideError(f"--level-sampling {e}") from None
    if levels:
        overrides["levels"] = levels
    return overrides


def seed_arg(text: str) -> int:
    """argparse type of --seed: ASCII digits in the one seed range (lazyslide.seeds)."""
    from ..seeds import check_seed, parse_seeds

    try:
        (seed,) = parse_seeds(text)
        return check_seed(seed)
    except (LazySlideError, ValueError):
        from ..seeds import MAX_SEED

        raise argparse.ArgumentTypeError(f"must be one integer in 0..{MAX_SEED}, got {text!r}") from None


def open_store(cache: str | None, memory_bytes: int | None = None):
    from ..store import TileStore

    return TileStore(cache, memory_bytes=memory_bytes)


class Bar:
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


def default_spec() -> str:
    """The bundled demo model where it exists, else random weights of the demo preset."""
    from ..model import DEMO_MODEL_DIR

    if (DEMO_MODEL_DIR / "config.json").is_file():
        return "demo"
    print("lazyslide: no trained demo model is bundled yet: using random:demo (random weights: "
          "noise, not tissue). Train one (see README) and pass --model FOLDER.", file=sys.stderr)
    return "random:demo"


def ints(text: str, name: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise LazySlideError(f"{name} must be integers separated by commas, got {text!r}") from None

