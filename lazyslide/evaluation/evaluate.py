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
from ..realdata import RealSpec
from ..slide import Slide
from ..store import MemoryStore, TileStore
from ..wsi import TissueRule
from .consistency import generated_consistency, real_consistency, tissue_mask
from .features import FeatureExtractor, InceptionFeatures
from .fid import MIN_DRAWS, fid_interval
from .kid import kid
from .precision_recall import precision_recall
from .references import Reference, resolve
from .samples import Crop, block_tiles, generated_crops, level_patches, random_crops, real_crops, real_patches
from .seams import known_mask, seam_kid, seam_score
from .sources import FileSlide, folder_images

REAL_VS_REAL = "real vs real"


def evaluate(
    model: URCDM,
    real: Sequence[str | Path | RealSpec] | None,
    out: str | Path,
    *,
    shift: Sequence[str | Path | RealSpec] = (),
    training: Sequence[str | Path | RealSpec] | None = None,
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
    audit: bool = True,
) -> dict[str, Any]:
    """Compute the metrics and write the report folder; returns the report as a dict.

    ``real``: the real references (slide files, or packaged sources: their held-out region),
    None for the held-out protocol (``references.resolve``: every packaged held-out region the
    model did not learn from, its training organ and other organs as separate groups);
    ``shift``: a second, domain-shift group beside ``real``. ``training``: what the memorisation
    audit compares with (default: the model's ``training_data``). ``n``: real patches per level
    and group (generated ones: ``block``^2 tiles per level and slide, tissue only); ``pfid_n``:
    crops for pFID (default ``n``). ``samples``: measure that slide file or folder instead of the
    engine (the model's geometry still sets levels, um/px and tile size; ``samples_mpp``: the
    um/px of a slide file that does not say, or of a one-level folder). ``draws``: bootstrap
    draws behind each FID interval. ``pfid=False``: make no generated pFID crops (the real crops
    are drawn all the same, so the protocol does not change): for generators whose crops cost
    hours, such as outpainting. ``audit=False``: no memorisation audit.
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    if draws < MIN_DRAWS:
        raise LazySlideError(f"--draws must be at least {MIN_DRAWS}, got {draws}")
    if not seeds:
        raise LazySlideError("give at least one slide seed")
    training_data = model.config.get("training_data")
    protocol_refs = resolve(training_data, real, shift, training, slide_mpp)
    if not protocol_refs.groups:
        raise LazySlideError("no real references: every held-out region is one the model learnt from; "
                             "give --real")
    groups = [grp.open() for grp in protocol_refs.groups]
    train_refs = Reference("training", protocol_refs.training).open() if audit else None
    out = Path(out)
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
    # one random stream per draw (what, group, level), so that the reference patches do not
    # depend on how many generated images a report has: compare pairs two reports' KIDs over
    # the same real patches, and a run with fewer generated patches must draw the same ones
    def rng(*key: int) -> np.random.Generator:
        return np.random.default_rng([seed, *key])
    extractor = extractor or InceptionFeatures()
    pfid_n = pfid_n or n

    fakes: dict[int, np.ndarray] = {}
    # per group and level: (reference, floor): the floor is more real patches, as many as the
    # generated row has, so the real vs real row is read at the generated row's n
    reals: list[dict[int, tuple[np.ndarray, np.ndarray] | None]] = [{} for _ in groups]
    train_px: dict[int, np.ndarray] = {}
    empty = np.zeros((0, t, t, 3), np.uint8)
    with tqdm(total=len(slides) * len(g.canvases) + (pfid_n if slides and pfid else 0), desc="generating",
              unit="item", disable=not progress) as bar:
        for lv in range(g.levels):
            if folder is None:
                fake = level_patches(slides, lv, block, progress=bar.update)
                fakes[lv] = np.stack(fake) if fake else empty
            else:
                fakes[lv] = folder.get(lv, empty)
            # level 0 shows whole sections: a small biopsy covers little of it
            rule = TissueRule(min_fraction=0.002 if lv == 0 else TissueRule.min_fraction)
            for gi, grp in enumerate(groups):
                readers = grp.for_level(g, lv)
                if not readers:
                    reals[gi][lv] = None
                    continue
                more = len(fakes[lv]) or n  # the floor's "generated" side, at the generated row's n
                pool = real_patches(readers, g.level_mpp(lv), t, n + more, rng(0, gi, lv), rule=rule)
                reals[gi][lv] = (pool[:n], pool[n:])
            if train_refs is not None and train_refs.specs:
                readers = train_refs.for_level(g, lv)
                if readers:
                    count = max(2 * n, len(fakes[lv]))
                    train_px[lv] = real_patches(readers, g.level_mpp(lv), t, count, rng(1, lv), rule=rule)
        crops, floor_crops, crop_readers = _pfid_crops(groups, g, pfid_n, rng(2))
        real_c = [(real_crops(rd, crops, t), real_crops(rd, floor_crops, t)) if rd else None
                  for rd in crop_readers]
        make = slides and pfid and crops
        fake_c = generated_crops(slides, crops, t, progress=bar.update) if make else empty
        primary = groups[0]
        consistency = {"generated": generated_consistency(slides, block) if slides else {},
                       "real": real_consistency({lv: primary.for_level(g, lv) for lv in range(g.levels)},
                                                g, n, block, rng(3))}
        _colour(consistency, fakes, reals[0])
        seams = _seams(slides, {lv: (v[0] if v else empty, None) for lv, v in reals[0].items()}, block,
                       extractor, seed)

    with tqdm(total=g.levels * (1 + 2 * len(groups)) + 1 + 2 * len(groups), desc="features", unit="set",
              disable=not progress) as bar:
        def feats_of(images: np.ndarray | None) -> np.ndarray | None:
            bar.update()
            return extractor(images) if images is not None and len(images) else None

        fake_f = {lv: feats_of(f) for lv, f in fakes.items()}
        real_f = [{lv: None if v is None else (feats_of(v[0]), feats_of(v[1])) for lv, v in by.items()}
                  for by in reals]
        fake_cf = feats_of(fake_c)
        real_cf = [None if c is None else (feats_of(c[0]), feats_of(c[1])) for c in real_c]
        train_f = {lv: extractor(px) for lv, px in train_px.items()}

    rows = []
    for gi, grp in enumerate(groups):
        gen = _metrics({lv: (v[0], fake_f[lv]) if v else None for lv, v in real_f[gi].items()},
                       None if real_cf[gi] is None else (real_cf[gi][0], fake_cf), g, k, draws, seed)
        floor = _metrics(real_f[gi], real_cf[gi], g, k, draws, seed)
        rows.append({"label": grp.label, **gen, REAL_VS_REAL: floor})
    memorisation = _audit(out, fakes, fake_f, train_px, train_f, reals[0], real_f[0], seed,
                          shifted=groups[0].shifted) if audit else None
    protocol = {
        "real": [grp.to_dict(training_data) for grp in groups],
        "left_out": protocol_refs.left_out,
        "training": [s.to_dict() for s in protocol_refs.training],
        "windows_um": {str(lv): round(t * g.level_mpp(lv - 1), 1) for lv in range(1, g.levels)},
        # the references only: the floor's patches follow the generated row's n
        "real_features": _digest([v[0] for by in real_f for v in by.values() if v and v[0] is not None]),
        "real_crop_features": _digest([c[0] for c in real_cf if c and c[0] is not None]),
        "n": n, "pfid_n": len(crops), "k": k, "draws": draws, "seed": seed,
        "extractor": getattr(extractor, "name", type(extractor).__name__),
        "extractor_digest": getattr(extractor, "digest", None),
        "tile": t, "level_mpp": [round(g.level_mpp(lv), 6) for lv in range(g.levels)],
    }
    report = {
        "name": row, "source": source,
        "model": model.source, "fingerprint": model.fingerprint, "method": method,
        "seeds": list(seeds) if samples is None else None,
        "real": [s.label for grp in groups for s in grp.specs], "k": k,
        "extractor": protocol["extractor"],
        # the primary group's rows at the top level: what one-line readers (compare, benches) use
        "summary": rows[0]["summary"], "levels": rows[0]["levels"], "real_vs_real": rows[0][REAL_VS_REAL],
        "groups": rows,
        "consistency": {src: {str(lv): v for lv, v in by.items()} for src, by in consistency.items()},
        "seams": seams, "memorisation": memorisation,
        "protocol": protocol, "pfid_measured": bool(pfid and len(fake_c)),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    _write(out, report, {lv: (reals[0][lv][0] if reals[0][lv] else empty, fakes[lv]) for lv in fakes},
           (real_c[0][0] if real_c[0] else empty, fake_c))
    np.savez_compressed(out / "features.npz", **_feature_arrays(fake_f, real_f, fake_cf, real_cf))
    return report


def _max_um(readers: Sequence, g) -> float:
    return min(min(min(r.size) * r.mpp for r in readers), g.canvases[-1] * g.mpp)


def _pfid_crops(groups: Sequence[Reference], g, n: int,
                rng: np.random.Generator) -> tuple[list[Crop], list[Crop], list]:
    """pFID crops: sizes from one deepest-level tile up to the smallest extent among the readers
    that feed the deepest level and hold at least two tiles across (all groups: one crop set,
    so the generated crops are made once); a second set for the floor's real side; per group,
    those readers (or None)."""
    lv = g.levels - 1
    per_group = []
    for grp in groups:
        per_group.append([r for r in grp.for_level(g, lv)
                          if min(r.size) * r.mpp >= 2 * g.tile * g.level_mpp(lv)])
    usable = [r for rd in per_group for r in rd]
    if not usable:
        return [], [], [None] * len(groups)
    crops = random_crops(n, g.tile * g.mpp, _max_um(usable, g), rng)
    return crops, random_crops(n, g.tile * g.mpp, _max_um(usable, g), rng), [rd or None for rd in per_group]


def _colour(consistency: dict, fakes: dict[int, np.ndarray],
            reals: dict[int, tuple[np.ndarray, np.ndarray] | None]) -> None:
    """Add to each level's consistency row the Lab colour difference between its tissue and
    held-out real tissue at the same level (mean Lab of tissue pixels, CIE76)."""
    for src, images in (("generated", fakes), ("real", {lv: v[1] if v else None for lv, v in reals.items()})):
        for lv, by in consistency[src].items():
            ref, imgs = reals.get(lv), images.get(lv)
            value = None
            if ref is not None and imgs is not None and len(imgs):
                a, b = mean_tissue_lab(imgs), mean_tissue_lab(ref[0])
                value = None if a is None or b is None else float(np.linalg.norm(a - b))
            by["lab_vs_real"] = value


def _seams(slides: Sequence, samples_by_level: dict[int, tuple[np.ndarray, Any]], block: int,
           extractor: FeatureExtractor, seed: int) -> dict[str, dict[str, Any]]:
    """Per level with neighbours: the seam score and ``seam_kid`` of the engine's inpainted
    block tiles, the real patches of the level cut at the same positions (engine slides only:
    a slide file or folder has no known-pixel masks); the real patches' seam score at the same
    positions beside the generated one."""
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
        if len(real_lv) and masks:
            cycled = [masks[i % len(masks)] for i in range(len(real_lv))]
            v["real"]["seam_score"] = seam_score(list(real_lv), cycled)
        out[str(lv)] = v
    return out


def _digest(arrays: list[np.ndarray]) -> str:
    """What identifies the real side: its features (the slides, counts, positions, extractor)."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(np.round(np.asarray(a, np.float32), 3)).tobytes())
    return h.hexdigest()[:16]


