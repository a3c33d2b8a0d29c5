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
