"""report.md: the human-readable form of an export folder's report.json."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def render_markdown(report: dict) -> str:
    """The human-readable report."""
    base, pr = report["cost"]["baseline"], report["cost"]["pruned"]
    maps = report["mAP"]
    report_split = split_name(report, "report")
    lines = [f"# prune-and-export report: {report['model']} ({report['arch']})", "",
             f"Input {report['image_size'][0]}x{report['image_size'][1]}. {splits_line(report)}",
             *search_lines(report.get("chosen") or {}), *budget_lines(report), *reference_lines(report), "",
             "| | baseline | pruned | pruned / baseline |", "| --- | ---: | ---: | ---: |"]
    label_free = report.get("reference") == "pseudo-labels"
    title = metric_title(report.get("metric", "coco"))
    rows = [(f"{report_split} fidelity {title} (vs the unpruned model)" if label_free else f"{report_split} {title}",
             maps["baseline"], maps["pruned"], None),
            ("head MACs", base["head_macs"], pr["head_macs"], pr["head_macs"] / base["head_macs"]),
            ("total MACs", base["total_macs"], pr["total_macs"], pr["total_macs"] / base["total_macs"]),
            ("boxes", base["num_boxes"], pr["num_boxes"], pr["num_boxes"] / base["num_boxes"]),
            ("anchors", base["num_anchors"], pr["num_anchors"], pr["num_anchors"] / base["num_anchors"])]
    if "finetuned" in maps:
        rows.insert(1, (f"{report_split} mAP after fine-tuning", maps["baseline"], maps["finetuned"], None))
    if "fidelity" in report:
        rows.insert(1, (f"{report_split} fidelity mAP@[.5:.95] (vs the unpruned model)", report["fidelity"]["baseline"],
                        report["fidelity"]["pruned"], None))
    recall = (report.get("pseudo_labels") or {}).get("recall")
    for key, iou in (("recall50", "0.5"), ("recall75", "0.75")):
        if recall:
            rows.insert(-4, (f"recall of the reference at IoU {iou}", recall["baseline"][key], recall["pruned"][key],
                             None))
    for name, b, p, r in rows:
        fmt = (lambda v: f"{v:.4f}") if isinstance(b, float) and b < 1.5 else (lambda v: f"{v:,}")
        lines.append(f"| {name} | {fmt(b)} | {fmt(p)} | {'' if r is None else f'{r:.3f}'} |")
    exp = report["export"]
    one_conv = any(c.get("one_conv") for c in exp["baseline"]["head_channels"])
    what = "Detect conv (na x (5 + nc))" if one_conv else "cls / box"
    lines += ["", "## Head output channels per level (read from the exported head.onnx)", "",
              f"| level | baseline {what} | pruned {what} |", "| --- | --- | --- |"]
    pruned_ch = {c["level"]: c for c in exp["pruned"]["head_channels"]}
    for c in exp["baseline"]["head_channels"]:
        pruned_text = channels_text(pruned_ch.get(c["level"]), " / ")
        lines.append(f"| {c['level']} | {channels_text(c, ' / ')} | {pruned_text} |")
    rule = exp["pruned"].get("postprocess")
    if rule and rule.get("score_fn") == "yolo":
        lines += ["", f"The exported graphs use YOLOv5's deploy rule (confidence > {rule['score_thresh']:g}, "
                  f"IoU {rule['nms_thresh']:g}, at most {rule['detections_per_img']} detections); mAP is measured "
                  "with the val rule of the checkpoints."]
    as_deployed = report.get("mAP_as_deployed")
    if as_deployed and not as_deployed.get("same_as_reported"):
        lines += ["", f"With the graphs' rule, PyTorch's COCO mAP on the {report_split} split is "
                  f"{as_deployed['baseline']:.4f} (baseline) and {as_deployed['pruned']:.4f} (pruned): what the "
                  "deployed graphs' mAP (`edgeanchor evaluate --export`, `edgeanchor regress`) is checked against."]
    lines += ["", "## Parity (ONNX Runtime against PyTorch, images not used for tracing)", ""]
    for name in ("baseline", "pruned"):
        par = exp[name].get("parity")
        if par is None:  # exported with the check off
            lines.append(f"- {name}: not checked (exported without the parity check)")
            continue
        lines.append(f"- {name}: head max abs diff {par['head']['max_abs_diff']:.2e} "
                     f"(allclose rtol 1e-3 atol 1e-5: {par['head']['allclose']}); end-to-end detections matched "
                     f"{par['model']['matched_fraction']:.3f} at IoU >= 0.99, counts {par['model']['counts_torch']} "
                     f"vs {par['model']['counts_onnx']}; passed: {par['passed']}")
    if "int8" in report:
        lines += int8_lines(report["int8"])
    if any("openvino" in exp[name] for name in ("baseline", "pruned")):
        lines += ["", "## OpenVINO IR (openvino/*.xml beside each variant's graphs; fp32 parity against PyTorch)", ""]
        for name in ("baseline", "pruned"):
            ov = exp[name].get("openvino")
            par = (ov or {}).get("parity")
            if par:
                lines.append(f"- {name}: OpenVINO {ov['version']}, "
                             f"head max abs diff {par['head']['max_abs_diff']:.2e}, "
                             f"end-to-end detections matched {par['model']['matched_fraction']:.3f}; "
                             f"passed: {par['passed']}")
    if "runtimes" in report:
        from .matrix import matrix_markdown

        lines += ["", "## Runtime matrix", "", *matrix_markdown(report["runtimes"])]
    lines += ["", "## TensorRT", ""]
    if "tensorrt" in report:
        lines.append(f"Engines built: {report['tensorrt']}")
    else:
        trt_file = report["graphs"]["pruned"]["model_trt"]["file"]
        lines.append(f"Not built in this run (needs TensorRT and a CUDA GPU). `{trt_file}` (EfficientNMS_TRT in "
                     "place of NonMaxSuppression) is in the folder; to build the engines on a Jetson, "
                     "from this folder:")
    lines += ["", "```", report["trtexec"]["pruned"], report["trtexec"]["baseline"], "```", ""]
    return "\n".join(lines)


def reference_lines(report: dict) -> list[str]:
    """What the mAPs were measured against, said plainly for a label-free run (nothing for labels alone)."""
    ref = report.get("pseudo_labels")
    if not ref:
        return []
    where = ("The report split is unlabelled: its mAP rows are" if report.get("reference") == "pseudo-labels"
             else "The search was label-free; the report split has labels, so both are given: the fidelity rows are")
    return ["", f"**Label-free.** {where} *fidelity*, the agreement of each model with the unpruned model's own "
            f"detections (score >= {ref['pseudo_thresh']:g}: {ref['num_boxes']} reference boxes on "
            f"{ref['num_images']} images), not accuracy against ground truth. Recall is the share of those "
            "boxes each model still finds (COCOeval's, per class, at most 100 detections per image)."]


def int8_lines(int8: dict) -> list[str]:
    """The int8 section: mAP through model.onnx and model_int8.onnx per variant, and how they were made."""
    cfg, cal = int8["settings"], int8["pruned"]["calibration"]
    lines = ["", "## int8 (post-training static quantization, ONNX Runtime)", "",
             f"Backbone and head quantized to {cfg['format']} ({cfg['weights']} weights, {cfg['activations']} "
             f"activations), {cal['method']} calibration on {cal['images']} images of `{cal['split']}`; the "
             "post-processing stays fp32. mAP on the report split through the graphs, in ONNX Runtime:", "",
             "| | baseline | pruned |", "| --- | ---: | ---: |"]
    rows = [("mAP fp32 (model.onnx)", "map_fp32_onnx"), ("mAP int8 (model_int8.onnx)", "map_int8"),
            ("int8 - fp32", "delta")]
    if int8["pruned"].get("map_pytorch") is not None:
        rows.insert(0, ("mAP PyTorch (the graphs' rule)", "map_pytorch"))
    for name, key in rows:
        lines.append(f"| {name} | {int8['baseline'][key]:+.4f} | {int8['pruned'][key]:+.4f} |" if key == "delta"
                     else f"| {name} | {int8['baseline'][key]:.4f} | {int8['pruned'][key]:.4f} |")
    files = ", ".join(f"`{f}`" for f in int8["pruned"]["files"].values())
    lines += ["", f"Files: {files} (and the same in baseline/); their latency is not measured here."]
    return lines


def channels_text(entry: dict | None, sep: str = "/") -> str:
    """A level's head channels as shown in reports: "cls/box", or one count for YOLO's single convolution."""
    if entry is None:
        return "dropped"
    if entry.get("one_conv"):
        return str(entry["cls_channels"])
    return f"{entry['cls_channels']}{sep}{entry['box_channels']}"


def search_lines(chosen: dict) -> list[str]:
    """How the keep set was chosen, and how this run scored the search's subsets."""
    if chosen.get("source") != "search":
        return []
    line = (f"Keep set from a {chosen['method']} search (cost {chosen['cost']}): {chosen.get('num_evals', '?')} "
            f"subsets in `{chosen['search_dir']}`, {chosen['num_front_points']} on the front.")
    sc = chosen.get("scoring") or {}
    if sc.get("nodes_scored"):
        line += (f" This run scored {sc['nodes_scored']} of them on {scoring_workers(sc)} at "
                 f"{sc['evals_per_s']} evaluations/s, re-matching {sc['pairs_recomputed_per_node']} (image, class) "
                 "pairs per subset on average.")
    else:
        line += " All of them came from the stored search (resumed, nothing scored this run)."
    return ["", line]


