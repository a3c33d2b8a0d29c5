"""The tile store: lossless, persistent across processes, keyed by what determines a tile.

A key is (model fingerprint, slide seed, level, col, row), so a tile made by another process,
or earlier, is reused only for the very same model and slide. Values are PNG bytes (lossless);
the stored uint8 tile is canonical: neighbours, children and consumers all read it back from
here, never from the float output of the sampler.

diskcache is told never to evict (``eviction_policy='none'``): a silently dropped tile would
be regenerated identically, but at great cost. Its ``size_limit`` only triggers culling, which
'none' disables, so the store grows until the disk is full (a full paper slide is ~3-5 GB of
PNG). Remove the folder to reclaim space. diskcache's SQLite must not live on NFS.

Claims: before a process makes a tile it claims the tile's key in the store (``claim``), so that
several processes or servers on one store make each tile once; the others wait for it. A claim
is a lease (``LAZYSLIDE_CLAIM_SECONDS``, default 60 s) that its holder renews from a background
thread while it works: a process that dies (even by SIGKILL) holds nothing longer than that.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import diskcache
import numpy as np
from PIL import Image

from .errors import StoreError
from .geometry import TileId

log = logging.getLogger(__name__)

DEFAULT_CACHE = Path(os.environ.get("LAZYSLIDE_CACHE", Path.home() / ".cache" / "lazyslide"))


def _default_lease() -> float:
    text = os.environ.get("LAZYSLIDE_CLAIM_SECONDS", "60")
    try:
        lease = float(text)
    except ValueError:
        lease = -1.0
    if not 1 <= lease <= 86400:
        raise StoreError(f"LAZYSLIDE_CLAIM_SECONDS must be a number of seconds in 1..86400, got {text!r}")
    return lease


def _failed(what: str, error: Exception) -> StoreError:
    """``what`` failed, and why; a full disk (or a file-size limit) said in words, since SQLite
    reports it only as a "disk I/O error"."""
    text = str(error)
    full = getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or any(
        w in text for w in ("disk I/O error", "database or disk is full"))
    return StoreError(f"{what}: {text}" + (" (is the disk full? free space and rerun: what is "
                                            "stored stays)" if full else ""))


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

    def __init__(self, directory: str | Path | None = None, *, memory_tiles: int = 256,
                 memory_bytes: int | None = None, lease: float | None = None) -> None:
        """``memory_tiles`` decoded tiles are kept in memory, or as many as fit in
        ``memory_bytes`` if given (the server: a coarse Deep Zoom tile reads up to a hundred
        magnification tiles, and decoding each PNG again was most of its render time). Derived
        arrays (``derived``: the reduced copies) share the same memory."""
        self.directory = Path(directory) if directory is not None else DEFAULT_CACHE
        if self.directory.exists() and not self.directory.is_dir():
            raise StoreError(f"cannot open tile store {self.directory}: not a folder")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._cache = diskcache.Cache(str(self.directory), eviction_policy="none",
                                          size_limit=2**62, cull_limit=0)
            # claims live in a database of their own: len(store) and the tiles stay untouched
            self._claims_db = diskcache.Cache(str(self.directory / "claims"), eviction_policy="none")
        except (OSError, sqlite3.Error) as e:
            raise _failed(f"cannot open tile store {self.directory}", e) from None
        self._memory: OrderedDict[str, np.ndarray] = OrderedDict()
        self._memory_tiles = memory_tiles
        self._memory_bytes = memory_bytes
        self._memory_size = 0
        self._lock = threading.Lock()
        self.lease = _default_lease() if lease is None else float(lease)
        self._owner = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex}"
        self._held: set[str] = set()
        self._renewer: threading.Thread | None = None

    def get(self, key: str) -> np.ndarray | None:
        """The stored tile, or None: absent, or stored but not decodable (then removed, and
        reported once in the log, so that its slide makes it again: a tile is a pure function of
        its address)."""
        def load() -> np.ndarray | None:
            try:
                data = self._cache.get(key, retry=True)
            except (OSError, sqlite3.Error) as e:
                raise _failed(f"cannot read tile {key} from {self.directory}", e) from None
            if data is None:
                return None
            try:
                return decode_png(data)
            except (OSError, SyntaxError, ValueError, TypeError, EOFError) as e:  # PIL's kinds
                self._discard(key, e)
                return None

        return self._memoized(key, load)

    def _discard(self, key: str, error: Exception) -> None:
        log.warning("tile store %s: stored tile %s does not decode (%s: %s); removed, it is made "
                    "again", self.directory, key, type(error).__name__, error)
        try:
            self._cache.delete(key, retry=True)
        except (OSError, sqlite3.Error) as e:
            raise _failed(f"cannot remove the undecodable tile {key} from {self.directory}", e) from None

    def _memoized(self, key: str, load: Callable[[], np.ndarray | None]) -> np.ndarray | None:
        """``key``'s array from the decoded-tile memory, else ``load()``'s (kept, read-only)."""
        with self._lock:
            if key in self._memory:
                self._memory.move_to_end(key)
                return self._memory[key]
        value = load()
        if value is None:
            return None
        value.flags.writeable = False
        self._remember(key, value)
        return value

    def __contains__(self, key: str) -> bool:
        with self._lock:
            if key in self._memory:
                return True
        try:
            return key in self._cache
        except (OSError, sqlite3.Error) as e:
            raise _failed(f"cannot read tile store {self.directory}", e) from None

    def put(self, key: str, tile: np.ndarray) -> np.ndarray:
        """Store a tile; returns the canonical (read-only) array."""
        try:
            self._cache.set(key, encode_png(tile))
        except (OSError, sqlite3.Error) as e:
            raise _failed(f"cannot write tile {key} to {self.directory}", e) from None
        tile = np.array(tile, dtype=np.uint8, copy=True)
        tile.flags.writeable = False
        self._remember(key, tile)
        return tile

    def __len__(self) -> int:
        return len(self._cache)

    def derived(self, key: str, name: str, make: Callable[[np.ndarray], np.ndarray]) -> np.ndarray | None:
        """``make(tile)`` of a stored tile, kept in the decoded-tile memory beside it (the reduced
        copies that coarse Deep Zoom levels read, as a TIFF's pyramid levels); None if absent."""
        def load() -> np.ndarray | None:
            tile = self.get(key)
            return None if tile is None else make(tile)

        return self._memoized(f"{key}\0{name}", load)

    def close(self) -> None:
        with self._lock:
            held, self._held = list(self._held), set()
        for key in held:
            self.release(key)
        self._cache.close()
        self._claims_db.close()

    # -- claims: one maker per tile across processes --------------------------------------------
    def claim(self, key: str) -> bool:
        """Take the lease to make ``key``; False while another live holder has it."""
        try:
            taken = self._claims_db.add(key, self._owner, expire=self.lease, retry=True)
        except (OSError, sqlite3.Error) as e:
            raise _failed(f"cannot claim tile {key} in {self.directory}", e) from None
        if not taken:
            return False  # add() is atomic and treats an expired lease as absent
        with self._lock:
            self._held.add(key)
            if self._renewer is None or not self._renewer.is_alive():
                self._renewer = threading.Thread(target=self._renew, name="lazyslide-claims",
                                                 daemon=True)
                self._renewer.start()
        return True

    def release(self, key: str) -> None:
        """Give up a claim (after the tile is stored, or when making it failed). A release the
        database refuses (a full disk) is left to the lease, which lapses within ``lease``
        seconds: raising here would hide the error that ended the work."""
        with self._lock:
            self._held.discard(key)
        try:
            with self._claims_db.transact(retry=True):
                if self._claims_db.get(key, retry=True) == self._owner:
                    self._claims_db.delete(key, retry=True)
        except (OSError, sqlite3.Error):
            pass

    def claimed(self, key: str) -> bool:
        """Whether a live claim on ``key`` exists (anyone's)."""
        try:
            return self._claims_db.get(key, retry=True) is not None
        except (OSError, sqlite3.Error) as e:
            raise _failed(f"cannot read the claims of {self.directory}", e) from None

    def wait_for(self, key: str, *, poll: float = 0.05, timeout: float | None = None) -> bool:
        """Wait while another holder makes ``key``: until it is stored (True) or nobody holds
        its claim any more (False: released after a failure, or the lease of a dead holder ran
        out), so the caller can claim it itself."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if key in self:
                return True
            if not self.claimed(key):
                return key in self
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(poll)
            poll = min(poll * 1.5, 1.0)

    def _renew(self) -> None:
        """Extend every held lease a few times per lease, while any is held."""
        while True:
            time.sleep(self.lease / 4)
            with self._lock:
                held = list(self._held)
                if not held:
                    self._renewer = None
                    return
            for key in held:
                try:
                    with self._claims_db.transact(retry=True):
                        if self._claims_db.get(key, retry=True) == self._owner:
                            self._claims_db.touch(key, expire=self.lease, retry=True)
                except sqlite3.Error:
                    pass  # a busy database: the next round renews (a lease outlasts 3 rounds)

    def _remember(self, key: str, tile: np.ndarray) -> None:
        with self._lock:
            old = self._memory.pop(key, None)
            self._memory_size += tile.nbytes - (0 if old is None else old.nbytes)
            self._memory[key] = tile
            if self._memory_bytes is None:
                while len(self._memory) > self._memory_tiles:
                    self._memory_size -= self._memory.popitem(last=False)[1].nbytes
            else:
                while self._memory_size > self._memory_bytes and len(self._memory) > 1:
                    self._memory_size -= self._memory.popitem(last=False)[1].nbytes


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

    def derived(self, key: str, name: str, make: Callable[[np.ndarray], np.ndarray]) -> np.ndarray | None:
        tile = self._tiles.get(key)
        return None if tile is None else make(tile)

    # one process owns a memory store: every claim succeeds
    def claim(self, key: str) -> bool:
        return True

    def release(self, key: str) -> None:
        pass

    def claimed(self, key: str) -> bool:
        return False

    def wait_for(self, key: str, **kwargs) -> bool:
        return key in self
