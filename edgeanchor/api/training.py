"""Training to a checkpoint file (``edgeanchor train``): from a model name, a checkpoint, or a resumed run.

:func:`edgeanchor.finetune` trains a copy of a detector in memory; :func:`train_checkpoint` is the
command's job: the detector from ``model`` / ``init`` / the interrupted run at ``out``, training data
from COCO, YOLO or VOC, a checkpoint rewritten after every epoch, resumable with the same settings.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import EdgeAnchorError

if TYPE_CHECKING:
    from ..models.base import Detector

# Settings that decide the result of a run; loader workers, device and progress do not.
SAME_RUN_SETTINGS = ("epochs", "batch_size", "lr", "weight_decay", "warmup_iters", "seed", "max_iters_per_epoch")


def train_checkpoint(out: str | os.PathLike, *, data: str, ann: str | None = None, val_ann: str | None = None,
                     split: str | None = None, model: str | None = None, init: str | None = None,
                     num_classes: int | None = None, weights: str | None = None, anchors: str | None = None,
                     image_size: Sequence[int] | None = None, score_thresh: float | None = None,
                     nms_thresh: float | None = None, max_det: int | None = None, head: str | None = None,
                     epochs: int, batch_size: int = 32,
                     lr: float = 2e-3,
                     weight_decay: float = 5e-4, warmup_iters: int = 200, device: str = "cpu", workers: int = 1,
                     seed: int = 0, max_iters_per_epoch: int | None = None, resume: bool = False,
                     overwrite: bool = False, progress: bool = True) -> tuple[Detector, dict, float]:
    """Train a detector and write it to the checkpoint ``out`` after every epoch.

    Args:
        out: the checkpoint (with the optimizer state until the last epoch, for ``resume``).
        data, ann, val_ann, split: COCO images and annotations (training, and evaluated after each
            epoch); or a YOLO data.yaml / Pascal VOC folder as ``data``, whose ``split`` (train) is trained on
            and whose val split is evaluated.
        model, num_classes, weights, anchors, image_size: the detector, as :func:`edgeanchor.load`; for
            yolov5, ``anchors="overanchorized[:SxR]"`` fits S*R anchors per level to the training boxes.
        score_thresh, nms_thresh, max_det: override the post-processing rule the epochs are evaluated with
            and the checkpoint records (default: the model's own), as :func:`edgeanchor.load`.
        init: start from this checkpoint instead (e.g. a pruned one), keeping its anchors.
        head: only for ``onnx:`` models, which are pruned without retraining: refused (one line).
        epochs, batch_size, lr, weight_decay, warmup_iters, seed, max_iters_per_epoch: AdamW with warm-up and
            cosine decay; ``seed`` fixes the initial weights, shuffling and augmentation.
        device, workers: where to train, and data loader processes (neither changes the result).
        resume: continue the interrupted run stored at ``out`` (with the same settings).
        overwrite: replace an existing checkpoint at ``out`` (only one edgeanchor wrote).
        progress: show progress bars.

    The settings are :class:`~edgeanchor.api.settings.TrainSettings`' fields (``edgeanchor train``'s flags).

    Returns:
        The trained detector, the training record (per-epoch losses, val mAP, seconds), and the seconds the
        training took.
    """
    import time

    import torch

    from ..datasets.coco import CocoDetection
    from ..train.loop import TrainConfig, seed_everything, train
    from .settings import TrainSettings

    if head is not None or str(model or "").startswith("onnx:"):
        from ..errors import ONNX_NOT_TRAINABLE

        raise EdgeAnchorError(f"{ONNX_NOT_TRAINABLE}; train a PyTorch model instead")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    TrainSettings(out=out, data=data, ann=ann, val_ann=val_ann, split=split, model=model, init=init,
                  num_classes=num_classes, weights=weights, anchors=anchors, image_size=image_size,
                  score_thresh=score_thresh, nms_thresh=nms_thresh, max_det=max_det, head=head, epochs=epochs,
                  batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup_iters=warmup_iters, device=device,
                  workers=workers, seed=seed, max_iters_per_epoch=max_iters_per_epoch, resume=resume,
                  overwrite=overwrite, progress=progress).validate()  # once, before any data or model
    data, ann, val_ann = train_splits(data, ann, val_ann, split)  # the data roles of training
    if not resume:
        _check_out(out, overwrite, [data, ann, val_ann, init, weights, model, anchors])
    if resume and overwrite:
        raise EdgeAnchorError("give either `resume` (continue the run at `out`) or `overwrite` (start afresh)")
    resume_state = None
    if resume:
        det, resume_state = _resume_state(out)
    else:
        seed_everything(seed)  # the initial weights are drawn from torch's generator
        det = _build_model(model=model, init=init, num_classes=num_classes, weights=weights, anchors=anchors,
                           image_size=image_size, data=data, ann=ann, seed=seed)
        det.postprocess_spec = det.postprocess_spec.with_overrides(score_thresh, nms_thresh, max_det)
    train_set = CocoDetection.for_detector(det, data, ann, train=True)
    train_set.require_objects("train on")
    val_set = CocoDetection.for_detector(det, data, val_ann) if val_ann else None
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                      warmup_iters=warmup_iters, device=device, workers=workers, seed=seed,
                      max_iters_per_epoch=max_iters_per_epoch, progress=progress,
                      extra_meta={"command": "edgeanchor train", "init": init, "model": model or det.arch,
                                  "ann": str(ann), "seed": seed})
    if resume_state:
        _check_same_run(cfg, resume_state, out)
    t0 = time.perf_counter()
    record = train(det, train_set, cfg, out=str(out), val_set=val_set, resume_state=resume_state)
    return det, record, time.perf_counter() - t0


def _build_model(*, model, init, num_classes, weights, anchors, image_size, data, ann, seed) -> Detector:
    """The detector to train: from ``init``, or from ``model``."""
    from ..models import build_detector, load_checkpoint

    if init:
        det = load_checkpoint(init)
        if model and model != det.arch:
            raise EdgeAnchorError(f"the `init` checkpoint {init} is a {det.arch} checkpoint but `model` is {model}; "
                                  "drop `model` or pass a checkpoint of the same architecture")
        if anchors:
            raise EdgeAnchorError("`init` keeps the checkpoint's anchors; drop `anchors`")
        return det
    if not model:
        raise EdgeAnchorError("give `model` (e.g. edgeanchor:demo_ssd) or an `init` checkpoint")
    image_size = tuple(image_size) if image_size else None
    if str(model).startswith("yolov5:") and anchors and str(anchors).startswith("overanchorized") \
            and not Path(anchors).is_file():
        anchors = _fitted_overanchorized(model, num_classes, weights, image_size, anchors, data, ann, seed)
    return build_detector(model, num_classes=num_classes, weights=weights, anchors=anchors, image_size=image_size)


def _fitted_overanchorized(model, num_classes, weights, image_size, text: str, data, ann, seed: int) -> Any:
    """YOLO's overanchorized[:SxR]: S*R anchors per level (default 9) fitted by k-means to the training boxes."""
    import numpy as np

    from ..anchors import parse_overanchorized
    from ..datasets.coco import CocoDetection
    from ..io import log
    from ..kmeans import anchor_fitness, fitted_anchor_set
    from ..models import build_detector

    template = build_detector(model, num_classes=num_classes, weights=weights, image_size=image_size)
    per_level = 9 if text == "overanchorized" else parse_overanchorized(text, template.anchor_set).levels[0].num_anchors
    wh = CocoDetection.for_detector(template, data, ann).box_sizes()
    fitted = fitted_anchor_set(template.anchor_set, wh, per_level, seed=seed)
    shapes = np.array([[a.w, a.h] for lv in fitted.levels for a in lv.anchors])
    recall, metric = anchor_fitness(shapes, wh)
    log(f"overanchorized: {per_level} anchors per level fitted by k-means to {len(wh)} training boxes "
        f"(best possible recall {recall:.4f}, mean ratio metric {metric:.3f})")
    return fitted


