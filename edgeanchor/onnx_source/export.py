"""Exporting a detector held as ONNX: its own backbone inside edgeanchor's graphs, and the drop-in.

edgeanchor's graphs (backbone, model, model_nonms, model_ncnn, the decoded graph of model_trt) are traced
from torch modules. An ONNX source's backbone is not torch: while tracing it is one placeholder node
(:class:`OnnxBackbone`, domain ``edgeanchor``) whose inputs are the preprocessed images and whose outputs
are the feature tensors. :func:`splice_backbones` then replaces that node by the user's own backbone
nodes (cut from their graph, converted to the export's opset, names prefixed), so every exported graph
runs the user's backbone as it is.

:func:`write_drop_in` writes the pruned user graph (``model_raw.onnx``: the same inputs and outputs, only the
kept anchors' rows) and the kept priors in the preset's own convention (``priors.json`` and ``.npy``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx
import torch

from ..errors import EdgeAnchorError, first_line

if TYPE_CHECKING:
    from ..models.base import Detector
    from .detector import OnnxDetector, OnnxSource

DOMAIN = "edgeanchor"
OP = "OnnxBackbone"
PREFIX = "src/"

# key -> (source, levels) of the placeholders traced in this process; see OnnxBackbone.symbolic
_TRACED: dict[str, tuple[OnnxSource, tuple[int, ...]]] = {}


def backbone_key(source: OnnxSource, levels: tuple[int, ...]) -> str:
    return f"{source.sha256[:16]}:{','.join(map(str, levels))}:{id(source)}"


class OnnxBackbone(torch.autograd.Function):
    """The user's backbone: ONNX Runtime when called, one placeholder node when traced for export."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, key: str) -> tuple[torch.Tensor, ...]:
        source, levels = _TRACED[key]
        session = source.session(levels)
        array = x.detach().cpu().numpy()
        array = array.astype(np.uint8) if source.spec.preprocess.dtype == "uint8" else \
            np.ascontiguousarray(array, np.float32)
        names = [source.match.feature_inputs[level] for level in levels]
        unique = list(dict.fromkeys(names))
        per_image = []
        for i in range(array.shape[0]):  # the cut graph is fixed at batch 1
            per_image.append(dict(zip(unique, session.run(unique, {source.match.input_name: array[i:i + 1]}))))
        return tuple(torch.from_numpy(np.concatenate([v[n] for v in per_image])).to(x.device) for n in names)

    @staticmethod
    def symbolic(g, x, key: str):
        source, levels = _TRACED[key]
        outs = g.op(f"{DOMAIN}::{OP}", x, key_s=key, outputs=len(levels))
        sizes = x.type().varyingSizes()
        if sizes and sizes[0]:  # the features' types: without them torch prints a C++ warning per node
            cut = {o.name: o.type.tensor_type for o in source.backbone_graph(levels).graph.output}
            for out, level in zip(outs if isinstance(outs, (tuple, list)) else [outs], levels):
                t = cut.get(source.match.feature_inputs[level])
                dims = [d.dim_value for d in t.shape.dim] if t is not None else []
                if t is not None and t.elem_type == onnx.TensorProto.FLOAT and len(dims) == 4 and all(dims[1:]):
                    out.setType(x.type().with_sizes([sizes[0], *dims[1:]]))
        return outs


def run_backbone(detector: OnnxDetector, x: torch.Tensor) -> list[torch.Tensor]:
    """The features of ``detector``'s active levels from preprocessed input ``x``."""
    levels = tuple(detector.active_levels)
    key = backbone_key(detector.source, levels)
    _TRACED[key] = (detector.source, levels)
    out = OnnxBackbone.apply(x, key)
    return list(out) if isinstance(out, (tuple, list)) else [out]


