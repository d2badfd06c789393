"""Detectors for the Python API: by name or path (:func:`load`), or from a model object (:func:`wrap`).

A detector is the three-stage :class:`~edgeanchor.models.base.Detector` every command works on:
images (N, 3, H, W) float32 RGB in [0, 1] at its input size in, boxes xyxy in input pixels out,
anchors as (w, h) in input pixels with ratio = h/w.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import EdgeAnchorError
from ..settings import typechecked

if TYPE_CHECKING:
    from ..anchors import AnchorSet
    from ..models.base import Detector


@typechecked
def load(name_or_path: str | os.PathLike, *, num_classes: int | None = None, weights: str | os.PathLike | None = None,
         anchors: str | AnchorSet | None = None, image_size: Sequence[int] | None = None,
         score_thresh: float | None = None, nms_thresh: float | None = None,
         max_det: int | None = None, head: str | os.PathLike | None = None) -> Detector:
    """A detector by name, or rebuilt from a checkpoint.

    Args:
        name_or_path: the names of the CLI's ``--model``: ``demo``, ``demo-yolo``,
            ``torchvision:ssd300_vgg16``, ``torchvision:ssdlite320_mobilenet_v3_large``,
            ``torchvision:retinanet_resnet50_fpn[_v2]``, ``edgeanchor:demo_ssd``, ``yolov5:n|s|m|l|x``,
            ``yolov5:MODEL.yaml``, ``onnx:PATH.onnx`` (with ``head``), or an edgeanchor (or yolov5
            ``train.py``) checkpoint path.
        num_classes: classifier outputs; SSD and RetinaNet count the background class, YOLO's is nc.
        weights: a torchvision state dict, an edgeanchor checkpoint, or for yolov5 a ``train.py`` checkpoint.
        anchors: an :class:`~edgeanchor.anchors.AnchorSet`, an anchor JSON file, or
            ``overanchorized[:SxR]``; replaces the model's anchors (w, h in input pixels, ratio h/w).
        image_size: (H, W) input size in pixels (default: the architecture's own).
        score_thresh, nms_thresh, max_det: override the post-processing rule searched and evaluated with.
        head: with ``onnx:PATH``, the head spec: a preset (``retinaface``, ``tf-ssd``, ``caffe-ssd``,
            ``mediapipe``, ``yolov5``) or a YAML/JSON spec file (``docs/onnx-head-spec.md``).

    Returns:
        The detector, in eval mode on the CPU. Random weights unless ``weights`` or a checkpoint gives them;
        nothing is downloaded.

    Raises:
        EdgeAnchorError: unknown name, missing file, weights that do not fit.
    """
    from ..models import build_detector

    if image_size is not None and len(image_size) != 2:  # (640,) or (640, 640, 3): not silently cut or read past
        raise EdgeAnchorError(f"`image_size` is {tuple(image_size)!r}; give (height, width) in pixels")
    det = build_detector(os.fspath(name_or_path), num_classes=num_classes, weights=weights, anchors=anchors,
                         image_size=(int(image_size[0]), int(image_size[1])) if image_size else None,
                         head=os.fspath(head) if head is not None else None)
    det.postprocess_spec = det.postprocess_spec.with_overrides(score_thresh, nms_thresh, max_det)
    return det


@typechecked
def wrap(model: Any, *, image_size: Sequence[int] | None = None,
         anchors: str | AnchorSet | None = None) -> Detector:
    """A detector over a model object held in memory, with its own weights and anchors (no file round trip).

    Accepted: a torchvision ``SSD`` (SSD300-VGG16, SSDLite320-MobileNetV3 or the demo architecture) or
    ``RetinaNet`` (v1 or v2, ResNet-50-FPN), and this project's YOLOv5 model
    (:class:`~edgeanchor.models.yolov5_arch.YoloV5`). The detector shares the object's modules (its
    weights are the same tensors) and reads the anchors from its anchor generator (YOLO: its Detect layer)
    and the post-processing rule from its settings (YOLO: YOLOv5's val preset). An object the registry
    could not rebuild from a checkpoint (another backbone, other layer shapes) is refused, because
    checkpoints and exports rebuild a detector by its architecture name.

    Args:
        model: the model object.
        image_size: (H, W) input size in pixels (default: an SSD's fixed size, RetinaNet's min_size
            square, YOLO 640x640).
        anchors: replace the model's anchors (see :func:`load`).

    Returns:
        The detector in eval mode.

    Raises:
        EdgeAnchorError: an object of another kind, or one that does not match its architecture.
    """
    from torchvision.models.detection.retinanet import RetinaNet
    from torchvision.models.detection.ssd import SSD

    from ..models.yolov5_arch import YoloV5

    if isinstance(model, YoloV5):
        return _wrap_yolo(model, image_size, anchors)
    if not isinstance(model, (SSD, RetinaNet)):
        raise EdgeAnchorError(f"cannot wrap a {type(model).__name__}; give a torchvision SSD or RetinaNet, or an "
                              "edgeanchor YoloV5 model (or load one by name)")
    from ..models.registry import ARCHS, _wrap, check_image_size
    from ..models.registry import wrap as wrap_named

    name = torchvision_arch(model)
    check_image_size(image_size)
    size = tuple(image_size) if image_size else _default_size(model)
    det = wrap_named(name, model, image_size=size, anchors=anchors)
    spec = ARCHS[name]
    rebuilt = _wrap(spec, name, spec.builder(det.num_classes, size), size, det.anchor_set)
    mine = {k: tuple(v.shape) for k, v in det.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    if mine != theirs:
        odd = sorted(set(mine.items()) ^ set(theirs.items()))[:2]
        raise EdgeAnchorError(f"this {type(model).__name__} is not a standard {name} (it differs at "
                              f"{', '.join(k for k, _ in odd)}); only the registry's architectures can be "
                              "wrapped, so that checkpoints and exports can rebuild it")
    return det


def torchvision_arch(model: Any) -> str:
    """The registry name of a torchvision SSD / RetinaNet object, from its modules' classes."""
    from torch import nn
    from torchvision.models.detection.retinanet import RetinaNet
    from torchvision.models.detection.ssd import SSDFeatureExtractorVGG
    from torchvision.models.detection.ssdlite import SSDLiteFeatureExtractorMobileNet

    from ..models.demo import DemoExtractor

    if isinstance(model, RetinaNet):  # v2's head has GroupNorm after each tower convolution
        v2 = any(isinstance(m, nn.GroupNorm) for m in model.head.modules())
        return "torchvision:retinanet_resnet50_fpn_v2" if v2 else "torchvision:retinanet_resnet50_fpn"
    kinds = {SSDFeatureExtractorVGG: "torchvision:ssd300_vgg16",
             SSDLiteFeatureExtractorMobileNet: "torchvision:ssdlite320_mobilenet_v3_large",
             DemoExtractor: "edgeanchor:demo_ssd"}
    for kind, name in kinds.items():
        if isinstance(model.backbone, kind):
            return name
    raise EdgeAnchorError(f"an SSD with a {type(model.backbone).__name__} backbone is not an architecture "
                          "edgeanchor knows; use SSD300-VGG16, SSDLite320-MobileNetV3 or the demo architecture")


def _default_size(model: Any) -> tuple[int, int]:
    fixed = getattr(model.transform, "fixed_size", None)
    if fixed:
        return int(fixed[0]), int(fixed[1])
    side = int(model.transform.min_size[0])
    return side, side


def _wrap_yolo(net: Any, image_size, anchors) -> Detector:
    from ..models.registry import check_image_size
    from ..models.yolo_build import DEFAULT_IMAGE_SIZE, wrap_with_anchors
    from ..models.yolov5_arch import SIZES, V7_LAYOUT

    check_image_size(image_size)
    size = tuple(image_size) if image_size else tuple(DEFAULT_IMAGE_SIZE)
    layout, gd, gw = net.layout, net.depth_multiple, net.width_multiple
    standard = [s for s, m in SIZES.items() if m == (gd, gw) and layout["backbone"] == V7_LAYOUT["backbone"]
                and layout["head"] == V7_LAYOUT["head"]]
    arch = f"yolov5:{standard[0]}" if standard else "yolov5:custom"
    return wrap_with_anchors(net, arch=arch, image_size=size, anchors=anchors)


@typechecked
def inspect(det: Detector) -> dict:
    """A detector's anchors and cost, JSON-ready.

    Returns:
        ``model``, ``num_classes``, ``image_size`` (H, W), ``ratio_convention`` ("h/w"), ``num_anchors``,
        ``num_boxes``, ``head_macs``, ``backbone_macs``, ``total_macs`` (MACs at batch 1), and ``levels``: per
        level its stride (px), feature size, anchors, boxes, head MACs, channels and the anchors
        (``id``, ``w``, ``h`` in input pixels, ``ratio_hw``).
    """
    from ..cost import measure_cost

    cost = measure_cost(det)
    levels = []
    for i, level in enumerate(det.anchor_set.levels):
        stride = list(level.stride) if level.stride is not None else [
            det.image_size[0] / level.feature_size[0], det.image_size[1] / level.feature_size[1]]
        levels.append({
            "level": i, "stride": stride, "feature_size": list(level.feature_size),
            "num_anchors": level.num_anchors, "num_boxes": level.num_boxes,
            "head_macs": cost.head_macs_per_level[i],
            "cls_channels": level.num_anchors * det.cls_columns,  # YOLO: objectness + classes per anchor
            "box_channels": level.num_anchors * 4,
            "anchors": [{"id": a.id, "w": round(a.w, 4), "h": round(a.h, 4), "ratio_hw": round(a.ratio, 4)}
                        for a in level.anchors],
        })
    return {"model": det.arch, "num_classes": det.num_classes, "image_size": list(det.image_size),
            "ratio_convention": "h/w", "num_anchors": det.anchor_set.num_anchors, "num_boxes": cost.num_boxes,
            "head_macs": cost.head_macs, "backbone_macs": cost.backbone_macs, "total_macs": cost.total_macs,
            "levels": levels}
