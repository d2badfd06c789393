"""What every runtime shares: the :class:`Graph` interface, feeds as arrays, and the stage runner.

A runtime module (:mod:`.onnxruntime`, :mod:`.openvino`, :mod:`.opencv`, :mod:`.tensorrt`) subclasses
:class:`Graph`; :class:`GraphRunner` runs bench's four stage graphs of one variant through any of them.
Nothing here imports torch or a runtime.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import EdgeAnchorError, first_line  # noqa: F401 - first_line: the runtimes quote their errors with it

STAGES = ("backbone", "head", "postprocess", "end_to_end")
# What a timing counts: wall time (latency), or this process's CPU time (every thread's), which leaves out
# the time spent waiting for a CPU on a busy machine. TensorRT times the GPU with CUDA events either way.
CLOCKS = {"wall": time.perf_counter_ns, "cpu": time.process_time_ns}


class Graph:
    """One graph loaded in one runtime: ``run(feeds) -> {output name: array}``.

    Attributes:
        runtime, path, precision: what was opened and how.
        input_names, output_names: the graph's tensor names, in graph order.
        settings: the options the runtime was given, for the record.
    """

    runtime = ""

    def __init__(self, path: Path, precision: str):
        self.path = Path(path)
        self.precision = precision
        self.input_names: list[str] = []
        self.output_names: list[str] = []
        self.settings: dict = {}

    def run(self, feeds: dict) -> dict[str, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def timed(self, feeds: dict, clock: Callable[[], int] = time.perf_counter_ns) -> tuple[dict[str, np.ndarray], int]:
        """``run`` and its time in nanoseconds by ``clock`` (default: wall time; see ``CLOCKS``)."""
        t0 = clock()
        out = self.run(feeds)
        return out, clock() - t0


def as_arrays(feeds: dict) -> dict[str, np.ndarray]:
    """Feeds as contiguous numpy arrays (torch tensors are detached and moved to the CPU)."""
    out = {}
    for k, v in feeds.items():
        if hasattr(v, "detach"):  # a torch tensor
            v = v.detach().cpu().numpy()
        out[k] = np.ascontiguousarray(v)
    return out


def input_does_not_fit(name: str, path, exc: BaseException) -> EdgeAnchorError:
    """A runtime refused a graph's input (a graph of another shape than the rest of its export folder)."""
    return EdgeAnchorError(f"{name} cannot run {path} on its input ({first_line(exc)}); the graph does not fit the "
                           "rest of its export folder: re-run prune-and-export to write the folder anew")


def import_runtime(module: str, extra: str | None, name: str):
    """Import a runtime's Python module, or raise a one-line error naming the extra (or package) to install."""
    try:
        return importlib.import_module(module)
    except (ImportError, OSError):
        hint = f'pip install "edgeanchor[{extra}]"' if extra else f"pip install {module}"
        raise EdgeAnchorError(f"{name} is not installed; {hint}") from None


class GraphRunner:
    """The four stage graphs of one variant in one runtime (ONNX Runtime, OpenVINO or TensorRT), explicit options.

    ``clock`` (an attribute, one of ``CLOCKS``' values) is what :meth:`run_all` counts; wall time by default.
    """

    def __init__(self, graphs: dict[str, Graph]):
        """``graphs``: stage -> the opened graph, for the stages in ``STAGES``."""
        self.clock: Callable[[], int] = time.perf_counter_ns
        self.graphs = graphs
        for stage, before in (("head", "backbone"), ("postprocess", "head")):  # checked before anything is timed
            takes, given = getattr(graphs[stage], "input_names", None), getattr(graphs[before], "output_names", None)
            missing = [n for n in takes or () if given is not None and n not in given]
            if missing:
                raise EdgeAnchorError(
                    f"{graphs[stage].path} takes {missing[0]}, which {graphs[before].path.name} beside it does not "
                    "give: the graphs are not from one export; re-run prune-and-export to write the folder anew")
        self.settings = {**self.graphs["backbone"].settings,
                         "graphs": {s: Path(g.path).name for s, g in self.graphs.items()}}

    def run_all(self, image: np.ndarray) -> dict[str, int]:
        """Nanoseconds per stage for one image."""
        g = self.graphs
        feats, t_b = g["backbone"].timed({"images": image}, self.clock)
        head, t_h = g["head"].timed({k: feats[k] for k in g["head"].input_names}, self.clock)
        _, t_p = g["postprocess"].timed({k: head[k] for k in g["postprocess"].input_names}, self.clock)
        _, t_e = g["end_to_end"].timed({"images": image}, self.clock)
        return {"backbone": t_b, "head": t_h, "postprocess": t_p, "end_to_end": t_e}
