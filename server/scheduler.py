"""Generation off the event loop: one worker thread per device, fed by a priority queue.

Requests ask for magnification tiles (in dependency order); each (slide, tile) is one job, so
concurrent requests for a tile, or for Deep Zoom tiles sharing it, wait on the same job (single
flight). The newest request's jobs run first. A queued job whose every requester has gone is
dropped when it reaches the front; a running job always finishes into the store. A full queue
refuses new work (the server answers 503) instead of growing without bound.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lazyslide import Slide, TileId

Event = dict[str, Any]


class QueueFull(Exception):
    """The queue cannot take the request's jobs now."""


class Dropped(Exception):
    """The job was dropped before it ran (no one was waiting for it)."""


@dataclass
class Job:
    slide_id: str
    slide: Slide
    tile: TileId
    future: asyncio.Future
    requesters: set[int] = field(default_factory=set)
    state: str = "queued"


class Scheduler:
    """Runs tile jobs on one worker thread; call ``start`` once a loop is running."""

    def __init__(self, *, max_queue: int = 4096,
                 on_event: Callable[[Event], None] | None = None,
                 on_made: Callable[[TileId, str, float], None] | None = None) -> None:
        self.max_queue = max_queue
        self._on_event = on_event or (lambda e: None)
        self._on_made = on_made or (lambda t, k, s: None)
        self._heap: list[tuple[int, int, int, Job]] = []
        self._jobs: dict[tuple[str, TileId], Job] = {}
        self._cv = threading.Condition()
        self._requests = itertools.count(1)
        self._tokens = itertools.count(1)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: moving average of seconds per generated tile, per level (for the ETA)
        self.seconds_per_tile: dict[int, float] = {}
        self.running: Job | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._work, name="lazyslide-generator", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the running job (if any) is stored; queued jobs are dropped."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- asking for tiles --------------------------------------------------------------------
    @property
    def depth(self) -> int:
        with self._cv:
            return sum(1 for j in self._jobs.values() if j.state == "queued")

    def eta(self) -> float:
        """Seconds until the queue is empty, from measured generation times."""
        with self._cv:
            jobs = [j for j in self._jobs.values() if j.state in ("queued", "running")]
        default = max(self.seconds_per_tile.values(), default=1.0)
        return round(sum(self.seconds_per_tile.get(j.tile.level, default) for j in jobs), 1)

    def busy(self, slide_id: str) -> bool:
        with self._cv:
            return any(j.slide_id == slide_id for j in self._jobs.values())

    async def make(self, slide_id: str, slide: Slide, tiles: list[TileId]) -> None:
        """Wait until ``tiles`` (in dependency order) are stored; raises QueueFull."""
        if not tiles:
            return
        loop = asyncio.get_running_loop()
        token = next(self._tokens)
        request = next(self._requests)
        jobs, events = [], []
        with self._cv:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            new = sum(1 for t in tiles if (slide_id, t) not in self._jobs)
            if new and self.depth_locked() + new > self.max_queue:
                raise QueueFull(f"{self.depth_locked()} tiles queued")
            for i, t in enumerate(tiles):
                job = self._jobs.get((slide_id, t))
                if job is None:
                    job = Job(slide_id, slide, t, loop.create_future())
                    self._jobs[(slide_id, t)] = job
                    events.append(self._event(job, "queued"))
                job.requesters.add(token)
                if job.state == "queued":  # (re)prioritise: newest request first, then order
                    heapq.heappush(self._heap, (-request, i, id(job), job))
                jobs.append(job)
            self._cv.notify()
        for e in events:
            self._emit(e)
        try:
            await asyncio.gather(*(asyncio.shield(j.future) for j in jobs))
        except asyncio.CancelledError:
            with self._cv:
                for j in jobs:
                    j.requesters.discard(token)
            raise

    def depth_locked(self) -> int:
        return sum(1 for j in self._jobs.values() if j.state == "queued")

    # -- the worker --------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._heap and not self._stopping:
                    self._cv.wait()
                if self._stopping:
                    for job in list(self._jobs.values()):
                        if job.state == "queued":
                            self._finish(job, "dropped", Dropped("server shutting down"))
                    return
                *_, job = heapq.heappop(self._heap)
                if job.state != "queued":
                    continue  # a stale, lower-priority heap entry of a job already handled
                if not job.requesters:
                    self._finish(job, "dropped", Dropped("no requester left"))
                    self._emit(self._event(job, "dropped"))
                    continue
                job.state = "running"
                self.running = job
            self._emit(self._event(job, "started"))
            last = time.perf_counter()

            def made(tile: TileId, kind: str) -> None:
                nonlocal last
                now = time.perf_counter()
                seconds, last = now - last, now
                if kind == "generated":
                    avg = self.seconds_per_tile.get(tile.level)
                    self.seconds_per_tile[tile.level] = seconds if avg is None else 0.7 * avg + 0.3 * seconds
                self._on_made(tile, kind, seconds)

            error: BaseException | None = None
            try:
                job.slide.ensure([job.tile], progress=made)
            except Exception as e:  # reported to the requesters and as an event
                error = e
            with self._cv:
                self.running = None
                self._finish(job, "failed" if error else "done", error)
            self._emit(self._event(job, "failed" if error else "done", error=error))

    def _finish(self, job: Job, state: str, error: BaseException | None) -> None:
        """Record the outcome and resolve the job's future on the loop (caller holds the lock)."""
        job.state = state
        self._jobs.pop((job.slide_id, job.tile), None)

        def resolve() -> None:
            if job.future.done():
                return
            if error is None:
                job.future.set_result(None)
            else:
                job.future.set_exception(error)
                job.future.exception()  # mark retrieved: nobody may be waiting any more

        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(resolve)

    # -- events ------------------------------------------------------------------------------
    def _event(self, job: Job, kind: str, error: BaseException | None = None) -> Event:
        e: Event = {"type": kind, "slide": job.slide_id, "level": job.tile.level,
                    "col": job.tile.col, "row": job.tile.row}
        if error is not None:
            e["error"] = str(error)
        return e

    def _emit(self, event: Event) -> None:
        event["queue"] = self.depth
        event["eta"] = self.eta()
        self._on_event(event)
