"""Slice a model's head to a subset of anchors and write the checkpoint.

Give the anchors to keep as an anchor file (``--anchors KEEP.json``, from the
search or hand-written, edgeanchor or reference form), or as global anchor ids
(``--keep 0,3,5`` or ``--remove 1,2``; see ``edgeanchor inspect`` for ids).
The anchor set is written beside the checkpoint as ``<out>.anchors.json``.
"""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--model", default="demo", help="model name or checkpoint (default: demo)")
    parser.add_argument("--num-classes", type=int, default=None)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=None)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--anchors", help="anchor file whose anchors are kept")
    group.add_argument("--keep", help="comma-separated global anchor ids to keep")
    group.add_argument("--remove", help="comma-separated global anchor ids to remove")
    parser.add_argument("--out", required=True, help="output checkpoint (.pt)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing checkpoint and anchor file at --out (only ones edgeanchor wrote)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary")


def anchors_path_of(out) -> str:
    """The anchor file written beside a pruned checkpoint: ``<out without .pt>.anchors.json``."""
    return str(out).removesuffix(".pt") + ".anchors.json"


def run(args) -> int:
    from ..cost import measure_cost
    from ..io import write_json
    from ..models import build_detector, save_checkpoint
    from ..prune import check_ids, keep_from_remove, keep_ids_from_file, parse_anchor_ids, prune
    from .common import print_json

    from ..anchors import is_anchor_file
    from ..io import check_output_file
    from ..models.registry import is_checkpoint

    anchors_path = anchors_path_of(args.out)
    inputs = [args.model, args.weights, args.anchors]
    check_output_file(args.out, overwrite=args.overwrite, is_ours=is_checkpoint, what="checkpoint", inputs=inputs)
    check_output_file(anchors_path, overwrite=args.overwrite, is_ours=is_anchor_file, what="anchor file",
                      inputs=inputs)
    det = build_detector(args.model, num_classes=args.num_classes, weights=args.weights,
                         image_size=tuple(args.image_size) if args.image_size else None)
    if args.anchors:
        keep = keep_ids_from_file(det, args.anchors)
    elif args.keep is not None:
        keep = check_ids(det, parse_anchor_ids(args.keep))
    else:
        keep = keep_from_remove(det, parse_anchor_ids(args.remove))
    pruned = prune(det, keep)
    before, after = measure_cost(det), measure_cost(pruned)
    save_checkpoint(pruned, args.out, meta={"pruned_from": args.model, "kept_ids": sorted(pruned.anchor_set.ids)})
    write_json(anchors_path, pruned.anchor_set.to_json())
    summary = {
        "out": str(args.out),
        "anchors": anchors_path,
        "num_anchors": [det.anchor_set.num_anchors, pruned.anchor_set.num_anchors],
        "head_macs": [before.head_macs, after.head_macs],
        "num_boxes": [before.num_boxes, after.num_boxes],
        "kept_ids": sorted(pruned.anchor_set.ids),
    }
    if args.json:
        print_json(summary)
    else:
        print(
            f"pruned {det.anchor_set.num_anchors} -> {pruned.anchor_set.num_anchors} anchors, "
            f"head {before.head_macs / 1e6:.1f}M -> {after.head_macs / 1e6:.1f}M MACs, "
            f"{before.num_boxes} -> {after.num_boxes} boxes; wrote {args.out}"
        )
    return 0
