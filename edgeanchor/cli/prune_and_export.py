"""Search, choose, slice, optionally fine-tune, and export ONNX (and TensorRT) in one go.

  edgeanchor prune-and-export                        (the demo model on its synthetic data -> exports/demo)
  edgeanchor prune-and-export --model torchvision:ssd300_vgg16 --num-classes 81 --weights ssd.pth \\
      --data coco/val2017 --ann instances_val2017.json --max-drop 0.005 --out exports/ssd300

The output folder holds anchors.json, pruned.pt, model.onnx (image -> [1, max_det, 6]
detections), model_nonms.onnx (image -> the best 1000 candidates before NMS, fixed
shapes), backbone.onnx / head.onnx / postprocess.onnx, the same for the
unpruned model in baseline/, report.json, report.md and pareto.png. With
--int8 it also holds backbone_int8.onnx, head_int8.onnx and model_int8.onnx
(post-training static quantization, QDQ; post-processing stays fp32) and
reports their mAP. It is built in a temporary folder and renamed into place
at the end.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def add_arguments(parser) -> None:
    from ..api.settings import PruneAndExportSettings
    from ..settings import add_arguments as settings_flags

    settings_flags(parser, PruneAndExportSettings)  # one flag per setting, defined there
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args) -> int:
    from .. import api
    from ..api.settings import PruneAndExportSettings
    from ..settings import from_args
    from .common import print_json

    folder = api.prune_and_export(**from_args(PruneAndExportSettings, args))
    report = folder.report
    if args.json:
        print_json(report)
        return 0
    print(summary_table(report))
    print(summary_line(report))
    return 0


def summary_line(report: Mapping[str, Any]) -> str:
    """The command's last line: where, how long, head MACs, the mAPs with their splits, parity."""
    from ..exporting.report_md import search_metric, split_name

    maps, chosen = report["mAP"], report.get("chosen") or {}
    tuned = f" -> {maps['finetuned']:.4f} fine-tuned" if "finetuned" in maps else ""
    searched = ""
    if chosen.get("source") == "search" and "floor" in chosen:
        fidelity = " fidelity" if search_metric(dict(report)) != "mAP" and "fidelity" in report else ""
        searched = (f" ({split_name(dict(report), 'search')}{fidelity}: floor {chosen['floor']:.4f}, chosen "
                    f"{chosen['search_mAP']:.4f})")
    parity = report["export"]["pruned"].get("parity")
    label_free = report.get("reference") == "pseudo-labels"
    metric = "fidelity mAP" if label_free else "mAP"
    caveat = " (label-free: agreement with the unpruned model, not accuracy)" if label_free else ""
    return (f"wrote {report['out']} in {report['seconds']['total']:.0f}s: head MACs x"
            f"{report['cost']['pruned']['head_macs'] / report['cost']['baseline']['head_macs']:.3f}, "
            f"{split_name(dict(report), 'report')} {metric} {maps['baseline']:.4f} -> {maps['pruned']:.4f}{tuned}"
            f"{searched}{caveat}, parity "
            f"{'not checked' if parity is None else 'passed' if parity['passed'] else 'FAILED'}")


def summary_table(report: Mapping[str, Any]) -> str:
    from ..exporting.report_md import search_metric, split_name
    from ..io import format_table

    base, pr, maps = report["cost"]["baseline"], report["cost"]["pruned"], report["mAP"]
    on, chosen = split_name(dict(report), "report"), report.get("chosen") or {}
    label_free = report.get("reference") == "pseudo-labels"
    rows = [[f"{on} {'fidelity mAP' if label_free else 'mAP'}", round(maps["baseline"], 4), round(maps["pruned"], 4)]]
    if "fidelity" in report:
        rows.append([f"{on} fidelity mAP", round(report["fidelity"]["baseline"], 4),
                     round(report["fidelity"]["pruned"], 4)])
    for key, iou in (("recall50", "0.5"), ("recall75", "0.75")):
        if report.get("pseudo_labels"):
            recall = report["pseudo_labels"]["recall"]
            rows.append([f"reference recall@{iou}", recall["baseline"][key], recall["pruned"][key]])
    if "finetuned" in maps:
        rows.append([f"{on} mAP fine-tuned", "", round(maps["finetuned"], 4)])
    if chosen.get("source") == "search" and "search_baseline_mAP" in chosen:
        rows.append([f"{split_name(dict(report), 'search')} {search_metric(dict(report))} (searched)",
                     round(chosen["search_baseline_mAP"], 4),
                     round(chosen["search_mAP"], 4)])
    if "int8" in report:
        b, p = report["int8"]["baseline"], report["int8"]["pruned"]
        rows += [[f"{on} mAP model.onnx", round(b["map_fp32_onnx"], 4), round(p["map_fp32_onnx"], 4)],
                 [f"{on} mAP model_int8.onnx", round(b["map_int8"], 4), round(p["map_int8"], 4)]]
    rows += [["head MACs", base["head_macs"], pr["head_macs"]], ["boxes", base["num_boxes"], pr["num_boxes"]],
             ["anchors", base["num_anchors"], pr["num_anchors"]]]
    from ..exporting.report_md import channels_text

    pruned_ch = {c["level"]: c for c in report["export"]["pruned"]["head_channels"]}
    for c in report["export"]["baseline"]["head_channels"]:
        what = "Detect channels" if c.get("one_conv") else "cls/box channels"
        rows.append([f"level {c['level']} {what}", channels_text(c), channels_text(pruned_ch.get(c["level"]))])
    return format_table(["", "baseline", "pruned"], rows)
