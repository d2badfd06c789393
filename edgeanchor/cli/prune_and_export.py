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


def _normalise_keep_flag(args) -> None:
    # '--anchors' belongs to the shared model flags (it replaces a model's anchors);
    # for this command a keep file given as --anchors means "keep these", as in the usage.
    if args.keep_anchors and args.anchors:
        from ..errors import EdgeAnchorError

        raise EdgeAnchorError("give the anchors to keep once, with --anchors KEEP.json")
    args.keep_anchors, args.anchors = args.keep_anchors or args.anchors, None


def resolve_data(args, *, generate: bool = True):
    """(data, ann, report_ann, train_ann) from flags, defaulting to the demo's synthetic splits.

    With ``generate=False`` the demo's paths are placeholders (nothing is generated): for checks
    that must run before any long work.
    """
    from ..data.demo_data import demo_split
    from .common import data_or_demo, is_voc_data, is_yolo_data

    if not generate and not args.data and not args.ann:
        return "<demo>", "<demo val>", args.report_ann or "<demo test>", args.train_ann or "<demo train>"
    if is_yolo_data(args):
        return _yolo_splits(args, generate)
    if is_voc_data(args):
        return _voc_splits(args, generate)
    data, ann, demo = data_or_demo(args, "val")
    if not demo:
        return data, ann, args.report_ann or ann, args.train_ann
    return data, ann, args.report_ann or demo_split("test")[1], args.train_ann or demo_split("train")[1]


def _yolo_splits(args, generate: bool):
    """A YOLO data.yaml: search on --split (val), report on test if present, fine-tune on train."""
    from ..data.yolo import read_data_yaml
    from ..errors import EdgeAnchorError
    from .common import yolo_data

    if args.ann or args.report_ann or args.train_ann:
        raise EdgeAnchorError("--ann, --report-ann and --train-ann are not used with a YOLO data.yaml (its splits "
                              "are in the file); choose the search split with --split")
    spec = read_data_yaml(args.data)
    search_split = args.split or "val"
    report_split = "test" if "test" in spec.splits else search_split
    train_split = "train" if "train" in spec.splits else None
    if not generate:
        return str(args.data), f"<{search_split}>", f"<{report_split}>", f"<{train_split}>" if train_split else None
    data, anns = yolo_data(args, search_split, report_split, *([train_split] if train_split else []))
    return data, anns[0], anns[1], anns[2] if train_split else None


def _voc_splits(args, generate: bool):
    """Pascal VOC: a VOCdevkit is searched on --split (val), reported on test if it has a test split, fine-tuned
    on train; a plain folder of images with XML is all three (no fine-tuning data)."""
    from ..data.voc import available_splits, is_devkit
    from ..errors import EdgeAnchorError
    from .common import voc_data

    if args.report_ann or args.train_ann:
        raise EdgeAnchorError("--report-ann and --train-ann are not used with Pascal VOC data (its splits are in "
                              "ImageSets/Main); choose the search split with --split")
    if not is_devkit(args.data):
        names = [args.split, args.split]  # searched and reported on the whole folder
    else:
        have = available_splits(args.data)
        search_split = args.split or "val"
        names = [search_split, "test" if "test" in have else search_split, *(["train"] if "train" in have else [])]
    if not generate:
        return str(args.data), *[f"<{n or 'all'}>" for n in names[:2]], (f"<{names[2]}>" if len(names) > 2 else None)
    data, anns = voc_data(args, *names)
    return data, anns[0], anns[1], anns[2] if len(anns) > 2 else None


def pipeline_spec_from_args(args, *, generate: bool = True):
    """The pipeline settings every flag of this command describes (the model flags build the detector)."""
    from ..pipeline import PipelineSpec
    from .search import search_spec_from_args

    _normalise_keep_flag(args)
    data, ann, report_ann, train_ann = resolve_data(args, generate=generate)
    return PipelineSpec(data=data, ann=ann, report_ann=report_ann, train_ann=train_ann, anchors=args.keep_anchors,
                        target_head_macs=args.target_head_macs, finetune_epochs=args.finetune_epochs,
                        finetune_lr=args.finetune_lr, opset=args.opset, tensorrt=args.tensorrt,
                        parity_images=args.parity_images, search=search_spec_from_args(args), cache=args.cache,
                        latency_model=args.latency_model, model_name=args.model,
                        deploy_score_thresh=args.deploy_score_thresh, deploy_nms_thresh=args.deploy_nms_thresh,
                        nonms_topk=args.nonms_topk, int8=args.int8,
                        matrix_iters=args.matrix_iters)


def default_out(model: str) -> str:
    """exports/<model name>: the checkpoint's stem, or the name after the family prefix."""
    from pathlib import Path

    from ..export.folder import default_export_dir

    name = Path(model).stem if model.endswith(".pt") else model.split(":")[-1]
    if model.startswith("yolov5:"):  # yolov5:n -> yolov5n, yolov5:path/custom.yaml -> custom
        name = Path(name).stem if name.endswith((".yaml", ".yml")) else f"yolov5{name}"
    return str(default_export_dir(name))


def run(args) -> int:
    from ..export.folder import check_output
    from ..pipeline import check_pipeline_spec, run_pipeline
    from ..search.run import check_target_head_macs, resolve_method
    from .common import build_from_args, print_json

    # Every check that needs no data runs before the data is generated or read.
    preliminary = pipeline_spec_from_args(args, generate=False)
    check_pipeline_spec(preliminary)
    out = args.out or default_out(args.model)
    check_output(out, overwrite=args.overwrite, inputs=[*preliminary.inputs(), args.weights])
    det = build_from_args(args)
    if not args.keep_anchors:
        resolve_method(args.method, det)
        check_target_head_macs(det, args.target_head_macs)
    pipeline = pipeline_spec_from_args(args)
    report = run_pipeline(det, pipeline, out, overwrite=args.overwrite)
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
    from ..export.report_md import channels_text

    pruned_ch = {c["level"]: c for c in report["export"]["pruned"]["head_channels"]}
    for c in report["export"]["baseline"]["head_channels"]:
        what = "Detect channels" if c.get("one_conv") else "cls/box channels"
        rows.append([f"level {c['level']} {what}", channels_text(c), channels_text(pruned_ch.get(c["level"]))])
    return format_table(["", "baseline", "pruned"], rows)
