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
        unique = list(dict.fromkeys(t for level in levels for t in source.match.inputs_of(level)))
        per_image = []
        for i in range(array.shape[0]):  # the cut graph is fixed at batch 1
            per_image.append(dict(zip(unique, session.run(unique, {source.match.input_name: array[i:i + 1]}))))
        # a level whose convs read several tensors (separate box and class towers) gets them stacked on channels
        return tuple(torch.from_numpy(np.concatenate([np.concatenate([v[t] for t in source.match.inputs_of(level)],
                                                                     axis=1) for v in per_image])).to(x.device)
                     for level in levels)

    @staticmethod
    def symbolic(g, x, key: str):
        source, levels = _TRACED[key]
        outs = g.op(f"{DOMAIN}::{OP}", x, key_s=key, outputs=len(levels))
        outs = outs if isinstance(outs, (tuple, list)) else (outs,)
        dims = {o.name: [d.dim_value or 1 for d in o.type.tensor_type.shape.dim]  # batch "N" -> 1
                for o in source.backbone_graph(levels).graph.output}
        for out, level in zip(outs, levels):  # the features' shapes, so the exporter's inference needs no guess
            shapes = [dims[t] for t in source.match.inputs_of(level)]
            out.setType(x.type().with_sizes([shapes[0][0], sum(d[1] for d in shapes), *shapes[0][2:]]))
        return outs if len(outs) > 1 else outs[0]


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
                      [source.match.inputs_of(level) for level in levels])
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
                  outputs: list[tuple[str, ...]]) -> None:
    """Put ``cut``'s nodes (names prefixed) where ``node`` is: its input ``input_name`` reads ``node``'s input,
    and ``node``'s j-th output is ``cut``'s tensors ``outputs[j]`` (stacked on channels when several)."""
    graph = cut.graph
    rename = {input_name: node.input[0]}
    for tensors, target in zip(outputs, node.output):
        if len(tensors) == 1:
            rename.setdefault(tensors[0], target)
    joins = []
    for tensors, target in zip(outputs, node.output):
        if len(tensors) > 1:  # separate towers: one Concat on channels, as the detector stacks them
            joins.append(onnx.helper.make_node("Concat", [rename.get(t, PREFIX + t) for t in tensors], [target],
                                               name=f"{PREFIX}stack/{target}", axis=1))
        elif rename[tensors[0]] != target:  # one feature read by two levels
            joins.append(onnx.helper.make_node("Identity", [rename[tensors[0]]], [target],
                                               name=f"{PREFIX}alias/{target}"))
    identities = joins

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


def write_drop_in(detector: OnnxDetector, paths: dict) -> dict:
    """Write the pruned user graph, its head spec and its priors; returns what the report records.

    ``paths`` (``ExportFolder.drop_in_paths`` or :func:`drop_in_paths`): ``model_raw``, the user's graph with
    only ``detector``'s anchors (same input and output names, every other node and initializer unchanged);
    ``head_json``, the head spec that loads it again (``onnx:model_raw.onnx --head head.json``);
    ``priors_json`` and ``priors_npy``, the kept priors in the preset's convention, row for row with the
    graph's outputs: what the user's own decode needs.
    """
    from ..exporting.onnx_export import set_metadata
    from ..io import atomic_path, write_json
    from .detector import source_anchor_set
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
    props = {"edgeanchor.drop_in": "1", "edgeanchor.pruned_from_sha256": source.sha256,
             "edgeanchor.kept_ids": ",".join(str(i) for i in sorted(detector.anchor_set.ids))}
    set_metadata(raw, props)  # metadata only: the graph itself is the user's, sliced; a re-prune replaces its keys
    with atomic_path(paths["model_raw"]) as tmp:
        onnx.save(raw, str(tmp))
    write_json(paths["head_json"], detector.drop_in_spec())
    write_json(paths["priors_json"], priors(spec, detector.anchor_set))
    with atomic_path(paths["priors_npy"]) as tmp, open(tmp, "wb") as fh:
        np.save(fh, priors_array(spec, detector.anchor_set))
    rows = kept_rows(spec, match, keep)
    return {"rows": int(len(rows)), "of": int(full.num_boxes), "keep": {str(k): v for k, v in keep.items()},
            "priors_format": spec.priors_format}


def drop_in_paths(path) -> dict:
    """The drop-in files of a pruned ONNX file ``PATH.onnx``: ``PATH.head.json``, ``PATH.priors.json``/``.npy``."""
    from pathlib import Path

    path = Path(path)
    base = str(path)[: -len(".onnx")] if str(path).endswith(".onnx") else str(path)
    return {"model_raw": path, "head_json": Path(base + ".head.json"), "priors_json": Path(base + ".priors.json"),
            "priors_npy": Path(base + ".priors.npy")}


def is_drop_in(path) -> bool:
    """True for an ONNX file edgeanchor wrote as a drop-in (its metadata says so)."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not an ONNX file at all: not ours
        return False
    return any(p.key == "edgeanchor.drop_in" for p in model.metadata_props)


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
        self.k = detector.extra_points
        ctr, scale = point_priors(detector)
        self.register_buffer("ctr", ctr, persistent=False)
        self.register_buffer("scale", scale, persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from ..postprocess import flatten_level

        features = self.backbone(images)
        rows, count, box_idx = self.postprocess.select(*self.head(*features))
        extras = [self.detector.extras_at(j, f) for j, f in enumerate(features)]
        raw = torch.cat([flatten_level(e, 2 * self.k)[0] for e in extras if e is not None])  # (B, 2k)
        points = self.ctr + raw * self.scale
        valid = (torch.arange(rows.shape[1]) < count).to(points.dtype)[:, None]  # (max_det, 1)
        return rows, count, (points[box_idx] * valid).unsqueeze(0)


def point_priors(detector: Detector) -> tuple[torch.Tensor, torch.Tensor]:
    """Per box, (B, 2k) each: the anchor centre and anchor size / box weight, repeated for each of the k points.

    A point decodes as ``ctr + raw * scale``, as the box centre does.
    """
    k = detector.extra_points
    anchors = detector.anchors_xyxy.detach().clone()
    wx, wy = (float(v) for v in detector.postprocess_spec.box_weights[:2])
    ctr = (anchors[:, :2] + anchors[:, 2:]) / 2  # (B, 2)
    scale = (anchors[:, 2:] - anchors[:, :2]) / torch.tensor([wx, wy])  # (B, 2)
    return ctr.repeat(1, k), scale.repeat(1, k)


def decode_points(detector: OnnxDetector, features: list[torch.Tensor], box_index: torch.Tensor) -> torch.Tensor:
    """The decoded extra points (D, 2k) in input pixels of the boxes ``box_index`` (torch, for checks)."""
    from ..postprocess import flatten_level

    ctr, scale = point_priors(detector)
    raw = torch.cat([flatten_level(detector.extras_at(j, f), 2 * detector.extra_points)[0]  # type: ignore[arg-type]
                     for j, f in enumerate(features)])
    return (ctr + raw * scale)[box_index]
