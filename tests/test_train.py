"""Training on the test preset: every unet trains, checkpoints, resumes, assembles and samples."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lazyslide import URCDM, Slide
from lazyslide.cli import main
from lazyslide.errors import ModelError
from lazyslide.geometry import TileId, preset
from lazyslide.training.assemble import assemble
from lazyslide.training.prepare import DatasetError, prepare
from lazyslide.training.trainer import Trainer, TrainError, TrainSettings

from .test_prepare import SVS

SETTINGS = TrainSettings(batch_size=2, lr=1e-3)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """The test preset at 2 um/px (the slide is 554 x 740 px at level 2), sparse targets."""
    import dataclasses

    out = tmp_path_factory.mktemp("train") / "ds"
    prepare([SVS], out, dataclasses.replace(preset("test"), mpp=2.0), preset="test",
            strides=[4, 16, 64], progress=False, report=lambda m: None)
    return out


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("runs")
    out = []
    for level in range(3):
        for unet in (1, 2, 3):
            run = root / f"l{level}u{unet}"
            t = Trainer(data, run, level, unet, SETTINGS)
            result = t.fit(3, checkpoint_every=2, sample_every=3, progress=False)
            assert result["steps"] == 3
            out.append(run)
    return out


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoint" / "unet.safetensors")


def test_every_unet_trains_and_writes_its_outputs(runs, data, tmp_path):
    for run in runs:
        assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 3
        assert (run / "loss.png").stat().st_size > 0
        assert (run / "samples" / "step000003.png").is_file()
        rows = (run / "loss.csv").read_text().splitlines()
        assert rows[0] == "step,loss" and [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]
    # training moved the weights away from their (seeded) initialisation
    init = Trainer(data, tmp_path / "fresh", 0, 1, SETTINGS).unet.state_dict()
    trained = _weights(runs[0])
    assert any(not torch.equal(init[k], trained[k]) for k in init)


def test_resume_continues_the_same_run(data, tmp_path):
    """3 + 3 steps through a checkpoint equal 6 steps in one go, bit for bit."""
    straight = Trainer(data, tmp_path / "a", 2, 2, SETTINGS)
    straight.fit(6, checkpoint_every=100, progress=False)
    first = Trainer(data, tmp_path / "b", 2, 2, SETTINGS)
    first.fit(3, checkpoint_every=100, progress=False)
    again = Trainer(data, tmp_path / "b", 2, 2, SETTINGS)  # a fresh process would do the same
    assert again.step == 3
    again.fit(6, checkpoint_every=100, progress=False)
    for name in ("unet", "ema"):
        a = load_file(tmp_path / "a" / "checkpoint" / f"{name}.safetensors")
        b = load_file(tmp_path / "b" / "checkpoint" / f"{name}.safetensors")
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    rows = (tmp_path / "b" / "loss.csv").read_text().splitlines()[1:]
    assert rows == (tmp_path / "a" / "loss.csv").read_text().splitlines()[1:]


def _step(state: Path) -> int:
    try:
        return json.loads(state.read_text())["step"]
    except (OSError, ValueError):  # not written yet, or being swapped in
        return -1


def test_killed_run_resumes_at_its_checkpoint(data, tmp_path):
    run = tmp_path / "run"
    def cmd(steps: int) -> list[str]:
        return [sys.executable, "-m", "lazyslide.cli", "train", "--data", str(data), "--level", "1",
                "--unet", "1", "-o", str(run), "--steps", str(steps), "--checkpoint-every", "5",
                "--batch-size", "2", "--quiet"]

    proc = subprocess.Popen(cmd(100000), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    state = run / "checkpoint" / "state.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and _step(state) < 10:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    step = json.loads(state.read_text())["step"]
    assert step >= 10 and step % 5 == 0
    out = subprocess.run(cmd(step + 2), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"resuming {run} at step {step}" in out.stdout
    assert json.loads(state.read_text())["step"] == step + 2
    steps = [int(r.split(",")[0]) for r in (run / "loss.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, step + 3))


def test_assemble_load_and_sample(runs, tmp_path):
    model = assemble(runs, tmp_path / "model", dtype="float16")
    assert model.config["training"]["level2_unet3"]["steps"] == 3
    weights = load_file(tmp_path / "model" / "level0_unet1.safetensors")
    assert weights["final_conv.weight"].dtype == torch.float16
    loaded = URCDM.load(tmp_path / "model")
    assert loaded.geometry.mpp == 2.0
    slide = Slide(loaded, seed=1, make_level0=False)
    tile = slide.tile(1, 0, 0)
    assert tile.shape == (32, 32, 3) and tile.dtype.name == "uint8"
    # and through the CLI
    assert main(["assemble", *map(str, runs), "-o", str(tmp_path / "m2")]) == 0
    assert main(["assemble", *map(str, runs), "-o", str(tmp_path / "m2")]) == 2  # exists
    # sampling steps and the background threshold are the model's, set at assembly
    assert main(["assemble", *map(str, runs), "-o", str(tmp_path / "m3"), "--sampling-steps", "4,2,2",
                 "--sampler", "dpmpp-2m", "--resample", "1", "--background-sat", "0.08"]) == 0
    tuned = URCDM.load(tmp_path / "m3")
    assert tuned.config["sampling"]["steps"] == [4, 2, 2] and tuned.background.sat_min == 0.08
    assert tuned.sampling.sampler == "dpmpp-2m" and tuned.sampling.resample == (1, 1, 1)
    assert tuned.fingerprint != loaded.fingerprint  # so its tiles never mix with the others'
    assert main(["assemble", *map(str, runs), "-o", str(tmp_path / "m4"), "--background-sat", "2"]) == 2
    assert main(["assemble", *map(str, runs), "-o", str(tmp_path / "m4"), "--resample", "1,1"]) == 2
    with pytest.raises(TrainError, match="integers >= 1"):
        assemble(runs, tmp_path / "m4", sampling={"steps": [0, 1, 1]})
    with pytest.raises(TrainError, match="--background-blur: background fill_blur must be a radius"):
        assemble(runs, tmp_path / "m4", background_blur=100)
    assert not (tmp_path / "m4").exists()
    # a blur of 0 is the paper's fill: left out of the config, the fingerprint unchanged
    unblurred = assemble(runs, tmp_path / "m5", dtype="float16", background_blur=0)
    assert unblurred.fingerprint == model.fingerprint
    assert assemble(runs, tmp_path / "m6", background_blur=2).background.fill_blur == 2.0
    # the same weights run channels-last: another fingerprint, the same tiles within 1 level
    assert main(["assemble", *map(str, runs), "-o", str(tmp_path / "m7"), "--dtype", "float16",
                 "--architecture", "imagen-unet-channels-last"]) == 0
    fast = URCDM.load(tmp_path / "m7")
    assert fast.config["architecture"] == "imagen-unet-channels-last"
    assert fast.fingerprint != model.fingerprint
    assert fast.unet(1, 2).final_conv.weight.is_contiguous(memory_format=torch.channels_last)
    fast_tile = Slide(fast, seed=1, make_level0=False).tile(1, 0, 0)
    assert np.abs(fast_tile.astype(int) - tile.astype(int)).max() <= 1
    again = Slide(URCDM.load(tmp_path / "m7"), seed=1, make_level0=False).tile(1, 0, 0)
    assert np.array_equal(fast_tile, again)  # still a pure function of the address
    with pytest.raises(ModelError, match="unknown architecture"):
        assemble(runs, tmp_path / "m8", architecture="nope")


def test_assemble_refuses_incomplete_or_mixed_runs(runs, data, tmp_path):
    with pytest.raises(TrainError, match="missing runs for level 2 unet 3"):
        assemble(runs[:-1], tmp_path / "m")
    with pytest.raises(TrainError, match="both train level 0 unet 1"):
        assemble([runs[0], *runs], tmp_path / "m")
    other = tmp_path / "other"
    cfg = json.loads((runs[4] / "config.json").read_text())
    other.mkdir()
    (other / "checkpoint").mkdir()
    (other / "checkpoint" / "state.json").write_text('{"step": 1}')
    cfg["model"]["geometry"]["mpp"] = 9.0
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(TrainError, match="disagree on the model config"):
        assemble([*runs[:4], other, *runs[5:]], tmp_path / "m")


def test_mismatched_dataset_or_run_is_a_clear_error(data, runs, tmp_path, capsys):
    with pytest.raises(TrainError, match="another level"):
        Trainer(data, runs[0], 1, 1, SETTINGS)  # runs[0] is level 0 unet 1
    with pytest.raises(TrainError, match="another settings"):
        Trainer(data, runs[0], 0, 1, TrainSettings(batch_size=4))
    partial = tmp_path / "partial"
    prepare([SVS], partial, preset("test"), preset="test", levels=[2], strides=[64],
            progress=False, report=lambda m: None)
    with pytest.raises(DatasetError, match="no level 0 pairs"):
        Trainer(partial, tmp_path / "r", 0, 1, SETTINGS)
    manifest = json.loads((partial / "manifest.json").read_text())
    manifest["preset"] = "demo"
    (partial / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TrainError, match="not the 'demo' preset"):
        Trainer(partial, tmp_path / "r2", 2, 1, SETTINGS)
    assert main(["train", "--data", str(tmp_path / "nothing"), "--level", "0", "--unet", "1",
                 "-o", str(tmp_path / "r3")]) == 2
    assert "not a lazyslide dataset" in capsys.readouterr().err


def test_a_damaged_checkpoint_is_a_clear_error(data, tmp_path):
    run = tmp_path / "run"
    Trainer(data, run, 0, 2, SETTINGS).fit(1, checkpoint_every=1, progress=False)
    (run / "checkpoint" / "unet.safetensors").write_bytes(b"truncated")
    with pytest.raises(TrainError, match="checkpoint unusable"):
        Trainer(data, run, 0, 2, SETTINGS)


def test_time_limit_stops_with_a_checkpoint_and_resumes(data, tmp_path, capsys):
    """--max-minutes ends a run early, checkpointed where it stopped; the next call resumes."""
    run = tmp_path / "run"
    args = ["train", "--data", str(data), "--level", "0", "--unet", "3", "-o", str(run),
            "--batch-size", "2", "--checkpoint-every", "1000", "--sample-every", "1000", "--quiet"]
    assert main(args + ["--steps", "1000", "--max-minutes", "1e-6"]) == 0
    assert "time limit reached" in capsys.readouterr().out
    assert _step(run / "checkpoint" / "state.json") == 1  # checkpoint-every alone would not save
    assert (run / "samples" / "step000001.png").is_file()
    assert main(args + ["--steps", "3"]) == 0
    out = capsys.readouterr().out
    assert f"resuming {run} at step 1" in out and "time limit" not in out
    assert _step(run / "checkpoint" / "state.json") == 3
    assert main(args + ["--steps", "5", "--max-minutes", "0"]) != 0
    assert "--max-minutes must be positive" in capsys.readouterr().err
    assert _step(run / "checkpoint" / "state.json") == 3


def test_fine_tuning_into_the_footprint_conditioning(data, tmp_path, capsys):
    """`train --init MODEL --conditioning window+footprint`: the run starts from the model's
    weights, widened (zero weights on the footprint channels), so before any step its network
    computes exactly what the source unet does; the run records where it started, keeps that
    across a resume, and assembles into a window+footprint model."""
    source = URCDM.random("test", 4)
    t = Trainer(data, tmp_path / "ft", 1, 1, SETTINGS, init="random:test:4",
                conditioning="window+footprint")
    assert t.dataset.conditioning == "window+footprint"
    g = torch.Generator().manual_seed(0)
    x, cond = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    ls = torch.tensor([0.5, -1.0])
    with torch.no_grad():
        want = source.unet(1, 0)(x, ls, cond_images=cond)
        got = t.unet.eval()(x, ls, cond_images=torch.cat([cond, torch.randn(2, 3, 8, 8, generator=g)], 1))
    assert torch.allclose(want, got, atol=1e-5)
    t.fit(2, checkpoint_every=1, sample_every=2, progress=False)
    assert (tmp_path / "ft" / "samples" / "step000002.png").is_file()  # window, footprint, ...
    cfg = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert cfg["init"]["model"] == "random:test:4" and cfg["model"]["conditioning"] == "window+footprint"
    again = Trainer(data, tmp_path / "ft", 1, 1, SETTINGS, conditioning="window+footprint")
    assert again.step == 2 and again.config["init"] == cfg["init"]
    # a window+footprint batch: the footprint channels hold the target's centre of the window
    b = again.dataset.stage_batch(torch.tensor([0, 1]), 0, augment=False)
    assert b.cond.shape == (2, 6, 8, 8)
    with pytest.raises(TrainError, match="another model"):  # resumed with the paper's window
        Trainer(data, tmp_path / "ft", 1, 1, SETTINGS)
    with pytest.raises(TrainError, match="--init"):
        Trainer(data, tmp_path / "ft2", 1, 1, SETTINGS, init=str(tmp_path / "no-such-model"))
    with pytest.raises(SystemExit):  # argparse's choices
        main(["train", "--data", str(data), "--level", "1", "--unet", "1", "-o",
              str(tmp_path / "ft3"), "--conditioning", "everything"])
    assert "invalid choice: 'everything'" in capsys.readouterr().err


def test_trained_inpainting_learns_the_plans_masks_and_assembles(data, runs, tmp_path):
    """`train --inpainting trained`: each pair gets the known-pixel channels of a tile of the
    level's grid (the parity plan's mask for it, the target's own pixels under it); fine-tuning
    from a RePaint model widens the unet (before any step it computes what the source did,
    whatever the new channels hold); a one-tile level's runs assemble with either mode, two
    modes at levels with neighbours do not."""
    from lazyslide.plan import ParityPlan

    t = Trainer(data, tmp_path / "l1u1", 1, 1, SETTINGS, init="random:test:0", inpainting="trained")
    assert t.config["model"]["inpainting"] == "trained"
    index = torch.arange(16) % len(t.dataset)
    b = t.dataset.stage_batch(index, 0, generator=torch.Generator().manual_seed(1))
    assert b.cond.shape == (16, 7, 8, 8)
    geom, plan = t.dataset.geometry, ParityPlan()
    layouts = {plan.known_mask(geom, TileId(1, c, r))[::4, ::4].tobytes()
               for r in range(geom.grid(1)) for c in range(geom.grid(1))}
    masks = b.cond[:, 6] > 0.5
    assert {m.numpy().tobytes() for m in masks} <= layouts and len({m.numpy().tobytes() for m in masks}) > 2
    assert torch.allclose(b.cond[:, 3:6], b.x0 * masks[:, None])
    source = URCDM.random("test", 0).unet(1, 0)
    g = torch.Generator().manual_seed(0)
    x, cond = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    ls = torch.tensor([0.5, -1.0])
    with torch.no_grad():
        got = t.unet.eval()(x, ls, cond_images=torch.cat([cond, torch.randn(2, 4, 8, 8, generator=g)], 1))
        assert torch.allclose(source(x, ls, cond_images=cond), got, atol=1e-5)
    t.fit(1, checkpoint_every=1, sample_every=1, progress=False)
    assert (tmp_path / "l1u1" / "samples" / "step000001.png").is_file()
    trained = [tmp_path / "l1u1"]
    for level, unet in [(1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]:
        trained.append(tmp_path / f"l{level}u{unet}")
        Trainer(data, trained[-1], level, unet, SETTINGS, inpainting="trained").fit(
            1, checkpoint_every=1, progress=False)
    model = assemble([*runs[:3], *trained], tmp_path / "model")  # level 0: RePaint-era runs
    assert model.config["inpainting"] == "trained" and model.unet(2, 0).cond_images_channels == 7
    assert Slide(model, seed=0, make_level0=False).tile(2, 1, 0).shape == (32, 32, 3)
    with pytest.raises(TrainError, match=r"disagree on the model config \(inpainting\)"):
        assemble([*runs[:6], *trained[3:]], tmp_path / "mixed")  # level 1 RePaint, level 2 trained
    assert "inpainting" not in assemble(runs, tmp_path / "repaint").config  # as before it existed


def test_trained_inpainting_crops_hold_the_known_pixels_edge(data, tmp_path):
    """Crops of a stage trained on crops are placed over the line where the known pixels end
    in about BOUNDARY_CROPS of the samples (uniform crops rarely hold it), reproducibly, inside
    the image, with the known-pixel channels cut as the target is."""
    from lazyslide.training.dataset import BOUNDARY_CROPS, boundary_crop

    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[:, :4] = True  # a left strip: its edge is between columns 3 and 4

    def holds_edge(box):
        ox, oy = box
        assert 0 <= ox <= 24 and 0 <= oy <= 24
        return ox <= 3

    g = torch.Generator().manual_seed(0)
    boxes = [boundary_crop(mask, 8, g) for _ in range(400)]
    share = sum(map(holds_edge, boxes)) / len(boxes)
    uniform = 4 / 25  # offsets 0..3 of 0..24
    assert share > BOUNDARY_CROPS * 0.9 + uniform * (1 - BOUNDARY_CROPS) * 0.5
    g = torch.Generator().manual_seed(0)
    assert [boundary_crop(mask, 8, g) for _ in range(400)] == boxes
    g = torch.Generator().manual_seed(0)
    none = [boundary_crop(torch.zeros_like(mask), 8, g) for _ in range(400)]
    assert abs(sum(map(holds_edge, none)) / 400 - uniform) < 0.06

    t = Trainer(data, tmp_path / "crops", 2, 3, SETTINGS, init="random:test:0", inpainting="trained")
    b = t.dataset.stage_batch(torch.arange(16) % len(t.dataset), 2,
                              generator=torch.Generator().manual_seed(2), crop=8)
    assert b.x0.shape == (16, 3, 8, 8) and b.lowres.shape == (16, 3, 8, 8)
    masks = b.cond[:, -1:] > 0.5
    assert torch.allclose(b.cond[:, -4:-1], b.x0 * masks)
    partly = [bool(m.any()) and not bool(m.all()) for m in masks]
    assert sum(partly) >= 4  # crops across the edge (uniform 8 px crops of 32 px: ~1 in 8)


def test_balance_by_slide_draws_each_slide_equally_and_is_recorded(data, tmp_path):
    """A slide with 10 pairs beside one with 1000: "slides" draws each about half the time,
    only pairs of the drawn slide, reproducibly; the setting is part of the run (resume checks it)."""
    from lazyslide.training.dataset import PairDataset

    ds = object.__new__(PairDataset)
    ds.slide = np.array([3] * 1000 + [7] * 10)
    rng = torch.Generator().manual_seed(0)
    idx = ds.draw_by_slide(4000, rng)
    small = (ds.slide[idx.numpy()] == 7).mean()
    assert 0.45 < small < 0.55 and idx.min() >= 0 and idx.max() < 1010
    assert set(idx[ds.slide[idx.numpy()] == 7].tolist()) == set(range(1000, 1010))
    assert torch.equal(idx, ds.draw_by_slide(4000, torch.Generator().manual_seed(0)))
    run = tmp_path / "run"
    Trainer(data, run, 0, 1, TrainSettings(balance="slides")).fit(1, checkpoint_every=1, progress=False)
    assert json.loads((run / "config.json").read_text())["settings"]["balance"] == "slides"
    with pytest.raises(TrainError, match="another settings"):
        Trainer(data, run, 0, 1, TrainSettings())
    with pytest.raises(TrainError, match="balance must be one of"):
        Trainer(data, tmp_path / "r2", 0, 1, TrainSettings(balance="organs"))


def test_a_fine_tuned_model_keeps_what_its_starting_model_learnt(runs, data, tmp_path):
    """A run started from a model (`--init`) inherits that model's record of its training data,
    so `evaluate` never takes what the starting model learnt for held-out tissue (v10 is v9
    fine-tuned: v9 learnt all of cmu-skin, v10's own data only its training region). Runs from
    before the record was kept read it from the starting model."""
    base = assemble(runs, tmp_path / "base")
    cfg_path = tmp_path / "base" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    learnt = {"source": "cmu-skin", "region": "all"}
    cfg_path.write_text(json.dumps({**cfg, "training_data": [*base.config["training_data"], learnt]}))
    run = tmp_path / "ft"
    Trainer(data, run, 0, 1, SETTINGS, init=str(tmp_path / "base")).fit(1, checkpoint_every=1,
                                                                         progress=False)
    record = json.loads((run / "config.json").read_text())
    assert learnt in record["init"]["training_data"]
    model = assemble([run, *runs[1:]], tmp_path / "ft-model")
    assert learnt in model.config["training_data"]
    assert all(d in model.config["training_data"] for d in base.config["training_data"])
    del record["init"]["training_data"]  # a run from before the record
    (run / "config.json").write_text(json.dumps(record))
    assert learnt in assemble([run, *runs[1:]], tmp_path / "ft-model2").config["training_data"]
