"""What the subcommands share: their settings from the parsed flags, the model they describe, --json output.

The flags themselves are defined once, in :mod:`edgeanchor.api.settings`.
"""

from __future__ import annotations

import json
import sys


def settings_from_args(cls, args, **given):
    """The command's settings (a dataclass of :mod:`edgeanchor.api.settings`) from its parsed flags."""
    from ..settings import from_args

    return cls(**from_args(cls, args, **given))


def load_model(settings):
    """Build the detector a command's model settings describe (:func:`edgeanchor.load`)."""
    from .. import api

    return api.load(settings.model, **settings.load_kwargs())


def print_json(obj) -> None:
    """The result as JSON on stdout (``--json``); nothing else goes to stdout then."""
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")
