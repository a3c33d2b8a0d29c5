"""lazyslide's tile server (installed as ``lazyslide.server``; the code lives in ``server/``)."""

from __future__ import annotations

from .app import LazySlideServer

__all__ = ["LazySlideServer", "serve"]


def serve(model, store, *, seed: int = 0, host: str = "127.0.0.1", port: int = 8000,
          max_slides: int = 8, progress=None, on_ready=None) -> None:
    """Open the slide of ``seed`` (level 0 made first), then serve until Ctrl-C."""
    from aiohttp import web

    from .app import OSD_DIR

    server = LazySlideServer(model, store, max_slides=max_slides)
    _check_bindable(host, port)  # before level 0 is made: minutes on a CPU
    entry = server.open_now(seed, progress=progress)
    if on_ready is not None:
        on_ready()
    if not OSD_DIR.is_dir():
        print(f"lazyslide: warning: viewer assets missing ({OSD_DIR}); run `make install`")
    shown = "localhost" if host in ("127.0.0.1", "::1") else host
    print(f"lazyslide: serving slide {entry.id} of model {model.source} ({model.fingerprint})\n"
          f"  open http://{shown}:{port}/  (Ctrl-C to stop)", flush=True)
    web.run_app(server.app(), host=host, port=port, print=None, handler_cancellation=True,
                shutdown_timeout=10)
    print("lazyslide: stopped (every finished tile is in the store)")


def _check_bindable(host: str, port: int) -> None:
    """Fail now, not after level 0, if the address cannot be listened on (OSError)."""
    import socket

    for family, kind, proto, _, addr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(addr)
