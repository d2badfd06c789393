"""int8: post-training static quantization (QDQ) of the exported backbone and head.

For each variant of an export folder, :func:`quantize_variant` writes

- ``backbone_int8.onnx`` and ``head_int8.onnx``: the fp32 graphs with
  QuantizeLinear/DequantizeLinear pairs around their convolutions, from ONNX
  Runtime's ``quantize_static`` (QDQ format, per-channel symmetric int8
  weights, uint8 activations: ORT's recommendation for x86 CPUs); the head's
  outputs stay float by default (:attr:`Int8Options.head_outputs`);
- ``model_int8.onnx``: those two graphs followed by the fp32
  ``postprocess.onnx``, joined at their named tensors (``features_L``,
  ``cls_L``/``box_L``). The post-processing stays fp32 and is the very graph
  the fp32 export wrote, whose ops are those of ``model.onnx`` after its head.

Calibration runs on a fixed, seeded sample of real images of the search split,
as the model sees them (resized, or letterboxed for YOLO). The backbone is
calibrated on the images and the head on the fp32 backbone's features of the
same images, so each tensor of the joined model gets the range it has in the
fp32 model. :func:`graph_map` measures COCO mAP through an exported end-to-end
graph on every image of a split, mapping boxes back to the original images as
:func:`~edgeanchor.evaluation.predict.predict` does, so int8 and fp32
(``model.onnx``) are compared through the same path.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import CalibrationDataReader
from tqdm import tqdm

from ..errors import EdgeAnchorError
from ..io import atomic_path, log
from .onnx_export import remove_dead_nodes, save_onnx

# The int8 graphs of a variant, by the fp32 graph each one replaces.
INT8_GRAPHS = {"backbone": "backbone_int8", "head": "head_int8", "model": "model_int8"}
# Percentile (the default) against MinMax, int8 - fp32 mAP with float head outputs (baseline / pruned): the
# demo SSD -0.0001 / -0.0000 against -0.0002 / +0.0007 (a tie on 300 images), demo-yolo -0.0054 / -0.0086
# against -0.0065 / -0.0114. ORT's Entropy is left out: quantize_static gives it 128 histogram bins for 128
# quantized bins, so its threshold search has one candidate, the full range (its scales equal MinMax's).
CALIBRATION_METHODS = ("percentile", "minmax")
MIN_INT8_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear (the axis attribute)


@dataclass(frozen=True)
class Int8Options:
    """How the int8 graphs are calibrated and quantized.

    Attributes:
        num_images: calibration images drawn from the search split (all of it when smaller).
        seed: seed of the draw; the same seed and split give the same images and int8 files.
        method: calibration of the activation ranges: "percentile" (the default: ORT's, each tensor's
            range clipped to the central 99.999 % of its calibration values) or "minmax" (the full
            range); see :data:`CALIBRATION_METHODS`.
        reduce_range: 7-bit weights, for x86 CPUs without VNNI (whose u8 x s8 instruction can
            saturate); off by default, as ORT recommends for VNNI CPUs and ARM.
        head_outputs: "float" (default): the head's last convolutions take int8 activations and
            weights but give float outputs (cls_L, box_L), as OpenVINO and TensorRT run an int8
            convolution that feeds float ops; ONNX Runtime's CPU kernels fuse only a convolution
            whose output is requantized, so it runs these in fp32. "int8": their outputs are
            requantized to uint8 too (fully int8 in ONNX Runtime), which costs accuracy where one
            convolution gives logits and box offsets of very different ranges (YOLO's Detect, the
            fused SSD head): see :data:`HEAD_OUTPUTS`.
    """

    num_images: int = 64
    seed: int = 0
    method: str = "percentile"
    reduce_range: bool = False
    head_outputs: str = "float"

    def to_json(self) -> dict:
        return asdict(self) | {"format": "QDQ", "weights": "int8, symmetric, per channel",
                               "activations": "uint8, asymmetric, per tensor"}


# int8 - fp32 mAP on the report split (baseline / pruned; 64 MinMax calibration images, ONNX Runtime 1.32):
# requantized ("int8") head outputs cost the demo SSD (fused head) -0.0030 / -0.0014 and demo-yolo
# -0.078 / -0.068; float outputs -0.0002 / +0.0007 and -0.0065 / -0.0114. YOLO's Detect convolution gives
# objectness logits far below zero beside box offsets (about [-36, 18]), so one uint8 scale of 0.2 coarsens
# the boxes.
HEAD_OUTPUTS = ("float", "int8")


def check_int8_options(spec: Int8Options, opset: int | None = None) -> None:
    """Refuse settings that cannot be quantized.

    Raises:
        EdgeAnchorError: naming the parameter and the accepted values.
    """
    if spec.num_images < 1:
        raise EdgeAnchorError(f"int8 calibration needs at least 1 image (got `num_images` {spec.num_images})")
    if spec.head_outputs not in HEAD_OUTPUTS:
        raise EdgeAnchorError(
            f"unknown int8 head_outputs {spec.head_outputs!r}; choose one of {', '.join(HEAD_OUTPUTS)}"
        )
    if spec.method not in CALIBRATION_METHODS:
        raise EdgeAnchorError(f"unknown int8 calibration method {spec.method!r}; choose one of "
                              f"{', '.join(CALIBRATION_METHODS)}")
    if opset is not None and opset < MIN_INT8_OPSET:
        raise EdgeAnchorError(f"`opset` {opset} is too old for int8 (per-channel quantization needs "
                              f"{MIN_INT8_OPSET} or newer); choose `opset` {MIN_INT8_OPSET} or newer")


# ------------------------------------------------------------------------------------------------ calibration


def calibration_indices(num_total: int, num_images: int, seed: int) -> list[int]:
    """``num_images`` distinct indices of ``range(num_total)`` drawn with ``seed``, in increasing order."""
    if num_images >= num_total:
        return list(range(num_total))
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(num_total, size=num_images, replace=False))


def calibration_images(dataset, num_images: int, seed: int) -> np.ndarray:
    """(n, 3, H, W) float32 images of ``dataset`` (a CocoDetection at the model's size), RGB in [0, 1]."""
    return np.stack([dataset[i][0].numpy() for i in calibration_indices(len(dataset), num_images, seed)])


class CalibrationReader(CalibrationDataReader):
    """ONNX Runtime calibration data: one feed dict per image, replayable (``rewind``).

    Args:
        feeds: per image, graph input name -> float32 array with batch 1.
    """

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self.feeds = feeds
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self.feeds):
            return None
        self._next += 1
        return self.feeds[self._next - 1]

    def rewind(self) -> None:
        self._next = 0

    def __len__(self) -> int:
        return len(self.feeds)

    @classmethod
    def from_images(cls, images: np.ndarray) -> CalibrationReader:
        """Feeds of a graph whose input is ``images``: (n, 3, H, W) -> n feeds of (1, 3, H, W)."""
        return cls([{"images": np.ascontiguousarray(im[None])} for im in images])

    @classmethod
    def from_graph_outputs(cls, graph: str | os.PathLike, reader: CalibrationReader) -> CalibrationReader:
        """Feeds of the next graph: the fp32 outputs of ``graph`` on every feed of ``reader``."""
        from .parity import make_session, run_session

        session = make_session(graph)
        return cls([run_session(session, feed) for feed in reader.feeds])


