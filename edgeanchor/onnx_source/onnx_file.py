"""Reading an untrusted ONNX file, fixing its input size, and the shapes and MACs it implies (torch-free).

A model file comes from anyone: it is read as data only. Its size is bounded
(:data:`~edgeanchor.limits.MAX_ONNX_BYTES`) before it is read, its external data must lie inside its
own folder, it may use only the standard operator domains (and ONNX Runtime's built-in contrib ops), and
the ONNX checker must accept it. Nothing in it is executed here; a custom-op library is never loaded.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]  # protobuf ships no stubs here
from onnx import external_data_helper, shape_inference

from ..errors import EdgeAnchorError, first_line
from ..limits import MAX_ONNX_BYTES

# the operator domains a model may use: ONNX's own and ONNX Runtime's built-in contrib ops (no library to load)
PROTOBUF_MAX_BYTES = 2 * 1024**3 - 1  # one serialized protobuf message, the .onnx file itself
STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})


def load_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """An ONNX model read from an untrusted file, checked, with its external data loaded.

    Args:
        path: the ``.onnx`` file; external data files must lie in its folder (or below it).

    Returns:
        The model. Raises :class:`EdgeAnchorError` (one line) for a missing file, a file that is not an
        ONNX model, a file over :data:`~edgeanchor.limits.MAX_ONNX_BYTES`, external data that is missing or
        lies outside the model's folder, a custom operator domain, or a model the ONNX checker refuses.
    """
    path = Path(path)
    if path.is_dir():
        raise EdgeAnchorError(f"ONNX model {path} is a folder; give the .onnx file in it (`model` onnx:PATH.onnx)")
    if not path.is_file():
        raise EdgeAnchorError(f"ONNX model {path} does not exist or is not a file; check `model`")
    size = path.stat().st_size
    if size > MAX_ONNX_BYTES:
        raise EdgeAnchorError(f"ONNX model {path} is {size:,} bytes, over the bound of {MAX_ONNX_BYTES:,}; "
                              "edgeanchor reads detectors up to that size")
    if size > PROTOBUF_MAX_BYTES:  # protobuf cannot parse it: refuse before reading gigabytes into memory
        raise EdgeAnchorError(f"ONNX model {path} is {size:,} bytes, but an .onnx file holds at most "
                              f"{PROTOBUF_MAX_BYTES:,} (protobuf's limit; larger models keep their weights in "
                              "external data); check `model`")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError) as exc:
        raise EdgeAnchorError(f"{path} is not an ONNX model ({first_line(exc)}); check `model`") from None
    if not model.HasField("graph") or not model.graph.node:
        raise EdgeAnchorError(f"{path} is not an ONNX model: it has no graph or no nodes; check `model`")
    _check_domains(model, path)
    _check_external_data(model, path, size)
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in _tensors(model.graph))
    if external:
        try:
            external_data_helper.load_external_data_for_model(model, str(path.parent))
        except (OSError, ValueError) as exc:
            raise EdgeAnchorError(f"{path}: its external data cannot be read ({first_line(exc)})") from None
    try:
        # by path where the data is external: a model over protobuf's 2 GiB cannot be checked in memory
        onnx.checker.check_model(str(path) if external else model)
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise EdgeAnchorError(f"{path} is not a valid ONNX model: {first_line(exc)}") from None
    return model


def _check_domains(model: onnx.ModelProto, path: Path) -> None:
    """Refuse an operator domain outside :data:`STANDARD_DOMAINS` (its ops would need a custom library)."""
    local = {f.domain for f in model.functions}
    used = [imp.domain for imp in model.opset_import] + [n.domain for n in _nodes(model.graph)]
    custom = next((d for d in used if d not in STANDARD_DOMAINS and d not in local), None)
    if custom is not None:
        raise EdgeAnchorError(f"{path} uses the custom operator domain {custom!r}; edgeanchor runs only standard "
                              "ONNX operators (and ONNX Runtime's built-in ones), never a custom-op library")


def _check_external_data(model: onnx.ModelProto, path: Path, model_bytes: int) -> None:
    """Refuse external data that is missing, lies outside the model's folder, or is too large, before reading it."""
    folder = path.parent.resolve()
    total = model_bytes
    seen: set[Path] = set()
    for tensor in _tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        where = f"{path}: tensor {tensor.name!r} keeps its data in {location!r}"
        parts = Path(location).parts
        if not location or Path(location).is_absolute() or os.path.isabs(location) or ".." in parts:
            raise EdgeAnchorError(f"{where}, which is not a file inside the model's folder; edgeanchor reads "
                                  "external data only from the model's own folder")
        target = (folder / location).resolve()
        if not target.is_relative_to(folder):
            raise EdgeAnchorError(f"{where}, which resolves to {target}, outside the model's folder {folder}; "
                                  "edgeanchor reads external data only from the model's own folder")
        if not target.is_file():
            raise EdgeAnchorError(f"{where}, which does not exist in {folder}; copy the data file beside the model")
        if target not in seen:
            seen.add(target)
            total += target.stat().st_size
    if total > MAX_ONNX_BYTES:
        raise EdgeAnchorError(f"ONNX model {path} and its external data are {total:,} bytes, over the bound of "
                              f"{MAX_ONNX_BYTES:,}; edgeanchor reads detectors up to that size")


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph of its nodes (If / Loop / Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _graphs(sub)


def _nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for g in _graphs(graph):
        yield from g.node


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of the graph and its subgraphs: initializers, sparse ones, and node attributes."""
    for g in _graphs(graph):
        yield from g.initializer
        for sparse in g.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        for node in g.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t
                elif attr.type == onnx.AttributeProto.TENSORS:
                    yield from attr.tensors


def graph_input(model: onnx.ModelProto, name: str | None = None) -> onnx.ValueInfoProto:
    """The graph input ``name`` (None: the only input that is not an initializer); one line if there is none."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if name is None:
        if len(inputs) != 1:
            raise EdgeAnchorError(f"the ONNX graph has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                                  "name the image input in the head spec's preprocess.input_name")
        return inputs[0]
    found = next((i for i in inputs if i.name == name), None)
    if found is None:
        raise EdgeAnchorError(f"the ONNX graph has no input {name!r} (it has {', '.join(i.name for i in inputs)}); "
                              "fix the head spec's preprocess.input_name")
    others = [i.name for i in inputs if i.name != name]
    if others:  # edgeanchor feeds the image only; ONNX Runtime would refuse the run much later
        raise EdgeAnchorError(f"the ONNX graph has inputs besides the image input {name!r} ({', '.join(others)}); "
                              "edgeanchor feeds only the image: export the detector with one input")
    return found


def static_dims(value: onnx.ValueInfoProto) -> list[int | None]:
    """The dims of a tensor's declared shape; None where a dim is symbolic or unknown."""
    dims = value.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]


def fix_input_size(model: onnx.ModelProto, input_name: str, shape: Sequence[int]) -> onnx.ModelProto:
    """A copy of ``model`` whose input ``input_name`` has the static ``shape`` (e.g. (1, 3, 640, 640)).

    The intermediate tensors' declared shapes (``value_info``) are dropped, so that shape inference and
    ONNX Runtime see the new size rather than a stale one; everything else is as in ``model``.
    """
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    value = next((i for i in fixed.graph.input if i.name == input_name), None)
    if value is None:
        raise EdgeAnchorError(f"the ONNX graph has no input {input_name!r}; fix the head spec's preprocess.input_name")
    dims = value.type.tensor_type.shape.dim
    if len(dims) != len(shape):
        raise EdgeAnchorError(f"the ONNX graph's input {input_name!r} has {len(dims)} dims, not {len(shape)} "
                              f"({list(shape)}); check the head spec's preprocess.layout")
    for dim, size in zip(dims, shape, strict=True):
        dim.Clear()
        dim.dim_value = int(size)
    del fixed.graph.value_info[:]  # declared intermediate shapes may hold the old size
    return fixed


def inferred_value_infos(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    """Every tensor's type and shape that ONNX shape inference gives, by name."""
    try:
        inferred = shape_inference.infer_shapes(model, data_prop=True)
    except (onnx.shape_inference.InferenceError, ValueError):
        inferred = model  # inference fails on some converters' graphs; callers fall back to a run
    g = inferred.graph
    return {v.name: v for v in [*g.input, *g.value_info, *g.output] if v.type.HasField("tensor_type")}


def inferred_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Every tensor's dims that ONNX shape inference gives (None where a dim stays unknown)."""
    return {name: static_dims(v) for name, v in inferred_value_infos(model).items()}


def run_shapes(model: onnx.ModelProto, input_name: str, shape: Sequence[int],
               names: Sequence[str]) -> dict[str, list[int | None]]:
    """The shapes of tensors ``names`` from one ONNX Runtime run of a fixed-size ``model`` on zeros."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    for name in names:
        if name not in have:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
        elem = next(i for i in probe.graph.input if i.name == input_name).type.tensor_type.elem_type
        feed = np.zeros(tuple(shape), dtype=onnx.helper.tensor_dtype_to_np_dtype(elem))
        values = session.run(list(names), {input_name: feed})
    except Exception as exc:  # noqa: BLE001 -- ORT raises its own untyped errors on a graph it cannot run
        raise EdgeAnchorError(f"ONNX Runtime cannot run the graph at input shape {list(shape)}: "
                              f"{first_line(exc)}; check the head spec's preprocess.image_size") from None
    return {name: list(v.shape) for name, v in zip(names, values, strict=True)}


def conv_macs(model: onnx.ModelProto, image_size: tuple[int, int], *, layout: str = "NCHW",
              input_name: str | None = None) -> dict[str, int]:
    """Multiply-accumulates of every Conv node at one image, from the shapes at ``image_size``.

    Args:
        model: the graph.
        image_size: (H, W) of the input.
        layout: "NCHW" or "NHWC", the input's layout.
        input_name: the image input (None: the graph's only input).

    Returns:
        {conv node name: out_ch * in_ch / groups * kh * kw * H_out * W_out} at batch 1, and "total".
    """
    value = graph_input(model, input_name)
    dims = static_dims(value)
    channels = (dims[1] if layout == "NCHW" else dims[-1]) if len(dims) == 4 else None
    c = channels or 3
    shape = (1, c, *image_size) if layout == "NCHW" else (1, *image_size, c)
    fixed = fix_input_size(model, value.name, shape)
    shapes = inferred_shapes(fixed)
    inits = {t.name: t for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    missing = [n.output[0] for n in convs if None in shapes.get(n.output[0], [None])]
    if missing:
        shapes.update(run_shapes(fixed, value.name, shape, missing))
    macs: dict[str, int] = {}
    for node in convs:
        weight = inits.get(node.input[1])
        # a weight behind an Identity (PyTorch's exporter writes some) has its shape from inference
        dims = list(weight.dims) if weight is not None else shapes.get(node.input[1], [])
        if len(dims) < 3 or None in dims:
            raise EdgeAnchorError(f"Conv node {node.name or node.output[0]}: its weight's shape is not known; "
                                  "edgeanchor counts MACs only for convolutions with constant weights")
        spatial = [d or 0 for d in shapes[node.output[0]][2:]]
        # a Conv weight is [out_ch, in_ch / groups, kh, kw]: groups are already divided out of dim 1
        macs[node.name or node.output[0]] = math.prod(d or 0 for d in dims) * math.prod(spatial)
    macs["total"] = sum(macs.values())
    return macs
