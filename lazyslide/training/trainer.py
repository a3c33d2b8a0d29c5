"""Train one of the nine unets: checkpoints, resume, loss curve and sample grids.

Why not imagen-pytorch's ``ImagenTrainer``: its ``Imagen`` makes the low-resolution input by
nearest-neighbour downsampling of the target and takes the conditioning image as given, while
lazyslide's generator feeds area-downsampled neighbours and normalised, area-resized parent
windows; it also draws from the global RNG and checkpoints as pickles. This loop keeps the
pieces that matter from the same stack: imagen's Unet and loss (``objective``), accelerate (so
``accelerate launch lazyslide train ...`` trains on several GPUs), gradient clipping at 1 and
ema-pytorch's EMA, as ``ImagenTrainer`` uses them.

Run folder::

    RUN/config.json            level, unet, geometry, architecture, training settings
    RUN/checkpoint/            unet, ema, optimizer (.safetensors) + state.json (step)
    RUN/loss.csv, RUN/loss.png
    RUN/samples/step{N}.png    columns: [parent window [, footprint]] [known pixels, mask]
                               [low-res input] sample (EMA) real

A step is a pure function of (weights, seed, step), so a run killed after a checkpoint and
started again continues exactly where the checkpoint left it.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..conditioning import CONDITIONING, INPAINTING, cond_channels, resampling, to_uint8, trained_inpainting
from ..conditioning import conditioning as conditioning_of
from ..errors import LazySlideError
from ..methods import METHODS
from ..model import FORMAT as MODEL_FORMAT
from ..model import default_config
from ..networks import architecture, build_unet, denoiser
from ..sampler import SamplingConfig, TileNoise, derive_seed
from ..stage import Stage
from .dataset import PairDataset
from .objective import diffusion_loss

RUN_FORMAT = "lazyslide-run/1"
#: The parts of the model config a run records (all runs of one model must agree on them).
MODEL_KEYS = ("format", "preset", "geometry", "diffusion", "sampling", "background", "conditioning",
              "inpainting", "resampling")
#: Random crop size per cascade stage while training (None = whole images), per preset.
CROPS: dict[str, list[int | None]] = {
    "paper": [None, None, 256],  # the authors' third unet trains on 256 px crops
    "demo": [None, 32, 32],
    "test": [None, None, None],
}


class TrainError(LazySlideError):
    """A run that cannot start or resume as asked."""


@dataclass
class TrainSettings:
    batch_size: int = 16
    lr: float = 1e-4
    seed: int = 0
    crop: int | None = None
    ema_beta: float = 0.9999
    ema_update_every: int = 1
    max_grad_norm: float = 1.0
    min_snr_gamma: float = 5.0
    #: how a batch is drawn: "pairs" (every pair equally likely, as the authors train) or
    #: "slides" (a slide, then one of its pairs): with several sources, a large one (a TMA
    #: overview's thousands of level-0 targets) does not drown a small one (a needle core's dozens)
    balance: str = "pairs"


BALANCE = ("pairs", "slides")


def model_config(preset: str | None, geometry: dict) -> dict[str, Any]:
    """The model config a run trains against: the preset's, with the dataset's geometry (mpp)."""
    if preset is None:
        raise TrainError("the dataset has no preset; prepare it with --preset")
    try:
        config = default_config(preset)
    except LazySlideError as e:
        raise TrainError(f"dataset preset: {e}") from None
    g0 = dict(config["geometry"], mpp=None)
    if dict(geometry, mpp=None) != g0:
        raise TrainError(f"the dataset's geometry {geometry} is not the {preset!r} preset's "
                         f"{config['geometry']}: prepare it again with --preset {preset}")
    config["geometry"] = dict(geometry)
    return config


class Trainer:
    """One unet (level, stage) of a model config, trained on one level of a prepared dataset."""

    def __init__(self, data: str | Path, run: str | Path, level: int, unet: int,
                 settings: TrainSettings | None = None, *, device: str | None = None,
                 init: str | None = None, conditioning: str | None = None,
                 inpainting: str | None = None) -> None:
        from accelerate import Accelerator
        from ema_pytorch import EMA

        self.run = Path(run)
        self.dataset = PairDataset(data, level)
        model_cfg = model_config(self.dataset.preset, self.dataset.manifest["geometry"])
        if conditioning is not None:  # another than the preset's (``conditioning.CONDITIONING``)
            if conditioning not in CONDITIONING:
                raise TrainError(f"--conditioning must be one of {', '.join(CONDITIONING)}, "
                                 f"got {conditioning!r}")
            model_cfg["conditioning"] = conditioning
        if inpainting is not None:  # another than the preset's (``conditioning.INPAINTING``)
            if inpainting not in INPAINTING:
                raise TrainError(f"--inpainting must be one of {', '.join(INPAINTING)}, "
                                 f"got {inpainting!r}")
            model_cfg["inpainting"] = inpainting
        self.dataset.conditioning = conditioning_of(model_cfg)
        self.dataset.resampling = resampling(model_cfg)
        if trained_inpainting(model_cfg, level):  # the masks of the plan the slide uses
            self.dataset.inpainting = METHODS["urcdm"].plan
        n_stages = len(self.dataset.geometry.cascade)
        if not 1 <= unet <= n_stages:
            raise TrainError(f"--unet must be in 1..{n_stages}, got {unet}")
        self.level, self.stage = level, unet - 1
        settings = settings or TrainSettings()
        if settings.balance not in BALANCE:
            raise TrainError(f"balance must be one of {', '.join(BALANCE)}, got {settings.balance!r}")
        if settings.crop is None:
            settings.crop = CROPS.get(self.dataset.preset, [None] * n_stages)[self.stage]
        self.settings = settings
        self.config = {
            "format": RUN_FORMAT,
            "level": level,
            "unet": unet,
            "preset": self.dataset.preset,
            "model": {k: model_cfg[k] for k in MODEL_KEYS if k in model_cfg},
            "architecture": model_cfg["unets"][level][self.stage],
            "settings": asdict(settings),
            "dataset": {"path": str(Path(data).resolve()), "pairs": len(self.dataset)},
        }
        self._check_run()
        fresh = not (self.run / "checkpoint" / "state.json").is_file()
        self.accelerator = Accelerator(cpu=device == "cpu")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed("train-init", settings.seed, level, self.stage))
            net = build_unet(model_cfg, level, self.stage)
        if init is not None and fresh:  # a resumed run continues from its checkpoint instead
            self._start_from(init, model_cfg, net)
        self.optimizer = torch.optim.Adam(net.parameters(), lr=settings.lr, betas=(0.9, 0.99), eps=1e-8)
        self.unet, self.optimizer = self.accelerator.prepare(net, self.optimizer)
        self.ema = EMA(self.accelerator.unwrap_model(self.unet), beta=settings.ema_beta,
                       update_after_step=0, update_every=settings.ema_update_every)
        self.ema.to(self.accelerator.device)
        self.model_config = model_cfg
        #: objective, schedules and sampling of this cascade stage (what the generator uses)
        self.cascade_stage = Stage.from_config(
            model_cfg, self.stage, SamplingConfig.from_dict(model_cfg["sampling"]).for_level(level))
        self.step = 0
        self._resume()

    def _start_from(self, spec: str, model_cfg: dict[str, Any], net: torch.nn.Module) -> None:
        """Fine-tuning: start from the (level, unet) weights of a trained model, which must have
        this unet's architecture; a narrower conditioning image is widened (``load_widened``)."""
        from ..model import URCDM

        lv, st = self.level, self.stage
        try:
            source = URCDM.from_spec(spec)
        except LazySlideError as e:
            raise TrainError(f"--init: {e}") from None
        if source.config["unets"][lv][st] != model_cfg["unets"][lv][st] \
                or source.config["geometry"]["cascade"] != model_cfg["geometry"]["cascade"]:
            raise TrainError(f"--init {spec}: its level {lv} unet {st + 1} has another architecture "
                             "or cascade than this dataset's preset")
        state = {k: v.float() for k, v in source.unet(lv, st).state_dict().items()}
        before = cond_channels(source.config, lv)
        try:
            architecture(model_cfg).load_widened(net, state, before)
        except LazySlideError as e:
            raise TrainError(f"--init {spec}: {e}") from None
        # what the starting model learnt stays learnt: evaluate must not take it as held-out
        learnt = source.config.get("training_data")
        self.config["init"] = {"model": spec, "fingerprint": source.fingerprint,
                               **({"training_data": learnt} if learnt else {})}
        (self.run / "config.json").write_text(json.dumps(self.config, indent=1) + "\n")

    # -- run folder --------------------------------------------------------------------------
    def _check_run(self) -> None:
        cfg_path = self.run / "config.json"
        if cfg_path.is_file():
            try:
                old = json.loads(cfg_path.read_text())
            except json.JSONDecodeError as e:
                raise TrainError(f"{cfg_path}: not valid JSON ({e})") from None
            if old.get("format") != RUN_FORMAT:
                raise TrainError(f"{self.run} is not a lazyslide training run")
            mine = json.loads(json.dumps(self.config))
            if isinstance(old.get("settings"), dict):  # runs from before a setting existed
                old["settings"] = {**asdict(TrainSettings()), **old["settings"]}
            for key in ("level", "unet", "preset", "model", "architecture", "settings"):
                if old.get(key) != mine[key]:
                    raise TrainError(
                        f"{self.run} holds a run with another {key} ({json.dumps(old.get(key))[:120]}, "
                        f"asked for {json.dumps(mine[key])[:120]}); resume it with the same "
                        "arguments or train into a new folder")
            if "init" in old:  # provenance of a fine-tuned run, kept across resumes
                self.config["init"] = old["init"]
        elif self.run.exists() and any(self.run.iterdir()):
            raise TrainError(f"{self.run} exists and is not a training run; choose a new folder")
        self.run.mkdir(parents=True, exist_ok=True)
        cfg_path.write_text(json.dumps(self.config, indent=1) + "\n")

    def _resume(self) -> None:
        ckpt = self.run / "checkpoint"
        if not (ckpt / "state.json").is_file():
            return
        try:
            state = json.loads((ckpt / "state.json").read_text())
            net = self.accelerator.unwrap_model(self.unet)
            net.load_state_dict(load_file(ckpt / "unet.safetensors"))
            self.ema.load_state_dict(load_file(ckpt / "ema.safetensors"))
            self.optimizer.load_state_dict(_load_optimizer(ckpt / "optimizer.safetensors"))
        except (OSError, RuntimeError, KeyError, ValueError, SafetensorError) as e:
            raise TrainError(f"{ckpt}: checkpoint unusable ({str(e).splitlines()[0][:200]}); "
                             "remove it to start over") from None
        self.step = int(state["step"])
        _truncate_log(self.run / "loss.csv", self.step)

    def save_checkpoint(self) -> None:
        """Write the checkpoint folder atomically (temp folder, then rename)."""
        if not self.accelerator.is_main_process:
            return
        tmp, final = self.run / "checkpoint.tmp", self.run / "checkpoint"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        net = self.accelerator.unwrap_model(self.unet)
        save_file(_contiguous(net.state_dict()), tmp / "unet.safetensors")
        save_file(_contiguous(self.ema.state_dict()), tmp / "ema.safetensors")
        _save_optimizer(self.optimizer.state_dict(), tmp / "optimizer.safetensors")
        (tmp / "state.json").write_text(json.dumps({"step": self.step, "time": time.time()}) + "\n")
        old = self.run / "checkpoint.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)

    # -- training ------------------------------------------------------------------------------
    def train_step(self) -> float:
        s, st = self.settings, self.cascade_stage
        g = torch.Generator().manual_seed(
            derive_seed("train", s.seed, self.level, self.stage, self.step, self.accelerator.process_index))
        if s.balance == "slides":
            index = self.dataset.draw_by_slide(s.batch_size, g)
        else:
            index = torch.randint(len(self.dataset), (s.batch_size,), generator=g)
        b = self.dataset.stage_batch(index, self.stage, generator=g, crop=s.crop)
        dev = self.accelerator.device
        self.unet.train()
        # Layers that draw from the global RNG (dropout) get a per-step seed too.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed("train-global", s.seed, self.step))
            loss = diffusion_loss(
                denoiser(self.model_config, self.unet), b.x0.to(dev), schedule=st.schedule,
                objective=st.objective,
                generator=g, lowres=None if b.lowres is None else b.lowres.to(dev),
                lowres_schedule=st.lowres_schedule, cond=None if b.cond is None else b.cond.to(dev),
                min_snr_gamma=s.min_snr_gamma)
            self.accelerator.backward(loss)
        self.accelerator.clip_grad_norm_(self.unet.parameters(), s.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update()
        self.step += 1
        return float(loss.detach())

    def fit(self, steps: int, *, checkpoint_every: int = 500, sample_every: int = 0,
            progress: bool = True, max_seconds: float | None = None) -> dict[str, Any]:
        """Train up to ``steps`` (total, counting resumed ones); returns a summary.

        ``max_seconds`` stops earlier, at the first step past that much wall-clock time, with a
        checkpoint and sample grid there, so a run fits a job slot and resumes in the next one.
        """
        from tqdm import tqdm

        start, t0 = self.step, time.perf_counter()
        deadline = None if max_seconds is None else t0 + max_seconds
        log = _LossLog(self.run / "loss.csv")
        bar = tqdm(total=steps, initial=self.step, desc=f"level {self.level} unet {self.stage + 1}",
                   unit="step", disable=not progress or not self.accelerator.is_main_process)
        loss = float("nan")
        while self.step < steps:
            loss = self.train_step()
            log.add(self.step, loss)
            bar.update()
            bar.set_postfix(loss=f"{log.mean():.4f}")
            last = self.step == steps or (deadline is not None and time.perf_counter() >= deadline)
            if self.step % checkpoint_every == 0 or last:
                log.flush()
                self.save_checkpoint()
                self.plot_loss()
            if sample_every and (self.step % sample_every == 0 or last) \
                    and self.accelerator.is_main_process:
                self.sample_grid()
            if last:
                break
        bar.close()
        log.flush()
        return {"steps": self.step, "new_steps": self.step - start, "loss": loss,
                "seconds": time.perf_counter() - t0, "stopped_early": self.step < steps}

    # -- outputs -------------------------------------------------------------------------------
    def plot_loss(self) -> Path | None:
        rows = _read_log(self.run / "loss.csv")
        if not rows or not self.accelerator.is_main_process:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps, losses = np.array(rows).T
        k = max(1, len(losses) // 50)
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        ax.plot(steps, losses, lw=0.5, alpha=0.4, label="loss")
        ax.plot(steps[k - 1:], smooth, lw=1.5, label=f"mean of {k}")
        ax.set_xlabel("step")
        ax.set_ylabel("weighted loss")
        ax.set_yscale("log")
        ax.set_title(f"level {self.level} unet {self.stage + 1}")
        ax.legend()
        fig.tight_layout()
        path = self.run / "loss.png"
        fig.savefig(path)
        plt.close(fig)
        return path

    @torch.no_grad()
    def sample_grid(self, n: int = 4) -> Path:
        """EMA samples for ``n`` fixed dataset pairs, beside their inputs and the real target."""
        g = self.dataset.geometry
        size, dev = g.cascade[self.stage], self.accelerator.device
        index = torch.linspace(0, len(self.dataset) - 1, n).round().long()
        b = self.dataset.stage_batch(index, self.stage, augment=False,
                                     generator=torch.Generator().manual_seed(0))
        noise = TileNoise([derive_seed("train-sample", i) for i in range(n)], dev)
        ema = self.ema.ema_model.eval()
        known = mask = None
        if self.dataset.inpainting is not None:  # inpaint the target's own known pixels
            known, mask = b.x0.to(dev), b.cond[:, -1:].to(dev) > 0.5
        x = self.cascade_stage.run(
            denoiser(self.model_config, ema), noise, size,
            lowres=None if b.lowres is None else b.lowres.to(dev),
            cond=None if b.cond is None else b.cond.to(dev), known=known, mask=mask)
        extra = INPAINTING["trained"] if mask is not None else 0  # the known pixels and mask
        window = None if b.cond is None else b.cond[:, :b.cond.shape[1] - extra]
        conds = [] if window is None or not window.shape[1] else list(window.split(3, dim=1))
        if mask is not None:  # the known pixels, and the mask in white
            conds += [b.cond[:, -4:-1], b.cond[:, -1:].expand(-1, 3, -1, -1) * 2 - 1]
        columns = [*conds, *([] if b.lowres is None else [b.lowres]), x.cpu(), b.x0]
        grid = np.concatenate([np.concatenate(list(to_uint8(c)), axis=0) for c in columns], axis=1)
        from PIL import Image

        out = self.run / "samples" / f"step{self.step:06d}.png"
        out.parent.mkdir(exist_ok=True)
        scale = max(1, 128 // size)
        Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale),
                                     Image.NEAREST).save(out)
        return out


# -- helpers ------------------------------------------------------------------------------------
def _contiguous(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in sd.items()}


def _save_optimizer(sd: dict[str, Any], path: Path) -> None:
    """torch optimizer state as safetensors: tensors flat, the rest as JSON metadata."""
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for name, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{name}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{name}"] = v
    meta = {"param_groups": json.dumps(sd["param_groups"]), "scalars": json.dumps(scalars)}
    save_file(tensors, path, metadata=meta)


def _load_optimizer(path: Path) -> dict[str, Any]:
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    state: dict[int, dict[str, Any]] = {}
    for key, v in [*tensors.items(), *json.loads(meta["scalars"]).items()]:
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    return {"state": state, "param_groups": json.loads(meta["param_groups"])}


class _LossLog:
    """loss.csv (step, loss), appended in blocks; ``mean`` of the recent window for the bar."""

    def __init__(self, path: Path) -> None:
        self.path, self.pending, self.recent = path, [], []

    def add(self, step: int, loss: float) -> None:
        self.pending.append((step, loss))
        self.recent = (self.recent + [loss])[-50:]

    def mean(self) -> float:
        return float(np.mean(self.recent)) if self.recent else float("nan")

    def flush(self) -> None:
        new = not self.path.exists()
        with open(self.path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["step", "loss"])
            w.writerows((s, f"{v:.6g}") for s, v in self.pending)
        self.pending = []


def _read_log(path: Path) -> list[tuple[int, float]]:
    if not path.exists():
        return []
    with open(path) as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


def _truncate_log(path: Path, step: int) -> None:
    """Drop log rows after the checkpoint (steps that will be trained again)."""
    rows = [r for r in _read_log(path) if r[0] <= step]
    if path.exists():
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", "loss"])
            w.writerows((s, f"{v:.6g}") for s, v in rows)


def run_summary(run: str | Path) -> dict[str, Any]:
    """A finished or running run's config and checkpoint step (for ``assemble``)."""
    run = Path(run)
    try:
        config = json.loads((run / "config.json").read_text())
        state = json.loads((run / "checkpoint" / "state.json").read_text())
    except FileNotFoundError as e:
        raise TrainError(f"{run}: not a training run with a checkpoint ({e.filename} missing)") from None
    except json.JSONDecodeError as e:
        raise TrainError(f"{run}: unreadable run files ({e})") from None
    if config.get("format") != RUN_FORMAT or config.get("model", {}).get("format") != MODEL_FORMAT:
        raise TrainError(f"{run}: not a lazyslide training run")
    return {**copy.deepcopy(config), "step": int(state["step"])}