# ------------------------------------------------------------------------------------------------ quantization


def quantize_graph(src: str | os.PathLike, dst: str | os.PathLike, reader: CalibrationReader, spec: Int8Options, *,
                   keep_outputs_float: bool = False) -> dict:
    """Quantize one fp32 graph (QDQ, per-channel int8 weights, uint8 activations) into ``dst``.

    ``quant_pre_process`` (symbolic shape inference and ORT's basic optimisations) runs first, as
    ORT recommends for QDQ. Only ORT's quantizable ops are touched; everything else stays fp32.
    With ``keep_outputs_float`` the graph's outputs are not requantized (:func:`float_outputs`).

    Returns:
        Dict with the QuantizeLinear/DequantizeLinear and Conv counts of the result.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}[spec.method]
    # ORT's calibrators print their settings; stdout carries only results (--json).
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre))
        reader.rewind()
        with atomic_path(dst) as out:
            quantize_static(str(pre), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                            reduce_range=spec.reduce_range, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=method,
                            extra_options={"WeightSymmetric": True})
    model = tidy_graph(onnx.load(str(dst)))
    if keep_outputs_float:
        model = float_outputs(model)
    onnx.checker.check_model(model)
    save_onnx(model, dst)
    return op_counts(model)


# Ops that only move values, through which a head output is traced back to its convolution.
VIEW_OPS = ("Reshape", "Slice", "Split", "Identity", "Transpose", "Squeeze", "Unsqueeze", "Flatten")


def float_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove the QuantizeLinear -> DequantizeLinear pairs between a graph's outputs and their last computing ops.

    Walking back from each output through Q/DQ pairs and :data:`VIEW_OPS`, every pair met is bypassed,
    so the convolution producing a head output gives it in float; their scales go too. In place.
    """
    graph = model.graph
    made_by = {o: n for n in graph.node for o in n.output}
    bypass: dict[str, str] = {}  # a bypassed DequantizeLinear's output -> its QuantizeLinear's input
    stack, seen = [o.name for o in graph.output], set()
    while stack:
        node = made_by.get(name := stack.pop())
        if node is None or name in seen:
            continue
        seen.add(name)
        quant = made_by.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if quant is not None and quant.op_type == "QuantizeLinear":
            bypass[node.output[0]] = quant.input[0]
            stack.append(quant.input[0])
        elif node.op_type in VIEW_OPS:
            stack.append(node.input[0])

    def resolve(name: str) -> str:
        while name in bypass:
            name = bypass[name]
        return name

    renames = {resolve(o.name): o.name for o in graph.output if resolve(o.name) != o.name}  # outputs keep names
    kept = [n for n in graph.node if not (n.op_type == "DequantizeLinear" and n.output[0] in bypass)]
    del graph.node[:]
    graph.node.extend(kept)
    for node in graph.node:
        node.input[:] = [renames.get(resolve(i), resolve(i)) for i in node.input]
        node.output[:] = [renames.get(o, o) for o in node.output]
    return remove_dead_nodes(model)


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """How many QuantizeLinear, DequantizeLinear and Conv nodes a graph has."""
    ops = [n.op_type for n in model.graph.node]
    return {op: ops.count(op) for op in ("QuantizeLinear", "DequantizeLinear", "Conv")}


