"""Shared fixtures: the test preset with random-init weights (structure, not quality)."""

from __future__ import annotations

import pytest

from lazyslide import URCDM, TileStore


@pytest.fixture(scope="session")
def model() -> URCDM:
    return URCDM.random("test", 0)


@pytest.fixture
def store(tmp_path) -> TileStore:
    return TileStore(tmp_path / "store")


@pytest.fixture(scope="session")
def small_model() -> URCDM:
    """The test preset's unets on a smaller canvas (32 / 88 / 200 px: 1 + 9 + 49 tiles), with
    two sampling steps: whole-slide tests in seconds."""
    from lazyslide.model import default_config

    cfg = default_config("test")
    cfg["geometry"]["canvases"] = [32, 88, 200]
    cfg["sampling"].update(steps=[2, 1, 1], resample=[1, 1, 1])
    cfg["weights"] = {"random_init_seed": 0, "torch": "any"}
    return URCDM(cfg, init_seed=0, source="random:small")
