"""The one place that knows imagen-pytorch: its import (offline), how its Unet is built from a
model config, and its call signature (adapted to ``networks.Denoiser``).

imagen-pytorch evaluates ``get_encoded_dim('google/t5-v1_1-base')`` as a default argument of
``Unet.__init__`` at import time, which calls ``T5Config.from_pretrained`` and so reaches the
Hugging Face hub (13-28 s timeout offline, then ``OSError``). lazyslide never conditions on
text, so for the duration of the import only we answer that call with the T5-base config
(d_model 768) locally. Nothing else is patched and the patch is undone afterwards.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from .conditioning import cond_channels
from .errors import ModelError

_module: ModuleType | None = None


@contextlib.contextmanager
def _offline_t5_config() -> Iterator[None]:
    import transformers

    cls_dict = transformers.T5Config.__dict__
    original = cls_dict.get("from_pretrained")  # normally inherited, so absent here

    def local_config(cls, *args, **kwargs):  # noqa: ANN001 - mirrors the patched signature
        return transformers.T5Config(d_model=768)

    transformers.T5Config.from_pretrained = classmethod(local_config)
    try:
        yield
    finally:
        if original is None:
            del transformers.T5Config.from_pretrained
        else:
            transformers.T5Config.from_pretrained = original


def imagen() -> ModuleType:
    """Return the ``imagen_pytorch`` module, importing it offline on first use."""
    global _module
    if _module is None:
        with _offline_t5_config(), warnings.catch_warnings():
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

