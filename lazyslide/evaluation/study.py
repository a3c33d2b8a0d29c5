"""The reader study (paper, Table 2): which of two images is real?

Pairs are a real patch and a generated tile at the same magnification, micrometres per pixel
and size (so blur or scale does not give the answer away), shown left/right in an order fixed
per pair by a seeded coin. Answers go to SQLite the moment they are given (a closed browser
loses nothing); one answer per reader and pair.

Table 2's numbers per reader and level: TP = real image picked as real (correct), FP = the
synthetic one picked as real, p = FP / (TP + FP) the proportion misclassified, and |p - 0.5|
(0 = readers cannot tell, 0.5 = always right or always fooled).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LazySlideError
from ..model import URCDM
from ..slide import Slide
from ..store import MemoryStore, TileStore
from ..wsi import SlideReader
from .samples import level_patches, real_patches

SIDES = ("left", "right")


class StudyError(LazySlideError):
    """An answer that cannot be recorded (unknown pair, replay, no reader id, bad choice)."""


@dataclass
class Pair:
    id: str
    level: int
    mpp: float
    real: np.ndarray
    fake: np.ndarray
    real_side: str

    def image(self, side: str) -> np.ndarray:
        if side not in SIDES:
            raise StudyError(f"side must be left or right, got {side!r}")
        return self.real if side == self.real_side else self.fake


def build_pairs(model: URCDM, readers: Sequence[SlideReader], levels: Sequence[int], n: int, *,
                seeds: Sequence[int] = (0, 1, 2, 3), seed: int = 0, block: int = 3,
                store: TileStore | MemoryStore | None = None) -> list[Pair]:
    """``n`` pairs per level; generated tiles from the lazy engine (tissue only)."""
    rng = np.random.default_rng(seed)
    store = store if store is not None else MemoryStore()
    slides = [Slide(model, s, store, make_level0=False) for s in seeds]
    g, pairs = model.geometry, []
    for lv in levels:
        g.check_tile(lv, 0, 0)
        fake = level_patches(slides, lv, block)
        if not fake:
            raise LazySlideError(f"no generated level-{lv} tiles with tissue; try more seeds")
        real = real_patches(readers, g.level_mpp(lv), g.tile, n, rng)
        for i in range(n):
            side = SIDES[int(rng.integers(2))]
            pairs.append(Pair(f"L{lv}-{i:03d}", lv, g.level_mpp(lv), real[i % len(real)],
                              fake[i % len(fake)], side))
    order = rng.permutation(len(pairs))
    return [pairs[i] for i in order]


class StudyDB:
    """Pairs and answers in one SQLite file; safe to use from the server's threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript("""
                CREATE TABLE IF NOT EXISTS pairs (
                    pair TEXT PRIMARY KEY, level INTEGER NOT NULL, mpp REAL NOT NULL,
                    real_side TEXT NOT NULL);
                CREATE TABLE IF NOT EXISTS answers (
                    reader TEXT NOT NULL, pair TEXT NOT NULL REFERENCES pairs(pair),
                    choice TEXT NOT NULL, correct INTEGER NOT NULL, answered REAL NOT NULL,
                    PRIMARY KEY (reader, pair));
            """)
        except sqlite3.DatabaseError as e:
            raise StudyError(f"{path}: not a usable study database ({e})") from None

    def add_pairs(self, pairs: Sequence[Pair]) -> None:
        with self._lock:
            self.db.executemany("INSERT OR REPLACE INTO pairs VALUES (?, ?, ?, ?)",
                                [(p.id, p.level, p.mpp, p.real_side) for p in pairs])

    def answered(self, reader: str) -> set[str]:
        with self._lock:
            return {r[0] for r in self.db.execute("SELECT pair FROM answers WHERE reader = ?", (reader,))}

    def record(self, reader: Any, pair: Any, choice: Any) -> bool:
        """Store one answer; returns whether the reader picked the real image."""
        if not isinstance(reader, str) or not reader.strip() or len(reader) > 64:
            raise StudyError("a reader id (1-64 characters) is required")
        if choice not in SIDES:
            raise StudyError(f"choice must be 'left' or 'right', got {str(choice)[:20]!r}")
        with self._lock:
            row = self.db.execute("SELECT real_side FROM pairs WHERE pair = ?", (str(pair),)).fetchone()
            if row is None:
                raise StudyError(f"unknown pair {str(pair)[:40]!r}")
            correct = row[0] == choice
            try:
                self.db.execute("INSERT INTO answers VALUES (?, ?, ?, ?, ?)",
                                (reader.strip(), pair, choice, int(correct), time.time()))
            except sqlite3.IntegrityError:
                raise StudyError(f"reader {reader.strip()!r} already answered pair {pair!r}") from None
        return correct

    def close(self) -> None:
        self.db.close()


def study_report(path: str | Path) -> list[dict[str, Any]]:
    """Table 2 rows: per reader and level, then per level over readers, then the total."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"{path}: no such study database")
    db = StudyDB(path)
    rows = db.db.execute("""SELECT a.reader, p.level, SUM(a.correct), SUM(1 - a.correct)
                            FROM answers a JOIN pairs p USING (pair)
                            GROUP BY a.reader, p.level ORDER BY a.reader, p.level""").fetchall()
    db.close()
    out = [_row(reader, level, tp, fp) for reader, level, tp, fp in rows]
    for level in sorted({r["level"] for r in out}):
        tp = sum(r["TP"] for r in out if r["level"] == level and r["reader"] != "all")
        fp = sum(r["FP"] for r in out if r["level"] == level and r["reader"] != "all")
        out.append(_row("all", level, tp, fp))
    readers = [r for r in out if r["reader"] != "all"]
    if readers:
        out.append(_row("all", "all", sum(r["TP"] for r in readers), sum(r["FP"] for r in readers)))
    return out


def _row(reader: str, level: Any, tp: int, fp: int) -> dict[str, Any]:
    p = fp / (tp + fp) if tp + fp else float("nan")
    return {"reader": reader, "level": level, "TP": int(tp), "FP": int(fp), "p": p,
            "abs_p_minus_half": abs(p - 0.5)}


def format_report(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'reader':<16}{'level':>6}{'TP':>6}{'FP':>6}{'p':>8}{'|p-0.5|':>9}"]
    for r in rows:
        lines.append(f"{r['reader'][:16]:<16}{r['level']!s:>6}{r['TP']:>6}{r['FP']:>6}"
                     f"{r['p']:>8.3f}{r['abs_p_minus_half']:>9.3f}")
    return "\n".join(lines)
