"""Whole-slide images -> training pairs, cut with exactly the sampler's geometry.

For each level L the slide is read at the level's micrometres per pixel (``Geometry.level_mpp``)
in ``tile`` x ``tile`` targets; for L >= 1 each target comes with its conditioning window:
``tile`` x ``tile`` pixels at level L-1's mpp, centred on the target's centre (what
``Geometry.parent_window`` gives the sampler). Pixels beyond the slide are glass: the slide's
own glass colour and noise at that mpp (``wsi.GlassStats``), so that the slide's edge is not a
visible rectangle the model would learn; a slide without glass to measure keeps the flat
``BACKGROUND_FILL``. Regions are read one at a time through tiatoolbox's ``WSIReader`` (SVS,
NDPI, generic and OME TIFF, ...), never whole slides, so memory stays bounded.

Which targets are kept: level 0, those with at least ``min_fraction`` tissue; levels >= 1, those
too plus every target the sampler would diffuse, i.e. whose parent window shows tissue in or
near the target's footprint (``background.has_tissue``, with the tissue rule's thresholds).
Those are the mostly-glass targets across tissue borders: without them a level >= 1 unet only
ever sees tissue follow its window and learns to ignore the glass in it.

Dataset layout (``FORMAT``)::

    DATASET/manifest.json                  what is below, per slide and per level
    DATASET/level{L}/{slide:04d}-{k:03d}.targets.npy   (N, tile, tile, 3) uint8
    DATASET/level{L}/{slide:04d}-{k:03d}.windows.npy   (N, tile, tile, 3) uint8, L >= 1

Each shard's manifest entry lists, per pair, the target's and the window's top-left corner in
the slide's baseline pixels. The manifest is rewritten (atomically) after every slide, so an
interrupted run keeps every finished slide and a rerun carries on with the others.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..background import BackgroundRule, has_tissue
from ..conditioning import centred_footprint
from ..errors import LazySlideError
from ..geometry import Geometry
from ..realdata import RealSpec, parse_spec
from ..wsi import (
    GlassStats,
    OtsuMask,
    PenMask,
    PenRule,
    SlideReader,
    SlideReadError,
    TissueRule,
    inside_slide,
    measure_glass,
)
from .fragments import DEFAULT_GLASS, FragmentMask

FORMAT = "lazyslide-dataset/1"
#: How targets are kept and the slide's surroundings filled (see the module docstring); part
#: of the manifest, so a dataset is only resumed with the same rule.
KEEP_RULE = "tissue-or-near-tissue/glass-fill"


class DatasetError(LazySlideError):
    """A dataset that cannot be written or used as asked."""


def axis_origins(extent: float, tile: int, stride: int) -> list[int]:
    """Target origins along one axis of a slide ``extent`` level pixels long.

    Targets step by ``stride`` from one end to the other. A slide narrower than a tile (a small
    section at a low magnification) is slid across inside the tile instead, with glass around it.
    """
    lo, hi = sorted((0, math.floor(extent - tile)))
    out = list(range(lo, hi + 1, stride))
    if out[-1] != hi:
        out.append(hi)
    return out


def window_origin(geometry: Geometry, level: int, x: float, y: float) -> tuple[float, float]:
    """Top-left of the conditioning window (parent-level pixels) of a target at (x, y), level px.

    The same centring as ``Geometry.parent_window``, for a target anywhere (not just on the grid).
    """
    s = float(geometry.scale(level))
    half = geometry.tile / 2
    return (x + half) / s - half, (y + half) / s - half


def read_filled(reader: SlideReader, origin: tuple[int, int], size: int, mpp: float,
                glass: GlassStats | None) -> np.ndarray:
    """``reader.read`` with the pixels beyond the slide filled with its glass (seeded by the
    region, so a dataset is reproducible)."""
    rgb = reader.read(origin, size, mpp)
    if glass is None:
        return rgb
    outside = ~inside_slide(reader, origin, size, mpp)
    if outside.any():
        rng = np.random.default_rng([origin[0] + (1 << 40), origin[1] + (1 << 40), size,
                                     round(mpp * 1e6)])
        rgb[outside] = glass.fill((size, size), rng)[outside]
    return rgb


def _atomic_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def _atomic_npy(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, arr)
    os.replace(tmp, path)


def load_manifest(folder: str | Path) -> dict[str, Any]:
    """The dataset's manifest, validated enough to name what is wrong."""
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise DatasetError(f"{folder}: not a lazyslide dataset (no manifest.json); "
                           "make one with `lazyslide prepare`")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from None
    if manifest.get("format") != FORMAT:
        raise DatasetError(f"{path}: not a lazyslide dataset manifest (format != {FORMAT})")
    return manifest