def scoring_workers(scoring: dict) -> str:
    """Who scored a search's subsets, from its ``scoring`` record: "2 worker processes", "1 Ray actor"."""
    from ..io import plural

    workers = int(scoring.get("workers") or 1)
    if scoring.get("executor") == "ray":
        return plural(workers, "Ray actor")
    return plural(workers, "worker process", "worker processes")


def metric_title(metric: str) -> str:
    """The metric as reports name it: "COCO mAP@[.5:.95]", "VOC2007 mAP@0.5 (11-point)", ..."""
    from ..evaluation.voc_map import METRIC_TITLES

    return METRIC_TITLES.get(metric, "mAP")


def split_name(report: dict, role: str) -> str:
    """What the report calls its ``role`` ("report" or "search") split: its name, else its annotation file's
    (reports written before splits were named)."""
    from pathlib import PurePath

    name = report.get(f"{role}_split")
    ann = report.get(f"{role}_ann")
    return name or (PurePath(ann).stem if ann else role)


def splits_line(report: dict) -> str:
    """Which split each figure is on: the keep set was searched on one, every mAP below is on the other."""
    where = f"every mAP below is on the {split_name(report, 'report')} split (`{report['report_ann']}`)"
    if not report.get("search_ann"):
        return where[0].upper() + where[1:] + "."
    return (f"The anchors were searched on the {split_name(report, 'search')} split (`{report['search_ann']}`); "
            f"{where} unless it says otherwise.")


