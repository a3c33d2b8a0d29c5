"""Packaged real H&E: every source offline, its split disjoint, regions that cannot leak, um/px."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lazyslide import realdata
from lazyslide.errors import LazySlideError
from lazyslide.evaluation.references import resolve
from lazyslide.geometry import BACKGROUND_FILL
from lazyslide.realdata import SOURCES, RealSpec, parse_spec, trained_on
from lazyslide.wsi import SlideReader


def _empty(box):
    return box[2] <= box[0] or box[3] <= box[1]


def _overlap(a, b):
    return not (_empty(a) or _empty(b)) and a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@pytest.mark.parametrize("name", list(SOURCES))
def test_every_source_is_installed_offline_and_split_disjoint(name):
    s = SOURCES[name]
    assert realdata.available(name), f"{name}: run make install"
    w, h = s.size
    for box in (s.training, s.held_out):
        assert _empty(box) or (0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h)
    assert not _overlap(s.training, s.held_out)
    assert not (_empty(s.training) and _empty(s.held_out))
    if s.margin_um is not None:  # within one image: at least 400 um apart (> the demo's level-2 window)
        assert s.margin_um >= 400
    assert s.mpp_range[0] <= s.mpp <= s.mpp_range[1] and s.mpp_method
    for region in ("training", "held-out"):
        if not _empty(s.box(region)):
            reader = RealSpec(s, region).open()
            assert reader.size == (s.box(region)[2] - s.box(region)[0], s.box(region)[3] - s.box(region)[1])
            assert reader.read((0, 0), 16, s.mpp).shape == (16, 16, 3)
        else:
            with pytest.raises(LazySlideError, match=f"no {region} region"):
                RealSpec(s, region).open()


def test_a_region_reader_never_returns_pixels_from_outside_its_box():
    """Left half red, right half blue: the left box reads red and background only, at any
    scale and position, including reads reaching across the boundary."""
    img = np.zeros((200, 400, 3), np.uint8)
    img[:, :200] = (200, 30, 30)
    img[:, 200:] = (30, 30, 200)
    reader = SlideReader(img, 0.5, box=(0, 0, 180, 200), name="halves")
    assert reader.size == (180, 200)
    for origin, size, mpp in (((0, 0), 64, 0.5), ((150, 50), 64, 0.5), ((100, 0), 32, 2.0),
                              ((-20, -20), 50, 4.0), ((170, 190), 40, 0.5)):
        px = reader.read(origin, size, mpp).reshape(-1, 3)
        blue = (px[:, 2] > 100) & (px[:, 0] < 100)
        assert not blue.any(), (origin, size, mpp)
        assert ((px == BACKGROUND_FILL).all(1) | (px[:, 0] > 100)).all()
    # the held-out side sees its own pixels, shifted to its corner
    right = SlideReader(img, 0.5, box=(220, 0, 400, 200))
    assert (right.read((0, 0), 8, 0.5) == (30, 30, 200)).all()
    with pytest.raises(LazySlideError, match="not inside the slide"):
        SlideReader(img, 0.5, box=(0, 0, 500, 10))


def test_specs_and_what_a_model_learnt_from(tmp_path):
    assert parse_spec("prostate", default_region="held-out").region == "held-out"
    assert parse_spec("prostate:all", default_region="held-out").region == "all"
    with pytest.raises(LazySlideError, match="no such file, and no packaged real source"):
        parse_spec("nonesuch", default_region="held-out")
    with pytest.raises(LazySlideError, match="region must be one of"):
        parse_spec("prostate:middle", default_region="held-out").open()
    held = parse_spec("cmu-skin", default_region="held-out")
    assert trained_on(held, [{"source": "cmu-skin", "region": "all"}])
    assert not trained_on(held, [{"source": "cmu-skin", "region": "training"}])
    assert trained_on(held, [{"source": "cmu-skin", "region": "held-out"}])


def test_the_default_protocol_uses_no_training_pixel():
    """The bundled model learnt from the whole CMU region: the default references leave it out
    and group the rest as other organs; a model trained on training regions gets their held-out
    regions back, grouped by organ."""
    from lazyslide.model import URCDM

    demo = URCDM.from_spec("demo")
    record = demo.config["training_data"]
    protocol = resolve(record)
    specs = [s for grp in protocol.groups for s in grp.specs]
    assert specs and not any(trained_on(s, record) for s in specs)
    assert all(s.source.name != "cmu-skin" for s in specs) and protocol.left_out
    assert [s.label for s in protocol.training] == ["cmu-skin:all"]
    assert [g.shifted for g in protocol.groups] == [True]  # other organs only: no audit verdict
    v10 = [{"source": n, "region": "training"} for n in ("cmu-skin", "prostate", "ovary-stroma")]
    protocol = resolve(v10)
    same, other = protocol.groups
    assert not same.shifted and other.shifted
    assert {s.label for s in same.specs} == {"cmu-skin:held-out", "prostate:held-out",
                                             "prostate-biopsy:held-out", "prostate-tma:held-out",
                                             "ovary-nest:held-out"}
    assert [s.label for s in other.specs] == ["tumour-tcia:held-out"]
    for s in same.specs:  # held-out boxes never overlap a training box of the same image
        assert not _overlap(s.source.held_out, s.source.training)
    with pytest.raises(LazySlideError, match="does not record what it learnt from"):
        resolve(None)


def test_scale_from_nuclei_follows_the_pixels():
    """Calibrated on the CMU slide (tagged 0.499 um/px): its own pixels give 0.499, the same
    region at half the resolution about twice that."""
    reader = RealSpec(SOURCES["cmu-skin"], "all").open()
    rgb = reader.read((600, 1500), 1000, 0.499)
    est, lo, hi = realdata.estimate_mpp(rgb)
    assert est == pytest.approx(0.499, rel=0.12) and lo <= est <= hi
    half = np.asarray(Image.fromarray(rgb).resize((500, 500), Image.Resampling.BOX))
    est2, _, _ = realdata.estimate_mpp(half)
    assert est2 == pytest.approx(0.998, rel=0.2)


def test_a_tampered_archive_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("LAZYSLIDE_REAL_DATA", str(tmp_path))
    realdata.pixels.cache_clear()
    try:
        with pytest.raises(LazySlideError, match="is not in"):
            realdata.archive_path(realdata.HISTOLYTICS)
        (tmp_path / realdata.HISTOLYTICS.filename).write_bytes(b"not the wheel")
        with pytest.raises(LazySlideError, match="not the pinned"):
            realdata.archive_path(realdata.HISTOLYTICS)
    finally:
        realdata.pixels.cache_clear()


def test_sources_command_lists_every_source(capsys):
    from lazyslide.cli import main

    assert main(["sources"]) == 0
    out = capsys.readouterr().out
    for name in SOURCES:
        assert f"| {name} |" in out
    assert "| no |" not in out


def test_each_source_feeds_only_the_levels_it_can():
    """The demo geometry (0.5 um/px): overviews feed the coarse levels, high-magnification
    crops the fine ones; a source is never upsampled past 10 % nor cut as a speck."""
    import dataclasses

    from lazyslide.geometry import preset

    g = dataclasses.replace(preset("demo"), mpp=0.5)

    def fed(name):
        s = SOURCES[name]
        box = s.training
        size = (box[2] - box[0], box[3] - box[1])
        return [lv for lv in range(3) if s.unfit(g.level_mpp(lv), g.tile, size, glass_fill=True) is None]

    assert fed("prostate-tma") == [0] and fed("prostate-biopsy") == [0, 1]
    assert fed("cmu-skin") == fed("prostate") == fed("ovary-stroma") == [1, 2]
    # at 78 um/px the core is 38 px thin: a training pair on glass, not a whole-tile reference
    core, coarse = SOURCES["prostate-biopsy"], preset("demo").level_mpp(0)
    assert core.unfit(coarse, g.tile, (2940, 1000), glass_fill=True) is None
    assert "narrower than half" in core.unfit(coarse, g.tile, (2940, 1000), glass_fill=False)


def test_prepare_cuts_a_source_only_at_the_levels_it_feeds(tmp_path):
    from lazyslide.training.prepare import load_manifest, prepare

    from .test_prepare import GEOM

    messages = []
    prepare(["prostate-tma"], tmp_path / "d", GEOM, strides=[256, 256, 256], progress=False,
            report=messages.append)
    m = load_manifest(tmp_path / "d")
    (entry,) = m["slides"]
    assert entry["status"] == "ok" and entry["counts"]["0"] > 0
    assert set(entry["not_fed"]) == {"1", "2"} and "coarser than" in entry["not_fed"]["1"]
    assert {sh["level"] for sh in m["shards"]} == {0}
    assert "level 1: not fed (15 um/px is coarser" in messages[-1]
