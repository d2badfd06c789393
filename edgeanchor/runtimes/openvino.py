"""OpenVINO: the CPU plugin, latency mode, one stream, explicit inference precision.

Precision is explicit: OpenVINO on a CPU with bf16 support otherwise runs in bf16 by default and
silently gives other numbers, so every graph is compiled with ``INFERENCE_PRECISION_HINT`` set, and
the chosen precision is recorded. ``openvino`` is imported when a graph is opened.
"""

from __future__ import annotations

import numpy as np

from ..errors import EdgeAnchorError
from .base import Graph, as_arrays, first_line, import_runtime, input_does_not_fit

NAME = "OpenVINO"
PRECISIONS = ("fp32", "bf16", "fp16", "int8")
# our precision -> OpenVINO's INFERENCE_PRECISION_HINT; int8 runs a QDQ graph, the rest of it in f32
_HINT = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32"}
# CPU capability that a precision needs (ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")).
_CAPABILITY = {"bf16": "BF16", "fp16": "FP16"}


def load():
    """The ``openvino`` module, or a one-line error naming the extra to install."""
    return import_runtime("openvino", "openvino", NAME)


def capabilities() -> list[str]:
    """The CPU plugin's OPTIMIZATION_CAPABILITIES on this machine (FP32, BF16, FP16, INT8, ...)."""
    ov = load()
    return list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def check_precision(precision: str) -> None:
    """Refuse bf16 / fp16 on a CPU whose OpenVINO plugin does not support it (one line)."""
    if precision in _CAPABILITY:
        caps = capabilities()
        if _CAPABILITY[precision] not in caps:
            raise EdgeAnchorError(
                f"this CPU has no {precision} support in OpenVINO (its capabilities: {', '.join(caps)}); "
                "pass `precision` fp32"
            )


class OpenVinoGraph(Graph):
    """A graph compiled for OpenVINO's CPU plugin, latency mode, one stream, explicit precision.

    int8 runs a QDQ graph: its quantized ops run in int8, the rest in f32.
    """

    runtime = "openvino"

    def __init__(self, path, *, threads: int = 0, precision: str = "fp32"):
        super().__init__(path, precision)
        ov = load()
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": _HINT[precision], "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = str(int(threads))
        try:
            model = core.read_model(str(path))
            self.compiled = compile_off_thread(core, model, config)
        except Exception as exc:  # OpenVINO raises RuntimeError/its own types with long multi-line texts
            raise EdgeAnchorError(f"OpenVINO {str(ov.__version__).split('-')[0]} cannot load {path} "
                                  f"({first_line(exc)}); write it again with prune-and-export, or use the OpenVINO "
                                  "version that wrote it") from None
        self.request = self.compiled.create_infer_request()
        self.input_names = [i.get_any_name() for i in self.compiled.inputs]
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]
        self.settings = {"runtime": self.runtime, "version": str(ov.__version__).split("-")[0], "device": "CPU",
                         "precision": precision,
                         "inference_precision_hint": str(self.compiled.get_property("INFERENCE_PRECISION_HINT")),
                         "performance_hint": "LATENCY", "num_streams": 1,
                         "inference_num_threads": int(self.compiled.get_property("INFERENCE_NUM_THREADS"))}

    def run(self, feeds):
        arrays = as_arrays(feeds)
        try:
            self.request.infer({name: arrays[name] for name in self.input_names})
        except RuntimeError as exc:  # an input of another shape than the graph declares
            raise input_does_not_fit(NAME, self.path, exc) from None
        return {name: np.array(self.request.get_tensor(name).data) for name in self.output_names}


def compile_off_thread(core, model, config: dict):
    """``core.compile_model(model, "CPU", config)`` in a short-lived thread.

    OpenVINO 2026.4's CPU plugin gives the compiling thread a signal alternate stack (11.5 KB) and
    takes it away when the compiled model is released. Seen here: a training run with DataLoader
    workers (torch then keeps a SIGCHLD handler) followed, in the same process, by prune-and-export
    with OpenVINO was killed by a kernel SIGSEGV (si_code SI_KERNEL: the signal frame could not be
    written) on signal delivery; our reading is that the main thread was left with the alternate stack
    of an already released model when several were compiled and released out of order. Compiled in a
    thread of its own, the alternate stack belongs to that thread and the main thread's is never
    touched; the same run then passes.
    """
    import threading

    box: dict = {}

    def work():
        try:
            box["compiled"] = core.compile_model(model, "CPU", config)
        except Exception as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=work, name="openvino-compile")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["compiled"]


def open_graph(path, *, threads: int = 0, precision: str = "fp32") -> OpenVinoGraph:
    """``path`` (ONNX or IR ``.xml``) in OpenVINO (checked by :func:`edgeanchor.runtimes.open_graph` first)."""
    return OpenVinoGraph(path, threads=threads, precision=precision)
