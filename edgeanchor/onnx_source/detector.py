"""A detector held only as ONNX, as the three stages every command works on.

- ``backbone``: the user's own graph, cut at the head convolutions' inputs (:func:`.graph.cut_backbone`),
  run by ONNX Runtime after the spec's preprocessing (scale, mean/std, channel order, layout);
- ``head``: the head convolutions, rebuilt as ``nn.Conv2d`` from the graph's initializers (so slicing,
  MAC counting and the exported head graph work as for every adapter);
- ``postprocess``: edgeanchor's rule (:class:`~edgeanchor.postprocess.PostprocessRule`) from the spec.

The head's channels are made anchor-major with edgeanchor's column order once, when the adapter is built:
TensorFlow's (y, x, h, w) deltas become (x, y, w, h), a sigmoid head's background column is dropped (it is
never reported), and YOLOv5's na * (5 + nc) convolution is split into its box and score views. The
user's graph itself is never changed here; pruning it is :func:`.graph.prune_graph`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from ..anchors import AnchorSet
from ..errors import EdgeAnchorError
from ..io import file_sha256
from ..limits import MAX_IMAGE_SIDE
from ..models.base import Detector
from ..models.ssd import slice_conv
from ..postprocess import PostprocessRule, yolo_grid
from .spec import HeadSpec

ARCH = "onnx"


@dataclass
class OnnxSource:
    """The user's graph and what was found in it, shared by a detector and its pruned copies.

    Attributes:
        path: the ONNX file as given.
        sha256: of its bytes (recorded in checkpoints and reports).
        model: the graph, as read (never modified).
        spec: the head spec.
        match: the head found in the graph (:class:`.graph.HeadMatch`).
        image_size: (H, W) the model runs at.
    """

    path: str
    sha256: str
    model: onnx.ModelProto
    spec: HeadSpec
    match: Any
    image_size: tuple[int, int]

    def __post_init__(self) -> None:
        self._sessions: dict[tuple[int, ...], Any] = {}
        self._cuts: dict[tuple[int, ...], onnx.ModelProto] = {}
        self._widths: dict[str, int] = {}

    def backbone_graph(self, levels: tuple[int, ...]) -> onnx.ModelProto:
        """The user's graph from its input to the feature tensors of ``levels`` (cached)."""
        from .graph import cut_backbone, fix_input_size

        if levels not in self._cuts:
            fixed = fix_input_size(self.model, self.match.input_name, self.input_shape)
            self._cuts[levels] = cut_backbone(fixed, self.match, list(levels))
        return self._cuts[levels]

    def channel_span(self, level: int, role: str) -> tuple[int, int] | None:
        """Where the ``role`` conv's input lies in the level's stacked feature (None: the whole feature).

        A level whose convs read several tensors (separate towers) gets them stacked on channels, in
        :meth:`HeadMatch.inputs_of` order; each conv reads its own span.
        """
        inputs = self.match.inputs_of(level)
        if len(inputs) == 1:
            return None
        role = "per_level" if self.spec.scoring.fn == "yolo" else role
        role = "boxes" if role == "extras" and self.spec.outputs.packed_extras else role
        conv = self.match.conv(level, role)
        start = 0
        for tensor in inputs:
            width = self._channels(tensor)
            if tensor == conv.input:
                return start, start + width
            start += width
        raise AssertionError(f"{conv.input} is not an input of level {level}")  # pragma: no cover

    def _channels(self, tensor: str) -> int:
        if tensor not in self._widths:
            conv = next(c for c in self.match.convs if c.input == tensor)
            self._widths[tensor] = int(conv_from_node(self.model, conv.node).in_channels)
        return self._widths[tensor]

    @property
    def input_shape(self) -> list[int]:
        h, w = self.image_size
        return [1, h, w, 3] if self.spec.preprocess.layout == "NHWC" else [1, 3, h, w]

    def session(self, levels: tuple[int, ...]):
        """An ONNX Runtime session of :meth:`backbone_graph` (CPU; torch's thread count)."""
        if levels not in self._sessions:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = max(1, torch.get_num_threads())
            opts.log_severity_level = 3
            self._sessions[levels] = ort.InferenceSession(self.backbone_graph(levels).SerializeToString(), opts,
                                                          providers=["CPUExecutionProvider"])
        return self._sessions[levels]

    def __getstate__(self) -> dict:  # sessions are rebuilt, never pickled (worker processes, deepcopy)
        state = dict(self.__dict__)
        state["_sessions"] = {}
        return state


