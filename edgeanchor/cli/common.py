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


def print_json(obj) -> None:
    """The result as JSON on stdout (``--json``); nothing else goes to stdout then."""
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")