def prepare(
    slides: Sequence[str | Path | RealSpec],
    out: str | Path,
    geometry: Geometry,
    *,
    preset: str | None = None,
    levels: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
    slide_mpp: float | None = None,
    tissue: TissueRule | None = None,
    tissue_method: str = "hsv",
    fragments: float | None = None,
    pen: PenRule | None = PenRule(),  # noqa: B008 - frozen
    shard_size: int = 512,
    progress: bool = True,
    report: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Cut training pairs from ``slides`` into the dataset folder ``out``; returns the manifest.

    ``strides`` (level pixels between targets, one per level; default a quarter tile) sets how
    densely targets are cut. ``tissue_method``: "hsv" (the paper's rule on each target) or
    "otsu" (a slide-level Otsu mask, tiatoolbox's method); both keep targets with at least
    ``tissue.min_fraction`` tissue. ``fragments`` (micrometres): cut each sample to a random
    smooth fragment of about that size on glass (``fragments.FragmentMask``), for slides that
    are crops of tissue without glass. A slide that cannot be read is reported and skipped;
    slides already in the manifest are not read again. A packaged real source (``realdata``,
    e.g. ``"prostate"``) gives its training region only: the held-out one never enters a pair,
    and only to the levels it can feed (``RealSource.unfit``: fine enough, not a speck; the
    manifest's ``not_fed`` says why a level got none). ``pen``: pairs whose target or window
    touches pen ink (``wsi.PenRule``, a slide-level mask) are left out (None: kept); a model
    learns ink as readily as tissue, and v10's candidate did (docs/demo-model-history.md).
    """
    from tqdm import tqdm

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out} exists and is not a folder: a dataset is a folder (new or "
                           "one to resume)")
    levels = list(range(geometry.levels)) if levels is None else sorted(set(levels))
    for lv in levels:
        geometry.check_tile(lv, 0, 0)  # a valid level
    strides = list(strides) if strides else [max(1, geometry.tile // 4)] * geometry.levels
    if len(strides) == 1:
        strides = strides * geometry.levels
    if len(strides) != geometry.levels or min(strides) < 1:
        raise DatasetError(f"strides: give one positive stride or one per level "
                           f"({geometry.levels}), got {strides}")
    tissue = tissue or TissueRule()
    if tissue_method not in ("hsv", "otsu"):
        raise DatasetError(f"tissue method must be hsv or otsu, got {tissue_method!r}")
    if fragments is not None and not (isinstance(fragments, (int, float)) and 0 < fragments < 1e6):
        raise DatasetError(f"--fragments is a fragment size in micrometres (> 0), got {fragments!r}")
    if fragments is not None and tissue_method == "otsu":
        raise DatasetError("--fragments changes the targets after reading: use --tissue hsv")
    header = {
        "format": FORMAT,
        "preset": preset,
        "geometry": geometry.to_dict(),
        "tissue": {**asdict(tissue), "method": tissue_method},
        "keep": KEEP_RULE,
        "fragments": None if fragments is None else {"size_um": float(fragments)},
        "pen": None if pen is None else asdict(pen),
        "levels": {str(lv): {"mpp": geometry.level_mpp(lv), "stride": strides[lv]} for lv in levels},
    }
    if (out / "manifest.json").is_file():
        manifest = load_manifest(out)
        mine = {k: manifest.get(k) for k in header}
        if json.loads(json.dumps(header)) != mine:
            raise DatasetError(f"{out} holds a dataset made with other settings (geometry, levels, "
                               "strides or tissue rule); use a new folder")
    else:
        out.mkdir(parents=True, exist_ok=True)
        manifest = {**header, "slides": [], "shards": []}
        _atomic_json(out / "manifest.json", manifest)

    done = {s["path"] for s in manifest["slides"] if s["status"] == "ok"}
    t = geometry.tile
    footprint = {lv: centred_footprint(t, float(geometry.scale(lv))) for lv in levels if lv > 0}
    near = BackgroundRule(hue_min=tissue.hue_min, sat_min=tissue.sat_min)  # tissue near a footprint
    for item in slides:
        spec = item if isinstance(item, RealSpec) else parse_spec(item, default_region="training",
                                                                   slide_mpp=slide_mpp)
        key = spec.label if spec.source else str(spec.path.resolve())
        path = Path(spec.label) if spec.source else spec.path
        if key in done:
            report(f"{path}: already prepared, skipped")
            continue
        index = len(manifest["slides"])
        entry: dict[str, Any] = {"path": key, "name": path.name, "real": spec.to_dict()}
        try:
            reader = spec.open()
        except SlideReadError as e:
            report(f"skipped: {e}")
            manifest["slides"] = [s for s in manifest["slides"] if s["path"] != key]
            manifest["slides"].append({**entry, "status": "failed", "error": str(e)})
            _atomic_json(out / "manifest.json", manifest)
            continue
        entry.update(mpp=reader.mpp, size=list(reader.size), counts={}, skipped={}, glass={})
        if pen is not None:
            entry["pen_skipped"] = {}
        # a packaged source feeds only the levels it can (RealSource.unfit); a user's file, all
        unfit = {lv: spec.source.unfit(geometry.level_mpp(lv), t, reader.size, glass_fill=True)
                 for lv in levels} if spec.source else {}
        unfit = {lv: why for lv, why in unfit.items() if why}
        if unfit:
            entry["not_fed"] = {str(lv): why for lv, why in unfit.items()}
        shards: list[dict] = []
        try:
            otsu = OtsuMask(reader) if tissue_method == "otsu" else None
            ink = PenMask(reader, pen) if pen is not None else None
            if ink is not None and not ink.mask.any():
                ink = None
            glass: dict[int, GlassStats | None] = {}
            fed = [lv for lv in levels if lv not in unfit]  # glass for targets and their windows
            for lv in {*fed, *(lv - 1 for lv in fed if lv > 0)}:
                glass[lv] = measure_glass(reader, geometry.level_mpp(lv))
                entry["glass"][str(lv)] = None if glass[lv] is None else glass[lv].to_dict()
            if any(g is None for g in glass.values()):
                if fragments is None:
                    report(f"{path.name}: no glass found to measure; the area beyond the slide "
                           "stays flat grey (a crop of tissue? see --fragments)")
                glass = {lv: g or (DEFAULT_GLASS if fragments else None) for lv, g in glass.items()}
            extent = (reader.size[0] * reader.mpp, reader.size[1] * reader.mpp)  # micrometres
            for lv in levels:
                if lv in unfit:
                    entry["counts"][str(lv)] = entry["skipped"][str(lv)] = 0
                    continue
                mpp = geometry.level_mpp(lv)
                to_base = mpp / reader.mpp  # baseline pixels per level pixel
                xs = axis_origins(reader.size[0] / to_base, t, strides[lv])
                ys = axis_origins(reader.size[1] / to_base, t, strides[lv])
                kept: list[tuple[np.ndarray, np.ndarray | None, list[int]]] = []
                n_kept = n_skipped = n_shards = n_pen = 0
                bar = tqdm(total=len(xs) * len(ys), desc=f"{path.name} level {lv}", unit="pair",
                           disable=not progress, leave=False)
                for y in ys:
                    for x in xs:
                        bar.update()
                        origin = (round(x * to_base), round(y * to_base))
                        target = read_filled(reader, origin, t, mpp, glass[lv])
                        if fragments is not None:  # one physical shape for target and window
                            rng = np.random.default_rng([index, lv, x + (1 << 30), y + (1 << 30)])
                            shape = FragmentMask.random(rng, fragments)
                            um = (origin[0] * reader.mpp, origin[1] * reader.mpp)
                            target = shape.apply(target, um, mpp, glass[lv], rng, extent, fragments)
                        if otsu is not None:
                            keep = otsu.fraction(*origin, round(t * to_base)) >= tissue.min_fraction
                        else:
                            keep = tissue.keeps(target)
                        window = None
                        record = list(origin)
                        if lv > 0:
                            wx, wy = window_origin(geometry, lv, x, y)
                            parent_base = geometry.level_mpp(lv - 1) / reader.mpp
                            w_origin = (round(wx * parent_base), round(wy * parent_base))
                            window = read_filled(reader, w_origin, t, geometry.level_mpp(lv - 1),
                                                 glass[lv - 1])
                            if fragments is not None:
                                um = (w_origin[0] * reader.mpp, w_origin[1] * reader.mpp)
                                window = shape.apply(window, um, geometry.level_mpp(lv - 1),
                                                     glass[lv - 1], rng, extent, fragments)
                            record += list(w_origin)
                            keep = keep or has_tissue(window, footprint[lv], near)
                        if not keep:
                            n_skipped += 1
                            continue
                        if ink is not None and (ink.fraction(*origin, round(t * to_base)) > 0 or (
                                lv > 0 and ink.fraction(*w_origin, round(t * parent_base)) > 0)):
                            n_pen += 1
                            continue
                        kept.append((target, window, record))
                        n_kept += 1
                        if len(kept) == shard_size:
                            shards.append(_write_shard(out, lv, index, n_shards, kept))
                            kept, n_shards = [], n_shards + 1
                if kept:
                    shards.append(_write_shard(out, lv, index, n_shards, kept))
                bar.close()
                entry["counts"][str(lv)] = n_kept
                entry["skipped"][str(lv)] = n_skipped
                if pen is not None:
                    entry["pen_skipped"][str(lv)] = n_pen
        except Exception as e:  # a slide that fails mid-read: report, drop its shards, go on
            for s in shards:
                for suffix in (".targets.npy", ".windows.npy"):
                    (out / (s["file"] + suffix)).unlink(missing_ok=True)
            msg = f"cannot read {path}: {type(e).__name__}: {str(e)[:200]}"
            report(f"skipped: {msg}")
            manifest["slides"] = [s for s in manifest["slides"] if s["path"] != key]
            manifest["slides"].append({**entry, "status": "failed", "error": msg})
            _atomic_json(out / "manifest.json", manifest)
            continue
        manifest["slides"] = [s for s in manifest["slides"] if s["path"] != key]
        manifest["slides"].append({**entry, "status": "ok"})
        for s in shards:
            s["slide"] = index
        manifest["shards"].extend(shards)
        _atomic_json(out / "manifest.json", manifest)
        counts = ", ".join(f"level {lv}: not fed ({unfit[lv]})" if lv in unfit else
                           f"level {lv}: {entry['counts'][str(lv)]} pairs "
                           f"({entry['skipped'][str(lv)]} background skipped"
                           + (f", {entry['pen_skipped'][str(lv)]} with pen ink"
                              if entry.get("pen_skipped", {}).get(str(lv)) else "") + ")"
                           for lv in levels)
        report(f"{path.name} ({reader.size[0]}x{reader.size[1]} px, {reader.mpp:.3f} um/px): {counts}")
    return manifest


def _write_shard(out: Path, level: int, slide: int, k: int,
                 pairs: list[tuple[np.ndarray, np.ndarray | None, list[int]]]) -> dict:
    name = f"level{level}/{slide:04d}-{k:03d}"
    (out / f"level{level}").mkdir(exist_ok=True)
    _atomic_npy(out / f"{name}.targets.npy", np.stack([p[0] for p in pairs]))
    if level > 0:
        _atomic_npy(out / f"{name}.windows.npy", np.stack([p[1] for p in pairs]))
    return {"file": name, "level": level, "count": len(pairs), "origins": [p[2] for p in pairs]}