class Preprocess(nn.Module):
    """RGB [0, 1] NCHW images -> the graph's input: ``(pixel * scale - mean) / std`` in its channel order and
    layout (exportable: the exported graphs take edgeanchor's images and run this first)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, spec: HeadSpec):
        super().__init__()
        pre = spec.preprocess
        self.bgr = pre.channel_order == "BGR"
        self.nhwc = pre.layout == "NHWC"
        self.scale = float(pre.scale)
        self.uint8 = pre.dtype == "uint8"
        self.register_buffer("mean", torch.tensor(pre.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(pre.std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images * 255.0
        if self.bgr:
            x = x.flip(1)
        if self.uint8:
            x = x.round().clamp(0, 255)
        else:
            x = (x * self.scale - self.mean) / self.std
        if self.nhwc:
            x = x.permute(0, 2, 3, 1)
        return x


def conv_from_node(model: onnx.ModelProto, node_name: str) -> nn.Conv2d:
    """An ``nn.Conv2d`` equal to the graph's Conv node ``node_name`` (weights from its initializers).

    Raises:
        EdgeAnchorError: the node is not a 2-D Conv with constant weights, or its padding is asymmetric.
    """
    node = next((n for n in model.graph.node if (n.name or n.output[0]) == node_name), None)
    if node is None or node.op_type != "Conv":
        raise EdgeAnchorError(f"head node {node_name!r} is not a Conv in the graph; check the head spec's convs")
    tensors = _constants(model)
    if node.input[1] not in tensors or (len(node.input) > 2 and node.input[2] and node.input[2] not in tensors):
        raise EdgeAnchorError(f"head convolution {node_name} has weights computed in the graph, not stored; "
                              "simplify the model (onnxsim) so its weights are constants")
    weight = numpy_helper.to_array(tensors[node.input[1]]).astype(np.float32)  # only this conv's tensors decoded
    if weight.ndim != 4:
        raise EdgeAnchorError(f"head node {node_name} is a {weight.ndim - 2}-D convolution; only 2-D is supported")
    bias = numpy_helper.to_array(tensors[node.input[2]]).astype(np.float32) \
        if len(node.input) > 2 and node.input[2] else None
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    kh, kw = weight.shape[2:]
    strides = tuple(attrs.get("strides", (1, 1)))
    dilations = tuple(attrs.get("dilations", (1, 1)))
    pads = list(attrs.get("pads", (0, 0, 0, 0)))
    padding: str | tuple[int, int]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if strides != (1, 1):
            raise EdgeAnchorError(f"head convolution {node_name} uses auto_pad {auto_pad} with a stride; "
                                  "simplify the model (onnxsim) so its padding is explicit")
        padding = "same"
    elif auto_pad == "VALID":
        padding = (0, 0)
    else:
        if pads[0] != pads[2] or pads[1] != pads[3]:
            raise EdgeAnchorError(f"head convolution {node_name} has asymmetric padding {pads}; "
                                  "only symmetric padding is supported")
        padding = (int(pads[0]), int(pads[1]))
    groups = int(attrs.get("group", 1))
    conv = nn.Conv2d(weight.shape[1] * groups, weight.shape[0], (int(kh), int(kw)),
                     stride=(int(strides[0]), int(strides[1])), padding=padding,
                     dilation=(int(dilations[0]), int(dilations[1])), groups=groups, bias=bias is not None)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(weight))
        if bias is not None:
            assert conv.bias is not None
            conv.bias.copy_(torch.from_numpy(bias))
    return conv.eval()


def _constants(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Initializers and Constant-node values by tensor name, also through Identity nodes (not decoded)."""
    out = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = a.t
    for n in model.graph.node:  # Identity chains (exporters alias shared weights this way)
        if n.op_type == "Identity" and n.input[0] in out:
            out[n.output[0]] = out[n.input[0]]
    return out


