"""Memorisation audit: do generated tiles copy training patches?

Synthetic slides are shareable because they contain no patient; a model that reproduces its
training patches (or near-copies of them) defeats that, and FID / precision / recall do not see
it (a perfect copy of the training set scores perfectly on all three). This module measures it
directly, on any representation (Inception or pathology-encoder features, or downsampled pixels
from :func:`pixel_vectors`).

The statistic is the three-sample data-copying test of Meehan, Chaudhuri & Dasgupta,
"A Non-Parametric Test to Detect Data-Copying in Generative Models", AISTATS 2020
(reference code: github.com/casey-meehan/data-copying, ``data_copying_tests.py``): generated
samples that copy should lie closer to their nearest training sample than fresh real
(held-out) samples do. Comparing with held-out data, not with zero, calibrates "close" to the
data's own density. The comparison is made per cell of a k-means partition of the training set,
because copying confined to some regions can be masked globally by underfitting elsewhere.

Pure functions over arrays; the only file written is :func:`pairs_figure`'s PNG.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy.cluster.vq import kmeans2, vq
from scipy.stats import rankdata

#: C_T below this is flagged as copying; Meehan et al. use -3 (C_T is a weighted mean of
#: per-cell Z scores, each ~N(0, 1) without copying, so its spread is at most 1: -3 is a
#: one-sided p < 0.0014).
COPYING_THRESHOLD = -3.0
#: C_T above this: generated samples are farther from the training data than real held-out
#: samples are (Meehan: underfitting); not memorisation.
UNDERFIT_THRESHOLD = 3.0
#: Meehan's tau = 20 / m: a cell enters C_T only with at least 20 generated samples, so that its
#: Mann-Whitney Z is well approximated by a normal.
MIN_PER_CELL = 20
#: Upper bound on the default number of cells (Meehan's largest partition: 50 cells, MNIST).
MAX_CELLS = 50

VERDICT_COPYING = "copies training data"
VERDICT_NONE = "no evidence of copying"
VERDICT_UNDERFIT = "no evidence of copying (farther from training data than held-out data: underfits)"
VERDICT_INCONCLUSIVE = "inconclusive: too few generated samples per cell"
#: The held-out reference shows other organs than the training data: generated tissue then sits
#: closer to the training data than the reference does whether or not it copies (the shift).
VERDICT_SHIFTED = "inconclusive: held-out tissue of other organs than the training data"

# pairs_figure's layout, in pixels
FIGURE_GAP = 4
FIGURE_TEXT_H = 14
FIGURE_MIN_COL = 96  # room for the caption in the default font


def _as_matrix(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or len(a) == 0 or a.shape[1] == 0:
        raise ValueError(f"{name}: need a non-empty (N, D) array, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return a


def nearest(query: np.ndarray, reference: np.ndarray, *, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean nearest neighbour of each query row among the reference rows.

    Returns (distances, indices), float64 and int64 of length len(query). Blocks of
    chunk x 4*chunk squared distances (|q|^2 - 2 q.r + |r|^2, float64) bound the memory
    (32 MiB at the default) whatever the set sizes; the winner's distance is then recomputed
    directly, so an exact copy reports 0 rather than the expansion's rounding residue.
    """
    q = _as_matrix(query, "query")
    r = _as_matrix(reference, "reference")
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"dimension mismatch: query {q.shape[1]}, reference {r.shape[1]}")
    if chunk < 1:
        raise ValueError("chunk must be >= 1")
    ref_block = 4 * chunk
    r_sq = np.einsum("ij,ij->i", r, r)
    best = np.full(len(q), np.inf)
    index = np.zeros(len(q), dtype=np.int64)
    for i in range(0, len(q), chunk):
        qb = q[i:i + chunk]
        q_sq = np.einsum("ij,ij->i", qb, qb)[:, None]
        for j in range(0, len(r), ref_block):
            d2 = q_sq - 2.0 * (qb @ r[j:j + ref_block].T) + r_sq[None, j:j + ref_block]
            arg = d2.argmin(axis=1)
            val = d2[np.arange(len(qb)), arg]
            better = val < best[i:i + chunk]
            best[i:i + chunk][better] = val[better]
            index[i:i + chunk][better] = arg[better] + j
    distances = np.empty(len(q))
    for i in range(0, len(q), chunk):
        diff = q[i:i + chunk] - r[index[i:i + chunk]]
        distances[i:i + chunk] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return distances, index