def _resume_state(out) -> tuple[Detector, dict]:
    from ..models.registry import detector_from_checkpoint, read_checkpoint

    path = Path(out)
    if path.is_dir():
        raise EdgeAnchorError(f"`out` {path} is a folder; give the checkpoint file to resume")
    if not path.is_file():
        raise EdgeAnchorError(f"`resume`: no checkpoint at {path} to resume from; drop `resume` to start afresh")
    try:
        obj = read_checkpoint(path)  # read once: the training state and the detector come from it
    except EdgeAnchorError:
        raise EdgeAnchorError(f"`resume`: the checkpoint file {path} is not a checkpoint written by edgeanchor train; "
                              "cannot resume it") from None
    state = obj.get("train_state")
    if not state:
        raise EdgeAnchorError(f"`resume`: the checkpoint file {path} holds a finished run (no training state left); "
                              "nothing to resume")
    if not isinstance(state, dict) or not {"epoch", "optimizer", "scheduler", "record"} <= set(state):
        raise EdgeAnchorError(f"`resume`: the training state in {path} is incomplete; start afresh with `overwrite`")
    return detector_from_checkpoint(obj, path), state


def train_splits(data, ann, val_ann, split) -> tuple[str, str, str | None]:
    """(image root, training annotations, validation annotations or None) of COCO, YOLO or VOC data.

    See :func:`edgeanchor.api.data.train_roles`, the one resolver of training's splits.
    """
    from .data import train_roles

    splits = train_roles(data, ann, val_ann, split)
    assert splits.train is not None
    return splits.train.images, splits.train.ann, splits.val.ann if splits.val is not None else None


def _check_same_run(cfg, resume_state: dict, out) -> None:
    """resume continues the stored run only with the settings it was started with."""
    stored = resume_state["record"].get("config", {})
    for key in SAME_RUN_SETTINGS:
        if key in stored and stored[key] != getattr(cfg, key):
            raise EdgeAnchorError(
                f"`resume`: the run in {out} was started with `{key}` {stored[key]}, not {getattr(cfg, key)}; "
                "give the same settings to continue it, or `overwrite` to start afresh")


def _check_out(out, overwrite: bool, inputs: list) -> None:
    """out may replace only a checkpoint we wrote, only when asked, and never an input."""
    from ..io import check_output_file
    from ..models.registry import is_checkpoint

    check_output_file(out, overwrite=overwrite, is_ours=is_checkpoint, what="checkpoint", inputs=inputs,
                      flag="`overwrite` (or `resume` to continue the run)")
