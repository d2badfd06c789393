"""Train or fine-tune a detector on COCO-format data.

From scratch:  edgeanchor train --model edgeanchor:demo_ssd --data DIR/images \
                   --ann DIR/annotations/train.json --val-ann DIR/annotations/val.json --epochs 30 --out demo.pt
After pruning: edgeanchor train --init pruned.pt --data ... --ann ... --epochs 5 --out finetuned.pt
Resume:        the same command with --resume continues from the checkpoint at --out.
Multi-GPU:     torchrun --nproc_per_node 4 -m edgeanchor train --device cuda ...

Checkpoints hold the architecture, the anchor set and the weights; pass one
to --model anywhere to rebuild it exactly.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from .common import add_model_arguments, add_split_argument


def add_arguments(parser) -> None:
    add_model_arguments(parser, default_model=None)
    parser.add_argument("--init", default=None, help="start from this checkpoint (e.g. a pruned one), keeping its anchors")
    parser.add_argument("--data", required=True, help="image folder, a YOLO DATA.yaml, or a Pascal VOC folder "
                        "(VOCdevkit/VOC2007, or images with XML beside them) (then its train split is trained on and "
                        "its val split, if any, evaluated after each epoch)")
    parser.add_argument("--ann", default=None, help="COCO annotations of the training split (not with DATA.yaml)")
    parser.add_argument("--val-ann", default=None, help="COCO annotations evaluated after each epoch")
    add_split_argument(parser, "train")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--warmup-iters", type=int, default=200)
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu", help="cpu or cuda")
    parser.add_argument("--workers", type=int, default=1, help="data loader processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-iters-per-epoch", type=int, default=None, help=argparse_suppress())
    parser.add_argument("--out", required=True, help="checkpoint to write (rewritten after every epoch)")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted run stored at --out")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing checkpoint at --out (only one edgeanchor wrote)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the training record as JSON")


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover
        return False


def build_model(args):
    """The detector to train: from --init, from --resume, or from --model."""
    from ..errors import EdgeAnchorError
    from ..models import build_detector, load_checkpoint

    if args.init:
        det = load_checkpoint(args.init)
        if args.model and args.model != det.arch:
            raise EdgeAnchorError(
                f"--init {args.init} is a {det.arch} checkpoint but --model is {args.model}; "
                "drop --model or pass a checkpoint of the same architecture"
            )
        if args.anchors:
            raise EdgeAnchorError("--init keeps the checkpoint's anchors; drop --anchors")
        return det
    if not args.model:
        raise EdgeAnchorError("give --model (e.g. edgeanchor:demo_ssd) or --init CHECKPOINT")
    image_size = tuple(args.image_size) if args.image_size else None
    anchors = args.anchors
    if str(args.model).startswith("yolov5:") and anchors and str(anchors).startswith("overanchorized") \
            and not Path(anchors).is_file():
        anchors = fitted_overanchorized(args, anchors, image_size)
    return build_detector(args.model, num_classes=args.num_classes, weights=args.weights, anchors=anchors,
                          image_size=image_size)


def fitted_overanchorized(args, text: str, image_size):
    """YOLO's overanchorized[:SxR]: S*R anchors per level (default 9) fitted by k-means to the training boxes."""
    import numpy as np

    from ..anchors import parse_overanchorized
    from ..data.coco import CocoDetection
    from ..io import log
    from ..kmeans import anchor_fitness, fitted_anchor_set
    from ..models import build_detector

    template = build_detector(args.model, num_classes=args.num_classes, weights=args.weights, image_size=image_size)
    per_level = 9 if text == "overanchorized" else parse_overanchorized(text, template.anchor_set).levels[0].num_anchors
    data = CocoDetection.for_detector(template, args.data, args.ann)
    wh = data.box_sizes()
    fitted = fitted_anchor_set(template.anchor_set, wh, per_level, seed=args.seed)
    shapes = np.array([[a.w, a.h] for lv in fitted.levels for a in lv.anchors])
    recall, metric = anchor_fitness(shapes, wh)
    log(f"overanchorized: {per_level} anchors per level fitted by k-means to {len(wh)} training boxes "
        f"(best possible recall {recall:.4f}, mean ratio metric {metric:.3f})")
    return fitted


