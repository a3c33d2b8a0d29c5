"""Hostile command lines and exports: one-line errors before any work, no stray files, and
outputs that downstream readers open (regressions of the defects found by hostile testing)."""

from __future__ import annotations

import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from lazyslide import Slide, TileStore
from lazyslide.errors import LazySlideError
from lazyslide.export import export
from lazyslide.materialize import materialize
from lazyslide.seeds import MAX_SEED

from .test_prepare import SVS


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "lazyslide.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def one_line_error(r, *fragments: str) -> None:
    """Exit 2 with one 'lazyslide: error:' or argparse line naming the problem, no traceback."""
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "error" in last, r.stderr
    for f in fragments:
        assert f in last, (f, last)


def stored_tiles(cache: Path) -> int:
    return len(TileStore(cache)) if cache.exists() else 0


TILE = ["tile", "--model", "random:test", "--level", "0", "--col", "0", "--row", "0"]


def test_tile_output_that_is_a_folder_fails_before_generating(tmp_path):
    (tmp_path / "dir.png").mkdir()
    cache = tmp_path / "c"
    one_line_error(cli(*TILE, "-o", str(tmp_path / "dir.png"), "--cache", str(cache)), "is a folder")
    assert stored_tiles(cache) == 0


@pytest.mark.parametrize("steps, fragment", [
    ("99999999999999999999,1,1", "at most 10000"),
    ("-1,1,1", "integers >= 1"),  # argparse took "-1,1,1" for an option ("expected one argument")
    ("1,1,0", "integers >= 1"),
])
def test_sampling_steps_are_bounded_with_a_message(tmp_path, steps, fragment):
    cache = tmp_path / "c"
    one_line_error(cli(*TILE, "-o", str(tmp_path / "x.png"), "--cache", str(cache),
                       "--sampling-steps", steps), fragment)
    assert stored_tiles(cache) == 0


def test_one_seed_rule_everywhere(model, tmp_path):
    for seed in (str(2**64), str(MAX_SEED + 1), "-3", "１"):
        one_line_error(cli(*TILE, "-o", str(tmp_path / "x.png"), "--seed", seed), "--seed")
    one_line_error(cli("materialize", "--model", "random:test", "--seed", f"0,{MAX_SEED + 1}",
                       "-o", str(tmp_path)), str(MAX_SEED))
    with pytest.raises(LazySlideError, match=str(MAX_SEED)):
        Slide(model, MAX_SEED + 1, TileStore(tmp_path / "s"), make_level0=False)
    Slide(model, MAX_SEED, TileStore(tmp_path / "s"), make_level0=False)  # the largest is fine


def test_empty_model_spec_is_refused(tmp_path):
    one_line_error(cli("info", "--model", ""), "empty model spec")
    one_line_error(cli("info", "--model", "  "), "empty model spec")


def test_serve_refuses_bad_max_slides_before_level_0(tmp_path):
    cache = tmp_path / "c"
    for value in ("-1", "0"):
        one_line_error(cli("serve", "--model", "random:test", "--max-slides", value, "--port", "8123",
                           "--cache", str(cache)), "--max-slides")
        one_line_error(cli("serve", "--model", "random:test", "--threads", value, "--port", "8123",
                           "--cache", str(cache)), "--threads must be >= 1")
    assert stored_tiles(cache) == 0


def test_prepare_refuses_a_file_as_dataset_and_bad_fractions(tmp_path):
    (tmp_path / "file").write_text("x")
    one_line_error(cli("prepare", str(SVS), "-o", str(tmp_path / "file"), "--preset", "test"),
                   "not a folder")
    for bad in ("7", "-0.1", "nan"):
        one_line_error(cli("prepare", str(SVS), "-o", str(tmp_path / "ds"), "--preset", "test",
                           "--min-tissue", bad), "--min-tissue")
    assert not (tmp_path / "ds").exists()


def test_prepare_shows_a_repeated_library_warning_once(tmp_path):
    # the paper preset's deepest level (0.25 um/px) is finer than the slide's 0.499 um/px, so
    # tiatoolbox warns "Scale > 1" on each of the 30 reads
    r = cli("prepare", str(SVS), "-o", str(tmp_path / "ds"), "--preset", "paper",
            "--levels", "2", "--stride", "1024", "--min-tissue", "1", "--quiet")
    assert r.returncode == 0, r.stderr
    kept, skipped = map(int, re.search(r"level 2: (\d+) pairs \((\d+) background skipped", r.stdout).groups())
    assert kept + skipped == 30
    assert (r.stdout + r.stderr).count("Scale > 1") == 1


MAT = ["materialize", "--model", "random:test"]


