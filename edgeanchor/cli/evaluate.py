"""Evaluate a detector's COCO box mAP on COCO-format data.

  edgeanchor evaluate --model demo --data DIR/images --ann DIR/annotations/test.json --json
  edgeanchor evaluate --model demo --data ... --ann ... --detections dets.json

With --detections, the COCO results-format detections are written too (any
COCO tool, pycocotools included, can load them).
"""

from __future__ import annotations

from .common import add_model_arguments, add_split_argument


def add_arguments(parser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--data", default=None, help="image folder, or a YOLO DATA.yaml (default: the demo's "
                        "synthetic test split)")
    parser.add_argument("--ann", default=None, help="COCO annotation file")
    add_split_argument(parser, "val for a YOLO data set")
    parser.add_argument("--detections", default=None, help="write COCO results-format detections here")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing detections file (only one edgeanchor wrote)")
    parser.add_argument("--backend", choices=["faster", "pycocotools"], default="faster")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print metrics as JSON")


def run(args) -> int:
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
