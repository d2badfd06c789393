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

from .common import add_model_arguments, add_split_argument


def add_arguments(parser) -> None:
    add_model_arguments(parser, default_model=None)
    parser.add_argument("--init", default=None,
                        help="start from this checkpoint (e.g. a pruned one), keeping its anchors")
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


def resolve_train_data(args) -> None:
    """--data DATA.yaml or Pascal VOC --data becomes --data/--ann/--val-ann of its training and val splits."""
    from ..api.training import train_splits

    args.data, args.ann, args.val_ann = train_splits(args.data, args.ann, args.val_ann, args.split)


def run(args) -> int:
    from ..api.training import train_checkpoint
    from .common import print_json

    det, record, seconds = train_checkpoint(
        args.out, data=args.data, ann=args.ann, val_ann=args.val_ann, split=args.split, model=args.model,
        init=args.init, num_classes=args.num_classes, weights=args.weights, anchors=args.anchors,
        image_size=args.image_size, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, warmup_iters=args.warmup_iters, device=args.device, workers=args.workers,
        seed=args.seed, max_iters_per_epoch=args.max_iters_per_epoch, resume=args.resume, overwrite=args.overwrite,
        progress=not args.no_progress)
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
