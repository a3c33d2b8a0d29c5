"""Slide seeds: one rule everywhere (Python API, CLI, server): integers in 0..MAX_SEED.

2^63 - 1 is the largest value every consumer can carry unchanged: a signed 64-bit integer in
SQLite, JSON readers that use int64, and the seeds derived from it (``sampler.derive_seed``).
"""

from __future__ import annotations

from .errors import LazySlideError

MAX_SEED = 2**63 - 1


def check_seed(seed: object, name: str = "seed") -> int:
    """``seed`` itself if it is an integer in 0..MAX_SEED, else a LazySlideError naming it."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise LazySlideError(f"{name} must be an integer in 0..{MAX_SEED}, got {seed!r}")
    return seed


def parse_seeds(text: str, name: str = "--seed") -> list[int]:
    """``7``, ``0-99`` or ``1,5,9-12`` -> a sorted list of distinct seeds."""
    seeds: set[int] = set()
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part[1:]:
                a, b = (_int(v) for v in part.split("-", 1))
                if b < a:
                    raise ValueError
                if b - a >= 1_000_000:
                    raise LazySlideError(f"bad {name} {text!r}: at most a million seeds at once")
                seeds.update(range(a, b + 1))
            else:
                seeds.add(_int(part))
    except ValueError:
        raise LazySlideError(f"bad {name} {text!r}: use N, A-B or a comma list") from None
    if not seeds:
        raise LazySlideError(f"bad {name} {text!r}: use N, A-B or a comma list")
    for s in seeds:
        check_seed(s, f"each seed of {name}")
    return sorted(seeds)


def _int(text: str) -> int:
    """Only ASCII digits (int() also takes other scripts' digits and underscores)."""
    text = text.strip()
    body = text[1:] if text.startswith("-") else text
    if not body.isascii() or not body.isdigit() or len(body) > 30:
        raise ValueError(text)
    return int(text)