def _resume_state(args):
    from ..errors import EdgeAnchorError
    from ..models.registry import detector_from_checkpoint, read_checkpoint

    path = Path(args.out)
    if path.is_dir():
        raise EdgeAnchorError(f"--out {path} is a folder; give the checkpoint file to resume")
    if not path.is_file():
        raise EdgeAnchorError(f"--resume: no checkpoint at {path} to resume from; drop --resume to start afresh")
    try:
        obj = read_checkpoint(path)  # read once: the training state and the detector come from it
    except EdgeAnchorError:
        raise EdgeAnchorError(f"--resume: {path} is not a checkpoint written by edgeanchor train; "
                              "cannot resume it") from None
    state = obj.get("train_state")
    if not state:
        raise EdgeAnchorError(f"--resume: {path} holds a finished run (no training state left); nothing to resume")
    if not isinstance(state, dict) or not {"epoch", "optimizer", "scheduler", "record"} <= set(state):
        raise EdgeAnchorError(f"--resume: the training state in {path} is incomplete; start afresh with --overwrite")
    return detector_from_checkpoint(obj, path), state


def resolve_train_data(args) -> None:
    """--data DATA.yaml (a YOLO data set) becomes --data/--ann/--val-ann of its train and val splits."""
    from ..errors import EdgeAnchorError
    from .common import is_voc_data, is_yolo_data, yolo_data

    if is_voc_data(args):
        return _resolve_voc_train_data(args)
    if not is_yolo_data(args):
        if not args.ann:
            raise EdgeAnchorError("give --ann (COCO annotations of the training images), or --data DATA.yaml")
        return
    from ..data.yolo import read_data_yaml

    if args.ann or args.val_ann:
        raise EdgeAnchorError("--ann and --val-ann are not used with a YOLO data.yaml (its splits are in the file); "
                              "choose the training split with --split")
    has_val = "val" in read_data_yaml(args.data).splits
    split = args.split or "train"
    with_val = has_val and split != "val"
    root, anns = yolo_data(args, split, *(["val"] if with_val else []))
    args.data, args.ann = root, anns[0]  # --data becomes the image root
    args.val_ann = anns[1] if with_val else None


def _resolve_voc_train_data(args) -> None:
    """Pascal VOC --data: a VOCdevkit's --split (train) is trained on and its val split evaluated (when it is
    another split); a plain folder of images with XML is trained on whole."""
    from ..data.voc import available_splits, is_devkit
    from ..errors import EdgeAnchorError
    from .common import voc_data

    if args.val_ann:
        raise EdgeAnchorError("--val-ann is not used with Pascal VOC data (its splits are in ImageSets/Main); "
                              "choose the training split with --split")
    split = args.split or "train"
    with_val = is_devkit(args.data) and "val" in available_splits(args.data) and split not in ("val", "trainval")
    root, anns = voc_data(args, split, *(["val"] if with_val else []))
    args.data, args.ann = root, anns[0]  # --data becomes the image root
    args.val_ann = anns[1] if with_val else None


# Settings that decide the result of a run; loader workers, device and progress do not.
SAME_RUN_SETTINGS = ("epochs", "batch_size", "lr", "weight_decay", "warmup_iters", "seed", "max_iters_per_epoch")


def check_same_run(cfg, resume_state: dict, out) -> None:
    """--resume continues the stored run only with the settings it was started with."""
    from ..errors import EdgeAnchorError

    stored = resume_state["record"].get("config", {})
    for key in SAME_RUN_SETTINGS:
        if key in stored and stored[key] != getattr(cfg, key):
            flag = "--" + key.replace("_", "-")
            raise EdgeAnchorError(
                f"--resume: the run in {out} was started with {flag} {stored[key]}, not {getattr(cfg, key)}; "
                "give the same settings to continue it, or --overwrite to start afresh"
            )