def splice_backbones(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace every :class:`OnnxBackbone` placeholder of a traced graph by the user's backbone nodes.

    Raises:
        EdgeAnchorError: the user's graph cannot be converted to the export's opset.
    """
    nodes = [n for n in model.graph.node if n.domain == DOMAIN and n.op_type == OP]
    if not nodes:
        return model
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    for node in nodes:
        key = next(onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "key")
        key = key.decode() if isinstance(key, bytes) else key
        source, levels = _TRACED[key]
        cut = source.backbone_graph(levels)
        cut = _at_opset(cut, opset, source.path)
        _replace_node(model, node, cut, source.match.input_name,
                      [source.match.feature_inputs[level] for level in levels])
    kept = [o for o in model.opset_import if o.domain != DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    model.ir_version = max(model.ir_version, 7)
    return model


def _at_opset(cut: onnx.ModelProto, opset: int, path: str) -> onnx.ModelProto:
    have = next((o.version for o in cut.opset_import if o.domain in ("", "ai.onnx")), opset)
    if have == opset:
        return cut
    try:
        from onnx import version_converter

        return version_converter.convert_version(cut, opset)
    except Exception as exc:  # the converter raises RuntimeError / ValueError for ops it cannot adapt
        raise EdgeAnchorError(f"the backbone of {path} (opset {have}) cannot be converted to opset {opset} for "
                              f"export ({first_line(exc, 120)}); export at `opset` {have}") from None


def _replace_node(model: onnx.ModelProto, node: onnx.NodeProto, cut: onnx.ModelProto, input_name: str,
                  outputs: list[str]) -> None:
    """Put ``cut``'s nodes (names prefixed) where ``node`` is: its input ``input_name`` reads ``node``'s input,
    and ``node``'s outputs are ``cut``'s ``outputs``."""
    graph = cut.graph
    rename = {input_name: node.input[0]}
    for out_name, target in zip(outputs, node.output):
        rename.setdefault(out_name, target)
    identities = [onnx.helper.make_node("Identity", [rename[o]], [t], name=f"{PREFIX}alias/{t}")
                  for o, t in zip(outputs, node.output) if rename[o] != t]  # one feature read by two levels

    def name(t: str) -> str:
        return t if not t else rename.get(t, PREFIX + t)

    new_nodes = []
    for n in graph.node:
        m = onnx.NodeProto()
        m.CopyFrom(n)
        m.name = PREFIX + n.name
        del m.input[:]
        m.input.extend(name(t) for t in n.input)
        del m.output[:]
        m.output.extend(name(t) for t in n.output)
        _rename_subgraphs(m, name)
        new_nodes.append(m)
    for init in graph.initializer:
        t = onnx.TensorProto()
        t.CopyFrom(init)
        t.name = name(init.name)
        model.graph.initializer.append(t)
    position = list(model.graph.node).index(node)
    rest = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(rest[:position] + new_nodes + identities + rest[position + 1:])
    for imp in cut.opset_import:  # a converter's own domains (com.microsoft ...)
        if imp.domain not in ("", "ai.onnx") and all(o.domain != imp.domain for o in model.opset_import):
            model.opset_import.append(imp)


def _rename_subgraphs(node: onnx.NodeProto, name) -> None:
    for attr in node.attribute:  # If / Loop bodies read outer names
        for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
            for n in sub.node:
                n.input[:] = [name(t) if t else t for t in n.input]


def write_drop_in(detector: OnnxDetector, raw_path, priors_json_path, priors_npy_path) -> dict:
    """Write the pruned user graph and its priors; returns what the report records.

    ``raw_path``: the user's graph with only ``detector``'s anchors (same input and output names);
    ``priors_*``: the kept priors in the preset's convention, row for row with the graph's outputs.
    """
    from ..io import atomic_path, write_json
    from .graph import kept_rows, prune_graph
    from .spec import priors, priors_array

    source = detector.source
    spec, match = source.spec, source.match
    full = source_anchor_set(source)
    keep: dict[int, list[int]] = {}
    for i, level in enumerate(full.levels):
        kept_ids = {a.id for a in detector.anchor_set.levels[i].anchors}
        keep[i] = [p for p, a in enumerate(level.anchors) if a.id in kept_ids]
    raw = prune_graph(source.model, match, spec, keep)
    with atomic_path(raw_path) as tmp:
        onnx.save(raw, str(tmp))
    write_json(priors_json_path, priors(spec, detector.anchor_set))
    array = priors_array(spec, detector.anchor_set)
    with atomic_path(priors_npy_path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)
    rows = kept_rows(spec, match, keep)
    return {"rows": int(len(rows)), "of": int(full.num_boxes), "keep": {str(k): v for k, v in keep.items()},
            "priors_format": spec.priors_format}


def source_anchor_set(source: OnnxSource):
    """The unpruned anchor set of ``source``."""
    from .spec import anchor_set

    return anchor_set(source.spec, source.image_size)


class EndToEndWithPoints(torch.nn.Module):
    """``images`` -> ``detections``, ``num_detections`` and ``keypoints`` (1, max_det, 2k): each detection's
    extra points (landmarks), decoded against its anchor and carried through NMS with its box.

    A point decodes as the box centre does: ``a_ctr + d / (wx, wy) * a_wh`` (RetinaFace's landmarks,
    MediaPipe's keypoints with their scales); padding rows are zero.
    """

    ctr: torch.Tensor  # buffer (B, 2k): each box's anchor centre, repeated per point
    scale: torch.Tensor  # buffer (B, 2k): anchor size / box weight, repeated per point

    def __init__(self, detector: Detector):
        from ..exporting.graphs import BackboneGraph, ExportPostprocess, HeadGraph

        super().__init__()
        self.detector = detector
        self.backbone = BackboneGraph(detector)
        self.head = HeadGraph(detector)
        self.postprocess = ExportPostprocess(detector)
        self.k = int(getattr(detector, "extra_points", 0))
        anchors = detector.anchors_xyxy.detach().clone()
        wx, wy = (float(v) for v in detector.postprocess_spec.box_weights[:2])
        ctr = (anchors[:, :2] + anchors[:, 2:]) / 2  # (B, 2)
        scale = (anchors[:, 2:] - anchors[:, :2]) / torch.tensor([wx, wy])  # (B, 2)
        self.register_buffer("ctr", ctr.repeat(1, self.k), persistent=False)  # (B, 2k)
        self.register_buffer("scale", scale.repeat(1, self.k), persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from ..postprocess import flatten_level

        features = self.backbone(images)
        rows, count, box_idx = self.postprocess.select(*self.head(*features))
        extras = [self.detector.extras_at(j, f) for j, f in enumerate(features)]
        raw = torch.cat([flatten_level(e, 2 * self.k)[0] for e in extras if e is not None])  # (B, 2k)
        points = self.ctr + raw * self.scale
        valid = (torch.arange(rows.shape[1]) < count).to(points.dtype)[:, None]  # (max_det, 1)
        return rows, count, (points[box_idx] * valid).unsqueeze(0)


def decode_points(detector: OnnxDetector, features: list[torch.Tensor], box_index: torch.Tensor) -> torch.Tensor:
    """The decoded extra points (D, 2k) in input pixels of the boxes ``box_index`` (torch, for checks)."""
    module = EndToEndWithPoints(detector)
    from ..postprocess import flatten_level

    raw = torch.cat([flatten_level(detector.extras_at(j, f), 2 * module.k)[0]  # type: ignore[arg-type]
                     for j, f in enumerate(features)])
    return (module.ctr + raw * module.scale)[box_index]
