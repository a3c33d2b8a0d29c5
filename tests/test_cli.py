"""The command line: info, tile --json, one-line errors with exit code 2."""

import json
import subprocess
import sys

import numpy as np
from PIL import Image


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "lazyslide.cli", *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def test_help_on_every_command():
    for cmd in ([], ["info"], ["tile"], ["demo"]):
        r = cli(*cmd, "--help")
        assert r.returncode == 0 and "usage: lazyslide" in r.stdout


def test_info(tmp_path):
    r = cli("info", "--model", "random:test", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert [lv["grid"] for lv in info["levels"]] == [1, 7, 46]
    assert len(info["fingerprint"]) == 16 and info["total_params"] > 0
    assert info["architecture"] == "imagen-unet"
    r = cli("info", "--model", "demo")  # the bundled demo model runs channels-last
    assert r.returncode == 0 and "network      imagen-unet-channels-last" in r.stdout, r.stderr


def test_tile_json_counts_generations_per_level(tmp_path):
    out, cache = tmp_path / "t.png", tmp_path / "cache"
    args = ["tile", "--model", "random:test", "--seed", "3", "--level", "2", "--col", "4",
            "--row", "5", "-o", str(out), "--cache", str(cache), "--json"]
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert set(report["generated_tiles"]) == {"0", "1", "2"}
    assert report["generated_tiles"]["0"] == 1 and report["generated_tiles"]["2"] >= 1
    assert report["seconds"] > 0
    # network evaluations (test preset: steps 4,2,2 with 2 RePaint resamples each): the level-0
    # tile inpaints nothing (8 per tile), inpainted tiles up to 16
    evals, made = report["unet_evaluations"], report["generated_tiles"]
    assert evals["0"] == 8 and 8 * made["2"] < evals["2"] <= 16 * made["2"]
    assert np.asarray(Image.open(out)).shape == (32, 32, 3)
    again = json.loads(cli(*args).stdout)  # warm store, new process: nothing generated
    assert again["generated_tiles"] == {"0": 0, "1": 0, "2": 0}
    assert again["unet_evaluations"] == {"0": 0, "1": 0, "2": 0}


def test_errors_are_one_line_with_exit_code_2(tmp_path):
    base = ["tile", "--model", "random:test", "-o", str(tmp_path / "t.png"), "--cache",
            str(tmp_path / "c"), "--level"]
    cases = [
        (base + ["2", "--col", "46", "--row", "0"], "outside level 2"),
        (base + ["3", "--col", "0", "--row", "0"], "level must be in 0..2"),
        (["tile", "--model", "random:nope", "--level", "0", "--col", "0", "--row", "0", "-o", "x.png"],
         "unknown preset"),
        (["info", "--model", str(tmp_path / "missing")], "no such folder"),
        (["tile", "--model", "random:test", "--level", "0", "--col", "0", "--row", "0", "-o",
          str(tmp_path / "nodir" / "t.png")], "does not exist"),
    ]
    for args, msg in cases:
        r = cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and msg in lines[0] and "Traceback" not in r.stderr


def test_sampling_steps_override(tmp_path):
    """--sampling-steps: same weights, other step counts, another fingerprint (other tiles)."""
    import torch

    from lazyslide import URCDM

    for spec in ("random:test", "demo"):  # random-init and loaded weights
        model = URCDM.from_spec(spec)
        fast = model.with_sampling_steps([1, 1, 1])
        assert fast.config["sampling"]["steps"] == [1, 1, 1] != model.config["sampling"]["steps"]
        assert fast.fingerprint != model.fingerprint
        a, b = model.unet(1, 2).state_dict(), fast.unet(1, 2).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)

    from lazyslide.cli import main

    cache = str(tmp_path / "c")
    def tile(name, *extra):  # in this process: the check is the pixels, not the exit path
        assert main(["tile", "--model", "random:test", "--level", "0", "--col", "0", "--row", "0",
                     "-o", str(tmp_path / name), "--cache", cache, *extra]) == 0
        return np.asarray(Image.open(tmp_path / name))

    fast1 = tile("f1.png", "--sampling-steps", "1,1,1")
    assert np.array_equal(fast1, tile("f2.png", "--sampling-steps", "1,1,1"))
    assert not np.array_equal(fast1, tile("default.png"))
    # a deterministic solver; at one step every sampler returns the first x0 estimate, so two
    ddim = tile("d1.png", "--sampler", "ddim", "--sampling-steps", "2,2,2")
    assert np.array_equal(ddim, tile("d2.png", "--sampler", "ddim", "--sampling-steps", "2,2,2"))
    assert not np.array_equal(ddim, tile("a2.png", "--sampling-steps", "2,2,2"))
    bad = (("1,1", "needs 3 integers"), ("0,1,1", "integers >= 1"), ("a,1,1", "must be integers"))
    for steps, msg in bad:
        r = cli("tile", "--model", "random:test", "--level", "0", "--col", "0", "--row", "0",
                "-o", str(tmp_path / "x.png"), "--sampling-steps", steps)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_sampling_options_make_another_model():
    """--sampler, --sampling-steps, --resample (one for all stages or one per stage) on the same
    weights; wrong counts fail with the option's name."""
    import argparse

    import pytest

    from lazyslide.cli.common import load_model
    from lazyslide.errors import LazySlideError

    def load(**kw):
        ns = argparse.Namespace(**{"sampler": None, "sampling_steps": None, "resample": None, **kw})
        return load_model("random:test", "cpu", ns)

    base = load()
    fast = load(sampler="dpmpp-2m", sampling_steps="3,2,2", resample="1")
    assert fast.sampling.sampler == "dpmpp-2m" and fast.sampling.resample == (1, 1, 1)
    assert fast.sampling.steps == (3, 2, 2) and fast.fingerprint != base.fingerprint
    assert load(resample="3,1,1").sampling.resample == (3, 1, 1)
    blended = load(blend="poisson")
    assert blended.sampling.blend == "poisson" and blended.fingerprint != base.fingerprint
    for bad, msg in (("1,1", "--resample needs 1 or 3"), ("0", "integers >= 1"), ("x", "--resample must be")):
        with pytest.raises(LazySlideError, match=msg):
            load(resample=bad)


