"""Train or fine-tune a detector on COCO, YOLO (data.yaml) or Pascal VOC data.

From scratch:  edgeanchor train --model edgeanchor:demo_ssd --data DIR/images \
                   --ann DIR/annotations/train.json --val-ann DIR/annotations/val.json --epochs 30 --out demo.pt
YOLO / VOC:    edgeanchor train --model yolov5:n --data data.yaml --epochs 30 --out yolo.pt
               (or --data VOCdevkit/VOC2007: its train split, evaluated on val)
After pruning: edgeanchor train --init pruned.pt --data ... --ann ... --epochs 5 --out finetuned.pt
Resume:        the same command with --resume continues from the checkpoint at --out.
Multi-GPU:     torchrun --nproc_per_node 4 -m edgeanchor train --device cuda ...

Checkpoints hold the architecture, the anchor set and the weights; pass one
to --model anywhere to rebuild it exactly.
"""

from __future__ import annotations

import os


def add_arguments(parser) -> None:
    from ..api.settings import TrainSettings
    from ..settings import add_arguments as settings_flags

    settings_flags(parser, TrainSettings)  # one flag per setting, defined there
    parser.set_defaults(device=None)  # the command's default, the GPU where there is one, is resolved in run
    parser.add_argument("--json", action="store_true", help="print the training record as JSON")


def _cuda() -> bool:
    # Asked only when the command runs: importing torch here would make every --help take seconds.
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover
        return False


def resolve_train_data(args) -> None:
    """--data DATA.yaml or Pascal VOC --data becomes --data/--ann/--val-ann of its training and val splits."""
    from ..api.training import train_splits

    args.data, args.ann, args.val_ann = train_splits(args.data, args.ann, args.val_ann, args.split)


def run(args) -> int:
    from ..api.settings import TrainSettings
    from ..api.training import train_checkpoint
    from ..settings import from_args
    from .common import print_json

    if args.device is None:
        args.device = "cuda" if _cuda() else "cpu"
    det, record, seconds = train_checkpoint(**from_args(TrainSettings, args))
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
