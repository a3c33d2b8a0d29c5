"""Which real images a report measures against: the held-out protocol.

A generator is judged against real tissue it never saw. By default that is every packaged real
source's held-out region (``realdata``) the model did not learn from (its config's
``training_data``), in two groups read side by side: held-out tissue of the organs the model
learnt (generalisation) and tissue of other organs (domain shift). Slide files or sources given
on the command line replace the defaults; what the model learnt from is then flagged, not hidden.
Each group feeds a level only with sources at least as fine as that level (``RealSource.feeds``)
and large enough at its scale to hold half a tile.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LazySlideError
from ..geometry import Geometry
from ..realdata import RealSpec, held_out_specs, parse_spec, trained_on
from ..wsi import SlideReader, SlideReadError


@dataclass
class Reference:
    """One group of real images and their open readers."""

    label: str
    specs: list[RealSpec]
    readers: list[SlideReader] = field(default_factory=list)
    #: tissue of other organs than the training data (domain shift): no reference for the
    #: memorisation audit, which needs held-out tissue of the training distribution
    shifted: bool = False

    def open(self) -> Reference:
        for spec in self.specs:
            try:
                self.readers.append(spec.open())
            except SlideReadError as e:
                raise LazySlideError(f"real slide: {e}") from None
        return self

    def for_level(self, geometry: Geometry, level: int) -> list[SlideReader]:
        """Readers that can give ``level``'s pixels: fine enough, and at least half a tile across."""
        mpp = geometry.level_mpp(level)
        out = []
        for spec, reader in zip(self.specs, self.readers, strict=True):
            if spec.source is None or spec.source.unfit(mpp, geometry.tile, reader.size,
                                                        glass_fill=False) is None:
                out.append(reader)
        return out

    def to_dict(self, training_data: list[dict] | None) -> dict:
        return {"label": self.label, "shifted": self.shifted,
                "sources": [{**s.to_dict(), "trained_on": None if training_data is None
                             else trained_on(s, training_data)} for s in self.specs]}


@dataclass
class Protocol:
    """The reference groups (the first is the primary one: pFID, consistency, memorisation),
    the held-out regions left out because the model learnt them, and its training data."""

    groups: list[Reference]
    left_out: list[str]
    training: list[RealSpec]
    training_data: list[dict] | None


def _specs(items: Sequence[str | Path | RealSpec], slide_mpp: float | None, region: str) -> list[RealSpec]:
    return [s if isinstance(s, RealSpec) else parse_spec(s, default_region=region, slide_mpp=slide_mpp)
            for s in items]


def resolve(training_data: list[dict] | None, real: Sequence[str | Path | RealSpec] | None = None,
            shift: Sequence[str | Path | RealSpec] = (),
            training: Sequence[str | Path | RealSpec] | None = None,
            slide_mpp: float | None = None) -> Protocol:
    """The protocol for a model that learnt from ``training_data`` (None: not recorded).

    ``real``: the primary references (packaged names default to their held-out region);
    ``shift``: a second group, read as domain shift. Neither given: the held-out default.
    ``training``: what the memorisation audit compares with (default: ``training_data``)."""
    left_out: list[str] = []
    if real:
        groups = [Reference("real", _specs(real, slide_mpp, "held-out"))]
        if shift:
            groups.append(Reference("domain shift", _specs(shift, slide_mpp, "held-out"), shifted=True))
    else:
        if shift:
            raise LazySlideError("--shift goes with --real (the default protocol groups by organ itself)")
        if training_data is None:
            raise LazySlideError("the model does not record what it learnt from (config.json "
                                 "training_data): give the real references with --real")
        organs = {spec.organ for spec in _training_specs(training_data) if spec.organ}
        same, other = [], []
        for spec in held_out_specs():
            if trained_on(spec, training_data):
                left_out.append(f"{spec.label} (the model learnt from {spec.source.name})")
            elif spec.organ in organs:
                same.append(spec)
            else:
                other.append(spec)
        groups = []
        if same:
            groups.append(Reference(f"held-out {', '.join(sorted(organs))}", same))
        if other:
            names = sorted({s.organ for s in other})
            groups.append(Reference(f"other organs ({', '.join(names)})", other, shifted=True))
    if training is not None:
        train = _specs(training, slide_mpp, "training")
    else:
        train = _training_specs(training_data or [])
    return Protocol([g for g in groups if g.specs], left_out, train, training_data)


def _training_specs(training_data: list[dict]) -> list[RealSpec]:
    """The packaged sources a model's record names (files it names cannot be found again)."""
    out = []
    for d in training_data:
        if "source" in d:
            out.append(parse_spec(f"{d['source']}:{d.get('region', 'all')}", default_region="all"))
    return out