def _feature_arrays(fake_f, real_f, fake_cf, real_cf) -> dict[str, np.ndarray]:
    """features.npz: what ``compare`` needs for paired differences between reports."""
    out = {}
    for lv, f in fake_f.items():
        if f is not None:
            out[f"generated_level{lv}"] = f
    if fake_cf is not None:
        out["generated_pfid"] = fake_cf
    for gi, by in enumerate(real_f):
        for lv, v in by.items():
            if v is not None and v[0] is not None:
                out[f"real{gi}_level{lv}"] = v[0]
        if real_cf[gi] is not None and real_cf[gi][0] is not None:
            out[f"real{gi}_pfid"] = real_cf[gi][0]
    return out


def _pair_metrics(r: np.ndarray, f: np.ndarray | None, k: int, draws: int, seed: int) -> dict[str, Any]:
    v: dict[str, Any] = {"n_real": len(r), "n_generated": 0 if f is None else len(f)}
    if f is None:
        return v
    if len(f) > k and len(r) > k:
        v["precision"], v["recall"] = precision_recall(r, f, k)
    if len(f) >= 2 and len(r) >= 2:
        v["fid"], *v["fid_ci"] = fid_interval(r, f, draws, seed)
    if len(f) >= 4 and len(r) >= 4:
        v["kid"], *v["kid_ci"] = kid(r, f, seed=seed)
    return v


