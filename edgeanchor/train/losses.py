"""Detection losses, reusing torchvision's own implementations.

The losses are torchvision's ``SSD.compute_loss`` (hard negative mining,
smooth L1) and ``RetinaNetHead.compute_loss`` (sigmoid focal loss, L1 or
GIoU), called on our flattened head outputs, so training a wrapped model is
training the torchvision model it came from.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.retinanet import RetinaNetClassificationHead, RetinaNetRegressionHead
from torchvision.models.detection.ssd import SSD
from torchvision.ops import boxes as box_ops

from ..models.base import Detector


def _matched_idxs(matcher, anchors: torch.Tensor, targets: list[dict]) -> list[torch.Tensor]:
    out = []
    for t in targets:
        if t["boxes"].numel() == 0:
            out.append(torch.full((anchors.shape[0],), -1, dtype=torch.int64, device=anchors.device))
        else:
            out.append(matcher(box_ops.box_iou(t["boxes"], anchors)))
    return out


def ssd_loss(det: Detector, head_outputs, targets: list[dict], positive_fraction: float = 0.25) -> dict:
    """torchvision's SSD loss: {"bbox_regression", "classification"}."""
    cls, box = det.flatten_head(head_outputs)
    anchors = det.anchors_xyxy
    matched = _matched_idxs(det_utils.SSDMatcher(0.5), anchors, targets)
    ns = SimpleNamespace(box_coder=det_utils.BoxCoder(det.postprocess_spec.box_weights),
                         neg_to_pos_ratio=(1.0 - positive_fraction) / positive_fraction)
    return SSD.compute_loss(ns, targets, {"bbox_regression": box, "cls_logits": cls},
                            [anchors] * len(targets), matched)


def retinanet_loss(det: Detector, head_outputs, targets: list[dict], loss_type: str = "l1") -> dict:
    """torchvision's RetinaNet loss: {"classification", "bbox_regression"}."""
    cls, box = det.flatten_head(head_outputs)
    anchors = det.anchors_xyxy
    matcher = det_utils.Matcher(0.5, 0.4, allow_low_quality_matches=True)
    matched = _matched_idxs(matcher, anchors, targets)
    cls_ns = SimpleNamespace(BETWEEN_THRESHOLDS=det_utils.Matcher.BETWEEN_THRESHOLDS)
    box_ns = SimpleNamespace(box_coder=det_utils.BoxCoder(det.postprocess_spec.box_weights), _loss_type=loss_type)
    outputs = {"cls_logits": cls, "bbox_regression": box}
    anchors_list = [anchors] * len(targets)
    return {
        "classification": RetinaNetClassificationHead.compute_loss(cls_ns, targets, outputs, matched),
        "bbox_regression": RetinaNetRegressionHead.compute_loss(box_ns, targets, outputs, anchors_list, matched),
    }


def detection_loss(det: Detector, head_outputs, targets: list[dict]) -> dict:
    """The loss of the detector's family."""
    if det.postprocess_spec.score_fn == "yolo":
        from .yolo_loss import yolov5_loss

        return yolov5_loss(det, head_outputs, targets)
    if det.postprocess_spec.score_fn == "softmax":
        return ssd_loss(det, head_outputs, targets)
    loss_type = "giou" if det.arch.endswith("_v2") else "l1"
    return retinanet_loss(det, head_outputs, targets, loss_type)

