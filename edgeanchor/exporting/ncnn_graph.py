"""A decoded graph that ncnn can run: backbone + head + box decode + class probabilities, nothing after.

ncnn has no TopK, Gather, Where or comparison layers, so neither ``model.onnx`` (NonMaxSuppression)
nor ``model_nonms.onnx`` (a fixed top-K) can run there. What an ncnn application needs instead is
every box decoded and scored, with the score threshold, top-k and NMS done by the application
(NumPy or C++), as ncnn's own detector examples do. :class:`NcnnDecodedGraph` gives exactly that:

- ``images`` (1, 3, H, W) -> ``boxes`` (1, B, 4) xyxy in input pixels (clipped to the image as the
  model does; YOLO unclipped, as YOLOv5) and ``scores`` (1, B, C): per-class probabilities without
  SSD's background column (so column c is label ``c + first_label``); RetinaNet's sigmoids; YOLO's
  confidence sigmoid(obj) * sigmoid(class).

It equals :class:`~edgeanchor.exporting.graphs.DecodeBoxes` (``edgeanchor.postprocess.decode``) on the
head outputs to float32 rounding, but is written with only the ops pnnx maps to ncnn layers:
Conv (backbone, head), Reshape, Transpose, Concat, Slice with constant bounds and step 1 (ncnn Crop),
Mul / Add / Sub with constant tensors (BinaryOp, MemoryData), Exp (UnaryOp), Sigmoid, Softmax on
one axis, Clip with constant bounds and, for non-square inputs only, Min with a constant (BinaryOp min).
In particular: no strided slices (``x[:, 0::4]``), no unbind / split / stack of single coordinates,
no Gather, Where or comparisons, and only 3-D tensors after the head (flatten_level's 5-D view is
replaced by an equivalent reshape-transpose-reshape). Box coordinates stay side by side in the last
axis: the decode works on (x, y) pairs with per-box constant (1, B, 2) tensors (anchor centres and
sizes, YOLO's grid and strides), so no coordinate ever has to be picked out on its own.

``export_ncnn_graph`` writes it as ONNX (the project's tracing and checked simplification); convert
with ``pnnx model_ncnn.onnx inputshape=[1,3,H,W]`` (see benchmarks/ncnn_check.py). Thresholds, the
model's top-k and NMS rule travel in the file's metadata_props (:meth:`NcnnDecodedGraph.metadata`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import nn

from ..models.base import Detector
from ..models.yolo import YoloDetector
from .graphs import BackboneGraph, HeadGraph
from .onnx_export import (
    _trace_images,
    remove_dead_nodes,
    save_onnx,
    set_metadata,
    set_output_shapes,
    simplify_checked,
    trace_to_onnx,
)

# Ops the exported graph may contain (checked by tests/test_ncnn_graph.py); all have ncnn layers via pnnx.
NCNN_OPS = frozenset({"Conv", "Relu", "LeakyRelu", "Sigmoid", "Mul", "Add", "Sub", "Div", "MaxPool", "AveragePool",
                      "Concat", "Reshape", "Transpose", "Slice", "Exp", "Softmax", "Clip", "Min", "Max",
                      "BatchNormalization", "Resize", "Pad", "Identity", "Flatten", "Pow"})
# Ops the graph must not contain (ncnn has no layer for them, or pnnx leaves them as torch calls).
FORBIDDEN_OPS = frozenset({"TopK", "Gather", "GatherElements", "GatherND", "Where", "Greater", "GreaterOrEqual",
                           "Less", "LessOrEqual", "Equal", "Split", "NonMaxSuppression", "ScatterND",
                           "ScatterElements", "NonZero"})

# torchvision BoxCoder's default bbox_xform_clip (the models' box coders use it).
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def _rows(x: torch.Tensor, columns: int) -> torch.Tensor:
    """(1, A*C, H, W) anchor-major head output -> (1, H*W*A, C) rows, 3-D ops only.

    Same order as :func:`edgeanchor.postprocess.flatten_level` (row, column, anchor): channel a*C + c of
    pixel p becomes row p*A + a, column c.
    """
    _, ch, h, w = x.shape
    ch, h, w = int(ch), int(h), int(w)  # static under tracing (fixed input size)
    x = x.reshape(1, ch, h * w).permute(0, 2, 1)  # -> (1, H*W, A*C)
    return x.reshape(1, h * w * (ch // columns), columns)  # -> (1, H*W*A, C)


def _is_yolo(detector: Detector) -> bool:
    return detector.postprocess_spec.score_fn == "yolo"


class NcnnDecodedGraph(nn.Module):
    """``images`` (1, 3, H, W) -> ``boxes`` (1, B, 4) xyxy px and ``scores`` (1, B, C); see the module docstring."""

    # buffers, (1, B, 2) each: YOLO's cell offsets, strides and anchor sizes
    grid: torch.Tensor
    stride: torch.Tensor
    anchor_wh: torch.Tensor
    # buffers of the torchvision box coder: (1, B, 2) prior centres and sizes, (1, 1, 2) inverse weights,
    # (1, 1, 4) the image's bounds
    prior_ctr: torch.Tensor
    prior_wh: torch.Tensor
    inv_xy_weights: torch.Tensor
    inv_wh_weights: torch.Tensor
    image_max: torch.Tensor

    def __init__(self, detector: Detector, fused_head: bool | None = None):
        super().__init__()
        spec = detector.postprocess_spec
        self.score_fn = spec.score_fn
        self.clip = bool(spec.clip)
        self.linear_size = spec.box_coding == "linear_size"  # MediaPipe: sizes d / w * a, no Exp
        self.postprocess_spec = spec
        self.backbone = BackboneGraph(detector)
        self.yolo = _is_yolo(detector)
        self.head: HeadGraph | None
        if self.yolo:
            # YOLO's Detect is one convolution per level; HeadGraph would split it into cls and box views
            # through a 5-D tensor, which ncnn cannot hold. Take the raw convolutions and split once, later.
            if isinstance(detector, YoloDetector):
                self.convs = nn.ModuleList(detector.detect.m)
            else:  # a YOLOv5 graph held as ONNX: its box and score views joined again
                from ..onnx_source.detector import OnnxDetector

                assert isinstance(detector, OnnxDetector), "the 'yolo' rule is YoloDetector's or an ONNX source's"
                self.convs = detector.yolo_convs()
            self.head = None
        else:
            self.head = HeadGraph(detector) if fused_head is None else HeadGraph(detector, fused=fused_head)
        self.cls_columns = int(detector.cls_columns)
        self.num_classes = int(detector.num_classes)
        self.label_offset = 1 if self.score_fn == "softmax" else 0
        self.first_label = int(detector.first_label)
        self.resize_mode = detector.resize_mode
        self.image_size = tuple(int(v) for v in detector.image_size)
        self.num_boxes = int(detector.level_starts[-1])
        priors = detector.decode_priors.detach().to("cpu", torch.float64)
        if self.yolo:  # yolo_grid columns: (col - 0.5, row - 0.5, stride_x, stride_y, anchor_w, anchor_h)
            self.register_buffer("grid", priors[:, 0:2].float()[None], persistent=False)  # (1, B, 2)
            self.register_buffer("stride", priors[:, 2:4].float()[None], persistent=False)
            self.register_buffer("anchor_wh", priors[:, 4:6].float()[None], persistent=False)
        else:  # torchvision BoxCoder: anchors xyxy -> centres and sizes, divided by the coder's weights
            anchors = detector.decode_priors.detach().to("cpu", torch.float32)
            wh = anchors[:, 2:] - anchors[:, :2]  # float32, as BoxCoder computes widths and heights
            ctr = anchors[:, :2] + 0.5 * wh
            wx, wy, ww, wh_w = (float(v) for v in spec.box_weights)
            self.register_buffer("prior_ctr", ctr[None], persistent=False)  # (1, B, 2)
            self.register_buffer("prior_wh", wh[None], persistent=False)  # (1, B, 2)
            self.register_buffer("inv_xy_weights", torch.tensor([[[1.0 / wx, 1.0 / wy]]]), persistent=False)
            self.register_buffer("inv_wh_weights", torch.tensor([[[1.0 / ww, 1.0 / wh_w]]]), persistent=False)
            h, w = self.image_size
            self.register_buffer("image_max", torch.tensor([[[w, h, w, h]]], dtype=torch.float32), persistent=False)

    # ------------------------------------------------------------------ stages

    def head_rows(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits (1, B, cls_columns) and box outputs (1, B, 4) of all boxes, in the model's box order."""
        features = self.backbone(images)
        if self.yolo:
            no = self.cls_columns + 4  # per anchor: x, y, w, h, obj, classes
            rows = torch.cat([_rows(conv(f), no) for conv, f in zip(self.convs, features)], dim=1)  # (1, B, 5+nc)
            return rows[:, :, 4:], rows[:, :, :4]
        assert self.head is not None  # every detector but YOLO has one
        outs = self.head(*features)  # cls_L, box_L per level
        cls = torch.cat([_rows(c, self.cls_columns) for c in outs[0::2]], dim=1)
        box = torch.cat([_rows(b, 4) for b in outs[1::2]], dim=1)
        return cls, box

    def decode_boxes(self, box: torch.Tensor) -> torch.Tensor:
        """(1, B, 4) box outputs -> (1, B, 4) xyxy px (``edgeanchor.postprocess.decode`` + the model's clipping)."""
        if self.yolo:  # YOLOv5: xy = (2 s + cell - 0.5) * stride, wh = (2 s)^2 * anchor
            s = torch.sigmoid(box)
            xy = (s[:, :, 0:2] * 2.0 + self.grid) * self.stride
            s2 = s[:, :, 2:4] * 2.0
            half = s2 * s2 * self.anchor_wh * 0.5
            return torch.cat([xy - half, xy + half], dim=2)
        ctr = box[:, :, 0:2] * self.inv_xy_weights * self.prior_wh + self.prior_ctr
        if self.linear_size:
            half = box[:, :, 2:4] * self.inv_wh_weights * self.prior_wh * 0.5
        else:
            dwh = torch.clamp(box[:, :, 2:4] * self.inv_wh_weights, max=BBOX_XFORM_CLIP)
            half = torch.exp(dwh) * self.prior_wh * 0.5
        boxes = torch.cat([ctr - half, ctr + half], dim=2)
        if not self.clip:
            return boxes
        h, w = self.image_size
        boxes = torch.clamp(boxes, min=0.0, max=float(max(h, w)))  # clip_boxes_to_image
        if h != w:  # the shorter side's coordinates: one more bound per column
            boxes = torch.minimum(boxes, self.image_max)
        return boxes

    def class_scores(self, cls: torch.Tensor) -> torch.Tensor:
        """(1, B, cls_columns) logits -> (1, B, C) probabilities (no background column; YOLO obj * cls)."""
        if self.score_fn == "softmax":
            return torch.softmax(cls, dim=2)[:, :, 1:]
        probs = torch.sigmoid(cls)
        if self.yolo:
            return probs[:, :, 1:] * probs[:, :, 0:1]
        return probs

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cls, box = self.head_rows(images)
        return self.decode_boxes(box), self.class_scores(cls)

    def metadata(self) -> dict[str, str]:
        """The rule the application applies to ``boxes``/``scores`` (ONNX metadata_props, all strings)."""
        spec = self.postprocess_spec
        meta = {
            "score_threshold": repr(float(spec.score_thresh)),
            "nms_iou_threshold": repr(float(spec.nms_thresh)),
            "detections_per_img": str(int(spec.detections_per_img)),
            "topk_scope": str(spec.topk_scope),
            "topk_candidates": str(int(spec.topk_candidates)),
            "first_label": str(self.first_label),
            "score_fn": self.score_fn,
            "input_size": f"{self.image_size[0]},{self.image_size[1]}",
            "resize": self.resize_mode,
            "boxes": "xyxy in input pixels",
            "scores": "per-class probabilities, column c is label c + first_label",
        }
        if self.resize_mode == "letterbox":
            meta["letterbox_fill"] = "114"
        return meta


