"""Export a detector as four ONNX graphs: backbone, head, postprocess, end to end.

``export_onnx`` traces the modules of :mod:`edgeanchor.exporting.graphs` at batch
1 and the detector's fixed input size, removes every node that no graph output
needs (so a level dropped by pruning leaves nothing behind), simplifies each
graph with onnxsim when ONNX Runtime gives the same outputs before and after on
a random input, and writes each file atomically.

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)``
(deprecated in torch, still present in 2.14). It maps
:class:`~edgeanchor.exporting.graphs.NonMaxSuppression` through its ``symbolic``
to one standard ``NonMaxSuppression`` node, with the score threshold and the
class axis, whose data-dependent output it handles. The dynamo exporter (the
default since torch 2.9) needs ``onnxscript``, which is not a dependency; with
it installed (0.7.2, tried by hand) it ignores ``symbolic``, traces the eager
per-class loop instead, and unrolls it into one NonZero + NonMaxSuppression per
class (250 nodes instead of 130 for the 5-class demo, worse for 90 classes).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from ..errors import EdgeAnchorError, first_line
from ..io import atomic_path
from ..models.base import Detector
from .folder import DECODED_GRAPH, graph_file
from .fused_head import FUSED_HEAD
from .graphs import BackboneGraph, DecodedGraph, EndToEndGraph, ExportPostprocess, HeadGraph, NoNmsGraph, level_names
from .head_channels import read_head_channels  # noqa: F401 - torch-free, re-exported here

# The graphs export_onnx writes (the export folder holds more: exporting/folder.py's GRAPHS).
EXPORTED_GRAPHS = ("backbone", "head", "postprocess", "model", "model_nonms")
NONMS_TOPK = 1000  # default K of model_nonms.onnx
MIN_OPSET = 11  # NonMaxSuppression with a score threshold, ScatterElements


def export_onnx(
    detector: Detector,
    out_dir: str | os.PathLike,
    *,
    opset: int = 17,
    simplify: bool = True,
    trace_images: torch.Tensor | None = None,
    decoded: bool = False,
    nonms_topk: int = NONMS_TOPK,
    fused_head: bool = FUSED_HEAD,
) -> dict:
    """Write ``backbone.onnx``, ``head.onnx``, ``postprocess.onnx``, ``model.onnx`` and ``model_nonms.onnx``.

    Args:
        detector: the (possibly pruned) detector; exported in eval mode.
        out_dir: output folder, created if missing.
        opset: ONNX opset version (>= 11).
        simplify: run onnxsim on each graph; a graph whose simplification fails
            or changes ONNX Runtime's outputs is kept unsimplified.
        trace_images: float32 (1, 3, H, W) RGB in [0, 1] used for tracing;
            a fixed random image if None.
        decoded: also write ``model_decoded.onnx`` (images -> ``boxes_xyxy``
            (1, B, 4), ``scores`` (1, B, K)), the input of
            :func:`edgeanchor.exporting.tensorrt.make_trt_graph`.
        nonms_topk: K of ``model_nonms.onnx`` (see :class:`~edgeanchor.exporting.graphs.NoNmsGraph`).
        fused_head: run each level's cls and box convolutions as one where the head allows it
            (:mod:`edgeanchor.exporting.fused_head`; same outputs); ``result["fused_head"]`` says if it did.

    Returns:
        Dict with ``files`` (graph name -> path), ``opset``, ``exporter``,
        ``simplified`` (graph name -> bool), ``simplify_notes`` (why a graph
        was left unsimplified), ``input_shape``, ``active_levels``,
        ``max_detections``, ``fused_head`` and ``head_channels`` (per active level: ``level``,
        ``cls_channels``, ``box_channels``, read from head.onnx).

    Raises:
        EdgeAnchorError: bad opset or trace image shape, unwritable out_dir.
    """
    out_dir = Path(out_dir)
    targets = {g: graph_file(out_dir, g) for g in EXPORTED_GRAPHS}
    if decoded:
        targets["decoded"] = graph_file(out_dir, DECODED_GRAPH)
    if nonms_topk < 1:
        raise EdgeAnchorError(f"`nonms_topk` must be at least 1 (got {nonms_topk})")
    result = export_graphs(detector, targets, opset=opset, simplify=simplify, trace_images=trace_images,
                           nonms_topk=nonms_topk, fused_head=fused_head)
    result["out_dir"] = str(out_dir)
    result["head_channels"] = read_head_channels(onnx.load(result["files"]["head"]), detector.active_levels)
    return result


def export_decoded_onnx(detector: Detector, path, *, opset: int = 17, simplify: bool = True, trace_images=None,
                        fused_head: bool = FUSED_HEAD) -> dict:
    """Write only the decoded graph of ``export_onnx(decoded=True)`` to ``path``; returns its export record."""
    return export_graphs(detector, {"decoded": Path(path)}, opset=opset, simplify=simplify, trace_images=trace_images,
                         fused_head=fused_head)


def export_graphs(detector: Detector, targets: dict[str, Path], *, opset: int, simplify: bool, trace_images,
                  nonms_topk: int = NONMS_TOPK, fused_head: bool = FUSED_HEAD) -> dict:
    """Export the named graphs (``EXPORTED_GRAPHS`` and/or "decoded") to the given paths; see :func:`export_onnx`."""
    if opset < MIN_OPSET:
        raise EdgeAnchorError(f"ONNX `opset` {opset} is too old for the postprocess graph; use `opset` {MIN_OPSET} "
                              "or newer")
    images = _trace_images(detector, trace_images)
    was_training = detector.training
    detector.eval()
    result: dict[str, Any] = {"opset": opset, "exporter": "torchscript (torch.onnx.export, dynamo=False)",
                              "files": {}, "simplified": {}, "simplify_notes": {}}
    try:
        plan = _plan(detector, images, nonms_topk, fused_head)
        for name, path in targets.items():
            module, args, inputs, outputs = plan[name]
            model = remove_dead_nodes(trace_to_onnx(module.eval(), args, inputs, list(outputs), opset))
            set_output_shapes(model, outputs)
            if simplify:
                model, note = simplify_checked(model)
                if note:
                    result["simplify_notes"][name] = note
            result["simplified"][name] = bool(simplify and name not in result["simplify_notes"])
            if name == "model_nonms":  # the rule the application finishes the job with
                set_metadata(model, module.metadata())
            save_onnx(model, path)
            result["files"][name] = str(path)
    finally:
        detector.train(was_training)
    result.update(input_shape=list(images.shape), active_levels=list(detector.active_levels),
                  max_detections=int(detector.postprocess_spec.detections_per_img),
                  nonms_topk=int(plan["model_nonms"][0].k), fused_head=plan["head"][0].is_fused)
    return result


def _plan(detector: Detector, images: torch.Tensor, nonms_topk: int = NONMS_TOPK,
          fused_head: bool = FUSED_HEAD) -> dict:
    """Graph name -> (module, trace inputs, input names, {output name: static shape})."""
    names = level_names(detector)
    with torch.no_grad():
        feats = tuple(detector.backbone(images))
        head = tuple(t for pair in detector.head(list(feats)) for t in pair)
    det_out = {"detections": [1, int(detector.postprocess_spec.detections_per_img), 6], "num_detections": [1]}
    num_boxes = int(detector.level_starts[-1])
    nonms = NoNmsGraph(detector, nonms_topk)
    head_graph = HeadGraph(detector, fused=fused_head)
    plan = {
        "backbone": (BackboneGraph(detector), (images,), ["images"], _shapes(names["features"], feats)),
        "head": (head_graph, feats, names["features"], _shapes(names["head"], head)),
        "postprocess": (ExportPostprocess(detector), head, names["head"], det_out),
        "model": (EndToEndGraph(detector), (images,), ["images"], det_out),
        "model_nonms": (nonms, (images,), ["images"], {"boxes": [1, nonms.k, 4], "scores": [1, nonms.k],
                                                       "labels": [1, nonms.k]}),
        "decoded": (DecodedGraph(detector), (images,), ["images"],
                    {"boxes_xyxy": [1, num_boxes, 4], "scores": [1, num_boxes, detector.num_classes]}),
    }
    points = detector.extra_points
    if points:  # an ONNX source with landmarks / keypoints: model.onnx carries them through NMS
        from ..onnx_source.export import EndToEndWithPoints

        plan["model"] = (EndToEndWithPoints(detector), (images,), ["images"],
                         {**det_out, "keypoints": [1, int(detector.postprocess_spec.detections_per_img), 2 * points]})
    for module, *_ in plan.values():  # every graph that runs the head runs head.onnx's (fused or not)
        if isinstance(getattr(module, "head", None), HeadGraph):
            module.head = head_graph
    return plan


def _trace_images(detector: Detector, images: torch.Tensor | None) -> torch.Tensor:
    h, w = detector.image_size
    device = detector.anchors_xyxy.device
    if images is None:
        return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(12345)).to(device)
    if tuple(images.shape) != (1, 3, h, w):
        raise EdgeAnchorError(
            f"trace images have shape {list(images.shape)} but the model takes [1, 3, {h}, {w}]; "
            "pass one image at the model's input size"
        )
    return images.to(device=device, dtype=torch.float32)


def trace_to_onnx(module: torch.nn.Module, args: tuple, input_names, output_names, opset: int) -> onnx.ModelProto:
    """Trace ``module`` on ``args`` with the TorchScript exporter; static shapes."""
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # The TorchScript exporter is deprecated (see the module docstring) and
        # warns about traced shape arithmetic, which is static here anyway.
        warnings.simplefilter("ignore")
        path = Path(tmp) / "graph.onnx"
        torch.onnx.export(
            module,
            tuple(args),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=list(input_names),
            output_names=list(output_names),
            do_constant_folding=True,
        )
        model = onnx.load(str(path))
    if any(n.domain == "edgeanchor" for n in model.graph.node):  # an ONNX source's backbone placeholder
        from ..onnx_source.export import splice_backbones

        model = splice_backbones(model)
    return model


def remove_dead_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop nodes and initializers that no graph output depends on.

    The tracer already prunes most of them; this makes "a dropped level
    leaves no node behind" hold by construction.
    """
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    needed = {o.name for o in graph.output}
    live: set[int] = set()
    stack = list(needed)
    while stack:
        node = producer.get(stack.pop())
        if node is None or id(node) in live:
            continue
        live.add(id(node))
        for name in node.input:
            if name and name not in needed:
                needed.add(name)
                stack.append(name)
    kept = [n for n in graph.node if id(n) in live]
    inits = [t for t in graph.initializer if t.name in needed]
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(inits)
    return model


