"""Show a model's anchors and cost: head MACs, boxes, total MACs, per level.

Examples:
  edgeanchor inspect --model torchvision:ssd300_vgg16 --num-classes 81 --json
  edgeanchor inspect --model demo --anchors exports/demo/anchors.json
"""

from __future__ import annotations

from ..io import format_table
from .common import load_model, print_json, settings_from_args


def add_arguments(parser) -> None:
    from ..api.settings import InspectSettings
    from ..settings import add_arguments as settings_flags

    settings_flags(parser, InspectSettings)  # one flag per setting, defined there
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of a table")


def run(args) -> int:
    from .. import api
    from ..api.settings import InspectSettings

    s = settings_from_args(InspectSettings, args)
    s.validate()
    info = api.inspect(load_model(s))
    if args.json:
        print_json(info)
        return 0
    rows = []
    for lv in info["levels"]:
        shapes = " ".join(f"{a['id']}:{a['w']:.0f}x{a['h']:.0f}" for a in lv["anchors"]) or "(dropped)"
        rows.append([lv["level"], "x".join(f"{s:g}" for s in lv["stride"]), "x".join(map(str, lv["feature_size"])),
                     lv["num_anchors"], lv["num_boxes"], lv["head_macs"], shapes])
    print(format_table(["level", "stride", "grid", "anchors", "boxes", "head MACs", "id:w x h (px)"], rows))
    print(
        f"{info['model']}: {info['num_anchors']} anchors, {info['num_boxes']} boxes, "
        f"head {info['head_macs'] / 1e6:.1f}M MACs, total {info['total_macs'] / 1e6:.1f}M MACs "
        f"at {info['image_size'][0]}x{info['image_size'][1]}"
    )
    return 0
