"""Whole-slide images -> training pairs, cut with exactly the sampler's geometry.

For each level L the slide is read at the level's micrometres per pixel (``Geometry.level_mpp``)
in ``tile`` x ``tile`` targets; for L >= 1 each target comes with its conditioning window:
``tile`` x ``tile`` pixels at level L-1's mpp, centred on the target's centre (what
``Geometry.parent_window`` gives the sampler). Pixels beyond the slide are glass
(``BACKGROUND_FILL``, as the sampler fills windows beyond the canvas). Regions are read one at
a time through tiatoolbox's ``WSIReader`` (SVS, NDPI, generic and OME TIFF, ...), never whole
slides, so memory stays bounded.

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
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import LazySlideError
from ..geometry import BACKGROUND_FILL, Geometry

FORMAT = "lazyslide-dataset/1"


class DatasetError(LazySlideError):
    """A dataset that cannot be written or used as asked."""


@dataclass(frozen=True)
class TissueRule:
    """The paper's training test (HSV in [0, 1]): tissue = h > 0.5, s > 0.1, v < 0.9.

    A target is kept when at least ``min_fraction`` of its pixels are tissue.
    """

    hue_min: float = 0.5
    sat_min: float = 0.1
    val_max: float = 0.9
    min_fraction: float = 0.05

    def __post_init__(self) -> None:
        for name in ("hue_min", "sat_min", "val_max", "min_fraction"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                flag = " (--min-tissue)" if name == "min_fraction" else ""
                raise DatasetError(f"tissue {name}{flag} is a fraction in [0, 1], got {v!r}")

    def fraction(self, rgb: np.ndarray) -> float:
        hsv = np.asarray(Image.fromarray(rgb).convert("HSV"), dtype=np.float32) / 255.0
        tissue = (hsv[..., 0] > self.hue_min) & (hsv[..., 1] > self.sat_min) & (hsv[..., 2] < self.val_max)
        return float(tissue.mean())

    def keeps(self, rgb: np.ndarray) -> bool:
        return self.fraction(rgb) >= self.min_fraction


class OtsuMask:
    """Slide-level tissue mask: Otsu's threshold on a greyscale thumbnail, as tiatoolbox's
    ``OtsuTissueMasker`` computes it (which cannot be imported without umap, timm, ...).

    ``fraction(box)`` is the tissue share of a box given in baseline pixels.
    """

    def __init__(self, reader: SlideReader, max_side: int = 2048) -> None:
        from skimage.filters import threshold_otsu

        self.mpp = reader.mpp * max(1.0, max(reader.size) / max_side)
        n = [max(1, round(v * reader.mpp / self.mpp)) for v in reader.size]
        thumb = reader.wsi.read_rect((0, 0), tuple(n), resolution=self.mpp, units="mpp",
                                     pad_constant_values=BACKGROUND_FILL)[..., :3]
        grey = np.asarray(Image.fromarray(np.ascontiguousarray(thumb, np.uint8)).convert("L"))
        self.mask = grey < threshold_otsu(grey) if grey.min() < grey.max() else np.zeros_like(grey, bool)
        self.to_thumb = reader.mpp / self.mpp

    def fraction(self, x: int, y: int, size: int) -> float:
        f = self.to_thumb
        h, w = self.mask.shape
        x0, y0 = max(0, int(x * f)), max(0, int(y * f))
        x1, y1 = min(w, int(np.ceil((x + size) * f))), min(h, int(np.ceil((y + size) * f)))
        if x1 <= x0 or y1 <= y0:
            return 0.0
        return float(self.mask[y0:y1, x0:x1].sum()) / max(1.0, (size * f) ** 2)


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


class _OnceFilter(logging.Filter):
    """Passes each distinct tiatoolbox warning once per process.

    tiatoolbox logs through the root logger on every read, e.g. "Read: Scale > 1" for each of
    thousands of targets read finer than the slide's baseline: one line says it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if "tiatoolbox" not in record.pathname:
            return True
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


_ONCE = _OnceFilter()