def _shapes(names: list[str], tensors) -> dict[str, list[int]]:
    return {n: list(t.shape) for n, t in zip(names, tensors)}


def set_output_shapes(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> None:
    """Declare the graph outputs' static shapes.

    The tracer names the length of the padded detections symbolically, though
    it is the constant max_det; Netron, TensorRT and the tests want numbers.
    """
    for output in model.graph.output:
        dims = output.type.tensor_type.shape.dim
        del dims[:]
        for size in shapes[output.name]:
            dims.add().dim_value = int(size)


def simplify_checked(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """onnxsim, kept only if it runs and ONNX Runtime gives the same outputs.

    Returns:
        (graph to keep, "" if simplified else the reason it was not).
    """
    import onnxsim

    try:
        simplified, ok = onnxsim.simplify(model)
    except Exception as exc:  # onnxsim raises many types on graphs it cannot handle
        return model, f"onnxsim failed: {type(exc).__name__}: {first_line(exc)}"
    if not ok:
        return model, "onnxsim's own check failed"
    try:
        feeds = random_feeds(model)
        before, after = run_model(model, feeds), run_model(simplified, feeds)
    except Exception as exc:  # a simplified graph that ORT cannot load or run
        return model, f"simplified graph does not run: {type(exc).__name__}"
    for name in before:
        if name not in after or before[name].shape != after[name].shape:
            return model, f"simplification changed output {name}'s shape"
        if not np.allclose(before[name], after[name], rtol=1e-4, atol=1e-5):
            diff = float(np.abs(before[name].astype(np.float64) - after[name]).max())
            return model, f"simplification changed output {name} (max abs diff {diff:.3g})"
    return simplified, ""


def random_feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """A random float32 value for every graph input: images in [0, 1], other tensors N(0, 1)."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        feeds[inp.name] = (rng.random(shape) if inp.name == "images" else rng.standard_normal(shape)).astype(np.float32)
    return feeds


def run_model(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run an in-memory graph once with ONNX Runtime on the CPU."""
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def set_metadata(model: onnx.ModelProto, props: dict[str, str]) -> None:
    """Set ``props`` in the graph's metadata_props: a key already there gets the new value, others are kept."""
    existing = {p.key: p for p in model.metadata_props}
    for key, value in props.items():
        entry = existing.get(key) or model.metadata_props.add()
        entry.key, entry.value = key, str(value)


def save_onnx(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Write ``model`` to ``path`` atomically (single file, weights inline)."""
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