def _column_blocks(conv: nn.Conv2d, per_anchor: int, columns: list[int]) -> nn.Conv2d:
    """``conv`` keeping (in this order) the given columns of each anchor's block of ``per_anchor``."""
    anchors = conv.out_channels // per_anchor
    return slice_conv(conv, [a * per_anchor + c for a in range(anchors) for c in columns])


class OnnxDetector(Detector):
    """The three stages over a user's ONNX graph (see the module docstring)."""

    arch = ARCH

    def __init__(self, *, source: OnnxSource, heads: nn.ModuleList, extras: nn.ModuleList | None, **kwargs):
        super().__init__(**kwargs)
        self.source = source
        self.heads = heads  # per active level: ModuleDict {"cls", "box"}
        self.extras = extras  # per active level: the extras conv (landmarks / keypoints), or None
        self.preprocess = Preprocess(source.spec)
        self.first_label = 1 if self.postprocess_spec.score_fn == "softmax" else 0
        if self.postprocess_spec.score_fn == "yolo":
            self.register_buffer("yolo_grid", yolo_grid(self.anchor_set, self.active_levels), persistent=False)

    @property
    def spec(self) -> HeadSpec:
        return self.source.spec

    @property
    def cls_columns(self) -> int:
        return self.num_classes + 1 if self.postprocess_spec.score_fn == "yolo" else self.num_classes

    @property
    def decode_priors(self) -> torch.Tensor:
        return cast(torch.Tensor, self.yolo_grid) if self.postprocess_spec.score_fn == "yolo" else self.anchors_xyxy

    @property
    def extra_points(self) -> int:
        return int(self.spec.outputs.extra_points) if self.extras is not None else 0

    def backbone(self, images: torch.Tensor) -> list[torch.Tensor]:
        if not self.active_levels:
            return []
        from .export import run_backbone

        return run_backbone(self, self.preprocess(images))

    def _pair(self, j: int) -> tuple[nn.Conv2d, nn.Conv2d]:
        pair = cast(nn.ModuleDict, self.heads[j])
        return cast(nn.Conv2d, pair["cls"]), cast(nn.Conv2d, pair["box"])

    def _extra(self, j: int) -> nn.Conv2d:
        assert self.extras is not None
        return cast(nn.Conv2d, self.extras[j])

    def _input(self, j: int, role: str, feature: torch.Tensor) -> torch.Tensor:
        """The channels of ``feature`` that the ``role`` conv of the j-th active level reads."""
        span = self.source.channel_span(self.active_levels[j], role)
        return feature if span is None else feature[:, span[0]:span[1]]

    def head_at(self, j: int, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cls, box = self._pair(j)
        return cls(self._input(j, "scores", feature)), box(self._input(j, "boxes", feature))

    def extras_at(self, j: int, feature: torch.Tensor) -> torch.Tensor | None:
        """The extra per-anchor values (landmarks / keypoints, 2k per anchor) of the j-th active level."""
        return None if self.extras is None else self._extra(j)(self._input(j, "extras", feature))

    def final_convs(self, j: int) -> tuple[nn.Conv2d, nn.Conv2d]:
        return self._pair(j)

    def yolo_convs(self) -> nn.ModuleList:
        """A YOLOv5 head's Detect convolutions per active level, joined again from the box and score views:
        per anchor x, y, w, h, objectness, classes (the ncnn graph splits its rows once, after flattening)."""
        convs = nn.ModuleList()
        for j in range(len(self.active_levels)):
            cls, box = self._pair(j)
            both = slice_conv(box, list(range(box.out_channels)))  # box's geometry; then box and score rows
            both.weight = nn.Parameter(torch.cat([box.weight, cls.weight]).detach().clone())
            if box.bias is not None and cls.bias is not None:
                both.bias = nn.Parameter(torch.cat([box.bias, cls.bias]).detach().clone())
            both.out_channels = int(both.weight.shape[0])
            nb, k = box.out_channels, self.cls_columns
            order = [c for a in range(nb // 4) for c in (*range(4 * a, 4 * a + 4), *range(nb + a * k, nb + a * k + k))]
            convs.append(slice_conv(both, order).eval())
        return convs

    def deploy_rule(self, score_thresh: float | None = None, nms_thresh: float | None = None) -> PostprocessRule:
        """The exported graphs' rule: the spec's deploy thresholds (``nms.deploy_*``) unless overridden."""
        nms = self.spec.nms
        deploy_nms = nms.deploy_nms_thresh
        return self.postprocess_spec.with_overrides(
            score_thresh if score_thresh is not None else nms.deploy_score_thresh,
            nms_thresh if nms_thresh is not None else deploy_nms)

    def required_levels(self) -> list[int]:
        """Levels whose convolution is a graph output of its own (YOLOv5's raw Detect outputs): the pruned graph
        keeps its outputs, so such a level keeps at least one anchor."""
        return [level for level in self.active_levels
                if any(c.join is None for c in self.source.match.convs if c.level == level)]

    def source_identity(self) -> tuple[str, ...]:
        """The graph's SHA-256 (its backbone's weights) and the head spec (its preprocessing and decode)."""
        return self.source.sha256, json.dumps(self.config.get("head_spec"), sort_keys=True)

    def write_drop_in(self, paths: dict) -> dict:
        """The user's graph pruned to these anchors, its head spec and priors (:func:`.export.write_drop_in`)."""
        from .export import write_drop_in

        return write_drop_in(self, paths)

    def untraced_macs(self) -> int:
        """MACs of the backbone's convolutions, counted from the graph (ONNX Runtime runs it, not torch)."""
        from .graph import conv_macs

        macs = conv_macs(self.source.backbone_graph(tuple(self.active_levels)), self.image_size)
        return int(macs.get("total", 0))

    def _sliced(self, anchor_set: AnchorSet, keep_per_level: dict[int, list[int]]) -> OnnxDetector:
        box_cols, cls_cols = 4, self.cls_columns
        for level in self.required_levels():  # refused here, not after a whole export (graph.prune_graph)
            if not keep_per_level.get(level):
                ids = [a.id for a in self.anchor_set.levels[level].anchors]
                raise EdgeAnchorError(f"level {level} of {self.source.path} is a graph output of its own, which "
                                      f"the pruned graph keeps; keep at least one of its anchors {ids} in `keep`")
        heads, extras = nn.ModuleList(), nn.ModuleList()
        for j, level in enumerate(self.active_levels):
            positions = keep_per_level.get(level, [])
            if not positions:
                continue
            cls, box = self._pair(j)
            heads.append(nn.ModuleDict({
                "cls": slice_conv(cls, [a * cls_cols + c for a in positions for c in range(cls_cols)]),
                "box": slice_conv(box, [a * box_cols + c for a in positions for c in range(box_cols)]),
            }))
            if self.extras is not None:
                k2 = 2 * self.extra_points
                extras.append(slice_conv(self._extra(j), [a * k2 + c for a in positions for c in range(k2)]))
        return OnnxDetector(source=self.source, heads=heads, extras=extras if self.extras is not None else None,
                            **self.common_kwargs(anchor_set)).to(self.mean.device)

    def drop_in_spec(self) -> dict:
        """The head spec (JSON) of this detector's pruned user graph: each level's kept anchors, in the graph's
        order; levels that keep none are gone, as their convolutions are."""
        from .spec import spec_to_json

        obj = spec_to_json(self.spec)
        full = source_anchor_set(self.source)
        levels = []
        for i, level in enumerate(obj["levels"]):
            kept = {a.id for a in self.anchor_set.levels[i].anchors}
            anchors = [wh for wh, a in zip(level["anchors"], full.levels[i].anchors) if a.id in kept]
            if anchors:  # a feature size the spec left to the input size stays so: the drop-in loads at any size
                levels.append({**level, "anchors": anchors})
        obj["levels"] = levels
        return obj

    def checkpoint_state(self) -> dict[str, Any]:
        state = super().checkpoint_state()
        state["config"] = {**state["config"], "onnx_path": str(Path(self.source.path).resolve()),
                           "onnx_sha256": self.source.sha256}
        return state


def rule_from_spec(spec: HeadSpec, num_scores: int) -> PostprocessRule:
    """edgeanchor's post-processing rule for a spec (``num_scores``: score columns after the adapter's changes).

    Raises:
        EdgeAnchorError: a combination edgeanchor's rule cannot express.
    """
    nms, coding = spec.nms, spec.box_coding
    fn = spec.scoring.fn
    if fn == "yolo" or coding.kind == "yolov5":
        if fn != "yolo" or coding.kind != "yolov5":
            raise EdgeAnchorError("`scoring.fn` yolo and `box_coding.kind` yolov5 go together; set both or neither")
    score_fn = "softmax" if fn == "softmax" and spec.scoring.background_column else fn
    if fn == "softmax" and not spec.scoring.background_column:
        raise EdgeAnchorError("a softmax head without a background column is not supported; set "
                              "`scoring.background_column: true` or use sigmoid")
    reported = num_scores - (1 if score_fn == "softmax" else 0)
    scope = nms.topk_scope
    if scope == "all" and score_fn != "yolo":
        if reported != 1:
            raise EdgeAnchorError("`nms.topk_scope` all is supported for one class or YOLO; use class or level")
        scope = "class"  # one class: the same candidates in the same order
    if nms.class_agnostic and reported > 1:
        raise EdgeAnchorError("`nms.class_agnostic` is not supported with several classes; edgeanchor's NMS is "
                              "class-aware")
    sx, sy, sw, sh = (float(v) for v in coding.scales)
    return PostprocessRule(score_fn=score_fn, topk_scope=scope, score_thresh=float(nms.score_thresh),
                           topk_candidates=int(nms.topk), nms_thresh=float(nms.nms_thresh),
                           detections_per_img=int(nms.max_det), box_weights=(sx, sy, sw, sh),
                           clip=bool(coding.clip) and score_fn != "yolo",
                           box_coding="linear_size" if coding.kind == "mediapipe" else "centre_size")


def build_onnx_detector(name: str, *, head: str | os.PathLike | None, image_size: tuple[int, int] | None = None,
                        num_classes: int | None = None, weights: str | os.PathLike | None = None,
                        anchors: Any = None) -> OnnxDetector:
    """The detector of ``onnx:PATH`` with the head spec ``head`` (a preset name or a spec file).

    Raises:
        EdgeAnchorError: a missing spec, settings an ONNX model cannot take, a bad file, a head that does not
            match the spec.
    """
    from .graph import find_head, load_onnx
    from .spec import PRESETS, load_head_spec

    path = name[len("onnx:"):] if name.startswith("onnx:") else name
    if not path:
        raise EdgeAnchorError("`model` onnx: names no file; give it as onnx:PATH.onnx")
    if head is None:
        raise EdgeAnchorError(f"`model` onnx:{path} needs `head`: a preset ({', '.join(PRESETS)}) or a "
                              "head spec file (docs/onnx-head-spec.md)")
    if weights is not None:
        raise EdgeAnchorError("`weights` cannot be given with an ONNX model: its weights are in the graph; drop it")
    if num_classes is not None:
        raise EdgeAnchorError("`num_classes` cannot be given with an ONNX model: the graph has its own; drop it "
                              "(or set scoring.num_classes in the head spec)")
    if anchors is not None:
        raise EdgeAnchorError("`anchors` cannot replace an ONNX model's anchors (its head was trained with its "
                              "own); prune it (`keep_anchors`) to keep some of them")
    spec = load_head_spec(head, image_size=image_size)
    model = load_onnx(path)
    size = spec.preprocess.image_size or _static_size(model, spec)
    spec = replace(spec, preprocess=replace(spec.preprocess, image_size=size))
    if spec.outputs.per_level == ():  # the yolov5 preset's default: the graph's outputs, in order
        spec = replace(spec, outputs=replace(spec.outputs, per_level=tuple(o.name for o in model.graph.output)))
    match = find_head(model, spec, size)
    source = OnnxSource(path=str(path), sha256=file_sha256(path), model=model, spec=spec, match=match,
                        image_size=size)
    return detector_from_source(source)


def _static_size(model: onnx.ModelProto, spec: HeadSpec) -> tuple[int, int]:
    from .onnx_file import graph_input, static_dims

    dims = [d or 0 for d in static_dims(graph_input(model, spec.preprocess.input_name))]
    h, w = (dims[1], dims[2]) if spec.preprocess.layout == "NHWC" and len(dims) == 4 else \
        (dims[2], dims[3]) if len(dims) == 4 else (0, 0)
    if h <= 0 or w <= 0:
        raise EdgeAnchorError("the ONNX model has a dynamic input size; give it in the head spec "
                              "(preprocess.image_size) or `image_size`")
    if max(h, w) > MAX_IMAGE_SIDE:  # every image and feature map would be allocated at this size
        raise EdgeAnchorError(f"the ONNX model's input is {h}x{w}, above edgeanchor's bound of {MAX_IMAGE_SIDE} "
                              "pixels a side; give a smaller size in the head spec (preprocess.image_size)")
    return int(h), int(w)


def detector_from_source(source: OnnxSource) -> OnnxDetector:
    """Build the unpruned detector over ``source`` (head convolutions from the graph, in edgeanchor's layout)."""
    from .spec import anchor_set

    spec, match, model = source.spec, source.match, source.model
    aset = anchor_set(spec, source.image_size)
    fn = spec.scoring.fn
    heads, extras = nn.ModuleList(), nn.ModuleList()
    num_scores = 0
    box_order = [1, 0, 3, 2] if spec.box_coding.order == "yxhw" else [0, 1, 2, 3]
    for level in range(len(spec.levels)):
        if fn == "yolo":
            conv = conv_from_node(model, match.conv(level, "per_level").node)
            no = match.conv(level, "per_level").values_per_anchor
            num_scores = no - 5
            cls = _column_blocks(conv, no, list(range(4, no)))  # objectness, then the classes
            box = _column_blocks(conv, no, [0, 1, 2, 3])
        else:
            cls = conv_from_node(model, match.conv(level, "scores").node)
            k = match.conv(level, "scores").values_per_anchor
            columns = list(range(k))
            if fn == "sigmoid" and spec.scoring.background_column:
                columns = columns[1:]  # never reported: computing it would only cost
            cls = _column_blocks(cls, k, columns) if columns != list(range(k)) else cls
            num_scores = len(columns)
            box = conv_from_node(model, match.conv(level, "boxes").node)
            per_box = match.conv(level, "boxes").values_per_anchor  # 4, or 4 + 2k with the extras packed in
            if spec.outputs.packed_extras:  # MediaPipe's regressors: the box, then the points, per anchor
                extras.append(_column_blocks(box, per_box, list(range(4, per_box))))
            elif spec.outputs.extras:
                extras.append(conv_from_node(model, match.conv(level, "extras").node))
            box = _column_blocks(box, per_box, box_order) if box_order != list(range(per_box)) else box
        heads.append(nn.ModuleDict({"cls": cls, "box": box}))
    rule = rule_from_spec(spec, num_scores)
    config = {"image_mean": [0.0, 0.0, 0.0], "image_std": [1.0, 1.0, 1.0],
              "resize": spec.preprocess.resize, "head_spec": _spec_json(spec)}
    return OnnxDetector(source=source, heads=heads, extras=extras if spec.outputs.extras else None,
                        arch=ARCH, num_classes=num_scores, anchor_set=aset, postprocess_spec=rule,
                        config=config).eval()


def source_anchor_set(source: OnnxSource) -> AnchorSet:
    """The unpruned anchor set of ``source``."""
    from .spec import anchor_set

    return anchor_set(source.spec, source.image_size)


def _spec_json(spec: HeadSpec) -> dict:
    from .spec import spec_to_json

    return spec_to_json(spec)
