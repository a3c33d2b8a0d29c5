"""Benchmark: does a trained-inpainting unet continue the known pixels across their edge?

One network call per sample, no sampler: real level-L targets of a prepared dataset, with the
known-pixel channels of the tile masks the parity plan gives (``PairDataset(inpainting=...)``),
noised to time t; the x0 prediction's squared error per column counted from the edge where a
left strip of known pixels ends (column 0 = the first generated column), for the channels as
trained ("aligned"), shifted by one pixel (a misalignment would win) and zeroed (the unet told
nothing). A unet that uses the known pixels well has its lowest error next to the edge, falling
towards the far columns' level; one that has learnt an edge artefact has it highest there, above
"zeroed". Errors are x 1000, model space, mean over the samples with such an edge.

    .venv/bin/python bench/inpainting_edge.py --model data/demo-v5 --data data/demo-dataset \\
        [--level 2] [--stage 3] [--n 64] [--t 0.1 0.3]
"""

from __future__ import annotations

import argparse
import sys

import torch

from lazyslide import URCDM
from lazyslide.conditioning import INPAINTING, conditioning, trained_inpainting
from lazyslide.methods import METHODS
from lazyslide.sampler import q_sample
from lazyslide.stage import Stage, x0_predictor
from lazyslide.training.dataset import PairDataset

COLUMNS = range(-3, 6)


def left_edge(mask: torch.Tensor) -> int:
    """The first generated column after a left strip of known pixels (0: no such strip)."""
    rows = (mask[:, 0] & ~mask.all(1)).nonzero().flatten()
    if not len(rows):
        return 0
    return int((~mask[int(rows[len(rows) // 2])]).nonzero()[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--level", type=int, default=2)
    p.add_argument("--stage", type=int, default=3, help="cascade stage, 1-based")
    p.add_argument("--n", type=int, default=64, help="pairs drawn (those with a left edge count)")
    p.add_argument("--t", type=float, nargs="+", default=[0.1, 0.3])
    args = p.parse_args()
    model = URCDM.from_spec(args.model)
    if not trained_inpainting(model.config, args.level):
        raise SystemExit(f"{args.model}: level {args.level} does not use trained inpainting")
    stage = args.stage - 1
    ds = PairDataset(args.data, args.level, conditioning=conditioning(model.config),
                     inpainting=METHODS["urcdm"].plan)
    g = torch.Generator().manual_seed(0)
    b = ds.stage_batch(torch.randint(len(ds), (args.n,), generator=g), stage, generator=g,
                       augment=False)
    mask = b.cond[:, -1] > 0.5
    k = INPAINTING["trained"]
    edges = [left_edge(m) for m in mask]
    keep = [i for i, e in enumerate(edges) if e > 0]
    if not keep:
        raise SystemExit("no sample with a left strip of known pixels; raise --n")
    x0, cond = b.x0[keep], b.cond[keep]
    low = None if b.lowres is None else b.lowres[keep]
    st = Stage.from_config(model.config, stage, model.sampling.for_level(args.level))
    net = model.denoiser(args.level, stage)
    variants = {
        "aligned": cond,
        "shift +1": torch.cat([cond[:, :-k], cond[:, -k:].roll(1, -1)], 1),
        "shift -1": torch.cat([cond[:, :-k], cond[:, -k:].roll(-1, -1)], 1),
        "zeroed": torch.cat([cond[:, :-k], torch.zeros_like(cond[:, -k:])], 1),
    }
    print("command: .venv/bin/python " + " ".join(sys.argv))
    print(f"model {args.model} ({model.fingerprint}), level {args.level}, stage {args.stage}, "
          f"{len(keep)} samples with a left edge of {args.n} drawn")
    print(f"{'t':>5s} {'channels':10s}" + "".join(f"{c:>7d}" for c in COLUMNS) + f"{'far':>8s}")
    for t in args.t:
        ls = st.schedule(torch.full((len(keep),), t))
        xt = q_sample(x0, ls.view(-1, 1, 1, 1), torch.randn(x0.shape, generator=g))
        low_ls = low_noisy = None
        if low is not None:
            low_ls = st.lowres_schedule(torch.full((len(keep),), st.lowres_level))
            low_noisy = q_sample(low, low_ls.view(-1, 1, 1, 1), torch.randn(low.shape, generator=g))
        for name, c in variants.items():
            predict = x0_predictor(net, st.objective, cond=c, lowres=low_noisy, lowres_log_snr=low_ls)
            with torch.no_grad():
                err = ((predict(xt, ls) - x0) ** 2).mean(1)  # (B, H, W)
            on_edge = [(i, mask[j, :, edges[j] - 1] & ~mask[j, :, edges[j]], edges[j])
                       for i, j in enumerate(keep)]  # the rows where the strip ends at the edge
            cols = [float(torch.cat([err[i, r, e + d] for i, r, e in on_edge]).mean()) for d in COLUMNS]
            far = float(torch.cat([err[i, r, e + 16:].flatten() for i, r, e in on_edge]).mean())
            print(f"{t:5.2f} {name:10s}" + "".join(f"{v * 1000:7.1f}" for v in cols) + f"{far * 1000:8.1f}")
    print("\ncolumns counted from the first generated one (negative: known); far: 16 px and more "
          "beyond the edge")


if __name__ == "__main__":
    main()
