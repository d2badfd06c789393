"""Surgery on the user's own ONNX graph: the backbone and head cut out, and the head pruned (torch-free).

Pruning edits plain ONNX protobufs in place of a copy, so that every node and initializer outside the
head chain (the head convs, the layout ops from them to the outputs, and the shape constants those ops
read) stays byte-identical to the user's graph. Nodes that only a dropped level needed are removed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import EdgeAnchorError, first_line
from .head_match import HeadConv, HeadMatch, _Graph
from .onnx_file import fix_input_size, inferred_shapes, inferred_value_infos, run_shapes, static_dims
from .spec import HeadSpec


def _needed(graph: onnx.GraphProto, outputs: Iterable[str], stop: Iterable[str] = ()) -> list[onnx.NodeProto]:
    """The nodes ``outputs`` depend on, in graph order, not looking past the tensors ``stop``."""
    producer = {o: n for n in graph.node for o in n.output if o}
    stop, seen, todo = set(stop), set(), [t for t in outputs]
    keep: set[int] = set()
    while todo:
        tensor = todo.pop()
        if tensor in seen or tensor in stop:
            continue
        seen.add(tensor)
        node = producer.get(tensor)
        if node is not None and id(node) not in keep:
            keep.add(id(node))
            todo.extend(node.input)
            todo.extend(_subgraph_inputs(node))
    return [n for n in graph.node if id(n) in keep]


def _subgraph_inputs(node: onnx.NodeProto) -> list[str]:
    """Outer tensors an If / Loop / Scan body reads (every name its nodes read; extra names are harmless)."""
    names: list[str] = []
    for attr in node.attribute:
        for g in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
            for n in g.node:
                names.extend(n.input)
                names.extend(_subgraph_inputs(n))
    return names


def _value_info(name: str, shapes: Mapping[str, list[int | None]], types: Mapping[str, int],
                default_type: int) -> onnx.ValueInfoProto:
    """A value info for ``name`` at batch "N": its dims from ``shapes``, its element type from ``types``."""
    dims: list[int | str | None] = list(shapes.get(name, []))
    if dims:
        dims[0] = "N"
    return onnx.helper.make_tensor_value_info(name, types.get(name, default_type), dims or None)


def _extract(model: onnx.ModelProto, nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto],
             outputs: list[onnx.ValueInfoProto], name: str) -> onnx.ModelProto:
    """A model of ``nodes`` with the given inputs and outputs, its initializers those the nodes read."""
    read = {t for n in nodes for t in [*n.input, *_subgraph_inputs(n)]}
    graph = onnx.helper.make_graph(nodes, name, inputs, outputs,
                                   initializer=[t for t in model.graph.initializer if t.name in read])
    made = {o for n in nodes for o in n.output}
    graph.value_info.extend(v for v in model.graph.value_info if v.name in made)
    out = onnx.helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version,
                                 producer_name=model.producer_name, producer_version=model.producer_version)
    out.functions.extend(model.functions)
    return out


def _match_infos(model: onnx.ModelProto, match: HeadMatch, names: Sequence[str]) -> tuple[
        dict[str, list[int | None]], dict[str, int], int]:
    """The shapes and element types of tensors ``names`` at the matched input size, and the input's type."""
    fixed = fix_input_size(model, match.input_name, match.input_shape)
    infos = inferred_value_infos(fixed)
    shapes = {name: static_dims(v) for name, v in infos.items()}
    types = {name: v.type.tensor_type.elem_type for name, v in infos.items() if v.type.tensor_type.elem_type}
    if any(None in shapes.get(n, [None]) for n in names):
        shapes.update(run_shapes(fixed, match.input_name, match.input_shape, list(names)))
    return shapes, types, types.get(match.input_name, onnx.TensorProto.FLOAT)


def cut_backbone(model: onnx.ModelProto, match: HeadMatch, levels: Sequence[int]) -> onnx.ModelProto:
    """The backbone of ``levels``: the image input to their feature maps (outputs named as the feature tensors).

    A feature tensor that several levels share is one output; nodes only other levels need are left out.
    """
    features = list(dict.fromkeys(t for i in levels for t in match.inputs_of(i)))
    nodes = _needed(model.graph, features, stop=[match.input_name])
    shapes, types, default = _match_infos(model, match, features)
    image = next(i for i in model.graph.input if i.name == match.input_name)
    outputs = [_value_info(f, shapes, types, default) for f in features]
    return _extract(model, nodes, [image], outputs, f"{model.graph.name or 'model'}_backbone")


