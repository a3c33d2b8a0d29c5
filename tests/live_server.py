"""A real lazyslide server on a loopback port, in a background thread (for fuzz and browser)."""

from __future__ import annotations

import asyncio
import socket
import threading

from aiohttp import web

from lazyslide import TileStore
from lazyslide.server import LazySlideServer


class LiveServer:
    def __init__(self, model, store_dir, **kwargs) -> None:
        self.server = LazySlideServer(model, TileStore(store_dir), **kwargs)
        self.server.open_now(0)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._runner = web.AppRunner(self.server.app(), handler_cancellation=True)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        self._loop.run_until_complete(site.start())
        self._started.set()
        self._loop.run_forever()

    def __enter__(self) -> LiveServer:
        self._thread.start()
        self._started.wait(30)
        return self

    def __exit__(self, *exc) -> None:
        fut = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
        fut.result(60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
