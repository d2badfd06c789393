"""``edgeanchor evaluate --export EXPORT``: the deployed graph's COCO mAP in a runtime (no torch needed).

Not a subcommand of its own: :mod:`.evaluate` adds these flags and hands over
to :func:`run_export` when ``--export`` is given.
"""

from __future__ import annotations


def add_export_arguments(parser) -> None:
    from ..runtimes import PRECISIONS, canonical_precision

    parser.add_argument("--export", default=None,
                        help="evaluate an export folder's deployed graph (model.onnx, or model_int8.onnx at "
                        "--precision int8) on its report split instead of a model; needs no torch")
    parser.add_argument("--runtime", choices=["onnxruntime", "openvino", "tensorrt"], default="onnxruntime",
                        help="with --export: the runtime the graph runs in (default onnxruntime; tensorrt runs "
                        "the engine of model.onnx, built on first use)")
    parser.add_argument("--precision", type=canonical_precision, choices=PRECISIONS, default="fp32",
                        help="with --export: what the runtime computes in (default fp32; f32 and f16 are read as "
                        "fp32 and fp16)")
    parser.add_argument("--variant", choices=["pruned", "baseline"], default="pruned",
                        help="with --export: which of the export's models (default pruned)")


# flags of the model path that mean nothing for an export (it carries its model and preprocessing)
_MODEL_FLAGS = {"weights": "--weights", "anchors": "--anchors", "image_size": "--image-size",
                "num_classes": "--num-classes", "score_thresh": "--score-thresh", "nms_thresh": "--nms-thresh",
                "max_det": "--max-det", "detections": "--detections", "split": "--split"}


def run_export(args) -> int:
    """Evaluate ``args.export``; prints one summary line, or the result with --json."""
    from .. import api
    from ..errors import EdgeAnchorError
    from .common import print_json

    given = [flag for name, flag in _MODEL_FLAGS.items() if getattr(args, name, None) not in (None, False)]
    if given:
        raise EdgeAnchorError(f"{', '.join(given)} cannot be used with --export (the export carries its model, "
                              "rule and preprocessing); drop them")
    if args.ann and not args.data:
        raise EdgeAnchorError("--ann needs --data, the folder of the images it lists")
    data = api.data(args.data, args.ann) if args.ann else args.data
    result = api.evaluate(args.export, data, metric=args.metric, runtime=args.runtime, precision=args.precision,
                          variant=args.variant, backend=args.backend)
    if args.json:
        print_json(result)
        return 0
    torch_map = result["pytorch_mAP"]
    reference = f"; PyTorch with the graph's rule (report.json) {torch_map:.4f}" if torch_map is not None else ""
    print(f"{result['graph']} ({args.variant}) in {result['runtime']} {result['settings'].get('version', '')} at "
          f"{result['precision']} on {result['ann']}: mAP {result['mAP']:.4f}, mAP50 {result['mAP50']:.4f}"
          f"{reference} ({result['num_images']} images, {result['num_detections']} detections)")
    return 0