def _metrics(feats: dict[int, tuple[np.ndarray, np.ndarray | None] | None],
             pf: tuple[np.ndarray, np.ndarray | None] | None, g, k: int, draws: int, seed: int) -> dict:
    """One row: per-level precision, recall, FID and KID (with intervals), and the summary.
    A level without real references (None) is n/a."""
    levels: dict[str, dict[str, Any]] = {}
    for lv, pair in feats.items():
        v = {"mpp": g.level_mpp(lv)}
        if pair is not None:
            v.update(_pair_metrics(pair[0], pair[1], k, draws, seed))
        else:
            v.update(n_real=0, n_generated=0)
        levels[str(lv)] = v
    pr = [v for v in levels.values() if "precision" in v]
    summary: dict[str, Any] = {
        "fid_level0": levels["0"].get("fid"), "fid_level0_ci": levels["0"].get("fid_ci"),
        "kid_level0": levels["0"].get("kid"), "kid_level0_ci": levels["0"].get("kid_ci"),
        "pfid": None, "pfid_ci": None, "pkid": None, "pkid_ci": None,
        "precision": float(np.mean([v["precision"] for v in pr])) if pr else None,
        "recall": float(np.mean([v["recall"] for v in pr])) if pr else None,
        "pfid_n": 0 if pf is None or pf[1] is None else len(pf[1]),
    }
    if pf is not None and pf[1] is not None:
        c = _pair_metrics(pf[0], pf[1], k, draws, seed)
        summary["pfid"], summary["pfid_ci"] = c.get("fid"), c.get("fid_ci")
        summary["pkid"], summary["pkid_ci"] = c.get("kid"), c.get("kid_ci")
    return {"summary": summary, "levels": levels}


