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


def add_arguments(parser) -> None:
    from ..api.settings import SearchCommandSettings
    from ..settings import add_arguments as settings_flags

    settings_flags(parser, SearchCommandSettings)  # one flag per setting, defined there
    parser.add_argument("--json", action="store_true", help="print the front as JSON")


def run(args) -> int:
    from .. import api
    from ..api.settings import SearchCommandSettings
    from ..api.workflow import REFERENCE_FILE
    from ..io import format_table, plural
    from .common import load_model, print_json, settings_from_args

    s = settings_from_args(SearchCommandSettings, args)
    s.validate()  # once, before the model is built
    split = api.data(**s.data_kwargs())  # read (or generated) by the search, after its checks
    search = api.workflow.search_with_options(load_model(s), split, s.search_options(), report=s.report(),
                                              out=s.out, cache=s.cache, latency_model=s.latency_model,
                                              pseudo_thresh=s.pseudo_thresh)
    result = search.to_json()
    if args.json:
        print_json({k: result[k] for k in ("baseline", "floor", "front", "num_evals", "complete")})
        return 0
    base = result["baseline"]
    rows = []
    for n in result["front"]:
        rows.append([n["num_anchors"], n["mAP"], n.get("report", {}).get("mAP", ""), n["head_macs"],
                     f"{n['head_macs'] / base['head_macs']:.3f}", n["boxes"], n["anchors_file"]])
    free = (search.out / REFERENCE_FILE).is_file()  # label-free: mAP is fidelity to the unpruned model
    name = "fidelity mAP" if free else "mAP"
    on = f"{result['split']} " if result.get("split") else ""  # the searched split's name: val, test
    print(format_table(["anchors", f"{on}{name}", "report mAP", "head MACs", "x base", "boxes", "anchors file"], rows))
    print(f"searched {result['num_evals']} subsets ({result['settings']['method']}, cost {s.cost}, metric "
          f"{s.metric}{'; label-free: agreement with the unpruned model, not accuracy' if free else ''}); baseline "
          f"{on}{name} {base['mAP']:.4f}, floor {result['floor']:.4f}; front of "
          f"{plural(len(result['front']), 'point')} in {s.out}")
    sc = result.get("scoring") or {}
    if sc.get("nodes_scored"):
        from ..exporting.report_md import scoring_workers

        print(f"scored {sc['nodes_scored']} subsets this run on {scoring_workers(sc)}, "
              f"{sc['evals_per_s']} evaluations/s; {sc['pairs_recomputed_per_node']} (image, class) pairs "
              "re-matched per subset on average")
    return 0
