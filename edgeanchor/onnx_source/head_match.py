"""Finding a detector's head convolutions in its ONNX graph, from the head spec (torch-free).

Each declared output (``outputs.boxes`` / ``scores`` / ``extras``, or ``per_level``) is traced back
through the layout ops an exporter or converter puts after a head (Reshape, Transpose, Flatten, Concat,
Softmax, Sigmoid, Identity, Squeeze, Unsqueeze, Cast, Slice) to one Conv per level. A Concat's inputs,
in order, are the levels, in the spec's order. Every conv is then checked against the spec: its output
channels must be the level's anchors per cell times the values per anchor, and its feature map the
level's size. A graph that fails either check gets one line naming the output, the level, the node and
the expected and found values; it never gets a silent mis-slice. An ``extras`` output that is the
``boxes`` output (MediaPipe's ``regressors``) is traced once: its convs are the level's "boxes" convs,
with 4 + 2k values per anchor, which the detector splits into its box and extras views.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from ..errors import EdgeAnchorError
from .onnx_file import fix_input_size, graph_input, inferred_shapes, run_shapes, static_dims
from .spec import HeadSpec

# ops a head's outputs pass through between the conv and the graph output (data is their input 0)
PASS_THROUGH = frozenset({"Reshape", "Transpose", "Flatten", "Softmax", "Sigmoid", "Identity", "Squeeze",
                          "Unsqueeze", "Cast", "Slice"})
ROLES = ("boxes", "scores", "extras")


@dataclass(frozen=True)
class HeadConv:
    """One head convolution, as found in the graph.

    Attributes:
        role: "boxes", "scores", "extras" or "per_level".
        level: index into the spec's levels.
        node: the Conv node's name (its output tensor's name where the node has none).
        input: the tensor the conv reads (the level's feature map).
        weight: the weight initializer's name; bias: the bias initializer's name, or None.
        out_channels: anchors * values_per_anchor.
        values_per_anchor: 4 (boxes; 4 + 2k where the boxes output also holds the extras, MediaPipe's
            ``regressors``: that conv is the level's only "boxes" conv and there is no "extras" one), K (scores),
            2k (extras), 5 + nc (per_level).
        anchors: anchors per cell.
        feature_size: (H, W) of the conv's output at the matched input size.
        output: the graph output it feeds.
        path: the tensors from the conv's output to ``output``, in order (the data path through layout ops).
        join: the output tensor of the Concat that joins this level to the others (None: no Concat).
        join_index: this level's input index in that Concat.
    """

    role: str
    level: int
    node: str
    input: str
    weight: str
    bias: str | None
    out_channels: int
    values_per_anchor: int
    anchors: int
    feature_size: tuple[int, int]
    output: str = ""
    path: tuple[str, ...] = ()
    join: str | None = None
    join_index: int = 0


@dataclass(frozen=True)
class HeadMatch:
    """The head of an ONNX detector: its convolutions per level and role.

    Attributes:
        convs: every head conv, by level then role.
        feature_inputs: per level, the (first) tensor its convs read.
        level_inputs: per level, every distinct tensor its convs read, in role order (one, unless the level's
            box and class convs sit on separate towers, as in TensorFlow's SSDLite).
        input_name: the image input; input_shape: its shape at the matched size, batch 1 (NCHW or NHWC).
        num_classes: K, the score columns per anchor (per_level: the classes nc).
    """

    convs: tuple[HeadConv, ...]
    feature_inputs: tuple[str, ...]
    input_name: str
    input_shape: tuple[int, ...]
    num_classes: int
    level_inputs: tuple[tuple[str, ...], ...] = ()

    def inputs_of(self, level: int) -> tuple[str, ...]:
        """Every distinct tensor the convs of ``level`` read."""
        return self.level_inputs[level] if self.level_inputs else (self.feature_inputs[level],)

    def conv(self, level: int, role: str) -> HeadConv:
        """The conv of ``level`` and ``role``; KeyError if the head has none."""
        for c in self.convs:
            if c.level == level and c.role == role:
                return c
        raise KeyError((level, role))

    def roles(self) -> tuple[str, ...]:
        """The roles the head has, in the order of :attr:`convs`."""
        return tuple(dict.fromkeys(c.role for c in self.convs))


@dataclass
class _Branch:
    conv: onnx.NodeProto
    path: list[str]  # tensors from the conv's output to the graph output
    join: str | None = None
    join_index: int = 0


class _Graph:
    """Producer and consumer look-ups of a graph, by tensor name."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.producer = {o: n for n in graph.node for o in n.output if o}
        self.by_name = {n.name: n for n in graph.node if n.name}
        self.inits = {t.name: t for t in graph.initializer}

    def constant(self, tensor: str) -> np.ndarray | None:
        """The value of ``tensor`` if it is an initializer or a Constant node's output."""
        if tensor in self.inits:
            return onnx.numpy_helper.to_array(self.inits[tensor])
        node = self.producer.get(tensor)
        if node is not None and node.op_type == "Constant":
            attr = next((a for a in node.attribute if a.name == "value"), None)
            if attr is not None:
                return onnx.numpy_helper.to_array(attr.t)
        return None


def node_id(node: onnx.NodeProto) -> str:
    """A node's name, or its first output's where it has none."""
    return node.name or node.output[0]


def _trace(g: _Graph, tensor: str, path: list[str], output: str) -> list[_Branch]:
    """The head convs that ``tensor`` comes from, tracing back through layout ops and Concats."""
    node = g.producer.get(tensor)
    if node is None:
        raise EdgeAnchorError(f"output {output!r}: tracing back reaches {tensor!r}, a graph input or constant, without "
                              "meeting a Conv; check the head spec's outputs, or name the convs in levels[].convs")
    if node.op_type == "Conv":
        return [_Branch(node, [tensor, *path])]
    if node.op_type == "Concat":
        branches: list[_Branch] = []
        for index, source in enumerate(node.input):
            for branch in _trace(g, source, [tensor, *path], output):
                if branch.join is None:
                    branch.join, branch.join_index = tensor, index
                branches.append(branch)
        return branches
    if node.op_type in PASS_THROUGH:
        return _trace(g, node.input[0], [tensor, *path], output)
    raise EdgeAnchorError(f"output {output!r}: tracing back meets node {node_id(node)} ({node.op_type}), which is not "
                          "a layout op edgeanchor follows; name the head convs in the spec's levels[].convs")


def _forward(g: _Graph, conv: onnx.NodeProto, output: str) -> _Branch:
    """The data path from a named conv forward to ``output`` (for convs the spec names explicitly)."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.graph.node:
        if n.input:
            consumers.setdefault(n.input[0], []).append(n)
    branch, tensor = _Branch(conv, [conv.output[0]]), conv.output[0]
    while tensor != output:
        data = [n for n in consumers.get(tensor, []) if n.op_type in PASS_THROUGH or n.op_type == "Concat"]
        data += [n for n in g.graph.node if n.op_type == "Concat" and tensor in n.input[1:]]
        if len(data) != 1:
            raise EdgeAnchorError(f"output {output!r}: the named conv {node_id(conv)} does not lead to it through "
                                  "layout ops alone; check the head spec's levels[].convs")
        node = data[0]
        if node.op_type == "Concat" and branch.join is None:
            branch.join, branch.join_index = node.output[0], list(node.input).index(tensor)
        tensor = node.output[0]
        branch.path.append(tensor)
    return branch


def _branches(g: _Graph, spec: HeadSpec, role: str, output: str, levels: Sequence[int]) -> list[_Branch]:
    """The branches of one output, one per level of ``levels``; explicit conv names in the spec win."""
    named = [spec.levels[i].convs.get(role) for i in levels]
    if all(named):
        convs = []
        for name in named:
            node = g.by_name.get(str(name))
            if node is None or node.op_type != "Conv":
                raise EdgeAnchorError(f"output {output!r}: the head spec names conv {name!r}, which is not a Conv "
                                      "node of the graph; fix levels[].convs")
            convs.append(node)
        return [_forward(g, node, output) for node in convs]
    branches = _trace(g, output, [], output)
    if len(branches) != len(levels):
        raise EdgeAnchorError(f"output {output!r} comes from {len(branches)} convolutions "
                              f"({', '.join(node_id(b.conv) for b in branches)}), but the spec has {len(levels)} "
                              "levels; fix the head spec's levels")
    return branches


def _out_channels(g: _Graph, conv: onnx.NodeProto) -> int:
    weight = g.inits.get(conv.input[1])
    if weight is None:
        raise EdgeAnchorError(f"head conv {node_id(conv)}: its weight {conv.input[1]!r} is not an initializer; "
                              "edgeanchor prunes heads whose weights are constants")
    return int(weight.dims[0])


def _resolve_size(model: onnx.ModelProto, spec: HeadSpec,
                  image_size: tuple[int, int] | None) -> tuple[str, tuple[int, ...]]:
    """The image input's name and its shape at batch 1 (a dynamic graph needs a size from the spec or caller)."""
    value = graph_input(model, spec.preprocess.input_name)
    dims = static_dims(value)
    if len(dims) != 4:
        raise EdgeAnchorError(f"the ONNX graph's input {value.name!r} has {len(dims)} dims; edgeanchor reads "
                              "image inputs of 4 dims (NCHW or NHWC)")
    nhwc = spec.preprocess.layout == "NHWC"
    hw = dims[1:3] if nhwc else dims[2:4]
    channels = (dims[3] if nhwc else dims[1]) or 3
    size = image_size or spec.preprocess.image_size
    if size is None:
        if None in hw:
            raise EdgeAnchorError(f"the ONNX graph's input {value.name!r} has a dynamic size and the head spec gives "
                                  "none; set preprocess.image_size (H, W) in the spec")
        size = (int(hw[0] or 0), int(hw[1] or 0))
    elif None not in hw and tuple(hw) != tuple(size):
        raise EdgeAnchorError(f"the ONNX graph's input {value.name!r} is fixed at {hw[0]}x{hw[1]}, but the size asked "
                              f"for is {size[0]}x{size[1]}; set preprocess.image_size to the graph's size")
    shape = (1, *size, channels) if nhwc else (1, channels, *size)
    return value.name, tuple(int(s) for s in shape)


def _values_per_anchor(role: str, spec: HeadSpec) -> int | None:
    if role == "boxes":  # a box conv that also holds the extras (packed): 4 box values, then 2k
        return 4 + 2 * spec.outputs.extra_points if spec.outputs.packed_extras else 4
    if role == "extras":
        return 2 * spec.outputs.extra_points
    if role == "per_level" and spec.scoring.num_classes is not None:
        return 5 + spec.scoring.num_classes
    return spec.scoring.num_classes  # scores: K, or None to read from the graph


def _check_channels(output: str, level: int, spec: HeadSpec, node: str, found: int, role: str,
                    per_anchor: int | None) -> int:
    """``per_anchor`` (V) checked against a conv's ``found`` channels; with V None, V read from the conv."""
    lv = spec.levels[level]
    anchors = len(lv.anchors)
    where = f"output {output!r}, level {level} (stride {lv.stride[0]}): node {node}"
    packed = spec.outputs.packed_extras
    what = {"boxes": "box and extra values" if packed else "box values", "scores": "classes",
            "extras": "extra values", "per_level": "values"}[role]
    fix = {"boxes": f"levels[{level}].anchors" + (" or outputs.extra_points" if packed else ""),
           "scores": f"levels[{level}].anchors or scoring.num_classes",
           "extras": f"levels[{level}].anchors or outputs.extra_points",
           "per_level": f"levels[{level}].anchors or scoring.num_classes"}[role]
    if per_anchor is None:
        if anchors == 0 or found % anchors:
            raise EdgeAnchorError(f"{where} has {found} output channels, not a multiple of the spec's {anchors} "
                                  f"anchors; fix {fix}")
        return found // anchors
    if found != anchors * per_anchor:
        raise EdgeAnchorError(f"{where} has {found} output channels, the spec says {anchors} anchors x {per_anchor} "
                              f"{what} = {anchors * per_anchor}; fix {fix}")
    return per_anchor


def _check_feature_size(output: str, level: int, spec: HeadSpec, node: str, found: Sequence[int | None],
                        size: tuple[int, int]) -> tuple[int, int]:
    lv = spec.levels[level]
    expected = lv.feature_size or (math.ceil(size[0] / lv.stride[0]), math.ceil(size[1] / lv.stride[1]))
    if tuple(found) != tuple(expected):
        shown = "x".join("?" if f is None else str(f) for f in found)
        raise EdgeAnchorError(f"output {output!r}, level {level} (stride {lv.stride[0]}): node {node} gives a {shown} "
                              f"feature map at {size[0]}x{size[1]}, the spec says {expected[0]}x{expected[1]}; "
                              f"fix levels[{level}].stride or feature_size")
    return int(expected[0]), int(expected[1])


def find_head(model: onnx.ModelProto, spec: HeadSpec, image_size: tuple[int, int] | None = None) -> HeadMatch:
    """The head convolutions of ``model``, traced from the spec's outputs and checked against the spec.

    Args:
        model: the detector's graph (see :func:`~.onnx_file.load_onnx`).
        spec: the head spec.
        image_size: (H, W) to match at; None: ``spec.preprocess.image_size``, else the graph's static size.

    Returns:
        The match. Raises :class:`EdgeAnchorError`, one line naming the output, the level and the node, where
        the graph and the spec disagree.
    """
    input_name, input_shape = _resolve_size(model, spec, image_size)
    size = (input_shape[1], input_shape[2]) if spec.preprocess.layout == "NHWC" else (input_shape[2], input_shape[3])
    g = _Graph(model.graph)
    levels = list(range(len(spec.levels)))
    outputs = {o.name for o in model.graph.output}
    plan: list[tuple[str, str, list[_Branch]]] = []
    if spec.outputs.per_level:
        if len(spec.outputs.per_level) != len(levels):
            raise EdgeAnchorError(f"the head spec names {len(spec.outputs.per_level)} per_level outputs for "
                                  f"{len(levels)} levels; fix outputs.per_level or levels")
        for i, name in enumerate(spec.outputs.per_level):
            _require_output(name, outputs)
            plan.append(("per_level", name, _branches(g, spec, "per_level", name, [i])))
    else:
        for role in ROLES:
            name = getattr(spec.outputs, role)
            if name is None or (role == "extras" and spec.outputs.packed_extras):  # the boxes convs hold them
                continue
            _require_output(name, outputs)
            plan.append((role, name, _branches(g, spec, role, name, levels)))
        if not plan:
            raise EdgeAnchorError("the head spec names no outputs; set outputs.boxes and outputs.scores")
    fixed = fix_input_size(model, input_name, input_shape)
    shapes = inferred_shapes(fixed)
    conv_outs = [b.conv.output[0] for _, _, bs in plan for b in bs]
    if any(len(shapes.get(t, [])) != 4 or None in shapes[t] for t in conv_outs):
        shapes.update(run_shapes(fixed, input_name, input_shape, conv_outs))
    return _match(g, spec, plan, shapes, size, input_name, input_shape)


def _require_output(name: str, outputs: set[str]) -> None:
    if name not in outputs:
        raise EdgeAnchorError(f"the head spec names output {name!r}, but the graph's outputs are "
                              f"{', '.join(sorted(outputs))}; fix the spec's outputs")


def _match(g: _Graph, spec: HeadSpec, plan, shapes, size, input_name, input_shape) -> HeadMatch:
    convs: list[HeadConv] = []
    num_classes: int | None = None
    for role, output, branches in plan:
        for j, branch in enumerate(branches):
            level = j if role != "per_level" else spec.outputs.per_level.index(output)  # type: ignore[union-attr]
            node = node_id(branch.conv)
            found = _out_channels(g, branch.conv)
            expected = _values_per_anchor(role, spec)
            if expected is None and num_classes is not None:  # K read from an earlier level: every level agrees
                expected = num_classes + 5 if role == "per_level" else num_classes
            per_anchor = _check_channels(output, level, spec, node, found, role, expected)
            if role == "scores":
                num_classes = per_anchor
            elif role == "per_level":
                num_classes = per_anchor - 5
            hw = _check_feature_size(output, level, spec, node, shapes[branch.conv.output[0]][2:4], size)
            bias = branch.conv.input[2] if len(branch.conv.input) > 2 and branch.conv.input[2] else None
            convs.append(HeadConv(role=role, level=level, node=node, input=branch.conv.input[0],
                                  weight=branch.conv.input[1], bias=bias, out_channels=found,
                                  values_per_anchor=per_anchor, anchors=len(spec.levels[level].anchors),
                                  feature_size=hw, output=output, path=tuple(branch.path), join=branch.join,
                                  join_index=branch.join_index))
    convs.sort(key=lambda c: c.level)  # stable: roles keep their order within a level
    reads = [tuple(dict.fromkeys(c.input for c in convs if c.level == level)) for level in range(len(spec.levels))]
    return HeadMatch(convs=tuple(convs), feature_inputs=tuple(r[0] for r in reads), input_name=input_name,
                     input_shape=input_shape, num_classes=num_classes or 0, level_inputs=tuple(reads))


def kept_rows(spec: HeadSpec, match: HeadMatch, keep: Mapping[int, Sequence[int]]) -> np.ndarray:
    """The rows of the original graph's outputs (A axis, every level concatenated) that a keep set keeps.

    Args:
        spec: the head spec (``cell_order``).
        match: the head, from :func:`find_head`.
        keep: level -> kept anchor positions within a cell (indices into ``spec.levels[level].anchors``).

    Returns:
        int64 indices into the original rows, in the pruned graph's output order.
    """
    rows, offset = [], 0
    for level, lv in enumerate(spec.levels):
        h, w = match.conv(level, match.roles()[0]).feature_size
        a = len(lv.anchors)
        kept = np.asarray(sorted(keep.get(level, ())), dtype=np.int64)
        cells = np.arange(h * w, dtype=np.int64)
        if spec.cell_order == "cell":  # row = cell * A + a: each cell's kept anchors in turn
            rows.append(offset + (cells[:, None] * a + kept[None, :]).reshape(-1))
        else:  # row = a * H * W + cell: every cell of each kept anchor in turn
            rows.append(offset + (kept[:, None] * (h * w) + cells[None, :]).reshape(-1))
        offset += h * w * a
    return np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