def tidy_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """Sort the nodes topologically and keep only the opset imports the nodes use, in place.

    ``quantize_static`` appends the weights' DequantizeLinear nodes after their consumers (ONNX Runtime
    sorts on load; the ONNX checker and other runtimes need sorted graphs), and ``quant_pre_process``
    imports every domain ORT knows.
    """
    graph = model.graph
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:  # Kahn's algorithm, one wave of ready nodes at a time (keeps their original order)
        ready = [all(i in known for i in n.input) for n in pending]
        if not any(ready):
            raise ValueError(f"graph {graph.name!r} has a cycle or an input no node produces")
        ordered += [n for n, r in zip(pending, ready) if r]
        known.update(o for n, r in zip(pending, ready) if r for o in n.output)
        pending = [n for n, r in zip(pending, ready) if not r]
    del graph.node[:]
    graph.node.extend(ordered)
    used = {n.domain for n in graph.node} | {""}
    imports = [o for o in model.opset_import if o.domain in used or o.domain == "ai.onnx"]
    del model.opset_import[:]
    model.opset_import.extend(imports)
    return model


def join_graphs(graphs: list[onnx.ModelProto], prefixes: list[str]) -> onnx.ModelProto:
    """Run ``graphs`` one after another, each output feeding the next graph's same-named input.

    Every tensor and node name inside a graph that is not one of its inputs or outputs gets its
    prefix, so names cannot collide; the nodes themselves are copied unchanged.

    Returns:
        A graph with the first graph's inputs and the last graph's outputs.

    Raises:
        ValueError: the graphs use different ONNX opsets (their ops would be read differently).
    """
    opsets = {tuple(sorted((o.domain or "ai.onnx", o.version) for o in g.opset_import)) for g in graphs}
    if len({dict(o).get("ai.onnx") for o in opsets}) != 1:
        raise ValueError(f"cannot join graphs of different opsets: {sorted(opsets)}")
    nodes, inits, infos = [], [], []
    for model, prefix in zip(graphs, prefixes):
        graph = onnx.GraphProto()
        graph.CopyFrom(model.graph)
        io = {v.name for v in (*graph.input, *graph.output)}
        infos_kept = [v for v in graph.value_info if v.name not in io]  # add_prefix_graph renames value_info names
        del graph.value_info[:]
        graph.value_info.extend(infos_kept)
        renamed = onnx.compose.add_prefix_graph(graph, prefix, rename_inputs=False, rename_outputs=False)
        nodes += renamed.node
        inits += renamed.initializer
        infos += renamed.value_info
    first, last = graphs[0].graph, graphs[-1].graph
    graph = onnx.helper.make_graph(nodes, "model_int8", list(first.input), list(last.output), inits,
                                   value_info=infos)
    imports = {(o.domain, o.version) for g in graphs for o in g.opset_import}
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in sorted(imports)],
                                   producer_name="edgeanchor")
    model.ir_version = max(g.ir_version for g in graphs)
    tidy_graph(model)
    onnx.checker.check_model(model)
    return model