def test_level_sampling_option(tmp_path):
    """--level-sampling LEVEL=SAMPLER:STEPS:RESAMPLE: that level's tiles sample so (counted at
    the network); a malformed value is a one-line error naming the option."""
    out = tmp_path / "t.png"
    r = cli("tile", "--model", "random:test", "--level", "0", "--col", "0", "--row", "0", "-o",
            str(out), "--cache", str(tmp_path / "c"), "--json", "--level-sampling", "0=ddim:3,1,1:1")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["unet_evaluations"]["0"] == 5  # 3 + 1 + 1 (the preset: 8)
    for bad, msg in (("x=ddim:3,1,1:1", "expected LEVEL="), ("0=ddim:3,1:1", "3 step counts"),
                     ("0=nope:3,1,1:1", "unknown sampler"), ("7=ddim:3,1,1:1", "level 7"),
                     ("0=ddim:3,1,1:1:maybe",
                      "must be one of channels, no-channels, loop-repaint, loop-imagen, replace, poisson")):
        r = cli("tile", "--model", "random:test", "--level", "0", "--col", "0", "--row", "0",
                "-o", str(out), "--level-sampling", bad)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and msg in lines[0], r.stderr
    r = cli("info", "--model", "random:test")
    assert r.returncode == 0 and "blend replace" in r.stdout, r.stderr
    r = cli("tile", "--model", "random:test", "--level", "0", "--col", "0", "--row", "0", "-o",
            str(out), "--blend", "smudge")
    assert r.returncode == 2 and "invalid choice: 'smudge'" in r.stderr and "Traceback" not in r.stderr
    r = cli("tile", "--model", "random:test", "--level", "0", "--col", "0", "--row", "0", "-o",
            str(out), "--known-channels", "off")  # RePaint model: nothing to turn off
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "only a model with trained inpainting" in lines[0]
