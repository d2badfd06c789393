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

from .common import add_model_arguments, add_split_argument
from .search import add_search_arguments


def add_arguments(parser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--data", default=None, help="image folder, a YOLO DATA.yaml, or Pascal VOC (a VOCdevkit "
                        "year folder, or images with XML beside them) (default: the demo's synthetic data)")
    add_split_argument(parser, "val; reported on test if the data set has it, fine-tuned on train")
    parser.add_argument("--ann", default=None, help="COCO annotations searched on (default: demo val split)")
    parser.add_argument("--report-ann", default=None, help="split the results are reported on (default: --ann, "
                        "or the demo's test split)")
    parser.add_argument("--train-ann", default=None, help="training split for --finetune-epochs (default for the "
                        "demo: its train split)")
    parser.add_argument("--target-head-macs", type=float, default=None,
                        help="choose the most accurate front point with at most this many head MACs")
    parser.add_argument("--keep-anchors", dest="keep_anchors", default=None,
                        help="skip the search and keep the anchors of this anchor file")
    parser.add_argument("--finetune-epochs", type=int, default=0, help="fine-tune the pruned model (default 0)")
    parser.add_argument("--finetune-lr", type=float, default=5e-4)
    parser.add_argument("--deploy-score-thresh", type=float, default=None,
                        help="score threshold of the exported graphs (default: the searched rule's; YOLO's deploy "
                        "preset 0.25)")
    parser.add_argument("--deploy-nms-thresh", type=float, default=None,
                        help="NMS IoU threshold of the exported graphs (default: the searched rule's; YOLO 0.45)")
    parser.add_argument("--nonms-topk", type=int, default=1000,
                        help="candidates kept by model_nonms.onnx, the graph without NMS (default 1000)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.add_argument("--matrix-iters", type=int, default=20,
                        help="timed runs per graph in the report's runtime matrix (every installed runtime: "
                        "onnxruntime, openvino, opencv, tensorrt x every graph: loads, parity, latency); 0 leaves "
                        "it out")
    parser.add_argument("--int8", action="store_true",
                        help="also write int8 graphs (backbone_int8, head_int8, model_int8: QDQ, calibrated on 64 "
                        "images of the search split) for both variants, and report their mAP against model.onnx's")
    parser.add_argument("--tensorrt", choices=["fp32", "fp16", "int8"], default=None,
                        help="also build a TensorRT engine (needs TensorRT and a CUDA GPU)")
    parser.add_argument("--parity-images", type=int, default=4)
    parser.add_argument("--out", default=None, help="output folder (default: exports/<model name>)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    add_search_arguments(parser)


def run(args) -> int:
    from .. import api
    from ..errors import EdgeAnchorError
    from .common import model_kwargs, print_json
    from .search import search_kwargs

    # '--anchors' belongs to the shared model flags (it replaces a model's anchors);
    # for this command a keep file given as --anchors means "keep these", as in the usage.
    if args.keep_anchors and args.anchors:
        raise EdgeAnchorError("give the anchors to keep once, with --anchors KEEP.json")
    model = {k: v for k, v in model_kwargs(args).items() if k != "anchors"}
    out = args.out or api.default_out(args.model)
    folder = api.prune_and_export(
        args.model, **model, data=args.data, ann=args.ann, split=args.split, report_ann=args.report_ann,
        train_ann=args.train_ann, keep_anchors=args.keep_anchors or args.anchors,
        target_head_macs=args.target_head_macs, finetune_epochs=args.finetune_epochs, finetune_lr=args.finetune_lr,
        deploy_score_thresh=args.deploy_score_thresh, deploy_nms_thresh=args.deploy_nms_thresh,
        nonms_topk=args.nonms_topk, opset=args.opset, matrix_iters=args.matrix_iters, int8=args.int8,
        tensorrt=args.tensorrt, parity_images=args.parity_images, out=out, overwrite=args.overwrite,
        cache=args.cache, latency_model=args.latency_model, **search_kwargs(args))
    report = folder.report
    if args.json:
        print_json(report)
        return 0
    print(summary_table(report))
    print(f"wrote {out} in {report['seconds']['total']:.0f}s: head MACs x"
          f"{report['cost']['pruned']['head_macs'] / report['cost']['baseline']['head_macs']:.3f}, mAP "
          f"{report['mAP']['baseline']:.4f} -> {report['mAP']['pruned']:.4f}, parity "
          f"{'passed' if report['export']['pruned']['parity']['passed'] else 'FAILED'}")
    return 0


def summary_table(report: dict) -> str:
    from ..io import format_table

    base, pr, maps = report["cost"]["baseline"], report["cost"]["pruned"], report["mAP"]
    rows = [["mAP", round(maps["baseline"], 4), round(maps["pruned"], 4)]]
    if "finetuned" in maps:
        rows.append(["mAP fine-tuned", "", round(maps["finetuned"], 4)])
    if "int8" in report:
        b, p = report["int8"]["baseline"], report["int8"]["pruned"]
        rows += [["mAP model.onnx", round(b["map_fp32_onnx"], 4), round(p["map_fp32_onnx"], 4)],
                 ["mAP model_int8.onnx", round(b["map_int8"], 4), round(p["map_int8"], 4)]]
    rows += [["head MACs", base["head_macs"], pr["head_macs"]], ["boxes", base["num_boxes"], pr["num_boxes"]],
             ["anchors", base["num_anchors"], pr["num_anchors"]]]
    from ..exporting.report_md import channels_text

    pruned_ch = {c["level"]: c for c in report["export"]["pruned"]["head_channels"]}
    for c in report["export"]["baseline"]["head_channels"]:
        what = "Detect channels" if c.get("one_conv") else "cls/box channels"
        rows.append([f"level {c['level']} {what}", channels_text(c), channels_text(pruned_ch.get(c["level"]))])
    return format_table(["", "baseline", "pruned"], rows)
