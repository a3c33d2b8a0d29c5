"""The one place that knows imagen-pytorch: its import (offline), how its Unet is built from a
model config, and its call signature (adapted to ``networks.Denoiser``).

imagen-pytorch's ``t5`` module imports all of transformers (seconds per process start) and its
``Unet`` evaluates ``get_encoded_dim('google/t5-v1_1-base')`` as a default argument at import
time, which calls ``T5Config.from_pretrained`` and so reaches the Hugging Face hub (13-28 s
timeout offline, then ``OSError``). lazyslide never conditions on text, so imagen is imported
with ``_t5_free()`` standing in for ``imagen_pytorch.t5``: it answers the one question imagen asks
at import time (T5-base's width, 768, what the hub's config says) and refuses text encoding
with a clear error. Nothing else is changed; transformers is not imported at all.
"""

from __future__ import annotations

import contextlib
import io
import sys
import types
import warnings
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from .conditioning import cond_channels
from .errors import ModelError

_module: ModuleType | None = None

#: T5-base's d_model (google/t5-v1_1-base's config.json), imagen's default text width
T5_BASE_DIM = 768


def _t5_free() -> ModuleType:
    """What imagen imports from ``imagen_pytorch.t5``, without transformers (see the docstring)."""
    mod = types.ModuleType("imagen_pytorch.t5", "lazyslide's stand-in: no text encoder")
    mod.DEFAULT_T5_NAME = "google/t5-v1_1-base"
    mod.MAX_LENGTH = 256

    def get_encoded_dim(name: str) -> int:
        if name != mod.DEFAULT_T5_NAME:
            raise ModelError(f"lazyslide imports imagen-pytorch without a text encoder; "
                             f"{name!r} is not available")
        return T5_BASE_DIM

    def t5_encode_text(*args: Any, **kwargs: Any) -> Any:
        raise ModelError("lazyslide imports imagen-pytorch without a text encoder (its models "
                         "are unconditional): pass text embeddings, not texts")

    mod.get_encoded_dim = get_encoded_dim
    mod.t5_encode_text = t5_encode_text
    mod.t5_tokenize = mod.t5_encode_tokenized_text = t5_encode_text
    return mod


def imagen() -> ModuleType:
    """Return the ``imagen_pytorch`` module, importing it offline on first use."""
    global _module
    if _module is None:
        if "imagen_pytorch" in sys.modules:  # imported by the user already: use theirs
            _module = sys.modules["imagen_pytorch"]
            return _module
        sys.modules.setdefault("imagen_pytorch.t5", _t5_free())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script deprecation
            warnings.simplefilter("ignore", DeprecationWarning)  # pydantic v1-style config
            import imagen_pytorch

        _module = imagen_pytorch
    return _module


def build_unet(config: dict[str, Any], level: int, stage: int) -> nn.Module:
    """The imagen-pytorch Unet of (level, cascade stage) as ``config`` describes it (fresh init)."""
    kwargs = dict(config["unets"][level][stage])
    kwargs.update(
        channels=3,
        cond_on_text=False,
        text_embed_dim=None,
        lowres_cond=stage > 0,
        cond_images_channels=cond_channels(config, level),
    )
    for k, v in kwargs.items():
        if isinstance(v, list):
            kwargs[k] = tuple(v)
    # imagen-pytorch prints advice about small dims on stdout; keep stdout for our output.
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            return imagen().Unet(**kwargs)
        except (TypeError, AssertionError, ValueError) as e:
            raise ModelError(f"unet config for level {level} unet {stage + 1} rejected "
                             f"by imagen-pytorch: {e}") from None


def load_widened(unet: nn.Module, state: dict[str, Tensor], cond_before: int) -> None:
    """Load trained weights whose conditioning image had ``cond_before`` channels into ``unet``,
    which takes more: imagen concatenates (cond, x, lowres) on channels before its first
    convolution, so the new conditioning channels get zero weights there, right after the old
    ones, and the network computes exactly what it did until fine-tuning teaches it to use them.
    """
    import torch

    own = unet.state_dict()
    extra = unet.cond_images_channels - cond_before
    out = {}
    for k, v in state.items():
        want = own.get(k)
        if want is not None and want.shape != v.shape and k.startswith("init_conv.") and v.ndim == 4 \
                and want.shape[1] == v.shape[1] + extra and want.shape[0] == v.shape[0]:
            zeros = torch.zeros(v.shape[0], extra, *v.shape[2:], dtype=v.dtype)
            v = torch.cat([v[:, :cond_before], zeros, v[:, cond_before:]], dim=1)
        out[k] = v
    try:
        unet.load_state_dict(out, strict=True)
    except RuntimeError as e:
        raise ModelError(f"trained weights do not fit this unet: {str(e).splitlines()[1][:200]}") from None


class ImagenDenoiser:
    """An imagen-pytorch Unet behind the ``Denoiser`` signature (it is conditioned on log SNR)."""

    def __init__(self, unet: nn.Module) -> None:
        self.unet = unet

    def __call__(self, x_t: Tensor, log_snr: Tensor, *, lowres: Tensor | None = None,
                 lowres_log_snr: Tensor | None = None, cond: Tensor | None = None) -> Tensor:
        return self.unet(x_t, log_snr, lowres_cond_img=lowres, lowres_noise_times=lowres_log_snr,
                         cond_images=cond)


def build_unet_channels_last(config: dict[str, Any], level: int, stage: int) -> nn.Module:
    """``build_unet``, its weights in channels-last memory format (loaded weights keep it)."""
    return build_unet(config, level, stage).to(memory_format=torch.channels_last)


class ChannelsLastDenoiser(ImagenDenoiser):
    """``ImagenDenoiser`` with its image inputs in channels-last memory format.

    Why: on the CPU, imagen's ``ChanRMSNorm`` normalises over the channel dimension, which in
    the default (NCHW) layout is a strided reduction: on the bundled model's 128 px stage it took
    a quarter of a tile's time. Channels-last makes it, and the convolutions, contiguous: 1.5x
    per tile on 2 cores (bench/network_cpu.py). The arithmetic is the same but summed in
    another order, so outputs differ by about 3e-6 (1 uint8 level in about 1e-4 of a tile's
    values): a separate architecture entry, so that the model's fingerprint tells them apart.
    """

    def __call__(self, x_t: Tensor, log_snr: Tensor, *, lowres: Tensor | None = None,
                 lowres_log_snr: Tensor | None = None, cond: Tensor | None = None) -> Tensor:
        def cl(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.contiguous(memory_format=torch.channels_last)

        return super().__call__(cl(x_t), log_snr, lowres=cl(lowres), lowres_log_snr=lowres_log_snr,
                                cond=cl(cond))

