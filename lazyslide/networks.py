"""Network architectures: how the unet of (level, cascade stage) is built from a model config,
and the one call signature (``Denoiser``) through which sampling and training use it.

An architecture is one ``Architecture`` entry in ``ARCHITECTURES``; a model config names its
own under ``"architecture"`` (absent: imagen-pytorch's Unet, the paper's network). Entries that
build the same parameters (the same state-dict keys and shapes) load each other's weights: a
trained model can be assembled for another entry (``lazyslide assemble --architecture``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from torch import Tensor, nn

from . import _imagen
from .errors import ModelError


class Denoiser(Protocol):
    """The network's raw prediction (v, noise or x0, as its objective says) for ``x_t``.

    ``lowres``: the noised previous-stage image (super-resolution stages), at ``lowres_log_snr``;
    ``cond``: the parent conditioning window (levels >= 1), both in model space.
    """

    def __call__(self, x_t: Tensor, log_snr: Tensor, *, lowres: Tensor | None = None,
                 lowres_log_snr: Tensor | None = None, cond: Tensor | None = None) -> Tensor: ...


@dataclass(frozen=True)
class Architecture:
    #: (model config, level, stage) -> a freshly initialised network
    build: Callable[[dict[str, Any], int, int], nn.Module]
    #: network -> the Denoiser that calls it
    denoiser: Callable[[nn.Module], Denoiser]
    #: (network, trained weights, their conditioning channels) -> None: load weights trained
    #: with a narrower conditioning image (fine-tuning into a new conditioning)
    load_widened: Callable[[nn.Module, dict[str, Tensor], int], None]


ARCHITECTURES: dict[str, Architecture] = {
    "imagen-unet": Architecture(_imagen.build_unet, _imagen.ImagenDenoiser, _imagen.load_widened),
    # the same network and weights, run in channels-last memory format (faster on the CPU)
    "imagen-unet-channels-last": Architecture(_imagen.build_unet_channels_last,
                                              _imagen.ChannelsLastDenoiser, _imagen.load_widened),
}
DEFAULT_ARCHITECTURE = "imagen-unet"


def architecture(config: dict[str, Any]) -> Architecture:
    name = config.get("architecture", DEFAULT_ARCHITECTURE)
    if name not in ARCHITECTURES:
        raise ModelError(f"model config: unknown architecture {name!r}; choose from "
                         f"{', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def build_unet(config: dict[str, Any], level: int, stage: int) -> nn.Module:
    """The network of (level, cascade stage) as ``config`` describes it (fresh init)."""
    return architecture(config).build(config, level, stage)


def denoiser(config: dict[str, Any], network: nn.Module) -> Denoiser:
    return architecture(config).denoiser(network)
