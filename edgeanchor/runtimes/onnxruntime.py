"""ONNX Runtime: sessions with explicit options, and its :class:`~.base.Graph`.

ONNX Runtime is a core dependency, imported when a session is made. It runs the fp32 graphs and
the QDQ int8 graphs (``*_int8.onnx``) of an export made with int8 on.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import EdgeAnchorError
from .base import Graph, as_arrays, first_line, import_runtime, input_does_not_fit

NAME = "ONNX Runtime"
PRECISIONS = ("fp32", "int8")
OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
              "all": "ORT_ENABLE_ALL"}


def load():
    """The ``onnxruntime`` module, or a one-line error naming the package to install."""
    return import_runtime("onnxruntime", None, NAME)


def make_session(
    path: str | os.PathLike,
    *,
    intra_op_num_threads: int = 0,
    inter_op_num_threads: int = 0,
    graph_optimization_level: str = "all",
    providers=("CPUExecutionProvider",),
):
    """An ONNX Runtime session with explicit options.

    Args:
        path: an .onnx file.
        intra_op_num_threads: threads inside one op; 0 lets ORT choose.
        inter_op_num_threads: threads across ops; 0 lets ORT choose.
        graph_optimization_level: "disable", "basic", "extended" or "all".
        providers: execution providers, in order of preference.

    Raises:
        EdgeAnchorError: missing file or unknown optimisation level.
    """
    import onnxruntime as ort

    if graph_optimization_level not in OPT_LEVELS:
        raise EdgeAnchorError(
            f"unknown graph optimisation level {graph_optimization_level!r}; choose one of {', '.join(OPT_LEVELS)}"
        )
    if not Path(path).is_file():
        raise EdgeAnchorError(f"ONNX file {path} does not exist; export the model first")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(intra_op_num_threads)
    opts.inter_op_num_threads = int(inter_op_num_threads)
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[graph_optimization_level])
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=list(providers))
    except Exception as exc:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...) for a bad file
        raise EdgeAnchorError(
            f"ONNX Runtime {ort.__version__} cannot load {path} ({first_line(exc)}); write it again with "
            "prune-and-export, or use the ONNX Runtime version that wrote it"
        ) from None


class OrtGraph(Graph):
    runtime = "onnxruntime"

    def __init__(self, path, *, threads: int = 0, opt_level: str = "all", precision: str = "fp32"):
        super().__init__(path, precision)
        import onnxruntime as ort

        self.session = make_session(path, intra_op_num_threads=threads, inter_op_num_threads=1,
                                    graph_optimization_level=opt_level)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.settings = {"runtime": self.runtime, "version": ort.__version__, "precision": precision,
                         "providers": self.session.get_providers(),
                         "intra_op_num_threads": threads or "default (one per physical core)",
                         "inter_op_num_threads": 1, "graph_optimization_level": opt_level,
                         "execution_mode": "ORT_SEQUENTIAL"}

    def run(self, feeds):
        from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument

        try:
            return dict(zip(self.output_names, self.session.run(self.output_names, as_arrays(feeds))))
        except (InvalidArgument, Fail) as exc:  # an input of another shape or type than the graph declares
            raise input_does_not_fit(NAME, self.path, exc) from None


def open_graph(path, *, threads: int = 0, precision: str = "fp32", opt_level: str = "all") -> OrtGraph:
    """``path`` in ONNX Runtime (checked by :func:`edgeanchor.runtimes.open_graph` first)."""
    return OrtGraph(path, threads=threads, opt_level=opt_level, precision=precision)
