"""This project as an installed distribution: its name, version, and the unrelated projects
that also install a module called ``lazyslide``.

The import name is ``lazyslide`` (the layout of the code), but the Python Package Index's
``lazyslide`` is another project (a whole-slide *analysis* framework, also imported as
``lazyslide``); ours is distributed as ``lazyslide-urcdm``. Both in one environment overwrite
each other's files, whichever was installed last winning, so ``lazyslide info`` says so.
"""

from __future__ import annotations

from importlib import metadata

#: The distribution's name on package indexes (pyproject.toml's ``project.name``).
NAME = "lazyslide-urcdm"
#: The version of this code (pyproject.toml takes it from here: ``dynamic = ["version"]``).
VERSION = "0.1.0"


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def others() -> list[str]:
    """Installed distributions other than this one that provide a top-level ``lazyslide``."""
    providers = metadata.packages_distributions().get("lazyslide", [])
    return sorted({p for p in providers if _canonical(p) != NAME})


def clash_warning() -> str | None:
    """One line naming the other distributions that install ``lazyslide``, or None."""
    found = others()
    if not found:
        return None
    return (f"warning: {', '.join(found)} also install(s) a module named lazyslide into this "
            f"environment and may have overwritten this one's files ({NAME}); keep them in "
            "separate virtual environments (README, 'Installing elsewhere')")
