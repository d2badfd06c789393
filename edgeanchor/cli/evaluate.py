"""Evaluate a detector's box mAP: COCO's, or Pascal VOC's mAP@0.5 (--metric voc07 | voc).

  edgeanchor evaluate --model demo --data DIR/images --ann DIR/annotations/test.json --json
  edgeanchor evaluate --model demo --data ... --ann ... --detections dets.json
  edgeanchor evaluate --model ckpt.pt --data VOCdevkit/VOC2007 --split test --metric voc07

--metric coco gives the twelve COCO metrics (mAP = mAP@[.5:.95]); voc07 the
VOC2007 devkit's 11-point AP at IoU > 0.5, voc the VOC2010+ all-point AP, both
ignoring 'difficult' objects as the devkit does, with the AP of each class.

With --detections, the COCO results-format detections are written too (any
COCO tool, pycocotools included, can load them).

  edgeanchor evaluate --export exports/demo [--runtime onnxruntime|openvino|tensorrt] [--precision f32|int8]

With --export, the deployed graph (model.onnx; model_int8.onnx at int8;
TensorRT: its engine) runs in the runtime over the export's report split, and
its COCO mAP is given beside PyTorch's from the export's report. This needs
only numpy, pillow, onnx, the runtime and a COCO evaluator (no torch).
"""

from __future__ import annotations

from .common import add_model_arguments, add_split_argument
from .evaluate_export import add_export_arguments, run_export


def add_arguments(parser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--data", default=None, help="image folder, a YOLO DATA.yaml, or Pascal VOC (a VOCdevkit "
                        "year folder, or images with XML beside them) (default: the demo's synthetic test split)")
    parser.add_argument("--ann", default=None, help="COCO annotation file")
    add_split_argument(parser, "val for a YOLO or VOC data set")
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
    from ..data.coco import CocoDetection
    from ..evaluate.coco_map import coco_map
    from ..evaluate.predict import predict
    from ..io import write_json
    from .common import build_from_args, data_or_demo, print_json

    from ..device import resolve_device
    from ..errors import EdgeAnchorError
    from ..evaluate.predict import is_detections_file
    from ..io import check_output_file

    if args.batch_size < 1:
        raise EdgeAnchorError(f"--batch-size must be at least 1 (got {args.batch_size})")
    resolve_device(args.device)
    if args.detections:
        check_output_file(args.detections, overwrite=args.overwrite, is_ours=is_detections_file,
                          what="detections file", inputs=[args.data, args.ann, args.model, args.weights, args.anchors])
    args.data, args.ann, demo = data_or_demo(args, "val" if args.data else "test")
    if args.detections and demo:  # the demo's paths are known only now
        check_output_file(args.detections, overwrite=args.overwrite, is_ours=is_detections_file,
                          what="detections file", inputs=[args.data, args.ann])
    det = build_from_args(args)
    dataset = CocoDetection.for_detector(det, args.data, args.ann)
    dataset.require_objects("evaluate on")
    dets = predict(det, dataset, batch_size=args.batch_size, device=args.device)
    if args.metric != "coco":
        return _report_voc(args, dataset, dets)
    metrics = coco_map(args.ann, dets, backend=args.backend)
    if args.detections:
        write_json(args.detections, dets)
    result = {"model": args.model, "ann": str(args.ann), "num_images": len(dataset), "num_detections": len(dets),
              "backend": args.backend, **{k: round(v, 6) for k, v in metrics.items()}}
    if args.json:
        print_json(result)
    else:
        print(f"{args.model} on {args.ann}: mAP {metrics['mAP']:.4f}, mAP50 {metrics['mAP50']:.4f}, "
              f"mAP75 {metrics['mAP75']:.4f} ({len(dataset)} images, {len(dets)} detections)")
    return 0


def _report_voc(args, dataset, dets: list) -> int:
    """Print (or --json) the VOC mAP@0.5 of ``dets`` and each class's AP; write --detections if asked."""
    from ..evaluate.voc_map import METRIC_TITLES, voc_map
    from ..io import read_json, write_json
    from .common import print_json

    gt = read_json(args.ann, "annotation file")
    result = voc_map(gt, dets, args.metric)
    if args.detections:
        write_json(args.detections, dets)
    names = {int(c["id"]): c["name"] for c in gt["categories"]}
    per_class = {names[k]: (round(v, 6) if v is not None else None) for k, v in result["AP"].items()}
    out = {"model": args.model, "ann": str(args.ann), "num_images": len(dataset), "num_detections": len(dets),
           "metric": args.metric, "mAP": round(result["mAP"], 6), "AP_per_class": per_class}
    if args.json:
        print_json(out)
        return 0
    aps = ", ".join(f"{n} {v:.4f}" for n, v in per_class.items() if v is not None)
    print(f"{args.model} on {args.ann}: {METRIC_TITLES[args.metric]} {result['mAP']:.4f} ({len(dataset)} images, "
          f"{len(dets)} detections; per class: {aps})")
    return 0
