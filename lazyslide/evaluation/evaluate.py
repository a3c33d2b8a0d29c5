"""``lazyslide evaluate``: the paper's Tables 1 and 3 for one generator, with their noise floor.

FID on level-0 images, pFID on random-scale crops, improved precision/recall (k = 3) per
magnification level and averaged. The generated images are the engine's (a model and method,
slide seeds) or another generator's (``--samples``: a slide file or a folder of images per
level, ``sources``). Two things make rows comparable at a glance: every FID and pFID carries a
bootstrap interval (``fid_interval``), and a "real vs real" row gives the same metrics between
two disjoint halves of the real images, the values a perfect generator would get at half the
count. The report folder gets ``report.md`` (tables laid out like the paper's), ``metrics.csv``,
``report.json`` (with the ``protocol`` that ``lazyslide compare`` checks), ``pr_by_level.png`` and
one ``samples_level{L}.png`` (real above generated) per level.
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import LazySlideError
from ..model import URCDM
from ..slide import Slide
from ..store import MemoryStore, TileStore
from ..wsi import SlideReader, SlideReadError, TissueRule
from .consistency import generated_consistency, real_consistency
from .features import FeatureExtractor, InceptionFeatures
from .fid import MIN_DRAWS, fid_interval
from .precision_recall import precision_recall
from .samples import block_tiles, generated_crops, level_patches, random_crops, real_crops, real_patches
from .seams import known_mask, seam_kid, seam_score
from .sources import FileSlide, folder_images

REAL_VS_REAL = "real vs real"


def evaluate(
    model: URCDM,
    real: Sequence[str | Path],
    out: str | Path,
    *,
    seeds: Sequence[int] = (0, 1, 2, 3),
    n: int = 32,
    pfid_n: int | None = None,
    block: int = 3,
    method: str = "urcdm",
    k: int = 3,
    extractor: FeatureExtractor | None = None,
    store: TileStore | MemoryStore | None = None,
    slide_mpp: float | None = None,
    seed: int = 0,
    progress: bool = True,
    samples: str | Path | None = None,
    name: str | None = None,
    samples_mpp: float | None = None,
    draws: int = MIN_DRAWS,
    pfid: bool = True,
) -> dict[str, Any]:
    """Compute the metrics and write the report folder; returns the report as a dict.

    ``n``: real patches per level (generated ones: ``block``^2 tiles per level and slide, tissue
    only); ``pfid_n``: crops for pFID (default ``n``). ``samples``: measure that slide file or
    folder instead of the engine (the model's geometry still sets levels, um/px and tile size;
    ``samples_mpp``: the um/px of a slide file that does not say, or of a one-level folder).
    ``draws``: bootstrap draws behind each interval. ``pfid=False``: make no generated crops
    (pFID n/a; the real crops are drawn all the same, so the protocol and the real vs real row
    do not change): for generators whose crops cost hours, such as outpainting, whose crops
    anywhere on the canvas need every tile before them in raster order.
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    if draws < MIN_DRAWS:
        raise LazySlideError(f"--draws must be at least {MIN_DRAWS}, got {draws}")
    out = Path(out)
    readers = []
    for path in real:
        try:
            readers.append(SlideReader(Path(path), slide_mpp))
        except SlideReadError as e:
            raise LazySlideError(f"real slide: {e}") from None
    if not readers:
        raise LazySlideError("give at least one real slide (--real)")
    if not seeds:
        raise LazySlideError("give at least one slide seed")
    g, t = model.geometry, model.geometry.tile
    # the generated side: the engine's slides, a slide file (read like them) or images per level
    folder: dict[int, np.ndarray] | None = None
    if samples is None:
        store = store if store is not None else MemoryStore()
        slides: list = [Slide(model, s, store, make_level0=False, method=method) for s in seeds]
        source = f"engine: {model.source}, method {method}, seeds {list(seeds)}"
        row = name or method
    elif Path(samples).is_dir():
        folder = folder_images(samples, g, mpp=samples_mpp)
        slides = []
        source = f"image folder {samples}"
        row = name or Path(samples).name
    else:
        slides = [FileSlide(samples, g, mpp=samples_mpp)]
        source = f"slide file {samples}"
        row = name or Path(samples).stem
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    extractor = extractor or InceptionFeatures()
    pfid_n = pfid_n or n

    samples_by_level: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    empty = np.zeros((0, t, t, 3), np.uint8)
    with tqdm(total=len(slides) * len(g.canvases) + (pfid_n if slides and pfid else 0), desc="generating",
              unit="item", disable=not progress) as bar:
        for lv in range(g.levels):
            if folder is None:
                fake = level_patches(slides, lv, block, progress=bar.update)
                fake_lv = np.stack(fake) if fake else empty
            else:
                fake_lv = folder.get(lv, empty)
            # level 0 shows whole sections: a small biopsy covers little of it
            rule = TissueRule(min_fraction=0.002 if lv == 0 else TissueRule.min_fraction)
            real_lv = real_patches(readers, g.level_mpp(lv), t, n, rng, rule=rule)
            samples_by_level[lv] = (real_lv, fake_lv)
        max_um = min(min(r.size) * r.mpp for r in readers)
        max_um = min(max_um, g.canvases[-1] * g.mpp)
        crops = random_crops(pfid_n, t * g.mpp, max_um, rng)
        real_c = real_crops(readers, crops, t)
        fake_c = generated_crops(slides, crops, t, progress=bar.update) if slides and pfid else empty
        consistency = {"generated": generated_consistency(slides, block) if slides else {},
                       "real": real_consistency(readers, g, n, block, rng)}
        seams = _seams(slides, samples_by_level, block, extractor, seed)

    feats: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
    with tqdm(total=2 * g.levels + 2, desc="features", unit="set", disable=not progress) as bar:
        for lv, (r, f) in samples_by_level.items():
            feats[lv] = (extractor(r), extractor(f) if len(f) else None)
            bar.update(2)
        pf = (extractor(real_c), extractor(fake_c) if len(fake_c) else None)
        bar.update(2)

    rows = {row: _metrics(feats, pf, g, k, draws, seed),
            REAL_VS_REAL: _metrics({lv: _halves(r) for lv, (r, _) in feats.items()}, _halves(pf[0]),
                                   g, k, draws, seed)}
    protocol = {
        "real": [{"name": Path(p).name, "bytes": Path(p).stat().st_size} for p in real],
        "real_features": _digest([feats[lv][0] for lv in sorted(feats)] + [pf[0]]),
        "n": n, "pfid_n": len(crops), "k": k, "draws": draws, "seed": seed,
        "extractor": getattr(extractor, "name", type(extractor).__name__),
        "tile": t, "level_mpp": [round(g.level_mpp(lv), 6) for lv in range(g.levels)],
    }
    report = {
        "name": row, "source": source,
        "model": model.source, "fingerprint": model.fingerprint, "method": method,
        "seeds": list(seeds) if samples is None else None, "real": [str(p) for p in real], "k": k,
        "extractor": protocol["extractor"],
        "summary": rows[row]["summary"], "levels": rows[row]["levels"],
        "real_vs_real": rows[REAL_VS_REAL],
        "consistency": {src: {str(lv): v for lv, v in by.items()} for src, by in consistency.items()},
        "seams": seams,
        "protocol": protocol, "pfid_measured": bool(pfid and len(fake_c)),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    _write(out, report, samples_by_level, (real_c, fake_c))
    return report


def _seams(slides: Sequence, samples_by_level: dict[int, tuple[np.ndarray, np.ndarray]], block: int,
           extractor: FeatureExtractor, seed: int) -> dict[str, dict[str, Any]]:
    """Per level with neighbours: the seam score and ``seam_kid`` of the engine's inpainted
    block tiles, the real patches of the level cut at the same positions (engine slides only:
    a slide file or folder has no known-pixel masks)."""
    out: dict[str, dict[str, Any]] = {}
    engine = [s for s in slides if isinstance(s, Slide)]
    for lv, (real_lv, _) in samples_by_level.items():
        if not engine or engine[0].geometry.grid(lv) < 2 or lv not in engine[0].levels:
            continue
        g = engine[0].geometry
        images, masks = [], []
        for slide in engine:
            for t in block_tiles(slide, lv, block):
                mask = known_mask(g, slide.plan, t)
                if mask.any():
                    images.append(slide.tile(*t))
                    masks.append(mask)
        v = seam_kid(extractor, images, masks, list(real_lv), 2 * g.overlap, seed=seed)
        v["seam_score"] = seam_score(images, masks)
        out[str(lv)] = v
    return out


def _halves(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint halves of a real set, as (real, "generated") for the noise floor."""
    h = len(features) // 2
    return features[:h], features[h:2 * h]


def _digest(arrays: list[np.ndarray]) -> str:
    """What identifies the real side: its features (the slides, counts, positions, extractor)."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(np.round(np.asarray(a, np.float32), 3)).tobytes())
    return h.hexdigest()[:16]


def _metrics(feats: dict[int, tuple[np.ndarray, np.ndarray | None]],
             pf: tuple[np.ndarray, np.ndarray | None], g, k: int, draws: int, seed: int) -> dict:
    """One row: per-level precision, recall and FID (with interval), and the summary."""
    levels: dict[str, dict[str, Any]] = {}
    for lv, (r, f) in feats.items():
        v: dict[str, Any] = {"mpp": g.level_mpp(lv), "n_real": len(r),
                             "n_generated": 0 if f is None else len(f)}
        if f is not None and len(f) > k and len(r) > k:
            v["precision"], v["recall"] = precision_recall(r, f, k)
        if f is not None and len(f) >= 2 and len(r) >= 2:
            v["fid"], *v["fid_ci"] = fid_interval(r, f, draws, seed)
        levels[str(lv)] = v
    pr = [v for v in levels.values() if "precision" in v]
    summary: dict[str, Any] = {
        "fid_level0": levels["0"].get("fid"), "fid_level0_ci": levels["0"].get("fid_ci"),
        "pfid": None, "pfid_ci": None,
        "precision": float(np.mean([v["precision"] for v in pr])) if pr else None,
        "recall": float(np.mean([v["recall"] for v in pr])) if pr else None,
        "pfid_n": 0 if pf[1] is None else len(pf[1]),
    }
    if pf[1] is not None and len(pf[1]) >= 2 and len(pf[0]) >= 2:
        summary["pfid"], *summary["pfid_ci"] = fid_interval(pf[0], pf[1], draws, seed)
    return {"summary": summary, "levels": levels}


def _fmt(v: Any, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def fmt_interval(value: float | None, ci: Sequence[float] | None, digits: int = 1) -> str:
    """"12.3 [10.1, 14.5]", or n/a."""
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}" + ("" if not ci else f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]")


def summary_row(name: str, s: dict[str, Any]) -> str:
    return (f"| {name} | {fmt_interval(s['fid_level0'], s.get('fid_level0_ci'))} | "
            f"{fmt_interval(s['pfid'], s.get('pfid_ci'))} | {_fmt(s['precision'])} | {_fmt(s['recall'])} |")


def markdown(report: dict[str, Any]) -> str:
    s, name, rr = report["summary"], report["name"], report["real_vs_real"]
    p = report["protocol"]
    seeds = f"slide seeds {report['seeds']}, " if report["seeds"] is not None else ""
    lines = [
        f"# Evaluation: {name}",
        "",
        f"Generated: {report['source']}. Protocol: model `{report['fingerprint']}` ({report['model']}), "
        f"{seeds}real slides: " + ", ".join(Path(q).name for q in report["real"])
        + f". Features: {report['extractor']}; k = {report['k']}; intervals: FID +- 1.96 sd of "
        f"{p['draws']} bootstrap draws. {report['seconds']} s.",
        "",
        "## Table 1: overall",
        "",
        "| Method | FID (level 0) | pFID | Improved precision | Improved recall |",
        "|---|---|---|---|---|",
        summary_row(name, s),
        summary_row(f"{REAL_VS_REAL} (n/2 vs n/2)", rr["summary"]),
        "",
        "## Table 3: per magnification level",
        "",
        "| Level | um/px | Method | n real | n generated | Improved precision | Improved recall | FID |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for lv, v in report["levels"].items():
        for row, w in ((name, v), (REAL_VS_REAL, rr["levels"][lv])):
            lines.append(f"| {lv} | {v['mpp']:.2f} | {row} | {w['n_real']} | {w['n_generated']} | "
                         f"{_fmt(w.get('precision'))} | {_fmt(w.get('recall'))} | "
                         f"{fmt_interval(w.get('fid'), w.get('fid_ci'))} |")
    lines += ["", f"pFID on {s['pfid_n']} crops. With few samples FID and pFID are biased upwards: "
              "compare rows with the same counts (`lazyslide compare` refuses others). The real vs "
              "real row compares two disjoint halves of the real images, at half the count: a "
              "generated row within its interval is as close to the real images as they are to "
              "themselves. n/a: the generator has no images at that level (outpainting has only "
              "the full-resolution canvas; an image folder has no crops; `--no-pfid` makes none) "
              "or too few for k.", ""]
    lines += ["## Cross-scale consistency and tile grid", "",
              *consistency_table([(name, report["consistency"]["generated"]),
                                  ("real slides", report["consistency"]["real"])])]
    lines += ["", "Each level-k tile area-downsampled to level k-1's scale against the parent pixels "
              "under it (tissue: HSV saturation > 0.12); hallucinated tissue: the child's tissue over "
              "parent glass. Grid score: mean |difference| across magnification-tile seams / the "
              "same one and two pixels away (1 = no visible grid). Real: the same region read at "
              "both levels' um/px, and real regions at the same seam positions.", ""]
    if report.get("seams"):
        lines += ["## Inpainting seams", "", *seam_table([(name, report["seams"])]), "",
                  "Seam score: mean |step| across the known/generated boundary inside inpainted "
                  "tiles / the same 4 px inside (1 = invisible; a blend can equalise it). KID x 1000 "
                  "between crops (twice the overlap wide) centred on that boundary and crops from "
                  "the tiles' generated interiors, with the 2.5-97.5 % range over random halves; "
                  "real: real patches of the level cut at the same positions, the value of a "
                  "generator without seams at this n. n: seam/interior crops.", ""]
    return "\n".join(lines)


def seam_table(rows: Sequence[tuple[str, dict[str, dict[str, Any]]]]) -> list[str]:
    """Markdown rows: per (name, {level: seams numbers}) and level, the real reference beside."""
    lines = ["| Method | level | seam score | seam vs interior KID x 1000 (generated) | n | "
             "same positions on real tissue | n |", "|---|---|---|---|---|---|---|"]
    for name, by_level in rows:
        for lv, v in by_level.items():
            gen, real = v["generated"], v["real"]
            cells = [_fmt(v["seam_score"])]
            for w in (gen, real):
                cells += [fmt_interval(w.get("kid"), w.get("kid_ci"), 2), f"{w['n_seam']}/{w['n_interior']}"]
            lines.append(f"| {name} | {lv} | " + " | ".join(cells) + " |")
    return lines


def consistency_table(rows: Sequence[tuple[str, dict[str, dict[str, Any]]]]) -> list[str]:
    """Markdown rows: per (name, {level: consistency numbers}) and level."""
    lines = ["| Method | level | pairs | tissue IoU | hallucinated tissue | Delta E 2000 on tissue | "
             "grid score (glass) | grid score (tissue) |", "|---|---|---|---|---|---|---|---|"]
    for name, by_level in rows:
        for lv, v in by_level.items():
            lines.append(f"| {name} | {lv} | {v['pairs']} | {_fmt(v['tissue_iou'])} | "
                         f"{_fmt(v['hallucinated_tissue'])} | {_fmt(v['delta_e_tissue'], 1)} | "
                         f"{_fmt(v['grid_glass'])} | {_fmt(v['grid_tissue'])} |")
    return lines


def _write(out: Path, report: dict[str, Any], samples: dict[int, tuple[np.ndarray, np.ndarray]],
           crops: tuple[np.ndarray, np.ndarray]) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "report.md").write_text(markdown(report))
    with open(out / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "level", "metric", "value", "ci_low", "ci_high", "n_real", "n_generated"])
        for name, row in ((report["name"], report), (REAL_VS_REAL, report["real_vs_real"])):
            for metric in ("fid_level0", "pfid", "precision", "recall"):
                ci = row["summary"].get(f"{metric}_ci") or ["", ""]
                w.writerow([name, "all", metric, row["summary"][metric], *ci, "", ""])
            for lv, v in row["levels"].items():
                for metric in ("precision", "recall", "fid"):
                    ci = v.get(f"{metric}_ci") or ["", ""]
                    w.writerow([name, lv, metric, v.get(metric), *ci, v["n_real"], v["n_generated"]])
    for lv, (real, fake) in samples.items():
        _grid([real[:8], fake[:8]], out / f"samples_level{lv}.png")
    _grid([crops[0][:8], crops[1][:8]], out / "samples_pfid.png")
    _plot(report, out / "pr_by_level.png")


