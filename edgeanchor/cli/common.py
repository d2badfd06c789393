"""Flags shared by several subcommands, and turning them into core values."""

from __future__ import annotations

import argparse
import json
import sys


def add_model_arguments(parser: argparse.ArgumentParser, *, default_model: str | None = "demo") -> None:
    parser.add_argument(
        "--model",
        default=default_model,
        help="model name (demo, demo-yolo, demo-over, torchvision:ssd300_vgg16, "
        "torchvision:ssdlite320_mobilenet_v3_large, torchvision:retinanet_resnet50_fpn[_v2], edgeanchor:demo_ssd, yolov5:n|s|m|l|x, yolov5:MODEL.yaml) "
        f"or a checkpoint path (default: {default_model})",
    )
    parser.add_argument("--num-classes", type=int, default=None,
                        help="classes: SSD and RetinaNet count the background class; for yolov5 it is nc "
                        "(YOLO has no background class)")
    parser.add_argument("--weights", default=None, help="weights to load: a torchvision state dict, an edgeanchor "
                        "checkpoint, or for yolov5 a train.py checkpoint (best.pt / last.pt) or state dict")
    parser.add_argument(
        "--anchors",
        default=None,
        help="anchor set: a JSON file (edgeanchor or reference form) or overanchorized[:SCALESxRATIOS]",
    )
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="model input size (yolov5: default 640 640, any multiple of the largest stride)")
    parser.add_argument("--score-thresh", type=float, default=None,
                        help="score (YOLO: confidence) threshold of the rule searched and evaluated with "
                        "(default: the model's own; YOLO's val preset 0.001)")
    parser.add_argument("--nms-thresh", type=float, default=None,
                        help="NMS IoU threshold of that rule (default: the model's own; YOLO's val preset 0.6)")
    parser.add_argument("--max-det", type=int, default=None, help="detections kept per image (default: the "
                        "model's own; YOLO 300)")


def model_kwargs(args) -> dict:
    """The shared model flags as :func:`edgeanchor.load`'s keywords."""
    return {"num_classes": args.num_classes, "weights": args.weights, "anchors": args.anchors,
            "image_size": args.image_size, "score_thresh": args.score_thresh, "nms_thresh": args.nms_thresh,
            "max_det": args.max_det}


def build_from_args(args):
    """Build the detector the shared model flags describe."""
    from .. import api

    return api.load(args.model, **model_kwargs(args))


def add_split_argument(parser, default: str) -> None:
    parser.add_argument("--split", default=None, choices=["train", "val", "trainval", "test"],
                        help="with --data DATA.yaml (a YOLO data set) or --data VOCdevkit/VOC2007 (Pascal VOC: "
                        f"ImageSets/Main/SPLIT.txt): the split to use (default {default})")


def is_yolo_data(args) -> bool:
    from ..data.yolo import is_yolo_yaml

    return bool(args.data) and is_yolo_yaml(args.data)


def yolo_data(args, *splits: str) -> tuple[str, list[str]]:
    """(image root, a COCO annotation file per split) of the YOLO data.yaml given as --data."""
    from ..data.yolo import yolo_splits

    return yolo_splits(args.data, splits)


def is_voc_data(args) -> bool:
    """--data is Pascal VOC (a VOCdevkit year folder, or images with XML beside them) and --ann is not given."""
    from ..data.voc import is_voc_data as is_voc_folder

    return bool(args.data) and not getattr(args, "ann", None) and is_voc_folder(args.data)


def voc_data(args, *splits: str) -> tuple[str, list[str]]:
    """(image root, a COCO annotation file per split) of the VOC data given as --data.

    A plain folder of images with XML beside them is one split: every split asked for is the whole
    folder, and an explicit --split is an error.
    """
    from ..data.voc import is_devkit, voc_splits

    if not is_devkit(args.data):
        splits = tuple(getattr(args, "split", None) for _ in splits)
    return voc_splits(args.data, splits)


def data_or_demo(args, split: str) -> tuple[str, str, bool]:
    """(image folder, annotation file, is_demo) from --data/--ann, a YOLO --data DATA.yaml, Pascal VOC --data,
    or the demo's ``split``.

    Raises:
        EdgeAnchorError: if only one of --data and --ann is given, or --ann with a YOLO data.yaml.
    """
    from ..errors import EdgeAnchorError

    if is_voc_data(args):
        root, (ann,) = voc_data(args, getattr(args, "split", None) or split)
        return root, ann, False
    if is_yolo_data(args):
        if args.ann:
            raise EdgeAnchorError("--ann is not used with a YOLO data.yaml (its splits are in the file); "
                                  "choose one with --split")
        root, (ann,) = yolo_data(args, getattr(args, "split", None) or split)
        return root, ann, False
    if bool(args.data) != bool(args.ann):
        raise EdgeAnchorError("give both --data and --ann (or --data DATA.yaml for a YOLO data set, or --data DIR "
                              "for Pascal VOC: a VOCdevkit folder or images with XML beside them), or neither to "
                              "use the demo's synthetic data")
    if args.data:
        return args.data, args.ann, False
    from ..data.demo_data import demo_split

    return (*demo_split(split), True)


def print_json(obj) -> None:
    """The result as JSON on stdout (``--json``); nothing else goes to stdout then."""
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")
