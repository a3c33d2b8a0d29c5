"""Pluggable feature extractors: TorchScript files and timm architectures with local weights.

Tiny random models only (the real Inception weights are exercised by the evaluation tests)."""

from __future__ import annotations

import hashlib
import importlib.util
import warnings

import numpy as np
import pytest
import torch

from lazyslide.errors import LazySlideError
from lazyslide.evaluation.features import TorchScriptFeatures, load_extractor


class ConvNet(torch.nn.Module):
    """A few convolutions; ``out`` picks the output form: pooled (N, D), map (N, C, H, W),
    tokens (N, T, D)."""

    def __init__(self, out: str = "pooled") -> None:
        super().__init__()
        self.out = out
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 12, 3, stride=2, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.body(x)
        if self.out == "map":
            return f
        if self.out == "tokens":
            return f.flatten(2).transpose(1, 2)  # (N, H*W, C)
        if self.out == "bad":
            return f[:, 0, 0, 0]
        if self.out == "nan":
            return f.mean(dim=(2, 3)) * float("nan")
        return torch.nn.functional.adaptive_avg_pool2d(f, 1).flatten(1)


def save_script(out: str, path) -> ConvNet:
    torch.manual_seed(0)
    module = ConvNet(out).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch deprecates TorchScript
        torch.jit.script(module).save(str(path))
    return module


def images(n: int, px: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, px, px, 3), dtype=np.uint8)


def sha16(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def test_torchscript_features_are_deterministic_and_identified(tmp_path):
    path = tmp_path / "encoder.pt"
    save_script("pooled", path)
    ext = load_extractor(str(path), options={"size": "32", "batch_size": "3"})
    assert isinstance(ext, TorchScriptFeatures)
    assert ext.name == "torchscript:encoder.pt" and ext.dim == 12
    assert ext.digest == sha16(path)
    for px in (32, 64):
        x = images(5, px, seed=px)
        a, b = ext(x), load_extractor(str(path), options={"size": 32})(x)
        assert a.shape == (5, 12) and a.dtype == np.float64 and np.isfinite(a).all()
        np.testing.assert_array_equal(a, b)
    assert ext(images(0, 32)).shape == (0, 12)


def test_torchscript_input_is_imagenet_normalised_and_resized(tmp_path):
    path = tmp_path / "pooled.pt"
    net = save_script("pooled", path)
    ext = TorchScriptFeatures(path, size=32)
    x = images(2, 64)
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    t = torch.nn.functional.interpolate(t, size=(32, 32), mode="bilinear", antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        want = net((t - mean) / std).double().numpy()
    np.testing.assert_allclose(ext(x), want, rtol=1e-5, atol=1e-6)


def test_feature_maps_are_pooled_and_tokens_give_the_class_token(tmp_path):
    x = images(3, 32)
    save_script("pooled", tmp_path / "pooled.pt")
    save_script("map", tmp_path / "map.pt")
    net = save_script("tokens", tmp_path / "tokens.pt")
    pooled = TorchScriptFeatures(tmp_path / "pooled.pt", size=32)(x)
    np.testing.assert_allclose(TorchScriptFeatures(tmp_path / "map.pt", size=32)(x), pooled, rtol=1e-5)
    tokens = TorchScriptFeatures(tmp_path / "tokens.pt", size=32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        t = (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - mean) / std
        want = net(t)[:, 0].double().numpy()
    assert tokens.dim == 12
    np.testing.assert_allclose(tokens(x), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("out, words", [("bad", r"shape \(1,\)"), ("nan", "non-finite")])
def test_unusable_outputs_are_refused_at_load(tmp_path, out, words):
    path = tmp_path / f"{out}.pt"
    save_script(out, path)
    with pytest.raises(LazySlideError, match=words) as e:
        load_extractor(str(path), options={"size": 32})
    assert "\n" not in str(e.value)


def test_garbage_and_missing_files_are_named(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a model" * 10)
    with pytest.raises(LazySlideError, match="TorchScript") as e:
        load_extractor(str(garbage))
    assert str(garbage) in str(e.value) and "timm:ARCH" in str(e.value) and "\n" not in str(e.value)
    state_dict = tmp_path / "state.pt"
    torch.save(ConvNet().state_dict(), state_dict)  # a state dict is not TorchScript either
    with pytest.raises(LazySlideError, match="not a TorchScript file"):
        load_extractor(str(state_dict))
    missing = tmp_path / "nope.pt"
    with pytest.raises(LazySlideError, match="no such file") as e:
        load_extractor(str(missing))
    assert str(missing) in str(e.value)


def test_spec_errors():
    with pytest.raises(LazySlideError, match="--features-weights"):
        load_extractor("timm:resnet18")
    with pytest.raises(LazySlideError, match="inception"):
        load_extractor("inception", weights="w.safetensors")
    with pytest.raises(LazySlideError, match="hf-hub"):
        load_extractor("timm:hf-hub:MahmoodLab/uni", weights=__file__)


needs_timm = pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm is not installed")


def timm_weights(tmp_path, arch: str = "test_resnet", **kwargs) -> tuple:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, **kwargs).eval()
    path = tmp_path / f"{arch}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, path


@needs_timm
def test_timm_architecture_with_local_weights(tmp_path):
    model, path = timm_weights(tmp_path)  # with its 1000-class head: dropped, features are pooled
    ext = load_extractor("timm:test_resnet", weights=str(path), options={"size": "32"})
    assert ext.name == "timm:test_resnet" and ext.digest == sha16(path)
    x = images(4, 48)
    f = ext(x)
    assert f.shape == (4, ext.dim) and np.isfinite(f).all()
    np.testing.assert_array_equal(f, ext(x))
    model.reset_classifier(0)
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    t = torch.nn.functional.interpolate(t, size=(32, 32), mode="bilinear", antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        np.testing.assert_allclose(f, model((t - mean) / std).double().numpy(), rtol=1e-5, atol=1e-6)


@needs_timm
def test_timm_checkpoint_wrapped_in_a_state_dict_key(tmp_path):
    model, _ = timm_weights(tmp_path, num_classes=0)
    path = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 3, "state_dict": model.state_dict()}, path)
    ext = load_extractor("timm:test_resnet", weights=path, options={"size": 32})
    assert ext(images(2, 32)).shape == (2, ext.dim)


@needs_timm
def test_timm_weights_that_do_not_fit(tmp_path):
    from safetensors.torch import save_file

    wrong = tmp_path / "wrong.safetensors"
    save_file({"encoder.weight": torch.zeros(3, 3)}, str(wrong))
    with pytest.raises(LazySlideError, match="does not fit timm:test_resnet") as e:
        load_extractor("timm:test_resnet", weights=str(wrong), options={"size": 32})
    msg = str(e.value)
    assert str(wrong) in msg and "encoder.weight" in msg and "missing" in msg and "init_values" in msg
    assert "\n" not in msg
    _, other = timm_weights(tmp_path, "test_vit", num_classes=0)
    with pytest.raises(LazySlideError, match="unexpected"):
        load_extractor("timm:test_resnet", weights=str(other))
    with pytest.raises(LazySlideError, match="no such file"):
        load_extractor("timm:test_resnet", weights=str(tmp_path / "nope.safetensors"))
    with pytest.raises(LazySlideError, match="Unknown model"):
        load_extractor("timm:no_such_arch", weights=str(other))
    with pytest.raises(LazySlideError, match="init_values=1e-05"):
        load_extractor("timm:test_resnet", weights=str(other), options={"init_values": "1e-5"})