def search_metric(report: Mapping[str, Any]) -> str:
    """What the search split's mAP is: fidelity after a label-free search (its reference is pseudo-labels, which
    the report records as ``reference`` when the report split is unlabelled too, else as ``fidelity``)."""
    label_free = report.get("reference") == "pseudo-labels" or "fidelity" in report
    return "fidelity mAP" if label_free else "mAP"


def budget_lines(report: dict) -> list[str]:
    """The accuracy budget of a search, its floor on the search split, and the chosen keep set's mAP on both
    splits; then the Pareto plot."""
    chosen = report.get("chosen") or {}
    if chosen.get("source") != "search" or "floor" not in chosen:
        return []
    search, rep = split_name(report, "search"), split_name(report, "report")
    search_m, rep_m = search_metric(report), "fidelity mAP" if report.get("reference") == "pseudo-labels" else "mAP"
    budget = chosen.get("budget") or {}
    if "min_map" in budget:
        rule = f"`min_map` {budget['min_map']:g} (`--min-map`): the floor is that {search_m}"
    elif "max_drop" in budget:
        rule = (f"`max_drop` {budget['max_drop']:g} (`--max-drop`): at most {100 * budget['max_drop']:.2f} points "
                f"below the unpruned model's {search} {search_m}")
    else:
        rule = "the search's own floor"
    base = chosen.get("search_baseline_mAP")
    floor = (f"The floor on the {search} split is {chosen['floor']:.4f}"
             + (f" (unpruned: {base:.4f})." if base is not None else "."))
    how = (f"Of the front points with at most {chosen['target_head_macs']:,.0f} head MACs (`--target-head-macs`), "
           "the most accurate was chosen" if chosen.get("target_head_macs") is not None
           else "The cheapest front point at or above the floor was chosen")
    maps = report["mAP"]
    drop = 100 * (maps["pruned"] - maps["baseline"])
    lines = ["", f"Budget: {rule}. {floor} {how}: {search} {search_m} {chosen['search_mAP']:.4f}, {rep} {rep_m} "
                 f"{maps['pruned']:.4f} (unpruned: {maps['baseline']:.4f} on {rep}, {drop:+.2f} points)."]
    if chosen.get("plot"):
        lines += ["", f"![{metric_title(report.get('metric', 'coco'))} on the {search} split against head MACs: "
                      f"every subset scored, the front, the floor and the chosen point (ringed)]({chosen['plot']})"]
    return lines
