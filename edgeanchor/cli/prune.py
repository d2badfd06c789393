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


def run(args) -> int:
    from .. import api
    from ..pruning import parse_anchor_ids
    from .common import print_json

    api.check_save_path(args.out, overwrite=args.overwrite, inputs=[args.model, args.weights, args.anchors])
    det = api.load(args.model, num_classes=args.num_classes, weights=args.weights, image_size=args.image_size)
    if args.anchors:
        pruned = api.prune(det, args.anchors)
    elif args.keep is not None:
        pruned = api.prune(det, parse_anchor_ids(args.keep))
    else:
        pruned = api.prune(det, remove=parse_anchor_ids(args.remove))
    before, after = api.inspect(det), api.inspect(pruned)
    api.save(pruned, args.out, overwrite=args.overwrite,
             meta={"pruned_from": args.model, "kept_ids": sorted(pruned.anchor_set.ids)})
    summary = {"out": str(args.out), "anchors": api.anchors_path_of(args.out),
               "num_anchors": [before["num_anchors"], after["num_anchors"]],
               "head_macs": [before["head_macs"], after["head_macs"]],
               "num_boxes": [before["num_boxes"], after["num_boxes"]], "kept_ids": sorted(pruned.anchor_set.ids)}
    if args.json:
        print_json(summary)
    else:
        print(f"pruned {before['num_anchors']} -> {after['num_anchors']} anchors, "
              f"head {before['head_macs'] / 1e6:.1f}M -> {after['head_macs'] / 1e6:.1f}M MACs, "
              f"{before['num_boxes']} -> {after['num_boxes']} boxes; wrote {args.out}")
    return 0
