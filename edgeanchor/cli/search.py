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
    g = parser.add_argument_group("search")
    g.add_argument("--method", choices=["greedy", "layerwise", "shared"], default=None,
                   help="greedy (paper's Pareto tree search), layerwise, or shared (heads shared across levels); "
                        "default: shared for RetinaNet, else greedy")
    g.add_argument("--cost", choices=["head_macs", "boxes", "latency"], default="head_macs")
    floor = g.add_mutually_exclusive_group()
    floor.add_argument("--min-map", type=float, default=None, help="absolute accuracy floor (in --metric's mAP)")
    floor.add_argument("--max-drop", type=float, default=None,
                       help="floor relative to the unpruned mAP, in mAP units (default 0.005 = 0.5 points)")
    g.add_argument("--metric", choices=["coco", "voc07", "voc"], default="coco",
                   help="what subsets are ranked by: coco (mAP@[.5:.95]), voc07 (Pascal VOC mAP@0.5, 11-point) or "
                        "voc (VOC2010+ all-point); default coco")
    g.add_argument("--tol", type=float, default=1e-4, help="two mAPs within this are equal (default 1e-4)")
    g.add_argument("--max-per-level", type=int, default=1, help="layerwise: anchors left per level")
    g.add_argument("--max-evals", type=int, default=3000, help="evaluation budget")
    g.add_argument("--workers", type=int, default=2, help="scoring processes, or Ray actors with --executor ray")
    g.add_argument("--executor", choices=["processes", "ray"], default="processes",
                   help="processes: this machine's worker processes; ray: actors sharding the images, on a local "
                        "Ray or a cluster (--ray-address)")
    g.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="the Ray cluster for --executor ray: HOST:PORT, ray://HOST:PORT or auto (default: start a "
                        "local Ray)")
    g.add_argument("--backend", choices=["faster", "pycocotools"], default="faster",
                   help="COCO evaluator of the front's full metrics; the search ranks subsets by the exact "
                        "incremental mAP (pycocotools' arithmetic) whatever this is")
    g.add_argument("--cache", default=None, help="candidate cache file (default: keyed file in the cache folder)")
    g.add_argument("--latency-model", default=None,
                   help="latency model JSON for --cost latency (default: calibrate one now on this machine)")


def search_kwargs(args) -> dict:
    """The search flags as :func:`edgeanchor.search`'s keywords (``max_drop`` defaults there)."""
    return {"method": args.method, "cost": args.cost, "metric": args.metric, "min_map": args.min_map,
            "max_drop": args.max_drop, "tol": args.tol, "max_per_level": args.max_per_level,
            "max_evals": args.max_evals, "workers": args.workers, "executor": args.executor,
            "ray_address": args.ray_address, "backend": args.backend}


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