def check_flags(args) -> None:
    """Every flag that needs no data, checked before any work."""
    import math

    from ..device import resolve_device
    from ..errors import EdgeAnchorError

    checks = [(args.epochs >= 1, f"--epochs must be at least 1 (got {args.epochs})"),
              (args.batch_size >= 1, f"--batch-size must be at least 1 (got {args.batch_size})"),
              (math.isfinite(args.lr) and args.lr > 0, f"--lr must be a positive number (got {args.lr})"),
              (math.isfinite(args.weight_decay) and args.weight_decay >= 0,
               f"--weight-decay must be a number >= 0 (got {args.weight_decay})"),
              (args.warmup_iters >= 0, f"--warmup-iters must be >= 0 (got {args.warmup_iters})"),
              (args.workers >= 0, f"--workers must be >= 0 (got {args.workers})"),
              (args.seed >= 0, f"--seed must be >= 0 (got {args.seed})")]
    for ok, message in checks:
        if not ok:
            raise EdgeAnchorError(message)
    resolve_device(args.device)


def check_out(args) -> None:
    """--out may replace only a checkpoint we wrote, only when asked, and never an input."""
    from ..io import check_output_file
    from ..models.registry import is_checkpoint

    if args.resume:
        return  # _resume_state checks it is our checkpoint with a training state
    inputs = [args.data, args.ann, args.val_ann, args.init, args.weights, args.model, args.anchors]
    check_output_file(args.out, overwrite=args.overwrite, is_ours=is_checkpoint, what="checkpoint", inputs=inputs,
                      flag="overwrite (or resume to continue the run)")


def run(args) -> int:
    import torch

    from ..data.coco import CocoDetection
    from ..errors import EdgeAnchorError
    from ..train.loop import TrainConfig, seed_everything, train
    from .common import print_json

    torch.set_num_threads(max(1, torch.get_num_threads()))
    check_flags(args)
    resolve_train_data(args)
    check_out(args)
    if args.resume and args.overwrite:
        raise EdgeAnchorError("give either --resume (continue the run at --out) or --overwrite (start afresh)")
    resume_state = None
    if args.resume:
        det, resume_state = _resume_state(args)
    else:
        seed_everything(args.seed)  # the initial weights are drawn from torch's generator
        det = build_model(args)
    train_set = CocoDetection.for_detector(det, args.data, args.ann, train=True)
    train_set.require_objects("train on")
    val_set = None
    if args.val_ann:
        val_set = CocoDetection.for_detector(det, args.data, args.val_ann)
    cfg = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        warmup_iters=args.warmup_iters, device=args.device, workers=args.workers, seed=args.seed,
        max_iters_per_epoch=args.max_iters_per_epoch, progress=not args.no_progress,
        extra_meta={"command": "edgeanchor train", "init": args.init, "model": args.model or det.arch,
                    "ann": str(args.ann), "seed": args.seed},
    )
    if resume_state:
        check_same_run(cfg, resume_state, args.out)
    t0 = time.perf_counter()
    record = train(det, train_set, cfg, out=args.out, val_set=val_set, resume_state=resume_state)
    seconds = time.perf_counter() - t0
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun only rank 0 writes the checkpoint and reports
    last = record["epochs"][-1]
    if args.json:
        print_json({"out": args.out, "seconds": round(seconds, 1), "record": record})
        return 0
    val = f", val mAP {last['val']['mAP']:.4f}" if "val" in last else ""
    print(f"trained {det.arch} for {len(record['epochs'])} epochs in {seconds:.0f}s: loss {last['loss']:.4f}{val}; "
          f"wrote {args.out}")
    return 0