def mean_tissue_lab(images: np.ndarray) -> np.ndarray | None:
    """Mean CIE Lab of the tissue pixels (``consistency.tissue_mask``) of a set of images."""
    from skimage.color import rgb2lab

    px = [im[tissue_mask(im)] for im in images]
    px = np.concatenate(px) if px else np.zeros((0, 3), np.uint8)
    if len(px) < 16:
        return None
    return rgb2lab(px[None].astype(np.float64) / 255.0)[0].mean(0)


def _audit(out: Path, fakes: dict[int, np.ndarray], fake_f: dict[int, np.ndarray | None],
           train_px: dict[int, np.ndarray], train_f: dict[int, np.ndarray],
           reals: dict[int, tuple[np.ndarray, np.ndarray] | None],
           real_f: dict[int, tuple[np.ndarray, np.ndarray] | None], seed: int,
           shifted: bool = False) -> dict[str, Any]:
    """Per level: the data-copying test (``memorisation``) of the generated patches against the
    training patches, with held-out real patches as the reference, in feature space and in
    pixels; and a figure of the generated patches closest to a training patch. ``shifted``: the
    reference shows other organs than the training data, so no verdict (C_T is still given)."""
    from .memorisation import VERDICT_SHIFTED, audit, pairs_figure, pixel_vectors

    result: dict[str, Any] = {}
    for lv, gen in fakes.items():
        held = reals.get(lv)
        if lv not in train_px or held is None or fake_f.get(lv) is None or len(gen) < 4:
            continue
        held_f = np.concatenate([f for f in real_f[lv] if f is not None])
        held_px = np.concatenate(held)
        v = {"n_training": len(train_px[lv]), "n_held_out": len(held_px), "n_generated": len(gen),
             "features": audit(train_f[lv], held_f, fake_f[lv], seed=seed),
             "pixels": audit(pixel_vectors(train_px[lv]), pixel_vectors(held_px), pixel_vectors(gen),
                             seed=seed)}
        if shifted:
            for space in ("features", "pixels"):
                v[space].update(verdict=VERDICT_SHIFTED, copying=None)
        near = v["features"]
        pairs_figure(gen, train_px[lv], near["nearest_train_index"], near["nearest_train_distance"],
                     out / f"memorisation_level{lv}.png")
        result[str(lv)] = v
    return result


