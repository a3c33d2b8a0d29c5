"""The tile store: lossless, persistent across processes, keyed by what determines a tile.

A key is (model fingerprint, slide seed, level, col, row), so a tile made by another process,
or earlier, is reused only for the very same model and slide. Values are PNG bytes (lossless);
the stored uint8 tile is canonical: neighbours, children and consumers all read it back from
here, never from the float output of the sampler.

diskcache is told never to evict (``eviction_policy='none'``): a silently dropped tile would
be regenerated identically, but at great cost. Its ``size_limit`` only triggers culling, which
'none' disables, so the store grows until the disk is full (a full paper slide is ~3-5 GB of
PNG). Remove the folder to reclaim space. diskcache's SQLite must not live on NFS.
"""

from __future__ import annotations

import io
import os
import sqlite3
import threading
from collections import OrderedDict
from pathlib import Path

import diskcache
import numpy as np
from PIL import Image

from .errors import StoreError
from .geometry import TileId

DEFAULT_CACHE = Path(os.environ.get("LAZYSLIDE_CACHE", Path.home() / ".cache" / "lazyslide"))


def tile_key(fingerprint: str, seed: int, tile: TileId) -> str:
    return f"{fingerprint}/{seed}/{tile.level}/{tile.col}/{tile.row}"


def encode_png(tile: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(tile, "RGB").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


class TileStore:
    """A diskcache folder of PNG tiles, with a small in-memory cache of decoded tiles."""

    def __init__(self, directory: str | Path | None = None, *, memory_tiles: int = 256) -> None:
        self.directory = Path(directory) if directory is not None else DEFAULT_CACHE
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._cache = diskcache.Cache(str(self.directory), eviction_policy="none",
                                          size_limit=2**62, cull_limit=0)
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"cannot open tile store {self.directory}: {e}") from None
        self._memory: OrderedDict[str, np.ndarray] = OrderedDict()
        self._memory_tiles = memory_tiles
        self._lock = threading.Lock()

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            if key in self._memory:
                self._memory.move_to_end(key)
                return self._memory[key]
        data = self._cache.get(key)
        if data is None:
            return None
        tile = decode_png(data)
        tile.flags.writeable = False
        self._remember(key, tile)
        return tile

    def __contains__(self, key: str) -> bool:
        with self._lock:
            if key in self._memory:
                return True
        return key in self._cache

    def put(self, key: str, tile: np.ndarray) -> np.ndarray:
        """Store a tile; returns the canonical (read-only) array."""
        try:
            self._cache.set(key, encode_png(tile))
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"cannot write tile {key} to {self.directory}: {e}") from None
        tile = np.array(tile, dtype=np.uint8, copy=True)
        tile.flags.writeable = False
        self._remember(key, tile)
        return tile

    def __len__(self) -> int:
        return len(self._cache)

    def close(self) -> None:
        self._cache.close()

    def _remember(self, key: str, tile: np.ndarray) -> None:
        with self._lock:
            self._memory[key] = tile
            self._memory.move_to_end(key)
            while len(self._memory) > self._memory_tiles:
                self._memory.popitem(last=False)


class MemoryStore:
    """The store interface over a dict: what a Dask worker builds from its task's inputs."""

    def __init__(self, tiles: dict[str, np.ndarray] | None = None) -> None:
        self._tiles = dict(tiles or {})

    def get(self, key: str) -> np.ndarray | None:
        return self._tiles.get(key)

    def __contains__(self, key: str) -> bool:
        return key in self._tiles

    def put(self, key: str, tile: np.ndarray) -> np.ndarray:
        tile = np.array(tile, dtype=np.uint8, copy=True)
        tile.flags.writeable = False
        self._tiles[key] = tile
        return tile

    def __len__(self) -> int:
        return len(self._tiles)
