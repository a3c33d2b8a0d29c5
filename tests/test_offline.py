"""Nothing reaches the network: importing, building and sampling with sockets disabled."""

import subprocess
import sys

GUARD = """
import socket
def refuse(*a, **k):
    raise RuntimeError("network access attempted")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
"""


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", GUARD + code], capture_output=True, text=True,
                          timeout=300, env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})


def test_guard_works():
    r = run("import urllib.request; urllib.request.urlopen('http://127.0.0.1:9')")
    assert r.returncode != 0 and "network access attempted" in r.stderr


def test_import_is_cheap_and_offline():
    r = run("import sys, lazyslide; assert 'imagen_pytorch' not in sys.modules; print('ok')")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_imagen_pytorch_model_and_sampling_offline(tmp_path):
    code = f"""
import time
t = time.time()
from lazyslide import URCDM, Slide, TileStore
slide = Slide(URCDM.random("test", 0), 0, TileStore({str(tmp_path)!r}))
slide.tile(1, 2, 3)
assert time.time() - t < 60, "suspiciously slow: a network timeout?"
print("ok")
"""
    r = run(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("ok")


def test_plain_imagen_import_would_reach_the_network():
    """Without lazyslide's contained fix, importing imagen-pytorch asks the hub for T5."""
    r = run("import imagen_pytorch")
    assert r.returncode != 0 and "network access attempted" in r.stderr
