"""Make and inspect data sets.

Actions:
  synth   write a deterministic synthetic COCO-format data set (5 shape
          classes whose aspect ratios h/w and sizes differ, so anchor shapes
          matter) to --out: images/{train,val,test}/*.jpg and
          annotations/{train,val,test}.json; with --format voc, a Pascal VOC
          folder instead: JPEGImages/, Annotations/*.xml,
          ImageSets/Main/{train,val,test}.txt and classes.txt (same images,
          same boxes; read it with --data DIR --split SPLIT).

Example:
  edgeanchor data synth --out data/synth --num-images 2000 --seed 0
  edgeanchor data synth --out data/synth-voc --num-images 2000 --seed 0 --format voc
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import EdgeAnchorError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    synth = actions.add_parser(
        "synth",
        help="write a synthetic COCO-format data set",
        description="Write a deterministic synthetic COCO-format detection data set.",
    )
    from ..api.settings import SynthSettings
    from ..settings import add_arguments as settings_flags

    settings_flags(synth, SynthSettings)  # one flag per setting, defined there
    synth.add_argument("--json", action="store_true", help="print a JSON result on stdout")


def run(args: argparse.Namespace) -> int:
    if args.action == "synth":
        return _run_synth(args)
    raise EdgeAnchorError("choose an action: edgeanchor data synth --out DIR --num-images N --seed S")


def _run_synth(args: argparse.Namespace) -> int:
    from .. import api
    from ..api.settings import SynthSettings
    from ..settings import from_args

    result = api.synth(**from_args(SynthSettings, args))
    counts = ", ".join(f"{split} {n}" for split, n in result["num_images"].items())
    summary = (f"wrote {args.num_images} images ({counts}) with {sum(result['num_objects'].values())} objects "
               f"to {Path(args.out)} in {result['seconds']:.1f} s")
    if args.json:
        print(json.dumps(result, indent=2))
        print(summary, file=sys.stderr)
    else:
        print(summary)
    return 0
