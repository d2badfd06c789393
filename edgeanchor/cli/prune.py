"""Slice a model's head to a subset of anchors and write the checkpoint.

Give the anchors to keep as an anchor file (``--anchors KEEP.json``, from the
search or hand-written, edgeanchor or reference form), or as global anchor ids
(``--keep 0,3,5`` or ``--remove 1,2``; see ``edgeanchor inspect`` for ids).
The anchor set is written beside the checkpoint as ``<out>.anchors.json``.
"""

from __future__ import annotations


def add_arguments(parser) -> None:
    from ..api.settings import PruneSettings
    from ..settings import add_arguments as settings_flags

    settings_flags(parser, PruneSettings)  # one flag per setting, defined there
    parser.add_argument("--json", action="store_true", help="print a JSON summary")


def run(args) -> int:
    from .. import api
    from ..api.settings import PruneSettings
    from .common import load_model, print_json, settings_from_args

    s = settings_from_args(PruneSettings, args)
    s.validate()  # before the model is built
    det = load_model(s)
    keep, kwargs = s.prune_args()
    pruned = api.prune(det, *keep, **kwargs)
    before, after = api.inspect(det), api.inspect(pruned)
    api.save(pruned, s.out, overwrite=s.overwrite,
             meta={"pruned_from": s.model, "kept_ids": sorted(pruned.anchor_set.ids)})
    summary = {"out": str(s.out), "anchors": api.anchors_path_of(s.out),
               "num_anchors": [before["num_anchors"], after["num_anchors"]],
               "head_macs": [before["head_macs"], after["head_macs"]],
               "num_boxes": [before["num_boxes"], after["num_boxes"]], "kept_ids": sorted(pruned.anchor_set.ids)}
    if args.json:
        print_json(summary)
    else:
        print(f"pruned {before['num_anchors']} -> {after['num_anchors']} anchors, "
              f"head {before['head_macs'] / 1e6:.1f}M -> {after['head_macs'] / 1e6:.1f}M MACs, "
              f"{before['num_boxes']} -> {after['num_boxes']} boxes; wrote {s.out}")
    return 0