def cut_head(model: onnx.ModelProto, match: HeadMatch, levels: Sequence[int]) -> onnx.ModelProto:
    """The head convs of ``levels``: inputs are their feature tensors, outputs the convs' outputs."""
    producer = {o: n for n in model.graph.node for o in n.output}
    convs = [c for c in match.convs if c.level in set(levels)]
    nodes = [producer[c.path[0]] for c in convs]
    features = list(dict.fromkeys(c.input for c in convs))
    shapes, types, default = _match_infos(model, match, [*features, *(c.path[0] for c in convs)])
    inputs = [_value_info(f, shapes, types, default) for f in features]
    outputs = [_value_info(c.path[0], shapes, types, default) for c in convs]
    return _extract(model, nodes, inputs, outputs, f"{model.graph.name or 'model'}_head")


def _check_keep(spec: HeadSpec, keep: Mapping[int, Sequence[int]]) -> dict[int, list[int]]:
    levels = len(spec.levels)
    extra = sorted(set(keep) - set(range(levels)))
    if extra:
        raise EdgeAnchorError(f"`keep` names level {extra[0]}, but the head has levels 0..{levels - 1}")
    out = {}
    for level in range(levels):
        kept = [int(a) for a in keep.get(level, ())]
        count = len(spec.levels[level].anchors)
        if kept != sorted(set(kept)) or any(not 0 <= a < count for a in kept):
            raise EdgeAnchorError(f"`keep`[{level}] is {kept}, but it must be sorted, distinct anchor positions "
                                  f"from 0 to {count - 1}")
        out[level] = kept
    if not any(out.values()):
        raise EdgeAnchorError("`keep` keeps no anchor; keep at least one")
    return out


