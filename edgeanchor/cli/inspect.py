"""Show a model's anchors and cost: head MACs, boxes, total MACs, per level.

Examples:
  edgeanchor inspect --model torchvision:ssd300_vgg16 --num-classes 81 --json
  edgeanchor inspect --model demo --anchors exports/demo/anchors.json
"""

from __future__ import annotations

from ..io import format_table
from .common import add_model_arguments, build_from_args, print_json


def add_arguments(parser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of a table")


def inspect_detector(det) -> dict:
    """The JSON-ready description of a detector's anchors and cost."""
    from ..cost import measure_cost

    cost = measure_cost(det)
    levels = []
    for i, level in enumerate(det.anchor_set.levels):
        levels.append(
            {
                "level": i,
                "stride": list(level.stride) if level.stride is not None else [
                    det.image_size[0] / level.feature_size[0], det.image_size[1] / level.feature_size[1]],
                "feature_size": list(level.feature_size),
                "num_anchors": level.num_anchors,
                "num_boxes": level.num_boxes,
                "head_macs": cost.head_macs_per_level[i],
                "cls_channels": level.num_anchors * det.cls_columns,  # YOLO: objectness + classes per anchor
                "box_channels": level.num_anchors * 4,
                "anchors": [
                    {"id": a.id, "w": round(a.w, 4), "h": round(a.h, 4), "ratio_hw": round(a.ratio, 4)}
                    for a in level.anchors
                ],
            }
        )
    return {
        "model": det.arch,
        "num_classes": det.num_classes,
        "image_size": list(det.image_size),
        "ratio_convention": "h/w",
        "num_anchors": det.anchor_set.num_anchors,
        "num_boxes": cost.num_boxes,
        "head_macs": cost.head_macs,
        "backbone_macs": cost.backbone_macs,
        "total_macs": cost.total_macs,
        "levels": levels,
    }


def run(args) -> int:
    det = build_from_args(args)
    info = inspect_detector(det)
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
