"""Command-line entry point: ``edgeanchor SUBCOMMAND ...``.

Each subcommand lives in its own module under ``edgeanchor.cli``. The module
docstring is its ``--help`` text; it defines ``add_arguments(parser)`` and
``run(args) -> int``. Modules import heavy libraries inside ``run`` so that
``--help`` stays fast. Nothing below ``cli/`` parses flags.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import EdgeAnchorError

# subcommand name -> module (relative to this package)
SUBCOMMANDS = {
    "inspect": ".inspect",
    "data": ".data",
    "train": ".train",
    "evaluate": ".evaluate",
    "prune": ".prune",
    "search": ".search",
    "prune-and-export": ".prune_and_export",
    "bench": ".bench",
    "regress": ".regress",
}


def _available_subcommands() -> dict:
    modules = {}
    for name, mod_name in SUBCOMMANDS.items():
        try:
            modules[name] = importlib.import_module(mod_name, __name__)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith(__name__):
                continue  # subcommand not built yet
            raise
    return modules


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeanchor",
        description="Anchor pruning, export and per-stage timing for one-stage detectors.",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"edgeanchor {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in _available_subcommands().items():
        doc = (module.__doc__ or "").strip()
        summary = doc.splitlines()[0] if doc else name
        p = sub.add_parser(
            name, help=summary, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (2 for user errors)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except EdgeAnchorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
