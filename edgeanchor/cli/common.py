"""Flags shared by several subcommands, and turning them into core values."""

from __future__ import annotations

import argparse
import json
import sys


def add_model_arguments(parser: argparse.ArgumentParser, *, default_model: str | None = "demo") -> None:
    """The model flags (defined once, in :class:`~edgeanchor.api.settings.ModelSettings`) and ``--anchors``."""
    from ..api.settings import ModelWithAnchors
    from ..settings import add_arguments

    add_arguments(parser, ModelWithAnchors)
    for action in parser._actions:
        if action.dest == "model":
            action.default = default_model
            action.help = (action.help or "").replace("(default: demo)", f"(default: {default_model})")


def model_kwargs(args) -> dict:
    """The shared model flags as :func:`edgeanchor.load`'s keywords."""
    from ..api.settings import ModelWithAnchors
    from ..settings import from_args

    values = from_args(ModelWithAnchors, args)
    values.pop("model")
    return values


def build_from_args(args):
    """Build the detector the shared model flags describe."""
    from .. import api

    return api.load(args.model, **model_kwargs(args))


def add_split_argument(parser, default: str) -> None:
    parser.add_argument("--split", default=None, choices=["train", "val", "trainval", "test"],
                        help="with --data DATA.yaml (a YOLO data set) or --data VOCdevkit/VOC2007 (Pascal VOC: "
                        f"ImageSets/Main/SPLIT.txt): the split to use (default {default})")


def print_json(obj) -> None:
    """The result as JSON on stdout (``--json``); nothing else goes to stdout then."""
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")