def _fmt(v: Any, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def fmt_interval(value: float | None, ci: Sequence[float] | None, digits: int = 1) -> str:
    """"12.3 [10.1, 14.5]", or n/a."""
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}" + ("" if not ci else f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]")


def summary_row(name: str, s: dict[str, Any]) -> str:
    return (f"| {name} | {fmt_interval(s['fid_level0'], s.get('fid_level0_ci'))} | "
            f"{fmt_interval(s.get('kid_level0'), s.get('kid_level0_ci'), 2)} | "
            f"{fmt_interval(s['pfid'], s.get('pfid_ci'))} | "
            f"{fmt_interval(s.get('pkid'), s.get('pkid_ci'), 2)} | "
            f"{_fmt(s['precision'])} | {_fmt(s['recall'])} |")


SUMMARY_HEADER = ["| Method | FID (level 0) | KID x 1000 (level 0) | pFID | pKID x 1000 | "
                  "Improved precision | Improved recall |", "|---|---|---|---|---|---|---|"]


def _sources(group: dict[str, Any]) -> str:
    parts = []
    for s in group["sources"]:
        label = f"{s['source']}:{s['region']}" if "source" in s else s["file"]
        if "source" in s:
            label += f" ({s['organ']}, {s['mpp']:g} um/px)"
        if s.get("trained_on"):
            label += " **(the model learnt from it)**"
        parts.append(label)
    return ", ".join(parts)


