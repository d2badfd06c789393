"""Evaluate a detector's box mAP: COCO's, or Pascal VOC's mAP@0.5 (--metric voc07 | voc).

  edgeanchor evaluate --model demo --data DIR/images --ann DIR/annotations/test.json --json
  edgeanchor evaluate --model demo --data ... --ann ... --detections dets.json
  edgeanchor evaluate --model ckpt.pt --data VOCdevkit/VOC2007 --split test --metric voc07

--metric coco gives the twelve COCO metrics (mAP = mAP@[.5:.95]); voc07 the
VOC2007 devkit's 11-point AP at IoU > 0.5, voc the VOC2010+ all-point AP, both
ignoring 'difficult' objects as the devkit does, with the AP of each class.

With --detections, the COCO results-format detections are written too (any
COCO tool, pycocotools included, can load them).

  edgeanchor evaluate --export exports/demo [--runtime onnxruntime|openvino|tensorrt] [--precision fp32|int8]

With --export, the deployed graph (model.onnx; model_int8.onnx at int8;
TensorRT: its engine) runs in the runtime over the export's report split, and
its COCO mAP is given beside PyTorch's with the graph's post-processing rule
(report.json's mAP_as_deployed; for YOLO the deploy preset, not the val rule
of the reported mAP). This needs only numpy, pillow, onnx, the runtime and a
COCO evaluator (no torch).
"""

from __future__ import annotations

from .evaluate_export import run_export


def add_arguments(parser) -> None:
    from ..api.settings import EvaluateSettings
    from ..settings import add_arguments as settings_flags

    settings_flags(parser, EvaluateSettings)  # one flag per setting, defined there (--export's included)
    parser.add_argument("--json", action="store_true", help="print metrics as JSON")


def run(args) -> int:
    from ..api.settings import EvaluateSettings
    from .common import settings_from_args

    s = settings_from_args(EvaluateSettings, args)
    if s.export:
        return run_export(s, args.json)
    from .. import api
    from .common import load_model, print_json

    s.validate()  # once, before the model is built
    split = api.data(s.data, s.ann, split=s.split if s.data else s.split or "test", frame_step=s.frame_step,
                     max_frames=s.max_frames)
    result = api.workflow.evaluate_checked(load_model(s), split, **s.evaluate_kwargs())
    counts = f"{result['num_images']} images, {result['num_detections']} detections"
    head = {"model": s.model, "ann": str(split.ann), "num_images": result["num_images"],
            "num_detections": result["num_detections"], "reference": result.get("reference", "labels")}
    if s.metric != "coco":
        return _report_voc(s, args.json, head, result, counts)
    metrics = {k: v for k, v in result.items() if k not in ("num_images", "num_detections", "reference")}
    if args.json:
        print_json({**head, "backend": s.backend, **{k: round(v, 6) for k, v in metrics.items()}})
    else:
        free = head["reference"] == "pseudo-labels"
        print(f"{s.model} on {'its own pseudo-labels of ' + str(s.data) if free else head['ann']}: "
              f"{'fidelity ' if free else ''}mAP {metrics['mAP']:.4f}, mAP50 {metrics['mAP50']:.4f}, "
              f"mAP75 {metrics['mAP75']:.4f} ({counts}){' (label-free: agreement, not accuracy)' if free else ''}")
    return 0


def _report_voc(s, as_json: bool, head: dict, result: dict, counts: str) -> int:
    """Print (or --json) the VOC mAP@0.5 and each class's AP."""
    from ..evaluation.voc_map import METRIC_TITLES
    from .common import print_json

    per_class = {n: (round(v, 6) if v is not None else None) for n, v in result["AP_per_class"].items()}
    if as_json:
        print_json({**head, "metric": s.metric, "mAP": round(result["mAP"], 6), "AP_per_class": per_class})
        return 0
    aps = ", ".join(f"{n} {v:.4f}" for n, v in per_class.items() if v is not None)
    print(f"{s.model} on {head['ann']}: {METRIC_TITLES[s.metric]} {result['mAP']:.4f} "
          f"({counts}; per class: {aps})")
    return 0
