"""Each decision lives in one registry that the command line reads: adding a sampler, a method,
an export format or a network architecture is one entry (the CLI's choices follow)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lazyslide.blending import BLENDS, Blend, replace
from lazyslide.cli import build_parser
from lazyslide.export import EXPORTERS
from lazyslide.methods import METHODS, Method
from lazyslide.networks import ARCHITECTURES
from lazyslide.plan import ParityPlan
from lazyslide.sampler import SAMPLERS, Sampler, ancestral_step


def choices(command: str, option: str) -> list[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    action = next(a for a in sub.choices[command]._actions if option in a.option_strings)
    return list(action.choices)


def test_the_cli_offers_what_the_registries_hold(monkeypatch):
    assert choices("materialize", "--format") == list(EXPORTERS)
    assert choices("assemble", "--architecture") == list(ARCHITECTURES)
    for command in ("tile", "serve", "materialize", "evaluate"):
        assert choices(command, "--sampler") == list(SAMPLERS)
        assert choices(command, "--blend") == list(BLENDS)
    for command in ("tile", "materialize", "evaluate"):
        assert choices(command, "--method") == list(METHODS)
    # one entry more in each registry: the parser offers it, nothing else is edited
    monkeypatch.setitem(SAMPLERS, "ancestral-copy", Sampler(ancestral_step, version="copy-1"))
    monkeypatch.setitem(METHODS, "urcdm-copy", Method("urcdm-copy", "a copy", ParityPlan()))
    monkeypatch.setitem(EXPORTERS, "tiff-copy", EXPORTERS["tiff"])
    monkeypatch.setitem(BLENDS, "replace-copy", Blend(replace, version="copy-1"))
    assert "replace-copy" in choices("serve", "--blend")
    assert "ancestral-copy" in choices("tile", "--sampler")
    assert "urcdm-copy" in choices("evaluate", "--method")
    assert "tiff-copy" in choices("materialize", "--format")


def test_a_registered_sampler_is_usable_and_fingerprinted_apart(monkeypatch):
    from lazyslide import URCDM

    model = URCDM.random("test", 0)
    monkeypatch.setitem(SAMPLERS, "ancestral-copy", Sampler(ancestral_step, version="copy-1"))
    other = model.with_sampling(sampler="ancestral-copy")
    assert other.sampling.sampler == "ancestral-copy"
    assert other.config["sampling"]["sampler"] == "ancestral-copy"
    assert other.fingerprint != model.fingerprint
    with pytest.raises(Exception, match="unknown sampler"):
        model.with_sampling(sampler="nope")


def test_the_docs_format_table_follows_the_exporters():
    readme = (Path(__file__).parent.parent / "docs" / "formats.md").read_text()
    table = readme[readme.index("| format | layout |"):].split("\n\n")[0]
    rows = re.findall(r"^\| `([\w-]+)` \|", table, re.M)
    assert rows == list(EXPORTERS)
    assert list(ARCHITECTURES) == ["imagen-unet", "imagen-unet-channels-last"]


def test_a_registered_blend_is_usable_and_fingerprinted_apart(monkeypatch):
    from lazyslide import URCDM
    from lazyslide.sampler import parse_sampling

    model = URCDM.random("test", 0)
    monkeypatch.setitem(BLENDS, "replace-copy", Blend(replace, version="copy-1"))
    other = model.with_sampling(blend="replace-copy")
    assert other.config["sampling"]["blend"] == "replace-copy"
    assert other.fingerprint != model.fingerprint
    assert parse_sampling("ancestral:2,1,1:1:replace-copy", 3)["blend"] == "replace-copy"