def markdown(report: dict[str, Any]) -> str:
    name, p = report["name"], report["protocol"]
    seeds = f"slide seeds {report['seeds']}, " if report["seeds"] is not None else ""
    digest = f" `{p['extractor_digest']}`" if p.get("extractor_digest") else ""
    lines = [
        f"# Evaluation: {name}",
        "",
        f"Generated: {report['source']}. Model `{report['fingerprint']}` ({report['model']}), {seeds}"
        f"features: {report['extractor']}{digest}; k = {report['k']}; intervals: FID +- 1.96 sd of "
        f"{p['draws']} bootstrap draws, KID 2.5-97.5 % over 100 random halves. {report['seconds']} s.",
        "",
        "## Real references (the held-out protocol)",
        "",
    ]
    for grp in p["real"]:
        lines.append(f"- **{grp['label']}**: {_sources(grp)}")
    if p.get("left_out"):
        lines.append("- left out (training pixels): " + "; ".join(p["left_out"]))
    if p.get("training"):
        lines.append("- memorisation audit against: " + ", ".join(
            f"{s['source']}:{s['region']}" if "source" in s else s["file"] for s in p["training"]))
    margins = [(s["source"], s["margin_um"]) for grp in p["real"] for s in grp["sources"]
               if s.get("margin_um") is not None]
    widest = max(p.get("windows_um", {}).values(), default=None)
    if margins and widest:
        narrow = [f"{n} ({m:.0f} um)" for n, m in margins if m < widest]
        if narrow:
            lines.append(f"- margins narrower than this model's widest conditioning window "
                         f"({widest:.0f} um): " + ", ".join(narrow) + ". Held-out pixels never enter "
                         "training (prepare masks them); a training window can still show tissue that "
                         "close to them.")
    lines += ["", "KID is the number to read at these counts: unbiased, so rows at different n and a "
              "generator with too little spread are not favoured (FID is biased upwards at small n, "
              "by an amount that depends on each set's spread). The real vs real row is the floor: "
              "more held-out real patches against the same references, at the generated row's n.", ""]
    for grp in report["groups"]:
        label, rr = grp["label"], grp[REAL_VS_REAL]
        lines += [f"## Against {label}", "", "### Table 1: overall", "", *SUMMARY_HEADER,
                  summary_row(name, grp["summary"]), summary_row(REAL_VS_REAL, rr["summary"]), "",
                  "### Table 3: per magnification level", "",
                  "| Level | um/px | Method | n real | n generated | Improved precision | Improved recall | "
                  "FID | KID x 1000 |", "|---|---|---|---|---|---|---|---|---|"]
        for lv, v in grp["levels"].items():
            for row, w in ((name, v), (REAL_VS_REAL, rr["levels"][lv])):
                lines.append(f"| {lv} | {v['mpp']:.2f} | {row} | {w['n_real']} | {w['n_generated']} | "
                             f"{_fmt(w.get('precision'))} | {_fmt(w.get('recall'))} | "
                             f"{fmt_interval(w.get('fid'), w.get('fid_ci'))} | "
                             f"{fmt_interval(w.get('kid'), w.get('kid_ci'), 2)} |")
        lines.append("")
    lines += [f"pFID on {p['pfid_n']} crops (made: {report['summary']['pfid_n']}). n/a: no real "
              "source of the group is fine enough for the level (or large enough to hold half a tile "
              "at its scale), or the generator "
              "has no images there (outpainting has only the full-resolution canvas; an image folder "
              "has no crops; `--no-pfid` makes none), or too few for k.", ""]
    if report.get("memorisation"):
        lines += ["## Memorisation audit", "", *memorisation_table([(name, report["memorisation"])]), "",
                  "Data-copying test (Meehan et al. 2020): C_T compares each generated patch's distance "
                  "to its nearest training patch with the same distance for held-out real patches "
                  "(Mann-Whitney Z per k-means cell of the training set). C_T well below 0 (< -3): "
                  "generated patches sit closer to the training data than unseen real tissue does, "
                  "i.e. copying. Distance ratio: median distance of generated / held-out patches to "
                  "their nearest training patch. Figures: `memorisation_level{L}.png`, the closest "
                  "generated patches above their nearest training patch.", ""]
        groups = report["protocol"].get("real") or [{}]
        if groups[0].get("shifted"):
            lines += [f"No verdict: the held-out reference ({groups[0]['label']}) is not of the "
                      "training data's organs, so generated tissue sits closer to the training data "
                      "than the reference does whether or not it copies. A model that learnt every "
                      "region of its organ leaves no held-out tissue of that organ to audit against.",
                      ""]
    lines += ["## Cross-scale consistency and tile grid", "",
              *consistency_table([(name, report["consistency"]["generated"]),
                                  ("real (held-out)", report["consistency"]["real"])])]
    lines += ["", "Each level-k tile area-downsampled to level k-1's scale against the parent pixels "
              "under it (tissue: HSV saturation > 0.12); hallucinated tissue: the child's tissue over "
              "parent glass; Delta E 2000: per pixel where both show tissue; Lab vs parent: distance "
              "between the mean Lab colours of the child's and the parent's tissue (a level too dark "
              "shows here, not in IoU); Lab vs real: the same between the level's tissue and held-out "
              "real tissue at that level. Grid score: mean |difference| across magnification-tile "
              "seams / the same one and two pixels away (1 = no visible grid). The real row: the same "
              "region read at both levels' um/px, and real regions at the same seam positions: read "
              "every generated number against it.", ""]
    if report.get("seams"):
        lines += ["## Inpainting seams", "", *seam_table([(name, report["seams"])]), "",
                  "Seam score: mean |step| across the known/generated boundary inside inpainted "
                  "tiles / the same 4 px inside (1 = invisible; a blend can equalise it), beside the "
                  "same score on real patches at the same positions. KID x 1000 "
                  "between crops (twice the overlap wide) centred on that boundary and crops from "
                  "the tiles' generated interiors, with the 2.5-97.5 % range over random halves; "
                  "real: real patches of the level cut at the same positions, the value of a "
                  "generator without seams at this n. n: seam/interior crops.", ""]
    return "\n".join(lines)


