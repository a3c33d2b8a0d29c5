"""Whole-slide export: every format in every reader, exact pixels, DZI = server, resumable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import openslide
import pytest
import pyvips
import tiffslide

from lazyslide import Slide, TileStore
from lazyslide.cli import main
from lazyslide.export import export
from lazyslide.materialize import materialize
from lazyslide.seeds import parse_seeds
from lazyslide.server import LazySlideServer

FORMATS = [("tiff", "slide.tiff"), ("svs", "slide.svs"), ("ome-tiff", "slide.ome.tiff")]


@pytest.fixture(scope="module")
def made(small_model, tmp_path_factory):
    """One fully materialized slide, exported in every format and compression."""
    d = tmp_path_factory.mktemp("export")
    slide = Slide(small_model, 0, TileStore(d / "store"), make_level0=False)
    stats = materialize(slide, show_progress=False)
    files = {}
    for fmt, name in FORMATS:
        for comp in ("jpeg", "deflate"):
            files[fmt, comp] = export(slide, d / f"{comp}-{name}", fmt, compression=comp, tile=64)
    files["dzi", "jpeg"] = export(slide, d / "slide.dzi", "dzi")
    files["ome-zarr", "lossless"] = export(slide, d / "slide.ome.zarr", "ome-zarr", tile=64)
    return slide, stats, files


def test_every_tile_is_made_once(made):
    slide, stats, _ = made
    assert [s.generated + s.background for s in stats.levels] == [1, 9, 49]
    assert all(slide.is_stored(*t) for lv in range(3) for t in slide.geometry.tiles(lv))
    again = materialize(slide, show_progress=False)
    assert sum(s.generated for s in again.levels) == 0


@pytest.mark.parametrize("fmt", ["tiff", "svs", "ome-tiff"])
@pytest.mark.parametrize("comp", ["jpeg", "deflate"])
def test_formats_open_in_every_reader(made, fmt, comp):
    from tiatoolbox.wsicore.wsireader import WSIReader

    slide, _, files = made
    path = str(files[fmt, comp])
    mpp = slide.geometry.mpp
    osr = openslide.OpenSlide(path)
    assert osr.dimensions == (200, 200)
    # svs, ome-tiff: each magnification level (200, 88, 32 px) and its reductions down to the
    # next; tiff: the deepest level halved
    pages = [200, 100, 50] if fmt == "tiff" else [200, 100, 88, 44, 32]
    assert osr.level_count == (1 if fmt == "ome-tiff" else len(pages))  # openslide reads no SubIFDs
    assert float(osr.properties["openslide.mpp-x"]) == pytest.approx(mpp, rel=1e-5)
    if fmt == "svs":
        assert float(osr.properties["openslide.objective-power"]) == pytest.approx(10 / mpp, rel=1e-3)
        assert "thumbnail" in osr.associated_images
    ts = tiffslide.TiffSlide(path)
    assert ts.dimensions == (200, 200) and [d[0] for d in ts.level_dimensions] == pages
    assert float(ts.properties["tiffslide.mpp-x"]) == pytest.approx(mpp, rel=1e-5)
    wsi = WSIReader.open(path)
    assert tuple(wsi.info.slide_dimensions) == (200, 200) and wsi.info.level_count == len(pages)
    assert wsi.info.mpp[0] == pytest.approx(mpp, rel=1e-5)
    v = pyvips.Image.new_from_file(path)
    assert (v.width, v.height) == (200, 200)
    if fmt != "ome-tiff":  # pyvips counts pages, not SubIFDs
        assert v.get("n-pages") == len(pages) + (fmt == "svs")


@pytest.mark.parametrize("fmt", ["tiff", "svs", "ome-tiff"])
def test_deflate_pixels_equal_read_region(made, fmt):
    slide, _, files = made
    expected = slide.read_region(2, 0, 0, 200, 200)
    ts = tiffslide.TiffSlide(str(files[fmt, "deflate"]))
    assert np.array_equal(np.asarray(ts.read_region((0, 0), 0, (200, 200)))[..., :3], expected)
    osr = openslide.OpenSlide(str(files[fmt, "deflate"]))
    assert np.array_equal(np.asarray(osr.read_region((0, 0), 0, (200, 200)))[..., :3], expected)
    # every magnification level's own pixels, and its reductions as the viewer reads them
    pages = ts.level_dimensions
    sources = [(2, 1), (2, 2), (2, 4)] if fmt == "tiff" else [(2, 1), (2, 2), (1, 1), (1, 2), (0, 1)]
    for i, (level, factor) in enumerate(sources):
        side = pages[i][0]
        page = np.asarray(ts.read_region((0, 0), i, (side, side)))[..., :3]
        assert np.array_equal(page, slide.read_region(level, 0, 0, side, side, factor=factor)), i


#: (magnification level, reduction) of each page of the svs / ome-tiff / ome-zarr exports
NATIVE_PAGES = [(2, 1), (2, 2), (1, 1), (1, 2), (0, 1)]


def _folder_bytes(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_ome_zarr_reads_back_as_ngff_equal_to_the_store(made, tmp_path):
    """zarr (the reference implementation) reads every page equal to the store's pixels; the
    NGFF 0.4 metadata names the axes, pixel sizes and RGB channels; a rerun writes the same
    bytes."""
    import zarr

    slide, _, files = made
    path = files["ome-zarr", "lossless"]
    root = zarr.open_group(str(path), mode="r")
    ms = root.attrs["multiscales"][0]
    assert ms["version"] == "0.4" and [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    assert [a.get("unit") for a in ms["axes"]] == [None, "micrometer", "micrometer"]
    assert [c["color"] for c in root.attrs["omero"]["channels"]] == ["FF0000", "00FF00", "0000FF"]
    g = slide.geometry
    assert [d["path"] for d in ms["datasets"]] == [str(k) for k in range(len(NATIVE_PAGES))]
    for k, (level, factor) in enumerate(NATIVE_PAGES):
        arr = root[str(k)]
        side = g.canvases[level] // factor
        assert arr.shape == (3, side, side) and arr.chunks == (3, 64, 64) and arr.dtype == np.uint8
        scale = ms["datasets"][k]["coordinateTransformations"][0]["scale"]
        assert scale == pytest.approx([1.0, g.level_mpp(level) * factor, g.level_mpp(level) * factor])
        expected = slide.read_region(level, 0, 0, side, side, factor=factor)
        assert np.array_equal(np.moveaxis(arr[:], 0, -1), expected), k
    assert (path / "0" / "0" / "0" / "0").is_file()  # NGFF 0.4: "/"-separated chunk keys
    again = export(slide, tmp_path / "again.ome.zarr", "ome-zarr", tile=64)
    assert _folder_bytes(again) == _folder_bytes(path)


def test_ome_zarr_opens_in_tiatoolbox(made):
    from tiatoolbox.wsicore.wsireader import WSIReader

    slide, _, files = made
    wsi = WSIReader.open(str(files["ome-zarr", "lossless"]))
    assert type(wsi).__name__ == "NGFFWSIReader"
    assert tuple(wsi.info.slide_dimensions) == (200, 200) and wsi.info.level_count == 5
    assert wsi.info.mpp[0] == pytest.approx(slide.geometry.mpp, rel=1e-5)
    region = wsi.read_bounds((0, 0, 200, 200), resolution=0, units="level")
    assert np.array_equal(region[..., :3], slide.read_region(2, 0, 0, 200, 200))


async def test_dzi_export_equals_the_server(made, aiohttp_client):
    slide, _, files = made
    server = LazySlideServer(slide.model, slide.store)
    server.open_now(0)
    client = await aiohttp_client(server.app())
    dzi = files["dzi", "jpeg"]
    assert dzi.read_text() == await (await client.get("/slides/0.dzi")).text()
    tiles = sorted((dzi.parent / "slide_files").rglob("*.jpeg"))
    assert len(tiles) == server.slides["0"].dz.dz.tile_count
    for path in tiles:
        level = path.parent.name
        r = await client.get(f"/slides/0_files/{level}/{path.name}")
        assert r.status == 200 and await r.read() == path.read_bytes(), path


def run_cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "lazyslide.cli", *args], capture_output=True,
                          text=True, timeout=600, **kw)


def test_killed_run_resumes_without_regenerating(made, small_model, tmp_path):
    """The resumed file equals the uninterrupted one: ``made``'s export of the same seed."""
    folder = tmp_path / "model"
    small_model.save(folder)
    base = ["materialize", "--model", str(folder), "--seed", "0", "--format", "tiff",
            "--compression", "deflate", "--tiff-tile", "64"]
    store_dir, out = tmp_path / "store", tmp_path / "slide.tiff"
    proc = subprocess.Popen([sys.executable, "-m", "lazyslide.cli", *base, "-o", str(out),
                             "--cache", str(store_dir)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    store = TileStore(store_dir)
    deadline = time.time() + 300
    while len(store) < 20 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stored = len(store)
    assert 20 <= stored < 59 and not out.exists()
    again = run_cli(*base, "-o", str(out), "--cache", str(store_dir), "--json")
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    levels = report["levels"].values()
    assert sum(lv["stored_before"] for lv in levels) == stored
    assert sum(lv["generated"] + lv["background"] for lv in levels) == 59 - stored
    assert out.read_bytes() == made[2]["tiff", "deflate"].read_bytes()
    assert not list(tmp_path.glob(".*partial*"))


def test_several_seeds_one_file_each(small_model, tmp_path):
    folder = tmp_path / "model"
    small_model.save(folder)
    r = run_cli("materialize", "--model", str(folder), "--seed", "0-1", "--format", "svs",
                "-o", str(tmp_path), "--cache", str(tmp_path / "c"), "--json", "--tiff-tile", "64")
    assert r.returncode == 0, r.stderr
    assert [e["seed"] for e in json.loads(r.stdout)] == [0, 1]
    assert (tmp_path / "seed0.svs").is_file() and (tmp_path / "seed1.svs").is_file()
    assert parse_seeds("1,5,9-11") == [1, 5, 9, 10, 11]


def test_bad_outputs_and_full_disk_give_one_line(small_model, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "model"
    small_model.save(folder)
    cache = str(tmp_path / "c")
    args = ["materialize", "--model", str(folder), "--cache", cache, "--tiff-tile", "64"]
    assert main([*args, "-o", str(tmp_path / "missing" / "x.tiff")]) == 2
    (tmp_path / "exists.tiff").write_bytes(b"x")
    assert main([*args, "-o", str(tmp_path / "exists.tiff")]) == 2
    assert main([*args, "--seed", "5-2", "-o", str(tmp_path / "y.tiff")]) == 2

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("lazyslide.export.write_tiff", full)
    assert main([*args, "-o", str(tmp_path / "z.tiff")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert sum("lazyslide: error:" in line for line in err) == 4  # progress bars share stderr
    assert "does not exist" in err[0] and "exists (use --overwrite" in err[1]
    assert any("disk full" in line for line in err)
    assert len(TileStore(cache)) == 59 and not (tmp_path / "z.tiff").exists()


def test_two_dask_workers_give_the_same_file_of_the_overridden_model(small_model, tmp_path):
    """Two Dask workers make every tile once and write the bytes of one process; workers get
    the model's reference (config with every override, device policy), not the bare --model
    string, so --sampling-steps holds on Dask too."""
    folder = tmp_path / "model"
    small_model.save(folder)
    base = ["materialize", "--model", str(folder), "--seed", "4", "--format", "tiff",
            "--compression", "deflate", "--tiff-tile", "64", "--json", "--sampling-steps", "1,1,1",
            "--device", "cpu"]
    one = run_cli(*base, "-o", str(tmp_path / "one.tiff"), "--cache", str(tmp_path / "c1"))
    assert one.returncode == 0, one.stderr
    two = run_cli(*base, "-o", str(tmp_path / "two.tiff"), "--cache", str(tmp_path / "c2"),
                  "--workers", "2")
    assert two.returncode == 0, two.stderr
    report = json.loads(two.stdout)
    assert report["model"] == json.loads(one.stdout)["model"] != small_model.fingerprint
    assert sum(lv["generated"] + lv["background"] for lv in report["levels"].values()) == 59
    # network evaluations are counted on the workers too: the same tiles, the same count
    evaluations = {lv: r["unet_evaluations"] for lv, r in report["levels"].items()}
    assert evaluations == {lv: r["unet_evaluations"] for lv, r in json.loads(one.stdout)["levels"].items()}
    assert evaluations["0"] == 3 * report["levels"]["0"]["generated"]  # 1 step x 3 stages, no inpainting
    assert (tmp_path / "one.tiff").read_bytes() == (tmp_path / "two.tiff").read_bytes()
    out = run_cli(*base, "--method", "outpaint", "-o", str(tmp_path / "o.tiff"), "--cache",
                  str(tmp_path / "c3"), "--workers", "2")
    assert out.returncode == 2 and "one after another" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "c3").exists() or len(TileStore(tmp_path / "c3")) == 0
