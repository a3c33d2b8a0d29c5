"""lazyslide's tile server (installed as ``lazyslide.server``; the code lives in ``server/``)."""

from __future__ import annotations

from .app import LazySlideServer

__all__ = ["LazySlideServer", "serve"]


def serve(model, store, *, seed: int = 0, host: str = "127.0.0.1", port: int = 8000,
          max_slides: int = 8, progress=None, on_ready=None, backend=None,
          render_processes: int = 0, prefetch: bool = False, token: str | None = None,
          no_auth: bool = False, public_warm: bool = False) -> None:
    """Open the slide of ``seed`` (level 0 made first), then serve until Ctrl-C.

    A ``host`` other than loopback needs ``token`` (or ``no_auth``): anyone who can reach the
    port could otherwise keep its devices busy."""
    from aiohttp import web

    from lazyslide.errors import LazySlideError

    from .app import OSD_DIR

    if token is not None and no_auth:
        raise LazySlideError("--token and --no-auth contradict each other: choose one")
    if not is_loopback(host) and token is None and not no_auth:
        raise LazySlideError(f"--host {host} is reachable from other machines: give --token T "
                             "(the viewer's URL then carries ?token=T once), or --no-auth")
    if public_warm and token is None:
        raise LazySlideError("--public-warm only means something with --token")
    server = LazySlideServer(model, store, max_slides=max_slides, backend=backend,
                             render_processes=render_processes, prefetch=prefetch, token=token,
                             public_warm=public_warm)
    _check_bindable(host, port)  # before level 0 is made: minutes on a CPU
    entry = server.open_now(seed, progress=progress)
    if on_ready is not None:
        on_ready()
    if not OSD_DIR.is_dir():
        print(f"lazyslide: warning: viewer assets missing ({OSD_DIR}); run `make install`")
    shown = "localhost" if is_loopback(host) else host
    query = "?token=" + token if token else ""
    print(f"lazyslide: serving slide {entry.id} of model {model.source} ({model.fingerprint})\n"
          f"  open http://{shown}:{port}/{query}  (Ctrl-C to stop)", flush=True)
    web.run_app(server.app(), host=host, port=port, print=None, handler_cancellation=True,
                shutdown_timeout=10)
    print("lazyslide: stopped (every finished tile is in the store)")


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_bindable(host: str, port: int) -> None:
    """Fail now, not after level 0, if the address cannot be listened on (OSError)."""
    import socket

    for family, kind, proto, _, addr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(addr)
