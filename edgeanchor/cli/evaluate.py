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

from .common import add_model_arguments, add_split_argument
from .evaluate_export import add_export_arguments, run_export


def add_arguments(parser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--data", default=None, help="image folder, a YOLO DATA.yaml, or Pascal VOC (a VOCdevkit "
                        "year folder, or images with XML beside them) (default: the demo's synthetic test split)")
    parser.add_argument("--ann", default=None, help="COCO annotation file")
    add_split_argument(parser, "val for a YOLO or VOC data set, test for the demo")
    parser.add_argument("--metric", choices=["coco", "voc07", "voc"], default="coco",
                        help="coco (mAP@[.5:.95] and the other COCO metrics), voc07 (Pascal VOC mAP@0.5, 11-point) "
                        "or voc (VOC2010+ all-point); default coco")
    parser.add_argument("--detections", default=None, help="write COCO results-format detections here")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing detections file (only one edgeanchor wrote)")
    parser.add_argument("--backend", choices=["faster", "pycocotools"], default="faster")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print metrics as JSON")
    add_export_arguments(parser)


def run(args) -> int:
    if args.export:
        return run_export(args)
    from .. import api
    from .common import build_from_args, print_json

    api.check_evaluate_settings(metric=args.metric, batch_size=args.batch_size, device=args.device,
                                detections=args.detections, overwrite=args.overwrite,
                                inputs=[args.data, args.ann, args.model, args.weights, args.anchors])
    split = api.data(args.data, args.ann, split=args.split if args.data else args.split or "test")
    result = api.evaluate(build_from_args(args), split, metric=args.metric, backend=args.backend,
                          batch_size=args.batch_size, device=args.device, detections=args.detections,
                          overwrite=args.overwrite)
    counts = f"{result['num_images']} images, {result['num_detections']} detections"
    head = {"model": args.model, "ann": str(split.ann), "num_images": result["num_images"],
            "num_detections": result["num_detections"]}
    if args.metric != "coco":
        return _report_voc(args, head, result, counts)
    metrics = {k: v for k, v in result.items() if k not in ("num_images", "num_detections")}
    if args.json:
        print_json({**head, "backend": args.backend, **{k: round(v, 6) for k, v in metrics.items()}})
    else:
        print(f"{args.model} on {head['ann']}: mAP {metrics['mAP']:.4f}, mAP50 {metrics['mAP50']:.4f}, "
              f"mAP75 {metrics['mAP75']:.4f} ({counts})")
    return 0


def _report_voc(args, head: dict, result: dict, counts: str) -> int:
    """Print (or --json) the VOC mAP@0.5 and each class's AP."""
    from ..evaluation.voc_map import METRIC_TITLES
    from .common import print_json

    per_class = {n: (round(v, 6) if v is not None else None) for n, v in result["AP_per_class"].items()}
    if args.json:
        print_json({**head, "metric": args.metric, "mAP": round(result["mAP"], 6), "AP_per_class": per_class})
        return 0
    aps = ", ".join(f"{n} {v:.4f}" for n, v in per_class.items() if v is not None)
    print(f"{args.model} on {head['ann']}: {METRIC_TITLES[args.metric]} {result['mAP']:.4f} "
          f"({counts}; per class: {aps})")
    return 0