@pytest.mark.parametrize("extra, name, fragment", [
    (["--quality", "0"], "m.tiff", "--quality"),
    (["--quality", "101"], "m.tiff", "--quality"),
    (["--tiff-tile", "100"], "m.tiff", "--tiff-tile"),
    (["--tiff-tile", "0"], "m.tiff", "--tiff-tile"),
    (["--format", "dzi"], "m.tiff", "NAME.dzi"),
    (["--format", "tiff"], "m.dzi", "not .dzi"),
    (["--batch-size", "0"], "m.tiff", "--batch-size"),
])
def test_materialize_validates_options_before_the_first_tile(tmp_path, extra, name, fragment):
    cache = tmp_path / "c"
    one_line_error(cli(*MAT, *extra, "-o", str(tmp_path / name), "--cache", str(cache)), fragment)
    assert stored_tiles(cache) == 0


def test_materialize_checks_the_output_folder_is_writable_first(tmp_path):
    cache = tmp_path / "c"
    # /proc: a folder that exists but where nothing can be created, even by root
    one_line_error(cli(*MAT, "-o", "/proc/m.tiff", "--cache", str(cache)), "cannot write in /proc")
    assert stored_tiles(cache) == 0


def test_dzi_overwrite_onto_a_folder_fails_first_and_leaves_nothing(tmp_path):
    (tmp_path / "existing.dzi").mkdir()
    cache = tmp_path / "c"
    one_line_error(cli(*MAT, "--format", "dzi", "--overwrite", "-o", str(tmp_path / "existing.dzi"),
                       "--cache", str(cache)), "is a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.dzi"]
    assert stored_tiles(cache) == 0


@pytest.fixture(scope="module")
def slide(small_model, tmp_path_factory):
    s = Slide(small_model, 0, TileStore(tmp_path_factory.mktemp("h") / "store"), make_level0=False)
    materialize(s, show_progress=False)
    return s


def test_dzi_descriptor_has_the_xml_declaration_and_opens_in_large_image(slide, tmp_path):
    out = export(slide, tmp_path / "s.dzi", "dzi")
    text = out.read_text(encoding="utf-8")
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    root = ET.fromstring(out.read_bytes())
    assert root.tag.endswith("Image") and root[0].attrib == {"Width": "200", "Height": "200"}

    import large_image_source_deepzoom

    src = large_image_source_deepzoom.open(str(out))
    assert (src.sizeX, src.sizeY) == (200, 200)
    region, _ = src.getRegion(format="numpy")
    assert region.shape[:2] == (200, 200)
    from PIL import Image

    deepest = max(int(p.name) for p in (tmp_path / "s_files").iterdir())  # one 200 px tile
    tile = np.asarray(Image.open(tmp_path / "s_files" / str(deepest) / "0_0.jpeg").convert("RGB"))
    assert np.array_equal(region[..., :3], tile)  # the exported pixels, read by large_image


@pytest.mark.parametrize("fmt, name", [("ome-tiff", "a.ome.tiff"), ("svs", "a.svs"), ("tiff", "a.tiff")])
def test_reexport_writes_the_same_bytes(slide, tmp_path, fmt, name):
    first = export(slide, tmp_path / name, fmt, tile=64).read_bytes()
    again = export(slide, tmp_path / name, fmt, tile=64, overwrite=True).read_bytes()
    assert first == again
    if fmt == "ome-tiff":
        import tifffile

        with tifffile.TiffFile(tmp_path / name) as tif:
            assert "urn:uuid:" in tif.ome_metadata


KILL_DURING_EXPORT = """
import os, signal, sys
from lazyslide import Slide, TileStore, URCDM
from lazyslide.export import export
model = URCDM.load(sys.argv[1])
slide = Slide(model, 0, TileStore(sys.argv[2]), make_level0=False)
n = [0]
def progress():
    n[0] += 1
    if n[0] == int(sys.argv[4]):
        os.kill(os.getpid(), signal.SIGKILL)
export(slide, sys.argv[3], sys.argv[5], tile=64, progress=progress)
"""


@pytest.mark.parametrize("fmt, name, at", [("tiff", "k.tiff", 12), ("dzi", "k.dzi", 5),
                                          ("ome-zarr", "k.ome.zarr", 12)])
def test_rerun_after_sigkill_mid_export_removes_what_the_killed_run_left(
        slide, small_model, tmp_path, fmt, name, at):
    model_dir = tmp_path / "model"
    small_model.save(model_dir)
    out = tmp_path / "out"
    out.mkdir()
    r = subprocess.run([sys.executable, "-c", KILL_DURING_EXPORT, str(model_dir),
                        str(slide.store.directory), str(out / name), str(at), fmt],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == -9, r.stderr
    assert [p.name for p in out.iterdir() if p.name.startswith(".")], "the kill left nothing?"
    assert not (out / name).exists()
    again = cli("materialize", "--model", str(model_dir), "--format", fmt, "--tiff-tile", "64",
                "-o", str(out / name), "--cache", str(slide.store.directory))
    assert again.returncode == 0, again.stderr
    left = sorted(p.name for p in out.iterdir())
    assert left == ([name] if fmt != "dzi" else [name, "k_files"]), left
