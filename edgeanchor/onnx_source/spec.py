"""The head spec: how an ONNX detector's outputs map to anchors, scores and boxes (torch-free).

A spec is written in YAML or JSON (``docs/onnx-head-spec.md``), or named by a preset
(:data:`PRESETS`), and a preset takes overrides from a spec file. Everything here is plain values;
nothing imports torch.

Conventions (the same as the rest of edgeanchor):
- sizes are (H, W) in input pixels; an anchor is (w, h) in input pixels;
- levels are listed from the finest (smallest stride) to the coarsest, in the order the graph
  concatenates them;
- within a level, ``anchors`` are in the order the graph lays them out inside one cell.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class Preprocess:
    """How an RGB image becomes the graph's input tensor.

    The input is ``(pixel * scale - mean) / std`` per channel, where ``pixel`` is in [0, 255] and the
    channels are in ``channel_order``; ``mean`` and ``std`` are given in that same channel order.

    Attributes:
        input_name: the graph input (None: the graph's only input).
        image_size: (H, W) the model runs at; None: the graph's static input size (a dynamic graph needs it).
        layout: "NCHW" or "NHWC".
        channel_order: "RGB" or "BGR".
        scale, mean, std: see above. RetinaFace: 1, (104, 117, 127), (1, 1, 1) in BGR order.
        resize: "stretch" or "letterbox" (YOLOv5's, grey 114 padding).
        dtype: "float32" or "uint8" (a converter's graph that normalises inside).
    """

    input_name: str | None = None
    image_size: tuple[int, int] | None = None
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    channel_order: Literal["RGB", "BGR"] = "RGB"
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    resize: Literal["stretch", "letterbox"] = "stretch"
    dtype: Literal["float32", "uint8"] = "float32"


@dataclass(frozen=True)
class Outputs:
    """Which graph outputs hold what.

    Either ``boxes`` and ``scores`` (and optionally ``extras``) name outputs that concatenate every
    level ([N, A, 4], [N, A, K], [N, A, 2k]), or ``per_level`` names one output per level holding every
    value of an anchor (YOLOv5's Detect convolutions: na * (5 + nc) channels).

    Attributes:
        boxes: box deltas.
        scores: class scores or logits (K columns; with ``background_column`` column 0 is background).
        extras: per-anchor extra values (landmarks / keypoints), 2 * ``extra_points`` columns (x, y pairs).
        extra_points: k, the number of points of ``extras``.
        per_level: YOLOv5-style raw outputs, one per level.
    """

    boxes: str | None = None
    scores: str | None = None
    extras: str | None = None
    extra_points: int = 0
    per_level: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Scoring:
    """The score function.

    Attributes:
        fn: "softmax" (over the K columns), "sigmoid", or "yolo" (sigmoid(obj) * sigmoid(class)).
        background_column: column 0 is background and never reported (softmax SSDs, TF's SSDs).
        num_classes: K, the columns per anchor of ``scores`` (None: read from the graph).
    """

    fn: Literal["softmax", "sigmoid", "yolo"] = "softmax"
    background_column: bool = True
    num_classes: int | None = None


@dataclass(frozen=True)
class BoxCoding:
    """How box deltas (and extra points) decode against an anchor.

    Attributes:
        kind: "centre_size": SSD / RetinaFace / TensorFlow: cx = a_cx + d_x / s_x * a_w, w = a_w * exp(d_w / s_w)
            (variances (0.1, 0.2) are scales (10, 10, 5, 5));
            "mediapipe": raw offsets in input pixels over scales: cx = a_cx + d_x / x_scale * a_w,
            w = d_w / w_scale * a_w (MediaPipe's TensorsToDetectionsCalculator);
            "yolov5": YOLOv5's sigmoid decode with grid and anchor in stride units.
        order: the order of the four deltas in the output: "xywh" (SSD, RetinaFace, MediaPipe) or "yxhw"
            (TensorFlow's box coder).
        scales: (s_x, s_y, s_w, s_h); for "mediapipe" (x_scale, y_scale, w_scale, h_scale).
        clip: clip decoded boxes to the image.
    """

    kind: Literal["centre_size", "mediapipe", "yolov5"] = "centre_size"
    order: Literal["xywh", "yxhw"] = "xywh"
    scales: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    clip: bool = True


@dataclass(frozen=True)
class Level:
    """One feature level.

    Attributes:
        stride: (sy, sx) input pixels per cell.
        feature_size: (H, W); None: ceil(input size / stride).
        anchors: (w, h) in input pixels, in the graph's order inside a cell.
        convs: explicit head convolution node names by role ("boxes", "scores", "extras", "per_level");
            empty: found by tracing the outputs back.
    """

    stride: tuple[int, int]
    feature_size: tuple[int, int] | None = None
    anchors: tuple[tuple[float, float], ...] = ()
    convs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Nms:
    """The post-processing rule (edgeanchor's :class:`~edgeanchor.postprocess.PostprocessRule`).

    Attributes:
        score_thresh: search and evaluation threshold (keep it low: mAP needs the tail).
        deploy_score_thresh: the exported end-to-end graphs' threshold.
        nms_thresh: IoU threshold.
        topk: candidates kept per ``topk_scope`` before NMS.
        topk_scope: "class", "level" or "all".
        max_det: detections per image.
        class_agnostic: one NMS over every class (RetinaFace has one class, so either).
    """

    score_thresh: float = 0.02
    deploy_score_thresh: float = 0.5
    nms_thresh: float = 0.45
    topk: int = 5000
    topk_scope: Literal["class", "level", "all"] = "all"
    max_det: int = 750
    class_agnostic: bool = False


@dataclass(frozen=True)
class HeadSpec:
    """Everything edgeanchor needs to know about an ONNX detector's head.

    Attributes:
        preset: the preset it came from ("" for a spec written from scratch).
        preprocess, outputs, scoring, box_coding, levels, nms: see their classes.
        centre_offset: anchor centre inside a cell, in cells (0.5: cell centre).
        cell_order: "cell" (the anchors of one cell are contiguous: SSD, RetinaFace, MediaPipe, TF) or
            "anchor" (all cells of anchor 0, then anchor 1: YOLOv5's view/permute).
        priors_format: how ``priors.json`` writes the kept priors for the user's own decode:
            "retinaface" (cx, cy, w, h normalised), "tf" (ycenter, xcenter, h, w normalised),
            "caffe" (xmin, ymin, xmax, ymax normalised, with variances), "mediapipe" (x_center, y_center,
            w, h normalised), "yolov5" (anchors per level in pixels, with strides).
        labels: class names by model label (optional).
    """

    preset: str
    preprocess: Preprocess
    outputs: Outputs
    scoring: Scoring
    box_coding: BoxCoding
    levels: tuple[Level, ...]
    nms: Nms
    centre_offset: float = 0.5
    cell_order: Literal["cell", "anchor"] = "cell"
    priors_format: Literal["retinaface", "tf", "caffe", "mediapipe", "yolov5"] = "retinaface"
    labels: tuple[str, ...] = ()