class SlideReader:
    """One slide through tiatoolbox, read in regions at a requested mpp."""

    def __init__(self, path: Path, mpp: float | None) -> None:
        try:
            from tiatoolbox.wsicore.wsireader import WSIReader
        except ImportError as e:  # pragma: no cover - depends on the install
            raise DatasetError(f"reading slides needs tiatoolbox ({e}); run `make install`") from None
        logging.getLogger().addFilter(_ONCE)  # no-op when already added
        try:
            self.wsi = WSIReader.open(str(path), mpp=(mpp, mpp) if mpp else None)
            info = self.wsi.info
            self.size = tuple(int(v) for v in info.slide_dimensions)
            slide_mpp = info.mpp
        except Exception as e:  # tiatoolbox raises many kinds for unreadable files
            raise DatasetError(f"cannot read {path}: {type(e).__name__}: {str(e)[:200]}") from None
        if slide_mpp is None or not float(slide_mpp[0]) > 0:
            raise DatasetError(f"{path}: no micrometres-per-pixel in the file; pass --slide-mpp")
        self.mpp = float(slide_mpp[0])

    def read(self, origin: tuple[int, int], size: int, mpp: float) -> np.ndarray:
        """``size`` x ``size`` RGB at ``mpp``, top-left at baseline pixel ``origin``."""
        out = self.wsi.read_rect(origin, (size, size), resolution=mpp, units="mpp",
                                 pad_constant_values=BACKGROUND_FILL)
        out = np.ascontiguousarray(out[..., :3], dtype=np.uint8)
        if out.shape != (size, size, 3):  # tiatoolbox may be off by one after rescaling
            out = np.asarray(Image.fromarray(out).resize((size, size), Image.BILINEAR))
        return out


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
    slides: Sequence[str | Path],
    out: str | Path,
    geometry: Geometry,
    *,
    preset: str | None = None,
    levels: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
    slide_mpp: float | None = None,
    tissue: TissueRule | None = None,
    tissue_method: str = "hsv",
    shard_size: int = 512,
    progress: bool = True,
    report: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Cut training pairs from ``slides`` into the dataset folder ``out``; returns the manifest.

    ``strides`` (level pixels between targets, one per level; default a quarter tile) sets how
    densely targets are cut. ``tissue_method``: "hsv" (the paper's rule on each target) or
    "otsu" (a slide-level Otsu mask, tiatoolbox's method); both keep targets with at least
    ``tissue.min_fraction`` tissue. A slide that cannot be read is reported and skipped; slides already
    in the manifest are not read again.
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
    header = {
        "format": FORMAT,
        "preset": preset,
        "geometry": geometry.to_dict(),
        "tissue": {**asdict(tissue), "method": tissue_method},
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
    for path in map(Path, slides):
        key = str(path.resolve())
        if key in done:
            report(f"{path}: already prepared, skipped")
            continue
        index = len(manifest["slides"])
        entry: dict[str, Any] = {"path": key, "name": path.name}
        try:
            reader = SlideReader(path, slide_mpp)
        except DatasetError as e:
            report(f"skipped: {e}")
            manifest["slides"] = [s for s in manifest["slides"] if s["path"] != key]
            manifest["slides"].append({**entry, "status": "failed", "error": str(e)})
            _atomic_json(out / "manifest.json", manifest)
            continue
        entry.update(mpp=reader.mpp, size=list(reader.size), counts={}, skipped={})
        shards: list[dict] = []
        try:
            otsu = OtsuMask(reader) if tissue_method == "otsu" else None
            for lv in levels:
                mpp = geometry.level_mpp(lv)
                to_base = mpp / reader.mpp  # baseline pixels per level pixel
                xs = axis_origins(reader.size[0] / to_base, t, strides[lv])
                ys = axis_origins(reader.size[1] / to_base, t, strides[lv])
                kept: list[tuple[np.ndarray, np.ndarray | None, list[int]]] = []
                n_kept = n_skipped = n_shards = 0
                bar = tqdm(total=len(xs) * len(ys), desc=f"{path.name} level {lv}", unit="pair",
                           disable=not progress, leave=False)
                for y in ys:
                    for x in xs:
                        bar.update()
                        origin = (round(x * to_base), round(y * to_base))
                        target = reader.read(origin, t, mpp)
                        if otsu is not None:
                            keep = otsu.fraction(*origin, round(t * to_base)) >= tissue.min_fraction
                        else:
                            keep = tissue.keeps(target)
                        if not keep:
                            n_skipped += 1
                            continue
                        window = None
                        record = list(origin)
                        if lv > 0:
                            wx, wy = window_origin(geometry, lv, x, y)
                            parent_base = geometry.level_mpp(lv - 1) / reader.mpp
                            w_origin = (round(wx * parent_base), round(wy * parent_base))
                            window = reader.read(w_origin, t, geometry.level_mpp(lv - 1))
                            record += list(w_origin)
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
        counts = ", ".join(f"level {lv}: {entry['counts'][str(lv)]} pairs "
                           f"({entry['skipped'][str(lv)]} background skipped)" for lv in levels)
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
