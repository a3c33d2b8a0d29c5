"""The ``lazyslide`` command line.

Make slides: ``info``, ``tile``, ``demo``, ``serve``, ``materialize`` (``slides.py``); make
models: ``prepare``, ``train``, ``assemble`` (``training.py``); judge them: ``evaluate``,
``compare``, ``study`` (``evaluation.py``). Each module parses its commands' arguments and calls the pipeline
step that does the work.

Errors users can fix (bad model spec, tile out of range, unreadable store) print one line and
exit with code 2; nothing already stored is lost.
"""

from __future__ import annotations

import argparse
import sys

from .. import distribution
from ..errors import LazySlideError
from . import evaluation, slides, training
from .common import default_spec

__all__ = ["build_parser", "default_spec", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lazyslide", description="Lazy, zoom-driven gigapixel "
                                "synthetic histopathology slides (URCDM).")
    p.add_argument("--version", action="version",
                   version=f"{distribution.NAME} {distribution.VERSION} (imported as lazyslide)")
    sub = p.add_subparsers(dest="command", required=True)
    for group in (slides, evaluation, training):
        group.add_commands(sub)
    return p


def _attach_dash_values(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``--opt -1,1,1`` -> ``--opt=-1,1,1`` for options that take a value.

    argparse reads a value that starts with '-' as the next option unless it is a plain negative
    number, and then says "expected one argument"; attached, the value reaches the option's own
    check, whose message names what is wrong with it.
    """
    takes_value: set[str] = set()
    stack = [parser]
    while stack:
        p = stack.pop()
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
            elif action.nargs is None and action.option_strings:
                takes_value.update(action.option_strings)
    out, i = [], 0
    while i < len(argv):
        if argv[i] in takes_value and i + 1 < len(argv) and argv[i + 1][:1] == "-" \
                and argv[i + 1][1:2].isdigit():
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(_attach_dash_values(parser, argv))
    try:
        return args.func(args)
    except LazySlideError as e:
        print(f"lazyslide: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lazyslide: interrupted (stored tiles are kept)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
