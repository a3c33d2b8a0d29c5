"""Errors users can act on. The CLI prints their message in one line and exits with code 2."""


class LazySlideError(Exception):
    """Base class: the message names what was wrong."""


class ModelError(LazySlideError):
    """A model folder or spec that cannot be used (the message names the file and problem)."""


class StoreError(LazySlideError):
    """The tile store cannot be opened or written."""


class TileMissing(LazySlideError):
    """A tile a reader needs is not stored, and this reader may not make it."""

    def __init__(self, tile) -> None:
        super().__init__(f"tile {tuple(tile)} is not in the store")
        self.tile = tile
