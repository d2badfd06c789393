"""Label-free search against labelled search, on the demo's data (which has labels to judge by).

For each model (demo, demo-yolo): search the demo's val split once with its labels and once without
(its image folder alone: the reference is the unpruned model's detections above the pseudo-label
threshold), with the same --max-drop; choose the cheapest front point above the floor in each. For both
choices: anchors, head MACs, labelled mAP on the test split, fidelity on the test split (mAP against the
unpruned model's pseudo-labels of the test images), and recall of those pseudo-labels at IoU 0.5 / 0.75.
Over every subset the label-free search evaluated: the Spearman rank correlation between its fidelity
(val) and its labelled mAP on the same val images, and on test. Every mAP is exact, from the candidate
caches (no timing is measured). Searches run in fresh folders (nothing is resumed); the label-free search
is also run with the looser floors of --free-max-drops, and the label-free subset with the best fidelity
within 1.2x the labelled choice's head MACs is given with the fidelity drop it would need.

Spearman: Pearson correlation of average ranks (pandas' ``Series.rank``; scipy is not a dependency).

Run: python benchmarks/label_free.py [--max-evals N] [--max-drop D] [--out benchmarks/results/label_free.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

import edgeanchor as ea
from edgeanchor.evaluation.cache import cache_key, load_or_build_cache
from edgeanchor.evaluation.coco_map import coco_recall
from edgeanchor.evaluation.predict import predict
from edgeanchor.evaluation.subset import SubsetScorer
from edgeanchor.subset_search.run import default_cache_path

TARGET_POINTS, TARGET_MACS = 0.01, 1.2  # label-free test mAP within 1 point, at <= 1.2x the head MACs


def spearman(a, b) -> float:
    """Spearman's rho: Pearson's r of the average ranks (ties share their mean rank)."""
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    return float(np.corrcoef(ra, rb)[0, 1])


def scorer(det, split) -> SubsetScorer:
    """Exact mAP of any anchor subset of ``det`` on ``split``, from its candidate cache."""
    dataset = split.dataset(det)
    cache = load_or_build_cache(det, dataset, default_cache_path(cache_key(det, dataset)), progress=False)
    return SubsetScorer(cache, dataset.coco_json)


def point_row(det, point, test_labels: SubsetScorer, test_fidelity: SubsetScorer, fidelity_split) -> dict:
    pruned = ea.prune(det, point)
    dataset = fidelity_split.dataset(det)
    recall = coco_recall(dataset.coco_json, predict(pruned, dataset, progress=False))
    return {"anchors": point.num_anchors, "head_macs": point.head_macs, "search_mAP": round(point.map, 6),
            "test_mAP": round(test_labels.score(point.removed, full=False)["mAP"], 6),
            "test_fidelity": round(test_fidelity.score(point.removed, full=False)["mAP"], 6),
            "test_recall": {k: round(v, 6) for k, v in recall.items()}, "removed": list(point.removed)}


def measure(model: str, max_drop: float, max_evals: int, out: Path, free_drops: list[float]) -> dict:
    det = ea.load(model)
    val, test = ea.data("demo", split="val"), ea.data("demo", split="test")
    val_folder, test_folder = Path(val.images) / "val", Path(test.images) / "test"  # the demo's split folders
    labelled = ea.search(det, val, max_drop=max_drop, max_evals=max_evals, workers=1, progress=False,
                         out=out / f"{model}-labelled")  # fresh search folders: nothing resumed
    free_split = ea.data(val_folder)
    free = ea.search(det, free_split, max_drop=max_drop, max_evals=max_evals, workers=1, progress=False,
                     out=out / f"{model}-label-free")
    reference = free_split.with_reference(det, progress=False)
    info = json.loads(Path(reference.ann).read_text())["info"]
    test_ref = ea.data(test_folder).with_reference(det, progress=False)
    test_labels, test_fidelity = scorer(det, test), scorer(det, test_ref)
    chosen_l, chosen_f = labelled.choose(), free.choose()
    rows = {"labelled": point_row(det, chosen_l, test_labels, test_fidelity, test_ref),
            "label_free": point_row(det, chosen_f, test_labels, test_fidelity, test_ref)}
    for drop in free_drops:  # label-free with a looser floor: fidelity falls faster than labelled mAP
        looser = ea.search(det, free_split, max_drop=drop, max_evals=max_evals, workers=1, progress=False,
                           out=out / f"{model}-label-free-{drop}")
        rows[f"label_free_max_drop_{drop}"] = point_row(det, looser.choose(), test_labels, test_fidelity, test_ref)
    # every subset the label-free search evaluated: its fidelity (val) against its labelled mAP (val, test);
    # the label-free search's val images are the labelled val split's, listed in another order: matched by ids
    val_labels = scorer(det, val)
    nodes = free.to_json()["nodes"]
    fidelity = [n["mAP"] for n in nodes]
    val_maps = [val_labels.score(tuple(n["removed"]), full=False)["mAP"] for n in nodes]
    test_maps = [test_labels.score(tuple(n["removed"]), full=False)["mAP"] for n in nodes]
    # what the label-free search would have needed: its best subset within the MAC target, and its fidelity drop
    budget = TARGET_MACS * rows["labelled"]["head_macs"]
    fits = [n for n in nodes if n["head_macs"] <= budget]
    best = max(fits, key=lambda n: (n["mAP"], -n["head_macs"])) if fits else None
    at_target = None if best is None else {
        "anchors": det.anchor_set.num_anchors - len(best["removed"]), "head_macs": best["head_macs"],
        "val_fidelity": round(best["mAP"], 6), "fidelity_drop": round(free.baseline["mAP"] - best["mAP"], 6),
        "test_mAP": round(test_labels.score(tuple(best["removed"]), full=False)["mAP"], 6)}
    gap = rows["labelled"]["test_mAP"] - rows["label_free"]["test_mAP"]
    ratio = rows["label_free"]["head_macs"] / rows["labelled"]["head_macs"]
    return {"model": model, "baseline_head_macs": labelled.baseline["head_macs"],
            "baseline_test_mAP": round(test_labels.score((), full=False)["mAP"], 6),
            "baseline_test_fidelity": round(test_fidelity.score((), full=False)["mAP"], 6),
            "pseudo_thresh": info["pseudo_thresh"], "reference_boxes_val": info["num_boxes"],
            "evals": {"labelled": labelled.num_evals, "label_free": free.num_evals}, **rows,
            "label_free_best_within_target_macs": at_target,
            "spearman_fidelity_vs_labelled_mAP": {"val": round(spearman(fidelity, val_maps), 4),
                                                  "test": round(spearman(fidelity, test_maps), 4),
                                                  "num_subsets": len(nodes)},
            "target": {"test_mAP_gap_points": round(100 * gap, 3), "head_macs_ratio": round(ratio, 4),
                       "met": gap <= TARGET_POINTS and ratio <= TARGET_MACS}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-drop", type=float, default=0.005)
    parser.add_argument("--max-evals", type=int, default=300)
    parser.add_argument("--models", nargs="+", default=["demo", "demo-yolo"])
    parser.add_argument("--free-max-drops", nargs="*", type=float, default=[0.02],
                        help="also search label-free with these looser floors")
    parser.add_argument("--out", default="benchmarks/results/label_free.json")
    args = parser.parse_args(argv)
    flags = " ".join(f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                     for k, v in vars(args).items())
    result = {"benchmark": "label_free", "command": "python benchmarks/label_free.py " + flags,
        "max_drop": args.max_drop, "max_evals": args.max_evals,
        "models": []}
    with tempfile.TemporaryDirectory(prefix="label-free-bench-") as tmp:
        result["models"] = [measure(m, args.max_drop, args.max_evals, Path(tmp), args.free_max_drops)
                            for m in args.models]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["models"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
