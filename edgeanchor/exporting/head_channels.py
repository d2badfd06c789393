"""Output channels of the head convolutions, read back from an exported head graph (onnx only, no torch).

``regress`` gates on them on the device, where torch is not installed.
"""

from __future__ import annotations

import onnx

from ..errors import EdgeAnchorError


def read_head_channels(head: onnx.ModelProto, levels: list[int]) -> list[dict]:
    """Output channels of the convolutions producing ``cls_L`` and ``box_L``, read from the graph.

    Args:
        head: the head graph.
        levels: the active model levels whose outputs to read.

    Returns:
        Per level ``{"level", "cls_channels", "box_channels"}``; for YOLO both are the one Detect
        convolution's na*(5+nc), and ``"one_conv": True`` says so. A fused SSD head's one convolution
        per level reads as its two slices, A*K and A*4, the same entry as the unfused head's.
    """
    graph = head.graph
    producer = {out: node for node in graph.node for out in node.output}
    weights = {t.name: list(t.dims) for t in graph.initializer}

    def conv_of(output: str):
        node = producer.get(output)
        # YOLO's cls/box outputs are views (Reshape, Slice) of one Detect convolution per level.
        for _ in range(len(graph.node)):  # at most one step per node: a crafted graph may hold a cycle
            if node is None or node.op_type not in ("Identity", "Reshape", "Slice", "Split") or not node.input:
                break
            node = producer.get(node.input[0])
        if node is None or node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in weights:
            raise EdgeAnchorError(f"head output {output} is not produced by a Conv with constant weights, as in an "
                                  "edgeanchor head graph; re-run prune-and-export to write the folder anew")
        return node

    def sliced_from(output: str, conv) -> bool:
        """True if ``output`` is a channel slice taken straight off ``conv`` (the fused SSD head)."""
        node = producer.get(output)
        return node is not None and node.op_type in ("Slice", "Split") and producer.get(node.input[0]) is conv

    declared = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in graph.output}
    result = []
    for i in levels:
        cls_conv, box_conv = conv_of(f"cls_{i}"), conv_of(f"box_{i}")
        entry = {"level": i, "cls_channels": int(weights[cls_conv.input[1]][0]),
                 "box_channels": int(weights[box_conv.input[1]][0])}
        if cls_conv is box_conv and sliced_from(f"cls_{i}", cls_conv) and sliced_from(f"box_{i}", box_conv):
            if not (len(declared.get(f"cls_{i}", ())) > 1 and len(declared.get(f"box_{i}", ())) > 1):
                raise EdgeAnchorError(f"head outputs cls_{i} and box_{i} declare no channel dimension, as an "
                                      "edgeanchor head graph does; re-run prune-and-export to write the folder anew")
            # the fused head (exporting/fused_head.py): one conv of A*(K+4) channels sliced into cls A*K and box A*4;
            # the counts are the outputs' (static, declared) channels, as for the unfused head's two convs
            entry.update(cls_channels=int(declared[f"cls_{i}"][1]), box_channels=int(declared[f"box_{i}"][1]))
        elif cls_conv is box_conv:
            entry["one_conv"] = True  # YOLO's Detect: both counts are the one convolution's na*(5+nc)
        result.append(entry)
    return result

