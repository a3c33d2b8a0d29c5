"""Generation off the event loop: batches of ready tiles, fairly chosen, run on a backend.

Requests ask for magnification tiles (``Slide.missing``: a tile and what it needs); each
(slide, tile) is one job, so concurrent requests for a tile, or for Deep Zoom tiles sharing it,
wait on the same job (single flight). A job is ready once no tile it depends on is queued or
running; the worker threads (one per backend slot: one for this process's device, one per
Dask worker) take ready jobs of one level and inpainting phase together, up to the model's
fixed batch (``sampling.batch``; the backend pads the network calls, so which tiles share a
batch never changes a tile's bytes).

Which job leads a batch: the lowest class first (tiles on screen, then a viewer's prefetch,
then the server's idle prefetch); within it the clients (a viewer's WebSocket, an HTTP peer)
take turns, round-robin, so one user's deep zoom cannot starve another's home view; a client's
own jobs go newest request first, then in the order asked. A queued job whose every requester
has gone is dropped when seen; a running batch always finishes into the store. A full queue
refuses new work (the server answers 503) instead of growing without bound.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lazyslide import Slide, TileId
from lazyslide.slide import claimed

from .backends import Backend

Event = dict[str, Any]

#: Request classes, most urgent first.
VISIBLE, PREFETCH, IDLE = 0, 1, 2


class QueueFull(Exception):
    """The queue cannot take the request's jobs now."""


class Dropped(Exception):
    """The job was dropped before it ran (no one was waiting for it)."""


@dataclass(frozen=True)
class Claim:
    """Why a job is wanted: by which client, how urgently, how recently, in which order."""

    client: str
    cls: int
    request: int
    index: int

    def rank(self) -> tuple[int, int, int]:
        return (self.cls, -self.request, self.index)


@dataclass(eq=False)
class Job:
    slide_id: str
    slide: Slide
    tile: TileId
    future: asyncio.Future
    requesters: dict[int, Claim] = field(default_factory=dict)
    state: str = "queued"
    future_error: BaseException | None = None
    #: the tiles it depends on and its batching group (jobs that may share a network call: one
    #: model, method, level and phase), computed once (the scheduler looks at
    #: every queued job for each batch it chooses)
    deps: list[TileId] = field(default_factory=list)
    key: tuple = ()

    def __post_init__(self) -> None:
        s = self.slide
        self.deps = s.plan.dependencies(s.geometry, self.tile)
        self.key = (s.model.fingerprint, s.method.name, self.tile.level,
                    s.plan.rank(s.geometry, *self.tile))

    def rank(self, client: str | None = None) -> tuple[int, int, int]:
        ranks = [c.rank() for c in self.requesters.values() if client is None or c.client == client]
        return min(ranks) if ranks else (IDLE + 1, 0, 0)


