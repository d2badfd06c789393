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


def search_spec_from_args(args):
    """The search settings the flags describe (the method is resolved for the model by the search)."""
    from ..search.run import SearchSpec

    max_drop = args.max_drop if args.max_drop is not None else (None if args.min_map is not None else 0.005)
    return SearchSpec(method=args.method, cost=args.cost, min_map=args.min_map, max_drop=max_drop, tol=args.tol,
                      max_per_level=args.max_per_level, max_evals=args.max_evals, workers=args.workers,
                      backend=args.backend, executor=args.executor, ray_address=args.ray_address,
                      metric=args.metric)


def resolve_data(args):
    """(data, ann, report_ann) from flags, defaulting to the demo's synthetic splits."""
    from ..data.demo_data import demo_split
    from .common import data_or_demo

    data, ann, demo = data_or_demo(args, "val")
    return data, ann, args.report_ann or (demo_split("test")[1] if demo else None)  # YOLO: --report-ann is a COCO file


def run(args) -> int:
    from pathlib import Path

    from ..io import format_table
    from ..search.run import check_search_folder, check_search_spec, resolve_method, run_search
    from .common import build_from_args, print_json

    search = search_spec_from_args(args)
    check_search_spec(search)
    check_search_folder(Path(args.out))
    det = build_from_args(args)
    resolve_method(search.method, det)  # before the data is generated or read
    data, ann, report_ann = resolve_data(args)
    result = run_search(det, data, ann, args.out, search, report_ann=report_ann, cache_path=args.cache,
                        latency_model=args.latency_model)
    if args.json:
        print_json({k: result[k] for k in ("baseline", "floor", "front", "num_evals", "complete")})
        return 0
    base = result["baseline"]
    rows = []
    for n in result["front"]:
        rows.append([n["num_anchors"], n["mAP"], n.get("report", {}).get("mAP", ""), n["head_macs"],
                     f"{n['head_macs'] / base['head_macs']:.3f}", n["boxes"], n["anchors_file"]])
    print(format_table(["anchors", "mAP", "report mAP", "head MACs", "x base", "boxes", "anchors file"], rows))
    print(f"searched {result['num_evals']} subsets ({result['settings']['method']}, cost {search.cost}, metric "
          f"{search.metric}); baseline mAP "
          f"{base['mAP']:.4f}, floor {result['floor']:.4f}; front of {len(result['front'])} points in {args.out}")
    sc = result.get("scoring") or {}
    if sc.get("nodes_scored"):
        print(f"scored {sc['nodes_scored']} subsets this run on {sc['workers']} {sc['executor']} worker(s), "
              f"{sc['evals_per_s']} evaluations/s; {sc['pairs_recomputed_per_node']} (image, class) pairs "
              "re-matched per subset on average")
    return 0