def mann_whitney_z(generated: np.ndarray, held_out: np.ndarray) -> float:
    """Z score of the Mann-Whitney U of ``generated`` against ``held_out`` distances.

    As Meehan's ``Zu``: U counts pairs where the generated distance is the larger (ties 1/2),
    mean nm/2 with a 0.5 continuity correction towards it, for a one-sided 'less' test;
    the variance carries the usual tie correction (exact copies give many zero distances).
    Without ties this is Meehan's formula exactly. Z << 0: generated samples are closer.
    """
    m, n = len(generated), len(held_out)
    both = np.concatenate([generated, held_out])
    ranks = rankdata(both)
    u = float(ranks[:m].sum() - m * (m + 1) / 2.0)
    total = m + n
    _, ties = np.unique(both, return_counts=True)
    t = ties.astype(np.float64)
    tie_term = float((t**3 - t).sum()) / (total * (total - 1)) if total > 1 else 0.0
    var = m * n / 12.0 * ((total + 1) - tie_term)
    if var <= 0:
        return 0.0  # every distance equal: no evidence either way
    return (u - m * n / 2.0 + 0.5) / math.sqrt(var)


def default_cells(n_train: int, n_held_out: int, n_generated: int, min_per_cell: int = MIN_PER_CELL) -> int:
    """Number of k-means cells for small sets: about 2 x ``min_per_cell`` per cell.

    A cell counts only with ``min_per_cell`` generated samples (and its Z needs held-out ones),
    and k-means cells are uneven, so aim at twice that on average for the smaller of the
    held-out and generated sets; at least 1 cell (the global test), at most 50 (Meehan's
    largest partition), and never more than n_train / min_per_cell so every cell keeps
    training samples to measure distances to. Meehan used 5 cells for 1000 samples, 50 for
    MNIST, 3 for 50 ImageNet validation images per class; this rule gives 1 cell below 80
    samples and 7 for 300.
    """
    per = max(1, min_per_cell)
    return max(1, min(MAX_CELLS, n_train // per, n_held_out // (2 * per), n_generated // (2 * per)))


def _partition(train: np.ndarray, cells: int, seed: int) -> np.ndarray:
    """k-means++ centroids on the training set; centroids left without a training sample dropped."""
    k = min(cells, len(train))
    if k <= 1:
        return train.mean(axis=0, keepdims=True)
    with warnings.catch_warnings():  # an empty cluster is dropped below, not an error
        warnings.simplefilter("ignore")
        centroids, _ = kmeans2(train, k, iter=20, minit="++", missing="warn", rng=np.random.default_rng(seed))
    labels, _ = vq(train, centroids, check_finite=False)
    return centroids[np.unique(labels)]


def data_copying_test(train: np.ndarray, held_out: np.ndarray, generated: np.ndarray, *,
                      cells: int | None = None, min_per_cell: int = MIN_PER_CELL,
                      seed: int = 0) -> dict[str, Any]:
    """Meehan et al.'s C_T data-copying statistic (AISTATS 2020), following their reference code.

    Space is cut into cells by k-means on ``train`` (all three sets assigned to the nearest
    centroid). In each cell, every held-out and generated sample gets its distance to the nearest
    training sample of that cell, and the two sets of distances are compared by a Mann-Whitney U,
    Z-scored (:func:`mann_whitney_z`). Cells with fewer than ``min_per_cell`` generated samples
    (Meehan's tau = 20/m) or no held-out sample are left out; C_T is the mean of the remaining
    cells' Z weighted by each cell's share of the *held-out* samples P_n(pi), as Meehan's
    ``C_T`` does (not the generated share): the weights follow the real distribution, so a model
    cannot shift them by where it puts its samples.

    C_T < -3: generated samples sit closer to training samples than real unseen ones do, i.e.
    the model copies (memorises) training data. C_T > 3: they sit farther away than real data
    do, i.e. the model underfits (blurry or off-distribution samples), which is no privacy risk.
    |C_T| small: generated samples are as close to the training set as fresh real data.

    Returns (plain Python types): ``C_T`` (float, None if no cell qualifies), ``verdict``,
    ``copying`` (bool, None if inconclusive), ``cells`` (number of cells), ``Z`` (per cell,
    None where not computable), ``counts`` ({"train", "held_out", "generated"}: per-cell lists),
    ``weights`` (held-out share per cell), ``used`` (per-cell bools), ``min_per_cell``, ``seed``.
    """
    t = _as_matrix(train, "train")
    p = _as_matrix(held_out, "held_out")
    q = _as_matrix(generated, "generated")
    if not t.shape[1] == p.shape[1] == q.shape[1]:
        raise ValueError(f"dimension mismatch: train {t.shape[1]}, held_out {p.shape[1]}, "
                         f"generated {q.shape[1]}")
    if min_per_cell < 1:
        raise ValueError("min_per_cell must be >= 1")
    k = default_cells(len(t), len(p), len(q), min_per_cell) if cells is None else int(cells)
    if k < 1:
        raise ValueError("cells must be >= 1")
    centroids = _partition(t, k, seed)
    t_lab, p_lab, q_lab = (vq(x, centroids, check_finite=False)[0] for x in (t, p, q))
    k = len(centroids)
    z_cells: list[float | None] = []
    used: list[bool] = []
    counts: dict[str, list[int]] = {"train": [], "held_out": [], "generated": []}
    weights: list[float] = []
    for c in range(k):
        tc, pc, qc = t[t_lab == c], p[p_lab == c], q[q_lab == c]
        counts["train"].append(len(tc))
        counts["held_out"].append(len(pc))
        counts["generated"].append(len(qc))
        weights.append(len(pc) / len(p))
        if len(pc) == 0 or len(qc) == 0:
            z_cells.append(None)
            used.append(False)
            continue
        z_cells.append(float(mann_whitney_z(nearest(qc, tc)[0], nearest(pc, tc)[0])))
        used.append(len(qc) >= min_per_cell)
    total_weight = sum(w for w, u in zip(weights, used, strict=True) if u)
    if total_weight > 0:
        c_t: float | None = float(sum(w * z for w, z, u in zip(weights, z_cells, used, strict=True)
                                      if u and z is not None) / total_weight)
    else:
        c_t = None
    if c_t is None:
        verdict, copying = VERDICT_INCONCLUSIVE, None
    elif c_t < COPYING_THRESHOLD:
        verdict, copying = VERDICT_COPYING, True
    elif c_t > UNDERFIT_THRESHOLD:
        verdict, copying = VERDICT_UNDERFIT, False
    else:
        verdict, copying = VERDICT_NONE, False
    return {"C_T": c_t, "verdict": verdict, "copying": copying, "cells": int(k), "Z": z_cells,
            "counts": counts, "weights": [float(w) for w in weights], "used": used,
            "min_per_cell": int(min_per_cell), "seed": int(seed)}


def audit(train: np.ndarray, held_out: np.ndarray, generated: np.ndarray, *, seed: int = 0,
          cells: int | None = None, min_per_cell: int = MIN_PER_CELL) -> dict[str, Any]:
    """The data-copying test on one representation plus plain nearest-neighbour evidence.

    Adds to :func:`data_copying_test`'s keys: ``median_distance_generated`` and
    ``median_distance_held_out`` (distance to the nearest training sample, whole training set),
    ``median_ratio`` (generated / held-out; None if the held-out median is 0; well below 1 is
    suspicious), ``held_out_p5`` (5th percentile of held-out distances) and ``share_below_p5``
    (share of generated samples closer than it: about 0.05 without copying; individual copies
    show here even when too few to move C_T), ``nearest_train_index`` and
    ``nearest_train_distance`` (per generated sample, for :func:`pairs_figure`).
    All values are plain Python (JSON-serialisable).
    """
    t = _as_matrix(train, "train")
    p = _as_matrix(held_out, "held_out")
    q = _as_matrix(generated, "generated")
    result = data_copying_test(t, p, q, cells=cells, min_per_cell=min_per_cell, seed=seed)
    d_gen, idx_gen = nearest(q, t)
    d_held, _ = nearest(p, t)
    med_gen, med_held = float(np.median(d_gen)), float(np.median(d_held))
    p5 = float(np.percentile(d_held, 5))
    result.update({
        "median_distance_generated": med_gen,
        "median_distance_held_out": med_held,
        "median_ratio": med_gen / med_held if med_held > 0 else None,
        "held_out_p5": p5,
        "share_below_p5": float(np.mean(d_gen < p5)),
        "nearest_train_index": [int(i) for i in idx_gen],
        "nearest_train_distance": [float(d) for d in d_gen],
        "n_train": len(t), "n_held_out": len(p), "n_generated": len(q),
    })
    return result


def _box_matrix(src: int, dst: int) -> np.ndarray:
    """(dst, src) weights averaging each output pixel's footprint over the source (area resampling)."""
    edges = np.arange(dst + 1) * (src / dst)
    lo, hi = edges[:-1, None], edges[1:, None]
    pix = np.arange(src)[None, :]
    overlap = np.clip(np.minimum(hi, pix + 1) - np.maximum(lo, pix), 0.0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def pixel_vectors(images: np.ndarray, size: int = 32) -> np.ndarray:
    """uint8 (N, H, W, 3) images -> (N, size*size*3) float32 vectors in [0, 1], box-downsampled.

    A pixel-space audit beside the feature-space one: an encoder may be blind to exactly what
    a copy reproduces, while a near-copy is near in pixels too. Downsampling (exact area
    averaging for any H, W) keeps the distance about layout and colour, not pixel noise, and the
    vectors small (3072-d at 32 px).
    """
    a = np.asarray(images)
    if a.ndim != 4 or a.shape[-1] != 3 or len(a) == 0:
        raise ValueError(f"need (N, H, W, 3) images, got shape {a.shape}")
    if size < 1:
        raise ValueError("size must be >= 1")
    ry = _box_matrix(a.shape[1], size).astype(np.float32)
    rx = _box_matrix(a.shape[2], size).astype(np.float32)
    out = np.empty((len(a), size, size, 3), dtype=np.float32)
    for i in range(0, len(a), 64):
        block = a[i:i + 64].astype(np.float32) / 255.0
        out[i:i + 64] = np.einsum("iy,nyxc,jx->nijc", ry, block, rx, optimize=True)
    return out.reshape(len(a), -1)


def _rgb(image: np.ndarray) -> Image.Image:
    a = np.asarray(image)
    if a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    return Image.fromarray(a[..., :3] if a.ndim == 3 else a).convert("RGB")


def pairs_figure(generated_images: np.ndarray, training_images: np.ndarray, nearest_idx: Any,
                 distances: Any, path: str | Path, k: int = 8) -> Path:
    """PNG of the k generated images closest to the training set, each above its nearest training image.

    What a reader should look at first: if these are copies, the pair shows it. Columns are in
    increasing distance; under each pair its distance (and training index). Layout, white
    background: columns of width max(W, FIGURE_MIN_COL) separated and framed by FIGURE_GAP px;
    rows: gap, generated (H), gap, training (H), gap, a FIGURE_TEXT_H caption line, gap. Images are
    shown at the generated images' size. Returns the path written.
    """
    gen = np.asarray(generated_images)
    train = np.asarray(training_images)
    idx = np.asarray(nearest_idx, dtype=np.int64)
    dist = np.asarray(distances, dtype=np.float64)
    if len(gen) == 0 or len(idx) != len(gen) or len(dist) != len(gen):
        raise ValueError("need one nearest index and one distance per generated image")
    k = max(1, min(int(k), len(gen)))
    order = np.argsort(dist, kind="stable")[:k]
    h, w = gen.shape[1], gen.shape[2]
    col = max(w, FIGURE_MIN_COL)
    gap = FIGURE_GAP
    width = k * col + (k + 1) * gap
    height = 3 * gap + 2 * h + FIGURE_TEXT_H + gap
    fig = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(fig)
    font = ImageFont.load_default()
    for j, g in enumerate(order):
        x = gap + j * (col + gap) + (col - w) // 2
        fig.paste(_rgb(gen[g]), (x, gap))
        tr = _rgb(train[idx[g]])
        if tr.size != (w, h):
            tr = tr.resize((w, h), Image.Resampling.BOX)
        fig.paste(tr, (x, 2 * gap + h))
        caption = f"d={dist[g]:.3g} #{idx[g]}"
        left = gap + j * (col + gap) + max(0, (col - int(draw.textlength(caption, font=font))) // 2)
        draw.text((left, 3 * gap + 2 * h), caption, fill="black", font=font)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.save(out, format="PNG")
    return out