class Scheduler:
    """Runs tile jobs on ``backend``'s slots; call ``start`` once a loop is running."""

    def __init__(self, backend: Backend, *, max_queue: int = 4096,
                 on_event: Callable[[Event], None] | None = None,
                 on_made: Callable[[TileId, str, float], None] | None = None) -> None:
        self.backend = backend
        self.max_queue = max_queue
        self._on_event = on_event or (lambda e: None)
        self._on_made = on_made or (lambda t, k, s: None)
        self._jobs: dict[tuple[str, TileId], Job] = {}
        self._cv = threading.Condition()
        self._requests = itertools.count(1)
        self._tokens = itertools.count(1)
        self._rotation: list[str] = []  # clients, the next to be served first
        self._client_tokens: dict[str, set[int]] = {}
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        #: moving average of seconds per generated tile, per level (for the ETA)
        self.seconds_per_tile: dict[int, float] = {}
        #: batches running now
        self.running: list[list[Job]] = []
        #: how many batches ran, and how many tiles they held (``/metrics``)
        self.batches = 0
        self.batched_tiles = 0

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for i in range(self.backend.slots):
            t = threading.Thread(target=self._work, name=f"lazyslide-generator-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the running batches (if any) are stored; queued jobs are dropped."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        for t in self._threads:
            t.join(timeout)

    # -- asking for tiles --------------------------------------------------------------------
    @property
    def depth(self) -> int:
        with self._cv:
            return self._depth()

    @property
    def idle(self) -> bool:
        with self._cv:
            return not self._jobs

    def eta(self) -> float:
        """Seconds until the queue is empty, from measured generation times."""
        with self._cv:
            jobs = [j for j in self._jobs.values() if j.state in ("queued", "running")]
        default = max(self.seconds_per_tile.values(), default=1.0)
        total = sum(self.seconds_per_tile.get(j.tile.level, default) for j in jobs)
        return round(total / max(1, self.backend.slots), 1)

    def busy(self, slide_id: str) -> bool:
        with self._cv:
            return any(j.slide_id == slide_id for j in self._jobs.values())

    async def make(self, slide_id: str, slide: Slide, tiles: list[TileId], *, client: str = "",
                   cls: int = VISIBLE) -> None:
        """Wait until ``tiles`` (with what they need) are stored; raises QueueFull."""
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
            if new and self._depth() + new > self.max_queue:
                raise QueueFull(f"{self._depth()} tiles queued")
            if client not in self._client_tokens:
                self._client_tokens[client] = set()
                self._rotation.append(client)
            self._client_tokens[client].add(token)
            for i, t in enumerate(tiles):
                job = self._jobs.get((slide_id, t))
                if job is None:
                    job = Job(slide_id, slide, t, loop.create_future())
                    self._jobs[(slide_id, t)] = job
                    events.append(self._event(job, "queued"))
                job.requesters[token] = Claim(client, cls, request, i)
                jobs.append(job)
            self._cv.notify_all()
        for e in events:
            self._emit(e)
        try:
            await asyncio.gather(*(asyncio.shield(j.future) for j in jobs))
        finally:  # done, failed or cancelled: this request wants nothing more
            with self._cv:
                for j in jobs:
                    j.requesters.pop(token, None)
                tokens = self._client_tokens.get(client)
                if tokens is not None:
                    tokens.discard(token)
                    if not tokens:
                        del self._client_tokens[client]
                        self._rotation.remove(client)

    def _depth(self) -> int:
        return sum(1 for j in self._jobs.values() if j.state == "queued")

    # -- choosing a batch (caller holds the lock) ---------------------------------------------
    def _ready(self, job: Job) -> bool:
        return not any((job.slide_id, d) in self._jobs for d in job.deps)

    def _next_batch(self, dropped: list[Job]) -> list[Job]:
        ready = []
        for job in list(self._jobs.values()):
            if job.state != "queued":
                continue
            if not job.requesters:
                self._finish(job, "dropped", Dropped("no requester left"))
                dropped.append(job)
            elif self._ready(job):
                ready.append(job)
        if not ready:
            return []
        cls = min(job.rank()[0] for job in ready)
        wanting = {c.client for job in ready for c in job.requesters.values() if c.cls == cls}
        client = next((c for c in self._rotation if c in wanting), None) or min(wanting)
        if client in self._rotation:  # served: to the back of the line
            self._rotation.remove(client)
            self._rotation.append(client)
        lead = min((j for j in ready if j.rank(client)[0] == cls), key=lambda j: j.rank(client))
        size = lead.slide.model.sampling.batch
        mates = sorted((j for j in ready if j is not lead and j.key == lead.key),
                       key=lambda j: (j.rank(client), j.rank()))
        return [lead, *mates[:size - 1]]

    # -- the workers -------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            dropped: list[Job] = []
            with self._cv:
                batch = []
                while not self._stopping:
                    batch = self._next_batch(dropped)
                    if batch or dropped:
                        break
                    self._cv.wait()
                if self._stopping:
                    for job in list(self._jobs.values()):
                        if job.state == "queued":
                            self._finish(job, "dropped", Dropped("server shutting down"))
                    return
                for job in batch:
                    job.state = "running"
                if batch:
                    self.running.append(batch)
            for job in dropped:
                self._emit(self._event(job, "dropped"))
            if batch:
                self._run(batch)

    def _run(self, batch: list[Job]) -> None:
        for job in batch:
            self._emit(self._event(job, "started"))
        started = time.perf_counter()
        kinds: dict[TileId, str] = {}
        error: BaseException | None = None
        # stored meanwhile (by a request that listed it before it was stored), or being made by
        # another process sharing the store (its claim): nothing to make here
        by_item = {(id(j.slide), j.tile): j for j in batch}
        mine: list = []
        others: list = []
        try:
            with claimed([(j.slide, j.tile) for j in batch]) as (mine, others):
                if mine:
                    self.backend.run(mine, lambda tile, kind: kinds.__setitem__(tile, kind))
        except Exception as e:  # reported to the requesters and as an event
            error = e
        made = [by_item[id(s), t] for s, t in mine]
        for slide, tile in others:
            slide.wait_for(tile)
        seconds = (time.perf_counter() - started) / max(1, len(made))  # a batch's tiles share it
        for job in made:
            kind = kinds.get(job.tile)
            if kind == "generated":
                avg = self.seconds_per_tile.get(job.tile.level)
                self.seconds_per_tile[job.tile.level] = seconds if avg is None else 0.7 * avg + 0.3 * seconds
            if kind is not None:
                self._on_made(job.tile, kind, seconds)
        with self._cv:
            self.running.remove(batch)
            if made:
                self.batches += 1
                self.batched_tiles += len(made)
            failed = []
            for job in batch:
                ok = job.slide.is_stored(*job.tile)
                self._finish(job, "done" if ok else "failed", None if ok else
                             (error or RuntimeError(f"tile {tuple(job.tile)} was not made")))
                if not ok:
                    failed.append(job)
            failed += self._fail_dependents(failed)
            self._cv.notify_all()
        for job in batch:
            if job not in failed:
                self._emit(self._event(job, "done"))
        for job in failed:
            self._emit(self._event(job, "failed", error=job.future_error))

    def _fail_dependents(self, failed: list[Job]) -> list[Job]:
        """Queued jobs that can never be made now that ``failed`` failed (caller holds the lock)."""
        out, lost = [], {(j.slide_id, j.tile): j for j in failed}
        changed = True
        while changed:
            changed = False
            for job in list(self._jobs.values()):
                if job.state != "queued":
                    continue
                for d in job.deps:
                    if (job.slide_id, d) in lost:
                        cause = lost[(job.slide_id, d)].future_error
                        self._finish(job, "failed", cause)
                        lost[(job.slide_id, job.tile)] = job
                        out.append(job)
                        changed = True
                        break
        return out

    def _finish(self, job: Job, state: str, error: BaseException | None) -> None:
        """Record the outcome and resolve the job's future on the loop (caller holds the lock)."""
        job.state = state
        job.future_error = error
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
