"""Hostile files given to ``lazyslide evaluate --samples``: one clear line naming the file and
what is wrong (a ``LazySlideError``), never a traceback, and a large image is never decoded."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from lazyslide.errors import LazySlideError
from lazyslide.evaluation.sources import MAX_PIXELS, FileSlide, folder_images
from lazyslide.geometry import preset

from .test_prepare import SVS

G = preset("test")
T = G.tile  # 32


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height RGB px, with a few bytes of pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def noise(mode: str = "RGB", size: int = T) -> Image.Image:
    rng = np.random.default_rng(0)
    channels = {"RGB": 3, "RGBA": 4, "CMYK": 4}[mode]
    return Image.fromarray(rng.integers(0, 256, (size, size, channels), np.uint8), mode)


def encoded(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def refused(tmp_path, name: str, data: bytes | Image.Image, **save) -> str:
    """The message for a samples folder whose level0/ holds this one file."""
    sub = tmp_path / "gen" / "level0"
    sub.mkdir(parents=True)
    path = sub / name
    if isinstance(data, Image.Image):
        data.save(path, **save)
    else:
        path.write_bytes(data)
    with pytest.raises(LazySlideError) as e:
        folder_images(tmp_path / "gen", G)
    msg = str(e.value)
    assert msg.startswith(f"--samples {path}: ") and "\n" not in msg, msg
    return msg


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path):
    data = bomb_png(60000, 60000)
    assert len(data) < 300
    msg = refused(tmp_path, "bomb.png", data)
    assert "60000x60000 px" in msg and str(MAX_PIXELS) in msg
    assert f"level 0 images must be {T}x{T} px" in msg


def test_an_image_between_pillows_limit_and_twice_it_is_refused_too(tmp_path):
    side = int((1.5 * MAX_PIXELS) ** 0.5)  # Pillow only warns here
    msg = refused(tmp_path, "big.png", bomb_png(side, side))
    assert f"{side}x{side} px" in msg and "decompression-bomb" in msg


def test_a_large_image_is_refused_by_its_size_before_decoding(tmp_path):
    msg = refused(tmp_path, "large.png", bomb_png(9000, 9000))  # under Pillow's limit
    assert msg.endswith(f"9000x9000 px; level 0 images must be {T}x{T} px at "
                        f"{G.level_mpp(0):.4g} um/px (the model's tile at that level's scale)")


@pytest.mark.parametrize("fmt,name", [("PNG", "cut.png"), ("JPEG", "cut.jpg")])
def test_a_truncated_image(tmp_path, fmt, name):
    data = encoded(noise(), fmt)
    msg = refused(tmp_path, name, data[: len(data) // 2])
    assert "do not decode" in msg and "truncated" in msg


def test_a_text_file_named_png_and_an_empty_file(tmp_path):
    msg = refused(tmp_path / "a", "notes.png", b"these are not pixels\n")
    assert "not an image file Pillow can identify" in msg
    assert refused(tmp_path / "b", "empty.png", b"").endswith("empty file (0 bytes)")


@pytest.mark.parametrize("mode", ["L", "LA", "I;16", "I", "F", "P", "1"])
def test_a_non_rgb_mode_is_refused_naming_it(tmp_path, mode):
    im = Image.new(mode, (T, T))
    name = "x.tiff" if mode in ("I", "F") else "x.png"  # PNG: no float, 32-bit deprecated
    msg = refused(tmp_path, name, im)
    with Image.open(tmp_path / "gen" / "level0" / name) as back:
        assert f"image mode {back.mode};" in msg
    assert msg.endswith("evaluate compares RGB H&E images; convert it to RGB")


def test_a_cmyk_jpeg_is_refused(tmp_path):
    msg = refused(tmp_path, "cmyk.jpg", noise("CMYK"), format="JPEG")
    assert "image mode CMYK; evaluate compares RGB H&E images; convert it to RGB" in msg


def test_rgba_with_transparency_is_refused_and_opaque_rgba_is_read(tmp_path):
    im = noise("RGBA")
    px = np.asarray(im).copy()
    px[..., 3] = 255
    px[0, :5, 3] = 0
    msg = refused(tmp_path / "a", "clear.png", Image.fromarray(px, "RGBA"))
    assert "RGBA with 5 of 1024 pixels not fully opaque" in msg and "transparency" in msg
    px[..., 3] = 255
    sub = tmp_path / "b" / "level0"
    sub.mkdir(parents=True)
    Image.fromarray(px, "RGBA").save(sub / "opaque.png")
    Image.fromarray(px[..., :3]).save(sub / "rgb.png")
    got = folder_images(tmp_path / "b", G)[0]
    assert got.shape == (2, T, T, 3) and got.dtype == np.uint8
    assert (got[0] == px[..., :3]).all() and (got[1] == px[..., :3]).all()


def test_multi_frame_files_are_refused_naming_the_count(tmp_path):
    pages = [noise(), noise()]
    msg = refused(tmp_path / "a", "two.tiff", pages[0], save_all=True, append_images=pages[1:])
    assert "2 frames" in msg
    frames = [Image.new("RGB", (T, T), (40 * i, 0, 0)) for i in range(3)]
    msg = refused(tmp_path / "b", "anim.webp", frames[0], save_all=True, append_images=frames[1:],
                  lossless=True)
    assert "3 frames" in msg


def test_an_unreadable_file_or_a_folder_named_like_an_image(tmp_path, monkeypatch):
    sub = tmp_path / "gen" / "level0"
    (sub / "dir.png").mkdir(parents=True)
    with pytest.raises(LazySlideError, match=r"dir\.png: not a regular file$"):
        folder_images(tmp_path / "gen", G)
    (sub / "dir.png").rmdir()
    noise().save(sub / "locked.png")

    def denied(path, *a, **k):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Image, "open", denied)  # root reads any file: chmod 000 would not do
    with pytest.raises(LazySlideError) as e:
        folder_images(tmp_path / "gen", G)
    assert str(e.value) == f"--samples {sub / 'locked.png'}: cannot read the file (permission denied)"


def test_slide_files_that_do_not_open_or_do_not_decode(tmp_path):
    text = tmp_path / "notes.tiff"
    text.write_text("not a slide\n")
    with pytest.raises(LazySlideError, match=rf"^--samples {text}: cannot read notes\.tiff"):
        FileSlide(text, G)
    import tifffile

    rng = np.random.default_rng(0)
    px = rng.integers(0, 256, (512, 512, 3), np.uint8)
    good = tmp_path / "good.tiff"
    tifffile.imwrite(good, px, tile=(128, 128), compression="deflate",
                     resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    data = good.read_bytes()
    cut = tmp_path / "cut.tiff"
    cut.write_bytes(data[: len(data) // 2])
    slide = FileSlide(cut, G)  # the header is whole: it opens
    with pytest.raises(LazySlideError) as e:
        for level in slide.levels:
            slide.read_region(level, 0, 0, 200, 200)
    assert str(e.value).startswith(f"--samples {cut}: cannot read its pixels for level ")
    assert "\n" not in str(e.value)


def test_the_cli_prints_one_line_and_no_traceback(tmp_path):
    sub = tmp_path / "gen" / "level0"
    sub.mkdir(parents=True)
    (sub / "bomb.png").write_bytes(bomb_png(60000, 60000))
    r = subprocess.run([sys.executable, "-m", "lazyslide.cli", "evaluate", "--model", "random:test",
                        "--real", str(SVS), "--samples", str(tmp_path / "gen"), "-o", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("lazyslide: error:")]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"lazyslide: error: --samples {sub / 'bomb.png'}: ")
    assert "60000x60000 px" in lines[0]


def test_the_limit_holds_when_another_library_switched_pillows_off(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # large_image does this on import
    side = int((1.5 * MAX_PIXELS) ** 0.5)
    msg = refused(tmp_path, "big.png", bomb_png(side, side))
    assert f"{side}x{side} px" in msg and "decompression-bomb" in msg