def memorisation_table(rows: Sequence[tuple[str, dict[str, dict[str, Any]]]]) -> list[str]:
    """Markdown rows: per (name, {level: audit}) and level, features and pixels."""
    lines = ["| Method | level | n train / held-out / generated | C_T (features) | distance ratio "
             "(features) | C_T (pixels) | distance ratio (pixels) | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for name, by_level in rows:
        for lv, v in (by_level or {}).items():
            f, px = v["features"], v["pixels"]
            verdicts = {f["verdict"], px["verdict"]}
            lines.append(f"| {name} | {lv} | {v['n_training']} / {v['n_held_out']} / {v['n_generated']} | "
                         f"{_fmt(f.get('C_T'))} | {_fmt(f.get('median_ratio'))} | {_fmt(px.get('C_T'))} | "
                         f"{_fmt(px.get('median_ratio'))} | {' / '.join(sorted(verdicts))} |")
    return lines


def seam_table(rows: Sequence[tuple[str, dict[str, dict[str, Any]]]]) -> list[str]:
    """Markdown rows: per (name, {level: seams numbers}) and level, the real reference beside."""
    lines = ["| Method | level | seam score | real, same positions | seam vs interior KID x 1000 "
             "(generated) | n | same positions on real tissue | n |", "|---|---|---|---|---|---|---|---|"]
    for name, by_level in rows:
        for lv, v in by_level.items():
            gen, real = v["generated"], v["real"]
            cells = [_fmt(v["seam_score"]), _fmt(real.get("seam_score"))]
            for w in (gen, real):
                cells += [fmt_interval(w.get("kid"), w.get("kid_ci"), 2), f"{w['n_seam']}/{w['n_interior']}"]
            lines.append(f"| {name} | {lv} | " + " | ".join(cells) + " |")
    return lines


def consistency_table(rows: Sequence[tuple[str, dict[str, dict[str, Any]]]]) -> list[str]:
    """Markdown rows: per (name, {level: consistency numbers}) and level."""
    lines = ["| Method | level | pairs | tissue IoU | hallucinated tissue | Delta E 2000 on tissue | "
             "Lab vs parent | Lab vs real | grid score (glass) | grid score (tissue) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, by_level in rows:
        for lv, v in by_level.items():
            lines.append(f"| {name} | {lv} | {v['pairs']} | {_fmt(v['tissue_iou'])} | "
                         f"{_fmt(v['hallucinated_tissue'])} | {_fmt(v['delta_e_tissue'], 1)} | "
                         f"{_fmt(v.get('lab_vs_parent'), 1)} | {_fmt(v.get('lab_vs_real'), 1)} | "
                         f"{_fmt(v['grid_glass'])} | {_fmt(v['grid_tissue'])} |")
    return lines


def _write(out: Path, report: dict[str, Any], samples: dict[int, tuple[np.ndarray, np.ndarray]],
           crops: tuple[np.ndarray, np.ndarray]) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "report.md").write_text(markdown(report))
    with open(out / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["reference", "method", "level", "metric", "value", "ci_low", "ci_high", "n_real",
                    "n_generated"])
        for grp in report["groups"]:
            for name, row in ((report["name"], grp), (REAL_VS_REAL, grp[REAL_VS_REAL])):
                for metric in ("fid_level0", "kid_level0", "pfid", "pkid", "precision", "recall"):
                    ci = row["summary"].get(f"{metric}_ci") or ["", ""]
                    w.writerow([grp["label"], name, "all", metric, row["summary"][metric], *ci, "", ""])
                for lv, v in row["levels"].items():
                    for metric in ("precision", "recall", "fid", "kid"):
                        ci = v.get(f"{metric}_ci") or ["", ""]
                        w.writerow([grp["label"], name, lv, metric, v.get(metric), *ci, v["n_real"],
                                    v["n_generated"]])
    for lv, (real, fake) in samples.items():
        _grid([real[:8], fake[:8]], out / f"samples_level{lv}.png")
    _grid([crops[0][:8], crops[1][:8]], out / "samples_pfid.png")
    _plot(report, out / "pr_by_level.png")


def _grid(rows: list[np.ndarray], path: Path, pad: int = 4) -> None:
    """Rows of images (real first, generated below), white gaps; no file when all are empty
    (a level with neither real references nor generated images)."""
    if not any(len(r) for r in rows):
        return
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
