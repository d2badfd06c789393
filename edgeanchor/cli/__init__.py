"""Command-line entry point: ``edgeanchor SUBCOMMAND ...``.

Each subcommand lives in its own module under ``edgeanchor.cli``. The module
docstring is its ``--help`` text; it defines ``add_arguments(parser)`` and
``run(args) -> int``. Modules import heavy libraries inside ``run`` so that
``--help`` stays fast. Nothing below ``cli/`` parses flags.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys

from ..errors import CheckFailed, EdgeAnchorError

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


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's error contract: one ``error:`` line on stderr, exit code 2."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        self.exit(2, f"error: {message}; see '{self.prog} --help'\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="edgeanchor",
        description="Anchor pruning, export and per-stage timing for one-stage detectors.",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"edgeanchor {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, module in _available_subcommands().items():
        doc = (module.__doc__ or "").strip()
        summary = doc.splitlines()[0] if doc else name
        p = sub.add_parser(
            name, help=summary, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


# Core messages mark each parameter they name with backticks, as the Python API spells it (`data`,
# `min_map`); on the command line each becomes its flag.
_MARKED = re.compile(r"`([a-z][a-z0-9]*(?:_[a-z0-9]+)*)`")


def parameter_flags(parser: argparse.ArgumentParser, command: str | None = None) -> dict[str, str]:
    """Parameter name (argparse ``dest``) -> its long flag, over every subcommand; ``command``'s own win."""

    def collect(p: argparse.ArgumentParser, into: dict[str, str]) -> dict[str, str]:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    collect(sub, into)
            elif action.option_strings and action.dest != "help":
                into.setdefault(action.dest, max(action.option_strings, key=len))
        return into

    flags = collect(parser, {})
    for action in parser._actions:
        if command and isinstance(action, argparse._SubParsersAction) and command in action.choices:
            flags.update(collect(action.choices[command], {}))
    return flags


def flag_wording(message: str, flags: dict[str, str] | None = None) -> str:
    """A core error message in the CLI's terms: each marked parameter (`data`) becomes its flag.

    ``flags`` maps parameter names to flags (default: :func:`parameter_flags` of the whole CLI); a
    parameter no subcommand has a flag for becomes ``--name`` (underscores as hyphens).
    """
    if flags is None:
        flags = parameter_flags(build_parser())
    return _MARKED.sub(lambda m: flags.get(m.group(1), "--" + m.group(1).replace("_", "-")), message)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (2 for user errors, 1 for failed checks)."""
    from ..io import configure_logging

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) or a flag error already printed as one line (2)
        return int(exc.code or 0)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    configure_logging()
    try:
        return int(args._run(args) or 0)
    except (EdgeAnchorError, CheckFailed) as exc:
        message = flag_wording(str(exc), parameter_flags(parser, args.command))
        print(f"error: {message}", file=sys.stderr)
        return 2 if isinstance(exc, EdgeAnchorError) else 1
    except ModuleNotFoundError as exc:  # a device install (requirements-device.txt) has no torch
        if exc.name != "torch" and not (exc.name or "").startswith("torch."):
            raise
        print(f"error: edgeanchor {args.command} needs torch, which is not installed; pip install edgeanchor with "
              "its dependencies (bench, evaluate --export and regress --export run without it)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
