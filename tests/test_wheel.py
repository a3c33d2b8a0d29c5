"""The built wheel, outside the checkout: its own distribution name, and a server that finds its
viewer and OpenSeadragon in the installed package (issue 31)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest

from lazyslide import distribution

REPO = Path(__file__).resolve().parent.parent


def test_distribution_name_and_version_live_in_one_place():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["name"] == distribution.NAME != "lazyslide"
    assert project["dynamic"] == ["version"]
    out = subprocess.run([sys.executable, "-m", "lazyslide.cli", "--version"], capture_output=True,
                         text=True, check=True).stdout
    assert out.split()[:2] == [distribution.NAME, distribution.VERSION]


def _fake_distribution(folder: Path, name: str) -> None:
    """An installed distribution's metadata that claims the top-level module ``lazyslide``."""
    info = folder / f"{name}-0.13.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.13.0\n")
    (info / "top_level.txt").write_text("lazyslide\n")


def test_info_warns_in_one_line_when_another_distribution_installs_lazyslide(tmp_path):
    _fake_distribution(tmp_path / "site", "lazyslide")
    env = {"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "lazyslide.cli", "info", "--model", "random:test"],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if "also install" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: lazyslide also install"), r.stderr
    alone = subprocess.run([sys.executable, "-m", "lazyslide.cli", "info", "--model", "random:test"],
                           capture_output=True, text=True, cwd=tmp_path)
    assert "also install" not in alone.stderr


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=120) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel built from a copy of the sources (no build folder left in the checkout),
    installed without dependencies into a fresh virtual environment that reuses this one's
    (a .pth line: torch is not installed twice)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("lazyslide", "server", "viewer"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "node_modules"))
    osd = Path("viewer", "node_modules", "openseadragon")
    shutil.copytree(REPO / osd, src / osd)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    str(src), "-w", str(tmp / "dist")], check=True, capture_output=True)
    wheel, = (tmp / "dist").glob("lazyslide_urcdm-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "reuse-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                    "--no-index", "-q", str(wheel)], check=True, capture_output=True)
    return venv


def test_the_installed_wheel_serves_the_viewer_and_tiles(installed, tmp_path):
    python = installed / "bin" / "python"
    where = subprocess.run([str(python), "-c", "import lazyslide, lazyslide.server.app as a; "
                            "print(lazyslide.__file__); print(a.VIEWER_DIR)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path).stdout.split()
    assert all(str(installed) in w for w in where), where  # not the checkout's files
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(installed / "bin" / "lazyslide"), "serve", "--model", "random:test",
                               "--port", str(port), "--cache", str(tmp_path / "store")],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(240):
            if server.poll() is not None:
                pytest.fail(server.stdout.read())
            try:
                if _get(url + "/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.5)
        status, page = _get(url + "/")
        assert status == 200 and b"openseadragon" in page.lower()
        status, osd = _get(url + "/osd/openseadragon.min.js")
        assert status == 200 and len(osd) > 100_000
        assert _get(url + "/app.js")[0] == 200
        status, dzi = _get(url + "/slides/0.dzi")
        assert status == 200 and b"<Image" in dzi
        status, tile = _get(url + "/slides/0_files/0/0_0.jpeg")
        assert status == 200 and tile[:2] == b"\xff\xd8"
    finally:
        server.terminate()
        server.wait(30)


def test_the_installed_wheel_registers_the_large_image_source(installed, tmp_path):
    entry_points, = installed.glob("lib/python*/site-packages/lazyslide_urcdm-*.dist-info/entry_points.txt")
    assert "lazyslide = lazyslide.large_image_source:LazySlideFileTileSource" in entry_points.read_text()
    code = ("import sys, large_image.tilesource as t; t.loadTileSources(); "
            "c = t.AvailableTileSources['lazyslide']; print(sys.modules[c.__module__].__file__)")
    where = subprocess.run([str(installed / "bin" / "python"), "-c", code], capture_output=True,
                           text=True, check=True, cwd=tmp_path).stdout.strip()
    assert where.startswith(str(installed)), where  # the wheel's module, found by large_image