def quantize_variant(folder, variant: str, images: np.ndarray, spec: Int8Options) -> dict:
    """Write the int8 graphs of one exported variant (see the module docstring).

    Args:
        folder: an :class:`~edgeanchor.exporting.folder.ExportFolder` holding the variant's backbone,
            head and postprocess graphs.
        variant: "pruned" or "baseline".
        images: (n, 3, H, W) float32 calibration images at the model's input size, RGB in [0, 1].
        spec: quantization settings.

    Returns:
        Dict with ``files`` (int8 graph name -> path) and ``ops`` (per int8 graph, Q/DQ/Conv counts).
    """
    fp32 = {g: folder.graph_path(variant, g) for g in ("backbone", "head", "postprocess")}
    files = {name: folder.graph_path(variant, name) for name in INT8_GRAPHS.values()}
    backbone_feeds = CalibrationReader.from_images(images)
    head_feeds = CalibrationReader.from_graph_outputs(fp32["backbone"], backbone_feeds)
    ops = {"backbone_int8": quantize_graph(fp32["backbone"], files["backbone_int8"], backbone_feeds, spec),
           "head_int8": quantize_graph(fp32["head"], files["head_int8"], head_feeds, spec,
                                       keep_outputs_float=spec.head_outputs == "float")}
    parts = [onnx.load(str(files["backbone_int8"])), onnx.load(str(files["head_int8"])),
             onnx.load(str(fp32["postprocess"]))]
    joined = join_graphs(parts, ["backbone/", "head/", "postprocess/"])
    save_onnx(joined, files["model_int8"])
    ops["model_int8"] = op_counts(joined)
    return {"files": {k: str(v) for k, v in files.items()}, "ops": ops}


# ------------------------------------------------------------------------------------------------ accuracy


def graph_detections(path: str | os.PathLike, dataset, *, progress: bool = False, desc: str = "") -> list[dict]:
    """COCO results of an end-to-end graph (``images`` -> ``detections``, ``num_detections``) on ``dataset``.

    Boxes go back to original image pixels (undoing the resize or letterbox) and labels to
    category ids exactly as :func:`~edgeanchor.evaluation.predict.predict` maps the detector's.
    """
    from ..datasets.coco import invert_label_map
    from ..evaluation.predict import to_coco_results
    from .parity import make_session, run_session

    session = make_session(path)
    label_to_cat = invert_label_map(dataset.label_map)
    results: list[dict] = []
    for i in tqdm(range(len(dataset)), desc=desc or Path(path).name, disable=not progress, leave=False):
        image, target = dataset[i]
        out = run_session(session, {"images": image[None]})
        rows = torch.from_numpy(out["detections"][0][: int(out["num_detections"][0])])  # (D, 6)
        det = {"boxes": rows[:, :4], "scores": rows[:, 4], "labels": rows[:, 5].round().long()}
        results.extend(to_coco_results(det, target["image_id"], target["orig_size"], dataset.image_size,
                                       label_to_cat, dataset.resize))
    return results


def graph_map(path: str | os.PathLike, dataset, ann, *, progress: bool = False) -> float:
    """COCO mAP@[.5:.95] of an end-to-end graph on every image of ``dataset`` (annotations ``ann``)."""
    from ..evaluation.coco_map import coco_map

    return float(coco_map(ann, graph_detections(path, dataset, progress=progress), full=False)["mAP"])


def quantize_and_evaluate(folder, calib_set, report_set, spec: Int8Options = Int8Options(), *, progress: bool = True,
                          log=log) -> dict:
    """Quantize both variants of an export folder and measure their mAP through the fp32 and int8 graphs.

    Args:
        folder: the :class:`~edgeanchor.exporting.folder.ExportFolder` being written (its fp32 graphs exist).
        calib_set: the search split as the model sees it (a CocoDetection); calibration images come from it.
        report_set: the report split as the model sees it; mAP is measured on every image.
        spec: quantization settings.

    Returns:
        Dict with ``settings`` (the spec, the calibration split and image ids) and per variant
        ``map_fp32_onnx`` (model.onnx), ``map_int8`` (model_int8.onnx), ``delta`` (int8 - fp32),
        ``calibration`` ({images, method, split}), ``files`` (relative to the folder) and ``ops``.
        Latency is not measured here (``edgeanchor bench`` times the graphs).
    """
    check_int8_options(spec)
    images = calibration_images(calib_set, spec.num_images, spec.seed)
    ids = [calib_set.image_ids[i] for i in calibration_indices(len(calib_set), spec.num_images, spec.seed)]
    calibration = {"images": len(images), "method": spec.method, "split": str(calib_set.ann_file)}
    result: dict = {"settings": spec.to_json() | {"calibration_split": str(calib_set.ann_file),
                                                  "calibration_image_ids": ids}}
    for variant in ("pruned", "baseline"):
        log(f"quantizing the {variant} backbone and head to int8 ({spec.method}, {len(images)} calibration images)")
        quantized = quantize_variant(folder, variant, images, spec)
        log(f"measuring the {variant} mAP through model.onnx and model_int8.onnx")
        fp32 = graph_map(folder.graph_path(variant, "model"), report_set, report_set.coco_json, progress=progress)
        int8 = graph_map(quantized["files"]["model_int8"], report_set, report_set.coco_json, progress=progress)
        result[variant] = {"map_fp32_onnx": fp32, "map_int8": int8, "delta": int8 - fp32, "calibration": calibration,
                           "files": {k: str(Path(v).relative_to(folder.root)) for k, v in quantized["files"].items()},
                           "ops": quantized["ops"]}
    return result
