"""Search anchor subsets for the Pareto front of accuracy against cost.

  edgeanchor search --model demo --out runs/search          (the demo's synthetic val split)
  edgeanchor search --model ckpt.pt --data DIR --ann val.json --method greedy --max-drop 0.005 --out DIR
  edgeanchor search --model ckpt.pt --data VOCdevkit/VOC2007 --split val --metric voc07 --out DIR

The model runs once over the data; every candidate subset is then scored from
the cached candidates with the model's own post-processing and COCO mAP (or
Pascal VOC mAP@0.5 with --metric voc07|voc). The
search is resumable: rerun the same command and it continues from the nodes
stored in --out/search.json. Writes search.json, pareto.png and, for each
front point, front/point_NN.anchors.json for 'edgeanchor prune --anchors'.
"""

from __future__ import annotations

from .common import add_model_arguments, add_split_argument


def add_arguments(parser) -> None:
    add_model_arguments(parser)
    add_search_arguments(parser)
    parser.add_argument("--data", default=None, help="image folder, a YOLO DATA.yaml, or Pascal VOC (a VOCdevkit "
                        "year folder, or images with XML beside them) (default: the demo's synthetic data)")
    parser.add_argument("--ann", default=None, help="COCO annotations searched on (default: demo val split)")
    parser.add_argument("--report-ann", default=None,
                        help="also report the front on this split (avoids selection bias; default for the demo: test)")
    add_split_argument(parser, "val")
    parser.add_argument("--out", required=True, help="search folder (resumed if it holds a search)")
    parser.add_argument("--json", action="store_true", help="print the front as JSON")


def add_search_arguments(parser) -> None:
    """The search flags, defined once in :class:`~edgeanchor.api.settings.SearchSettings`."""
    from ..api.settings import SearchSettings
    from ..settings import add_arguments

    add_arguments(parser, SearchSettings)


def search_kwargs(args) -> dict:
    """The search flags as :func:`edgeanchor.search`'s keywords (``max_drop`` defaults there)."""
    from ..api.settings import SearchSettings
    from ..settings import from_args

    values = from_args(SearchSettings, args)
    values.pop("cache")
    values.pop("latency_model")
    return values


def data_arguments(args, default_split: str) -> dict:
    """--data/--ann/--split as :func:`edgeanchor.data`'s arguments; the demo's split is the command's own."""
    if not args.data and not args.ann:
        return {"images": "demo", "ann": None, "split": default_split}
    return {"images": args.data, "ann": args.ann, "split": None if args.ann else args.split}


def run(args) -> int:
    from .. import api
    from ..io import format_table
    from .common import build_from_args, print_json

    api.check_search_settings(out=args.out, **search_kwargs(args))  # before the model is built
    split = api.data(**data_arguments(args, "val"))  # read (or generated) by the search, after its checks
    report = args.report_ann or ("test" if not args.data and not args.ann else None)  # the demo: its test split
    search = api.search(build_from_args(args), split, report=report, out=args.out, cache=args.cache,
                        latency_model=args.latency_model, **search_kwargs(args))
    result = search.to_json()
    if args.json:
        print_json({k: result[k] for k in ("baseline", "floor", "front", "num_evals", "complete")})
        return 0
    base = result["baseline"]
    rows = []
    for n in result["front"]:
        rows.append([n["num_anchors"], n["mAP"], n.get("report", {}).get("mAP", ""), n["head_macs"],
                     f"{n['head_macs'] / base['head_macs']:.3f}", n["boxes"], n["anchors_file"]])
    print(format_table(["anchors", "mAP", "report mAP", "head MACs", "x base", "boxes", "anchors file"], rows))
    print(f"searched {result['num_evals']} subsets ({result['settings']['method']}, cost {args.cost}, metric "
          f"{args.metric}); baseline mAP "
          f"{base['mAP']:.4f}, floor {result['floor']:.4f}; front of {len(result['front'])} points in {args.out}")
    sc = result.get("scoring") or {}
    if sc.get("nodes_scored"):
        print(f"scored {sc['nodes_scored']} subsets this run on {sc['workers']} {sc['executor']} worker(s), "
              f"{sc['evals_per_s']} evaluations/s; {sc['pairs_recomputed_per_node']} (image, class) pairs "
              "re-matched per subset on average")
    return 0
