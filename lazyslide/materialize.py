"""Batch generation of a whole slide: every tile, level by level and phase by phase.

Within a phase no two tiles overlap, so a phase's tiles are independent and go to the model
``batch_size`` at a time. Tiles already in the store are skipped, so a killed run resumes where
it stopped and generates nothing twice.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from .errors import LazySlideError
from .geometry import TileId
from .slide import Slide


@dataclass
class LevelStats:
    level: int
    tiles: int
    stored_before: int = 0
    generated: int = 0
    background: int = 0
    seconds: float = 0.0


@dataclass
class Stats:
    levels: list[LevelStats] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {str(s.level): {"tiles": s.tiles, "stored_before": s.stored_before,
                               "generated": s.generated, "background": s.background,
                               "seconds": round(s.seconds, 3)} for s in self.levels}


def parse_seeds(text: str) -> list[int]:
    """``7``, ``0-99`` or ``1,5,9-12`` -> a sorted list of distinct seeds."""
    seeds: set[int] = set()
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                a, b = (int(v) for v in part.split("-", 1))
                if b < a:
                    raise ValueError
                seeds.update(range(a, b + 1))
            else:
                seeds.add(int(part))
    except ValueError:
        raise LazySlideError(f"bad --seed {text!r}: use N, A-B or a comma list") from None
    if not seeds or min(seeds) < 0:
        raise LazySlideError(f"bad --seed {text!r}: seeds are non-negative integers")
    return sorted(seeds)


def _batches(tiles: list[TileId], size: int) -> Iterable[list[TileId]]:
    for i in range(0, len(tiles), size):
        yield tiles[i:i + size]


def materialize(slide: Slide, *, batch_size: int = 1, show_progress: bool = True) -> Stats:
    """Generate every tile of ``slide`` not yet stored."""
    from tqdm import tqdm

    if batch_size < 1:
        raise LazySlideError(f"--batch-size must be >= 1, got {batch_size}")
    g, plan = slide.geometry, slide.plan
    stats = Stats()
    for level in slide.levels:
        tiles = g.tiles(level)
        st = LevelStats(level, len(tiles))
        todo = [t for t in tiles if not slide.is_stored(*t)]
        st.stored_before = len(tiles) - len(todo)
        bar = tqdm(total=len(tiles), initial=st.stored_before, desc=f"level {level}", unit="tile",
                   file=sys.stderr, disable=not show_progress, dynamic_ncols=True)
        started = time.perf_counter()
        for phase in sorted({plan.rank(g, *t) for t in todo}):
            in_phase = [t for t in todo if plan.rank(g, *t) == phase]
            for batch in _batches(in_phase, batch_size):
                for kind in slide.make_batch(batch):
                    if kind == "generated":
                        st.generated += 1
                    else:
                        st.background += 1
                bar.update(len(batch))
                bar.set_postfix(generated=st.generated, background=st.background)
        st.seconds = time.perf_counter() - started
        bar.close()
        stats.levels.append(st)
    return stats