class _Surgeon:
    """One pruning of a copy of the graph; see :func:`prune_graph`."""

    def __init__(self, model: onnx.ModelProto, match: HeadMatch, keep: dict[int, list[int]]):
        self.source = model
        self.model = onnx.ModelProto()
        self.model.CopyFrom(model)
        self.graph = self.model.graph
        self.read_before = {t for n in self.graph.node for t in [*n.input, *_subgraph_inputs(n)]}
        self.match, self.keep = match, keep
        self.g = _Graph(self.graph)
        self.used = {n.output[0] for n in _needed(self.graph, [o.name for o in self.graph.output])}
        self.chain = {t for c in match.convs for t in c.path}  # tensors of the head chain
        self.values = {t: c.values_per_anchor for c in reversed(match.convs) for t in c.path}
        self.rows_old: dict[str, int] = {}
        self.rows_new: dict[str, int] = {}
        for c in match.convs:
            cells = c.feature_size[0] * c.feature_size[1]
            for t in c.path:
                self.rows_old[t] = self.rows_old.get(t, 0) + cells * c.anchors
                self.rows_new[t] = self.rows_new.get(t, 0) + cells * len(keep[c.level])

    def consumers(self, tensor: str) -> list[onnx.NodeProto]:
        return [n for n in self.graph.node if tensor in n.input or tensor in _subgraph_inputs(n)]

    def replace_initializer(self, node: onnx.NodeProto, index: int, value: np.ndarray) -> None:
        """Give ``node``'s input ``index`` the constant ``value``: in place if only this node reads it, else a clone."""
        name = node.input[index]
        if len(self.consumers(name)) > 1 or name in {o.name for o in self.graph.output}:
            new = self.unique(f"{name}_pruned")
            self.graph.initializer.append(numpy_helper.from_array(value, new))
            node.input[index] = new
            return
        position = next(i for i, t in enumerate(self.graph.initializer) if t.name == name)
        self.graph.initializer[position].CopyFrom(numpy_helper.from_array(value, name))

    def unique(self, base: str) -> str:
        taken = ({t.name for t in self.graph.initializer} | {o for n in self.graph.node for o in n.output}
                 | {i.name for i in self.graph.input})
        name, i = base, 1
        while name in taken:
            name, i = f"{base}_{i}", i + 1
        return name

    def slice_conv(self, conv: HeadConv) -> None:
        """Keep the output channels of the kept anchors: channel = a * V + v (anchor-major)."""
        kept = self.keep[conv.level]
        if len(kept) == conv.anchors:
            return
        node = self.g.producer[conv.path[0]]
        v = conv.values_per_anchor
        channels = np.asarray([a * v + j for a in kept for j in range(v)], dtype=np.int64)
        for index in (1, 2) if conv.bias else (1,):
            tensor = self.g.inits[node.input[index]]
            self.replace_initializer(node, index, numpy_helper.to_array(tensor)[channels])

    def drop_branch(self, conv: HeadConv) -> None:
        """Remove a dropped level's input from its Concat (a Concat left empty goes from its own consumer)."""
        if conv.join is None:
            raise EdgeAnchorError(f"output {conv.output!r} has no Concat to drop level {conv.level} from (each level "
                                  f"is its own output); keep at least one anchor in `keep`[{conv.level}]")
        joined = conv.path[conv.path.index(conv.join) - 1]
        concat = self.g.producer[conv.join]
        while True:
            position = list(concat.input).index(joined)
            del concat.input[position]
            if concat.input:
                return
            joined = concat.output[0]
            parent = next((n for n in self.graph.node if n.op_type == "Concat" and joined in n.input), None)
            if parent is None:
                raise EdgeAnchorError(f"output {conv.output!r} would have no rows left; keep at least one anchor")
            concat = parent

    def fix_constants(self) -> None:
        """Rewrite every shape constant on the head chain that encodes an anchor count that changed."""
        shapes = None
        for node in list(self.graph.node):
            out = node.output[0] if node.output else ""
            if out not in self.chain or self.rows_old.get(out) == self.rows_new.get(out):
                continue
            if node.op_type == "Reshape":
                self.fix_reshape(node)
            elif node.op_type == "Slice":
                shapes = shapes or self.original_shapes()
                self.fix_slice(node, shapes)

    def original_shapes(self) -> dict[str, list[int | None]]:
        return inferred_shapes(fix_input_size(self.source, self.match.input_name, self.match.input_shape))

    def fix_reshape(self, node: onnx.NodeProto) -> None:
        """Rewrite the entry of a Reshape's constant shape that counts the anchor rows (-1 / dynamic: left alone)."""
        out = node.output[0]
        old, new = self.rows_old[out], self.rows_new[out]
        parts = self.shape_parts(node.input[1])
        dynamic = any(value is None or (value == -1).any() or (value == 0).any() for _, _, value in parts)
        entries = [(owner, index, i, entry) for owner, index, value in parts if value is not None
                   for i, entry in enumerate(value.reshape(-1))]
        hits = [(owner, index, i) for owner, index, i, entry in entries if entry == old]
        last = entries[-1][:3] if entries and parts[-1][2] is not None else None
        if len(hits) > 1 or (hits and dynamic and self.values.get(out) == old):
            # the last entry is the values per anchor (4 box values ...): where it also equals the rows, it is not
            # the anchor count when another entry is, or when a -1 infers the rows
            hits = [h for h in hits if h != last]
        if len(hits) > 1:
            raise EdgeAnchorError(f"Reshape {node.name or out}: its shape has {len(hits)} entries equal to the anchor "
                                  f"rows {old}; edgeanchor cannot tell which one to fix")
        if hits:
            owner, index, i = hits[0]
            value = next(v for o, j, v in parts if o is owner and j == index)
            assert value is not None  # a hit is an entry of a constant
            fixed = np.array(value, copy=True).reshape(-1)
            fixed[i] = new
            self.set_constant(owner, index, fixed.reshape(value.shape))
        elif not dynamic:
            raise EdgeAnchorError(f"Reshape {node.name or out}: its constant shape does not show the anchor rows "
                                  f"{old}; edgeanchor cannot fix it for the pruned head")

    def shape_parts(self, tensor: str) -> list[tuple[onnx.NodeProto, int, np.ndarray | None]]:
        """(reading node, its input index, the constant or None) for a shape tensor or the parts a Concat joins."""
        value = self.g.constant(tensor)
        reader = next(n for n in self.graph.node if tensor in n.input)
        if value is not None:
            return [(reader, list(reader.input).index(tensor), value)]
        node = self.g.producer.get(tensor)
        if node is not None and node.op_type == "Concat":
            return [(node, i, self.g.constant(t)) for i, t in enumerate(node.input)]
        return [(reader, 0, None)]

    def set_constant(self, owner: onnx.NodeProto, index: int, value: np.ndarray) -> None:
        """Give ``owner``'s input ``index`` the value: a Constant node only it reads is rewritten, else a clone."""
        name = owner.input[index]
        producer = self.g.producer.get(name)
        if producer is not None and producer.op_type == "Constant" and len(self.consumers(name)) == 1:
            attr = next(a for a in producer.attribute if a.name == "value")
            attr.t.CopyFrom(numpy_helper.from_array(value.astype(numpy_helper.to_array(attr.t).dtype), name))
            return
        if producer is not None:  # a Constant others read too: the pruned value is an initializer of its own
            new = self.unique(f"{name}_pruned")
            self.graph.initializer.append(numpy_helper.from_array(value, new))
            owner.input[index] = new
            return
        self.replace_initializer(owner, index, value)

    def fix_slice(self, node: onnx.NodeProto, shapes: Mapping[str, list[int | None]]) -> None:
        old, new = self.rows_old[node.output[0]], self.rows_new[node.output[0]]
        dims = shapes.get(node.input[0], [])
        axis = next((i for i, d in enumerate(dims) if d == old), None)
        if axis is None or len(node.input) < 3:
            raise EdgeAnchorError(f"Slice {node.name or node.output[0]} on the head chain: edgeanchor cannot tell "
                                  "whether it cuts the anchor axis; prune a graph without it")
        starts, ends = self.g.constant(node.input[1]), self.g.constant(node.input[2])
        axes = self.g.constant(node.input[3]) if len(node.input) > 3 and node.input[3] else np.arange(len(dims))
        if starts is None or ends is None or axes is None:
            raise EdgeAnchorError(f"Slice {node.name or node.output[0]} on the head chain has dynamic bounds; "
                                  "edgeanchor cannot fix them for the pruned head")
        for i, a in enumerate(axes.reshape(-1)):
            if int(a) % len(dims) != axis:
                continue
            if starts.reshape(-1)[i] != 0 or ends.reshape(-1)[i] < old:
                raise EdgeAnchorError(f"Slice {node.name or node.output[0]} selects some anchor rows; edgeanchor "
                                      "cannot prune through it")
            if ends.reshape(-1)[i] == old:
                fixed = np.array(ends, copy=True).reshape(-1)
                fixed[i] = new
                self.set_constant(node, 2, fixed.reshape(ends.shape))

    def remove_dead(self) -> None:
        """Remove the nodes, initializers and value infos that only the dropped parts needed."""
        alive = {id(n) for n in _needed(self.graph, [o.name for o in self.graph.output])}
        dead = [n for n in self.graph.node if id(n) not in alive and n.output[0] in self.used]
        gone = {o for n in dead for o in n.output}
        for n in dead:
            self.graph.node.remove(n)
        read = {t for n in self.graph.node for t in [*n.input, *_subgraph_inputs(n)]}
        for t in [t for t in self.graph.initializer if t.name not in read and t.name in self.read_before]:
            self.graph.initializer.remove(t)
        stale = gone | self.chain
        for v in [v for v in self.graph.value_info if v.name in stale]:
            self.graph.value_info.remove(v)

    def fix_outputs(self) -> None:
        """The outputs' static anchor dims, updated: the rows, or for a per-level output its channels or anchors."""
        for output in self.graph.output:
            convs = [c for c in self.match.convs if output.name in c.path]
            old, new = self.rows_old.get(output.name), self.rows_new.get(output.name)
            if not convs or old == new:
                continue
            pairs = [(old, new)]
            if len(convs) == 1:  # one level's own output: [N, A*V, H, W] or [N, A, H, W, V]
                c, kept = convs[0], len(self.keep[convs[0].level])
                pairs += [(c.out_channels, kept * c.values_per_anchor), (c.anchors, kept)]
            dims = list(output.type.tensor_type.shape.dim)[1:]
            for was, now in pairs:
                dim = next((d for d in dims if d.HasField("dim_value") and d.dim_value == was), None)
                if dim is not None:
                    dim.dim_value = int(now or 0)
                    break

    def run(self) -> onnx.ModelProto:
        for conv in self.match.convs:
            if self.keep[conv.level]:
                self.slice_conv(conv)
            else:
                self.drop_branch(conv)
        self.remove_dead()  # first, so that no constant of a dropped branch is fixed
        self.fix_constants()
        self.fix_outputs()
        return self.model


def prune_graph(model: onnx.ModelProto, match: HeadMatch, spec: HeadSpec,
                keep: Mapping[int, Sequence[int]]) -> onnx.ModelProto:
    """The user's graph with only the kept anchors: head convs sliced, dropped levels removed, shapes fixed.

    Args:
        model: the original graph.
        match: its head, from :func:`~.head_match.find_head`.
        spec: the head spec.
        keep: level -> kept anchor positions within a cell (indices into ``spec.levels[level].anchors``),
            sorted; a level missing or empty is dropped.

    Returns:
        A new model with the same input and output names, whose outputs are the original's rows
        :func:`~.head_match.kept_rows`. Every node and initializer outside the head chain is byte-identical.
    """
    checked = _check_keep(spec, keep)
    pruned = _Surgeon(model, match, checked).run()
    try:
        onnx.checker.check_model(pruned)
    except (onnx.checker.ValidationError, ValueError) as exc:  # a bug here, but say which check failed
        raise RuntimeError(f"the pruned graph fails the ONNX checker: {first_line(exc)}") from exc
    return pruned
