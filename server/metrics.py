"""Prometheus text-format metrics of the tile server (no client library needed for a few series)."""

from __future__ import annotations

import threading
from collections import Counter

#: Upper bounds (seconds) of the generation-time histogram buckets.
BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.generated: Counter[int] = Counter()
        self.background: Counter[int] = Counter()
        self.requests = 0
        self.cache_hits = 0
        self.not_modified = 0
        self.dropped = 0
        self.failed = 0
        self.rejected = 0
        self.queue_depth = 0
        self.batches = 0
        self.batched_tiles = 0
        self._hist: Counter[float] = Counter()
        self._hist_sum = 0.0
        self._hist_count = 0

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def tile_made(self, level: int, kind: str, seconds: float) -> None:
        with self._lock:
            (self.generated if kind == "generated" else self.background)[level] += 1
            if kind == "generated":
                for b in BUCKETS:
                    if seconds <= b:
                        self._hist[b] += 1
                self._hist_sum += seconds
                self._hist_count += 1

    def render(self, levels: int) -> str:
        with self._lock:
            out = []

            def series(name: str, kind: str, help_: str, rows: list[tuple[str, float]]) -> None:
                out.append(f"# HELP {name} {help_}")
                out.append(f"# TYPE {name} {kind}")
                out.extend(f"{name}{labels} {value:g}" for labels, value in rows)

            series("lazyslide_tiles_generated_total", "counter",
                   "Magnification tiles made by diffusion.",
                   [(f'{{level="{k}"}}', self.generated[k]) for k in range(levels)])
            series("lazyslide_tiles_background_total", "counter",
                   "Magnification tiles filled as background (no diffusion).",
                   [(f'{{level="{k}"}}', self.background[k]) for k in range(levels)])
            series("lazyslide_tile_requests_total", "counter", "Deep Zoom tile requests.",
                   [("", self.requests)])
            series("lazyslide_cache_hits_total", "counter",
                   "Deep Zoom tiles answered from the encoded-tile cache.", [("", self.cache_hits)])
            series("lazyslide_not_modified_total", "counter", "304 answers.", [("", self.not_modified)])
            series("lazyslide_jobs_dropped_total", "counter",
                   "Queued generations dropped because every requester left.", [("", self.dropped)])
            series("lazyslide_jobs_failed_total", "counter", "Generations that failed.",
                   [("", self.failed)])
            series("lazyslide_requests_rejected_total", "counter",
                   "Requests answered 503 because the queue was full.", [("", self.rejected)])
            series("lazyslide_queue_depth", "gauge", "Generations waiting in the queue.",
                   [("", self.queue_depth)])
            series("lazyslide_batches_total", "counter", "Batches of tiles generated together.",
                   [("", self.batches)])
            series("lazyslide_batched_tiles_total", "counter", "Tiles in those batches.",
                   [("", self.batched_tiles)])
            rows = [(f'_bucket{{le="{b:g}"}}', self._hist[b]) for b in BUCKETS]
            rows += [('_bucket{le="+Inf"}', self._hist_count), ("_sum", self._hist_sum),
                     ("_count", self._hist_count)]
            out.append("# HELP lazyslide_generation_seconds Seconds to generate one tile.")
            out.append("# TYPE lazyslide_generation_seconds histogram")
            out.extend(f"lazyslide_generation_seconds{suffix} {v:g}" for suffix, v in rows)
            return "\n".join(out) + "\n"
