"""The URCDM model: one cascade of three imagen-pytorch Unets per magnification level.

A model folder holds ``config.json`` and one safetensors file per unet
(``level{L}_unet{U}.safetensors``), so the nine unets can be trained apart. ``config.json``
records each file's SHA-256; the model's fingerprint is the hash of the config (and so of the
weights) and of the sampler version, and keys every tile in the store.

Specs accepted wherever a model is named: a folder path, ``demo`` (the bundled demo model), or
``random:PRESET[:INIT_SEED]`` (random-init weights, for tests and benchmarks).
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .background import BackgroundRule
from .conditioning import conditioning, inpainting, resampling
from .errors import ModelError
from .geometry import Geometry, GeometryError, preset
from .networks import Denoiser, architecture, build_unet
from .sampler import SCHEDULES, SamplingConfig, derive_seed

FORMAT = "lazyslide-urcdm/1"
#: Config keys left out of the fingerprint: they record where the weights came from, and change
#: no pixel. ``training_data``: the real images (``realdata`` specs or file names) and regions.
PROVENANCE = ("training_data",)

#: The bundled demo model's folder (``--model demo``).
DEMO_MODEL_DIR = Path(__file__).parent / "models" / "demo"

_COMMON = dict(layer_cross_attns=False, attn_heads=2, attn_dim_head=16)
#: Unet architectures per preset and cascade stage (the same at every level).
UNETS: dict[str, list[dict[str, Any]]] = {
    # The authors' ``unet_generator`` (scechnicka/URCDM scripts/train.py), argument for argument.
    # Without text, imagen-pytorch's cross-attention attends to the unet's time tokens, so it is
    # part of their network; attention heads and head size are imagen's defaults (8, 64).
    "paper": [
        dict(dim=256, dim_mults=[1, 2, 3, 4], num_resnet_blocks=3,
             layer_attns=[False, True, True, True], layer_cross_attns=[False, True, True, True]),
        dict(dim=128, dim_mults=[1, 2, 4, 8], num_resnet_blocks=2, memory_efficient=True,
             layer_attns=[False, False, False, True], layer_cross_attns=[False, False, True, True],
             init_conv_to_final_conv_residual=True),
        dict(dim=128, dim_mults=[1, 2, 4, 8], num_resnet_blocks=[2, 4, 6, 8], memory_efficient=True,
             layer_attns=False, layer_cross_attns=[False, False, False, True],
             init_conv_to_final_conv_residual=True),
    ],
    # Sized so the nine unets fit the bundled demo model's 25 MB (fp16) and train on a CPU.
    "demo": [
        dict(dim=24, dim_mults=[1, 2, 4], num_resnet_blocks=1,
             layer_attns=[False, False, True], **_COMMON),
        dict(dim=16, dim_mults=[1, 2, 4], num_resnet_blocks=1, layer_attns=False, **_COMMON),
        # Not memory_efficient: that variant processes nothing at full resolution after the
        # first conv, and after short training its output kept per-pixel noise it could not see.
        dict(dim=16, dim_mults=[1, 2, 4], num_resnet_blocks=1, layer_attns=False, **_COMMON),
    ],
    "test": [
        dict(dim=8, dim_mults=[1, 2], num_resnet_blocks=1, layer_attns=False, **_COMMON)
        for _ in range(3)
    ],
}
#: Prediction objectives per cascade stage where a preset departs from v everywhere.
OBJECTIVES: dict[str, list[str]] = {"paper": ["noise", "v", "v"]}
#: Noise schedules per cascade stage where a preset departs from imagen's (cosine, cosine,
#: linear). The demo's last stage trains for minutes: under the linear schedule it saw few
#: low-noise steps and left visible noise (x0 error at t = 0.125 twenty times that of the
#: upsampled input after 500 steps); cosine spends more of training there.
SCHEDULES_PER_PRESET: dict[str, list[str]] = {"demo": ["cosine", "cosine", "cosine"]}
#: What level >= 1 unets see of their parent, where a preset departs from the paper's window
#: (``conditioning.CONDITIONING``). The demo model trains for minutes: with the window alone its
#: level-1 unets put tissue where level 0 shows glass (IoU 0.55, 36 % of tissue over parent glass;
#: with it, after fine-tuning: 0.96 and 2 %, MODEL_CARD.md).
CONDITIONING_PER_PRESET: dict[str, str] = {"demo": "window+footprint"}
#: Named ways to sample any model (``--sampling-preset``): its sampling and background rule.
SAMPLING_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # The authors' (jameshball/kidney-diffusion sample_ultra_res.py over imagen-pytorch): imagen's
    # sampler and inpainting loop at its full timesteps, RePaint resamples R = 5 (their script
    # takes R from its command line without a default and the paper states none; 5 is imagen's
    # own default), known pixels put back as they are, background skipped at the deepest level
    # only and filled with the bilinearly upscaled parent.
    "paper": {
        "sampling": dict(sampler="ancestral-imagen", loop="imagen", steps=[1024, 256, 256],
                         resample=[5, 5, 5], threshold=0.95, blend="replace", levels={}),
        "background": dict(hue_min=0.5, sat_min=0.02, erode=5, dilate=51, enabled=True,
                           fill_blur=0.0, levels="deepest", fill="bilinear"),
    },
}
#: Background rules where a preset departs from ``BackgroundRule()``.
BACKGROUND: dict[str, dict[str, Any]] = {"paper": SAMPLING_PRESETS["paper"]["background"]}
#: How images go between resolutions, where a preset departs from area averaging
#: (``conditioning.RESAMPLING``): the authors' imagen-pytorch resizes with nearest neighbours.
RESAMPLING_PER_PRESET: dict[str, str] = {"paper": "nearest"}
#: Sampling defaults per preset: steps and RePaint resamples per cascade stage.
SAMPLING: dict[str, dict[str, Any]] = {
    "paper": SAMPLING_PRESETS["paper"]["sampling"],
    "demo": dict(steps=[16, 8, 8], resample=[2, 2, 2], threshold=0.95),
    "test": dict(steps=[4, 2, 2], resample=[2, 2, 2], threshold=0.95),
}


def default_config(preset_name: str) -> dict[str, Any]:
    """The full config of a preset, without weights."""
    geom = preset(preset_name)
    return {
        "format": FORMAT,
        "preset": preset_name,
        "geometry": geom.to_dict(),
        "unets": [copy.deepcopy(UNETS[preset_name]) for _ in geom.canvases],
        # imagen-pytorch's Imagen defaults (cosine, cosine, linear; lowres aug 'linear' at 0.2);
        # objectives noise, v, v (the authors'), v everywhere for the other presets.
        "diffusion": {
            "objectives": list(OBJECTIVES.get(preset_name, ["v"] * len(geom.cascade))),
            "schedules": list(SCHEDULES_PER_PRESET.get(
                preset_name, (["cosine", "cosine"] + ["linear"] * len(geom.cascade))[: len(geom.cascade)])),
            "lowres_noise_schedule": "linear",
            "lowres_noise_level": 0.2,
        },
        "sampling": SamplingConfig.from_dict(SAMPLING[preset_name]).to_dict(),
        "background": BackgroundRule(**BACKGROUND.get(preset_name, {})).to_dict(),
    } | ({"conditioning": CONDITIONING_PER_PRESET[preset_name]}
         if preset_name in CONDITIONING_PER_PRESET else {}) \
      | ({"resampling": RESAMPLING_PER_PRESET[preset_name]} if preset_name in RESAMPLING_PER_PRESET else {})


def file_name(level: int, stage: int) -> str:
    return f"level{level}_unet{stage + 1}.safetensors"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


class URCDM:
    """Nine (levels x stages) Unets, their config, and the fingerprint naming them."""

    def __init__(self, config: dict[str, Any], state: dict[tuple[int, int], dict] | None = None,
                 *, init_seed: int | None = None, source: str = "") -> None:
        self.config = config
        self.source = source
        self._init_seed = init_seed
        self._state = state if state is not None else {}
        self._unets: dict[tuple[int, int], nn.Module] = {}
        self._lock = threading.Lock()
        self.device = torch.device("cpu")
        self._validate()
        # provenance (what the model learnt from) names the model's data, not its tiles
        tiles = {k: v for k, v in config.items() if k not in PROVENANCE}
        payload = json.dumps(tiles, sort_keys=True) + f"|sampler={self.sampling.version}"
        self.fingerprint = hashlib.sha256(payload.encode()).hexdigest()[:16]

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def random(cls, preset_name: str, init_seed: int = 0) -> URCDM:
        """Random-init weights; each unet seeded from (init_seed, level, stage)."""
        try:
            config = default_config(preset_name)
        except GeometryError as e:
            raise ModelError(str(e)) from None
        config["weights"] = {"random_init_seed": init_seed, "torch": torch.__version__}
        return cls(config, init_seed=init_seed, source=f"random:{preset_name}:{init_seed}")

    @classmethod
    def load(cls, folder: str | Path) -> URCDM:
        """Load a model folder, verifying every file (missing, truncated, modified, mismatched)."""
        folder = Path(folder)
        cfg_path = folder / "config.json"
        if not folder.is_dir():
            raise ModelError(f"{folder}: not a model folder (no such directory)")
        if not cfg_path.is_file():
            raise ModelError(f"{cfg_path}: missing (a model folder needs config.json)")
        try:
            config = json.loads(cfg_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelError(f"{cfg_path}: not valid JSON ({e})") from None
        if not isinstance(config, dict) or config.get("format") != FORMAT:
            raise ModelError(f"{cfg_path}: not a lazyslide model config (format != {FORMAT})")
        weights = config.get("weights")
        if not isinstance(weights, dict):
            raise ModelError(f"{cfg_path}: no 'weights' table of file checksums")
        state = {}
        model = cls(config, state, source=str(folder))  # validates the config first
        for level, stages in enumerate(config["unets"]):
            for stage in range(len(stages)):
                name = file_name(level, stage)
                path = folder / name
                if name not in weights:
                    raise ModelError(f"{cfg_path}: no checksum for {name}")
                if not path.is_file():
                    raise ModelError(f"{path}: missing weights file")
                if _sha256(path) != weights[name]:
                    raise ModelError(f"{path}: checksum mismatch (file truncated, corrupt or "
                                     "replaced since the config was written)")
                try:
                    state[(level, stage)] = load_file(path)
                except (SafetensorError, OSError, ValueError) as e:
                    raise ModelError(f"{path}: unreadable safetensors file ({e})") from None
                model._build(level, stage)  # a mismatch against the config fails here
        return model

    @classmethod
    def from_spec(cls, spec: str) -> URCDM:
        """``random:PRESET[:SEED]``, ``demo`` or a folder path."""
        if not isinstance(spec, str) or not spec.strip():
            raise ModelError("empty model spec: give a model folder, 'demo' or "
                             "'random:PRESET[:INIT_SEED]'")
        if spec.startswith("random:"):
            parts = spec.split(":")
            if len(parts) not in (2, 3) or not parts[1]:
                raise ModelError(f"bad model spec {spec!r}: expected random:PRESET[:INIT_SEED]")
            try:
                seed = int(parts[2]) if len(parts) == 3 else 0
            except ValueError:
                raise ModelError(f"bad model spec {spec!r}: INIT_SEED must be an integer") from None
            return cls.random(parts[1], seed)
        if spec == "demo":
            if not (DEMO_MODEL_DIR / "config.json").is_file():
                raise ModelError("the bundled demo model is not in this install yet; use "
                                 "random:demo (random weights) or a trained model folder")
            return cls.load(DEMO_MODEL_DIR)
        if not Path(spec).exists():
            raise ModelError(f"bad model spec {spec!r}: no such folder (use a model folder, "
                             "'demo' or 'random:PRESET[:INIT_SEED]')")
        return cls.load(spec)

    def save(self, folder: str | Path, dtype: torch.dtype | None = None) -> None:
        """Write config.json and the nine safetensors files (checksums in the config).

        ``dtype`` stores floating-point weights in another precision (they load back into the
        float32 unets).
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        weights = {}
        for level, stage in self.unet_keys():
            name = file_name(level, stage)
            sd = {k: v.detach().cpu().contiguous() for k, v in self.unet(level, stage).state_dict().items()}
            if dtype is not None:
                sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
            save_file(sd, folder / name)
            weights[name] = _sha256(folder / name)
        config = dict(self.config, weights=weights)
        (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    def with_sampling(self, **changes: Any) -> URCDM:
        """The same weights with other sampling settings (``SamplingConfig`` fields: steps,
        resample, threshold, sampler, ..., at every level): a different fingerprint, so its tiles are stored
        apart from the original's. Built unets are shared (eval mode, frozen)."""
        return self._with_config("sampling", self.sampling.with_changes(**changes).to_dict())

    def with_background(self, **changes: Any) -> URCDM:
        """The same weights with another background rule (``BackgroundRule`` fields): a
        different fingerprint, as ``with_sampling``."""
        rule = BackgroundRule.from_dict({**self.background.to_dict(), **changes})
        return self._with_config("background", rule.to_dict())

    def _with_config(self, key: str, value: Any) -> URCDM:
        """The same weights (built unets shared) with ``config[key] = value``."""
        config = copy.deepcopy(self.config)
        config[key] = value
        with self._lock:
            state, unets = dict(self._state), dict(self._unets)
        model = URCDM(config, state, init_seed=self._init_seed, source=self.source)
        model._unets = unets
        return model.to(self.device)

    def with_sampling_preset(self, name: str) -> URCDM:
        """The same weights sampled as ``SAMPLING_PRESETS[name]`` says (sampling and background)."""
        if name not in SAMPLING_PRESETS:
            raise ModelError(f"unknown sampling preset {name!r}; choose from {', '.join(SAMPLING_PRESETS)}")
        preset_ = SAMPLING_PRESETS[name]
        return self.with_sampling(**preset_["sampling"]).with_background(**preset_["background"])

    def with_sampling_steps(self, steps: list[int]) -> URCDM:
        """``with_sampling(steps=steps)``: other step counts per cascade stage."""
        return self.with_sampling(steps=list(steps))

    def reference(self, device: str | None = None) -> ModelRef:
        """What another process (a Dask worker) needs to rebuild exactly this model."""
        folder = None
        if self._init_seed is None:
            if not Path(self.source).is_dir():
                raise ModelError(f"model {self.source!r} has no folder another process could load")
            folder = str(Path(self.source).resolve())
        return ModelRef(copy.deepcopy(self.config), folder, self._init_seed, device,
                        self.fingerprint, self.source)

    # -- access ---------------------------------------------------------------------------------
    @property
    def geometry(self) -> Geometry:
        return self._geometry

    @property
    def background(self) -> BackgroundRule:
        return self._background

    @property
    def sampling(self) -> SamplingConfig:
        return self._sampling

    def unet_keys(self) -> list[tuple[int, int]]:
        return [(lv, st) for lv in range(self.geometry.levels) for st in range(len(self.geometry.cascade))]

    def unet(self, level: int, stage: int) -> nn.Module:
        """The unet for (level, cascade stage), built on first use."""
        with self._lock:
            if (level, stage) not in self._unets:
                self._build(level, stage)
            return self._unets[(level, stage)]

    def denoiser(self, level: int, stage: int) -> Denoiser:
        """The unet of (level, stage) behind the one call signature sampling uses."""
        return architecture(self.config).denoiser(self.unet(level, stage))

    def to(self, device: str | torch.device) -> URCDM:
        self.device = torch.device(device)
        with self._lock:
            for k, u in self._unets.items():
                self._unets[k] = u.to(self.device)
        return self

    def param_counts(self) -> dict[tuple[int, int], int]:
        """Parameters per unet, counted on the meta device (no memory is allocated)."""
        out = {}
        for level, stage in self.unet_keys():
            with torch.device("meta"):
                u = self._construct(level, stage)
            out[(level, stage)] = sum(p.numel() for p in u.parameters())
        return out

    # -- internals -------------------------------------------------------------------------------
    def _validate(self) -> None:
        c = self.config
        try:
            self._geometry = Geometry.from_dict(c["geometry"])
            self._background = BackgroundRule.from_dict(c.get("background", {}))
            n_levels, n_stages = self._geometry.levels, len(self._geometry.cascade)
            d, s = c["diffusion"], c["sampling"]
            shapes = {
                "unets": (c["unets"], n_levels),
                "diffusion.objectives": (d["objectives"], n_stages),
                "diffusion.schedules": (d["schedules"], n_stages),
                "sampling.steps": (s["steps"], n_stages),
                "sampling.resample": (s["resample"], n_stages),
            }
        except (KeyError, TypeError) as e:
            raise ModelError(f"model config incomplete: missing {e}") from None
        except GeometryError as e:
            raise ModelError(f"model config geometry: {e}") from None
        for name, (value, n) in shapes.items():
            if not isinstance(value, list) or len(value) != n:
                raise ModelError(f"model config {name} must be a list of {n} entries")
        if any(not isinstance(st, list) or len(st) != n_stages for st in c["unets"]):
            raise ModelError(f"model config unets: each level needs {n_stages} unet configs")
        for o in d["objectives"]:
            if o not in ("v", "noise", "x_start"):
                raise ModelError(f"model config: unknown objective {o!r}")
        for sch in [*d["schedules"], d["lowres_noise_schedule"]]:
            if sch not in SCHEDULES:
                raise ModelError(f"model config: unknown noise schedule {sch!r}")
        self._sampling = SamplingConfig.from_dict(s)
        for level in self._sampling.levels:
            steps = self._sampling.for_level(level).steps
            if level >= n_levels or len(steps) != n_stages:
                raise ModelError(f"model config sampling levels: level {level} with {len(steps)} "
                                 f"step counts (the model has {n_levels} levels of {n_stages} stages)")
        architecture(c)  # a known architecture
        conditioning(c)  # a known conditioning
        resampling(c)  # a known resampling
        if inpainting(c) != "trained" and not all(  # a known inpainting mode, with its channels
                self._sampling.for_level(lv).known_channels for lv in range(n_levels)):
            raise ModelError("sampling known_channels: only a model with trained inpainting has "
                             "known-pixel channels to turn off")

    def _construct(self, level: int, stage: int) -> nn.Module:
        return build_unet(self.config, level, stage)

    def _build(self, level: int, stage: int) -> None:
        if (level, stage) in self._state:
            unet = self._construct(level, stage)
            try:
                unet.load_state_dict(self._state.pop((level, stage)), strict=True)
            except RuntimeError as e:
                first = str(e).splitlines()[1:3]
                raise ModelError(f"{file_name(level, stage)}: weights do not match the config "
                                 f"({' '.join(s.strip() for s in first)[:300]})") from None
        elif self._init_seed is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derive_seed("init", self._init_seed, level, stage))
                unet = self._construct(level, stage)
                # imagen zero-initialises output convolutions, which makes every untrained unet
                # output 0 whatever its inputs and seed; perturb them so random models differ
                # and respond to conditioning, as trained ones do.
                for p in unet.parameters():
                    if p.ndim > 1 and not p.detach().any():
                        torch.nn.init.normal_(p, std=0.02)
        else:
            raise ModelError(f"no weights for level {level} unet {stage + 1}")
        self._unets[(level, stage)] = unet.eval().requires_grad_(False).to(self.device)


@dataclass(frozen=True)
class ModelRef:
    """A picklable reference to a model: its full config (every override included), where its
    weights are (a folder, or the seed of random-init weights), the device policy and the
    fingerprint the rebuilt model must have. No weights travel."""

    config: dict[str, Any]
    folder: str | None
    init_seed: int | None
    #: a torch device, or None: the loading process chooses (its GPU if it has one)
    device: str | None
    fingerprint: str
    source: str

    def load(self) -> URCDM:
        if self.folder is None:
            model = URCDM(copy.deepcopy(self.config), init_seed=self.init_seed, source=self.source)
        else:
            model = URCDM.load(self.folder).with_sampling(**self.config["sampling"])
            model.source = self.source
        if model.fingerprint != self.fingerprint:
            raise ModelError(f"model {self.source!r} rebuilt here has fingerprint {model.fingerprint}, "
                             f"expected {self.fingerprint}: are the files the same?")
        return model.to(self.device) if self.device else model