def export_ncnn_graph(detector: Detector, path: str | os.PathLike, *, opset: int = 17,
                      trace_images: torch.Tensor | None = None, simplify: bool = True) -> dict:
    """Write :class:`NcnnDecodedGraph` of ``detector`` as ONNX to ``path`` (for pnnx -> ncnn).

    Returns:
        Dict with ``file``, ``opset``, ``simplified``, ``simplify_note``, ``input_shape``, ``outputs``
        (name -> static shape), ``ops`` (op type -> count) and ``active_levels``.
    """
    images = _trace_images(detector, trace_images)
    was_training = detector.training
    detector.eval()
    try:
        module = NcnnDecodedGraph(detector).eval()
        shapes = {"boxes": [1, module.num_boxes, 4],
                  "scores": [1, module.num_boxes, module.num_classes - module.label_offset]}
        model = remove_dead_nodes(trace_to_onnx(module, (images,), ["images"], list(shapes), opset))
        set_output_shapes(model, shapes)
        note = ""
        if simplify:
            model, note = simplify_checked(model)
        set_metadata(model, module.metadata())
        save_onnx(model, path)
    finally:
        detector.train(was_training)
    ops: dict[str, int] = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return {"file": str(Path(path)), "opset": opset, "simplified": bool(simplify and not note), "simplify_note": note,
            "input_shape": list(images.shape), "outputs": shapes, "ops": dict(sorted(ops.items())),
            "active_levels": list(detector.active_levels)}
