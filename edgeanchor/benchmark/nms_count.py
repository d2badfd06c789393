"""Boxes entering NMS per image, counted from the deployed graph itself (no torch, no checkpoint).

``model.onnx`` runs one ``NonMaxSuppression`` on a (classes x boxes) score
matrix that holds only the candidates passing the score threshold and the
model's top-k, and -1 elsewhere (``exporting/graphs.py``). Exposing that matrix
as an extra output of the graph and counting its entries >= 0 gives exactly
the boxes NMS sees, with the deployed rule.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from ..errors import EdgeAnchorError, first_line

COUNT_RUNTIMES = ("onnxruntime", "openvino")  # runtimes that run the graph with an intermediate output


def nms_scores_output(model, source="the end-to-end graph"):
    """``model`` (an onnx ModelProto, read from ``source``) with the NMS node's score input added as a graph
    output; and its name.

    Raises:
        EdgeAnchorError: the graph has no NonMaxSuppression node, or several (not an edgeanchor end-to-end graph).
    """
    import onnx

    nms = [n for n in model.graph.node if n.op_type == "NonMaxSuppression"]
    if len(nms) != 1 or len(nms[0].input) < 2:
        raise EdgeAnchorError(f"{source} has {len(nms)} NonMaxSuppression nodes, where an edgeanchor end-to-end "
                              "graph has one; re-run prune-and-export to write the folder anew")
    name = nms[0].input[1]  # (1, C, B) scores, -1 where not a candidate
    model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return model, name


class NmsCounter:
    """Counts the boxes entering NMS of one variant's ``model.onnx``, in ONNX Runtime or OpenVINO."""

    def __init__(self, model_path, runtime: str):
        import onnx

        from ..runtimes import open_graph

        try:
            model = onnx.load(str(model_path), load_external_data=False)  # edgeanchor writes no external data
        except Exception as exc:  # onnx raises protobuf's DecodeError and others for a file that is not ONNX
            raise EdgeAnchorError(f"cannot read {model_path} as an ONNX graph ({first_line(exc)}); re-run "
                                  "prune-and-export to write the folder anew") from None
        model, self.name = nms_scores_output(model, model_path)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model_nms_scores.onnx"
            onnx.save(model, str(path))
            self.graph = open_graph(runtime, path, threads=1)
        self.runtime = runtime

    def count(self, image: np.ndarray) -> int:
        """Boxes entering NMS for one float32 (1, 3, H, W) image."""
        return int((self.graph.run({"images": image})[self.name] >= 0).sum())


def counting_runtime(preferred: str) -> str | None:
    """``preferred`` if it can count, else the first installed of :data:`COUNT_RUNTIMES`; None if none is."""
    from ..runtimes import is_installed

    for runtime in (preferred, *COUNT_RUNTIMES):
        if runtime in COUNT_RUNTIMES and is_installed(runtime):
            return runtime
    return None
