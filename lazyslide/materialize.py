"""Batch generation of a whole slide: every tile, level by level and phase by phase.

Within a phase no two tiles overlap, so a phase's tiles are independent and go to the model
its ``sampling.batch`` at a time (every network call that size, padded: ``produce``). Tiles
already in the store are skipped, so a killed run resumes where it stopped and generates
nothing twice; tiles another process has claimed are left to it (the store's claims), so
several processes on one store share the work and make each tile once.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from .geometry import TileId
from .slide import Slide


@dataclass
class LevelStats:
    level: int
    tiles: int
    stored_before: int = 0
    generated: int = 0
    background: int = 0
    #: network evaluations (tiles x unet calls) made for this level's tiles
    unet_evaluations: int = 0
    seconds: float = 0.0


@dataclass
class Stats:
    levels: list[LevelStats] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {str(s.level): {"tiles": s.tiles, "stored_before": s.stored_before,
                               "generated": s.generated, "background": s.background,
                               "unet_evaluations": s.unet_evaluations,
                               "seconds": round(s.seconds, 3)} for s in self.levels}


def _batches(tiles: list[TileId], size: int) -> Iterable[list[TileId]]:
    for i in range(0, len(tiles), size):
        yield tiles[i:i + size]


def materialize(slide: Slide, *, show_progress: bool = True) -> Stats:
    """Generate every tile of ``slide`` not yet stored."""
    from tqdm import tqdm

    batch_size = slide.model.sampling.batch
    g, plan = slide.geometry, slide.plan
    stats = Stats()
    for level in slide.levels:
        tiles = g.tiles(level)
        st = LevelStats(level, len(tiles))
        todo = [t for t in tiles if not slide.is_stored(*t)]
        st.stored_before = len(tiles) - len(todo)
        bar = tqdm(total=len(tiles), initial=st.stored_before, desc=f"level {level}", unit="tile",
                   file=sys.stderr, disable=not show_progress, dynamic_ncols=True)
        started, evaluated = time.perf_counter(), slide.unet_evaluations[level]
        for phase in sorted({plan.rank(g, *t) for t in todo}):
            pending = [t for t in todo if plan.rank(g, *t) == phase]
            others = len(pending)  # of the phase's tiles, those another process makes
            while pending:
                made = 0
                for batch in _batches(pending, batch_size):
                    for kind in slide.make_batch(batch):
                        made += 1
                        if kind == "generated":
                            st.generated += 1
                        else:
                            st.background += 1
                        bar.update()
                    bar.set_postfix(generated=st.generated, background=st.background)
                others -= made
                pending = [t for t in pending if not slide.is_stored(*t)]
                if pending and not made:  # the rest is claimed by other processes: wait for one
                    slide.wait_for(pending[0])
            bar.update(others)
        st.seconds = time.perf_counter() - started
        st.unet_evaluations = slide.unet_evaluations[level] - evaluated
        bar.close()
        stats.levels.append(st)
    return stats