def _grid(rows: list[np.ndarray], path: Path, pad: int = 4) -> None:
    """Rows of images (real first, generated below), white gaps."""
    t = next(r.shape[1] for r in rows if len(r))
    k = max(len(r) for r in rows)
    canvas = np.full((len(rows) * (t + pad), k * (t + pad), 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, im in enumerate(row):
            canvas[i * (t + pad):i * (t + pad) + t, j * (t + pad):j * (t + pad) + t] = im
    Image.fromarray(canvas).save(path)


def pr_bars(ax, labels: Sequence[str], rows: Sequence[dict[str, Any]], levels: Sequence[str]) -> None:
    """Improved precision (solid) and recall (light) per level, a colour per row."""
    width = 0.8 / max(1, len(rows))
    x = np.arange(len(levels))
    for i, (label, row) in enumerate(zip(labels, rows, strict=True)):
        prec = [row["levels"][lv].get("precision") or 0 for lv in levels]
        rec = [row["levels"][lv].get("recall") or 0 for lv in levels]
        ax.bar(x + i * width - 0.4, prec, width * 0.5, color=f"C{i}", label=label)
        ax.bar(x + i * width - 0.4 + width * 0.5, rec, width * 0.5, color=f"C{i}", alpha=0.45)
    ax.set_xticks(x, [f"level {lv}" for lv in levels])
    ax.set_ylim(0, 1)
    ax.set_title("precision (solid) / recall (light) per level")
    ax.legend(fontsize=7)


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.2), dpi=100)
    pr_bars(ax, [report["name"], REAL_VS_REAL], [report, report["real_vs_real"]], list(report["levels"]))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
