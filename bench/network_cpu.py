"""The network on a CPU: seconds per unet evaluation under each execution option, and whether
the output stays what it was (a tile must stay a deterministic function of its address).

Per cascade stage of one level (the deepest by default), batch 1 as the slide makes canonical
tiles: the model's unet called as the sampler calls it (``x_t``, log SNR, low-res input, parent
conditioning) under
- ``no_grad``: today's baseline (the sampler's ``torch.no_grad``),
- ``inference_mode``: ``torch.inference_mode`` instead,
- ``channels_last``: weights and input in channels-last memory format,
- ``bf16``: ``torch.autocast("cpu", torch.bfloat16)`` (where the CPU has bf16 instructions),
- ``compile``: ``torch.compile`` (inductor; compile time excluded, reported apart),
each also at 1 thread and at all threads. It prints median seconds per evaluation (n calls after
warm-up), the ratio to the baseline at the same threads, the largest difference from the
baseline's output, and whether two calls of the option give identical outputs.

    .venv/bin/python bench/network_cpu.py [--model demo] [--level 2] [--n 20] [--options ...]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lazyslide import URCDM  # noqa: E402
from lazyslide.conditioning import cond_channels  # noqa: E402

OPTIONS = ("no_grad", "inference_mode", "channels_last", "bf16", "compile")


def inputs(model: URCDM, level: int, stage: int) -> dict:
    g = torch.Generator().manual_seed(0)
    size = model.geometry.cascade[stage]
    x = torch.randn(1, 3, size, size, generator=g)
    kw = {"lowres": None, "lowres_log_snr": None, "cond": None}
    if stage > 0:
        kw["lowres"] = torch.randn(1, 3, size, size, generator=g)
        kw["lowres_log_snr"] = torch.tensor([1.0])
    c = cond_channels(model.config, level)
    if c:
        kw["cond"] = torch.randn(1, c, size, size, generator=g)
    return {"x": x, "log_snr": torch.tensor([0.3]), **kw}


def runner(model: URCDM, level: int, stage: int, option: str):
    """A no-argument call of the unet under ``option``, its first output, its one-off setup
    seconds and a function that undoes what it changed on the unet."""
    unet = model.unet(level, stage)
    args = inputs(model, level, stage)
    net, ctx, t0 = unet, contextlib.nullcontext, time.perf_counter()
    if option == "channels_last":
        net = unet.to(memory_format=torch.channels_last)
        args = {k: v.contiguous(memory_format=torch.channels_last) if torch.is_tensor(v) and v.ndim == 4
                else v for k, v in args.items()}
    elif option == "compile":
        net = torch.compile(unet)
    grad = torch.inference_mode if option == "inference_mode" else torch.no_grad
    if option == "bf16":
        def ctx():
            return torch.autocast("cpu", dtype=torch.bfloat16)

    def call() -> torch.Tensor:
        with grad(), ctx():
            return net(args["x"], args["log_snr"], lowres_cond_img=args["lowres"],
                       lowres_noise_times=args["lowres_log_snr"], cond_images=args["cond"]).float()

    out = call()  # warm-up (compiles)
    setup = time.perf_counter() - t0

    def undo() -> None:
        unet.to(memory_format=torch.contiguous_format)

    return call, out, setup, undo


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--level", type=int)
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--options", nargs="+", default=list(OPTIONS), choices=OPTIONS)
    p.add_argument("--threads", default=f"1,{torch.get_num_threads()}")
    args = p.parse_args()
    model = URCDM.from_spec(args.model)
    level = model.geometry.levels - 1 if args.level is None else args.level
    print("command: .venv/bin/python " + " ".join(sys.argv))
    print(f"model {model.source} ({model.fingerprint}), level {level}, batch 1, torch {torch.__version__}, "
          f"median of n={args.n}")
    print("| stage | threads | option | s / evaluation | vs no_grad | max abs diff | repeatable | setup s |")
    print("|---|---|---|---|---|---|---|---|")
    for threads in sorted({int(t) for t in args.threads.split(",")}):
        torch.set_num_threads(threads)
        for stage in range(len(model.geometry.cascade)):
            base_out, base_s = None, None
            for option in ["no_grad", *[o for o in args.options if o != "no_grad"]]:
                try:
                    call, out, setup, undo = runner(model, level, stage, option)
                except Exception as e:  # an option this machine or torch build lacks
                    print(f"| {stage + 1} | {threads} | {option} | failed: {str(e).splitlines()[0][:80]} |"
                          " | | | |")
                    continue
                times = []
                for _ in range(args.n):
                    t0 = time.perf_counter()
                    again = call()
                    times.append(time.perf_counter() - t0)
                undo()
                s = statistics.median(times)
                if option == "no_grad":
                    base_out, base_s = out, s
                diff = float((out - base_out).abs().max())
                print(f"| {stage + 1} | {threads} | {option} | {s:.4f} | {base_s / s:.2f}x | {diff:.2e} | "
                      f"{bool(torch.equal(out, again))} | {setup:.1f} |")


if __name__ == "__main__":
    main()
