"""One place where every runtime opens and runs one exported graph.

:func:`open_graph` returns a :class:`Graph` whose ``run(feeds)`` maps input
names to numpy arrays and returns output name -> numpy array, whatever the
runtime: ONNX Runtime, OpenVINO (ONNX or IR ``.xml``) or OpenCV DNN. Parity
checks, the runtime matrix of the report and ``edgeanchor bench`` all open
graphs here, so what is timed is what is checked. TensorRT runs a graph as an
engine built on first use (:mod:`edgeanchor.exporting.tensorrt_graph`, with
cuda-python for memory and timing). Nothing here imports torch.

Optional runtimes are imported lazily; a missing one is a one-line
:class:`~edgeanchor.errors.EdgeAnchorError` naming the extra to install.
Precision is explicit: OpenVINO on a CPU with bf16 support otherwise runs in
bf16 by default and silently gives other numbers, so every graph is compiled
with ``INFERENCE_PRECISION_HINT`` set, and the chosen precision is recorded.
"""

from __future__ import annotations

import importlib
import os
import time
from pathlib import Path

import numpy as np

from ..errors import EdgeAnchorError

RUNTIMES = ("onnxruntime", "openvino", "opencv", "tensorrt")
PRECISIONS = ("f32", "bf16", "f16", "int8")
# runtime -> (module to import, pip extra of edgeanchor, what the user calls it)
_MODULES = {
    "onnxruntime": ("onnxruntime", None, "ONNX Runtime"),
    "openvino": ("openvino", "openvino", "OpenVINO"),
    "opencv": ("cv2", "opencv", "OpenCV"),
    "tensorrt": ("tensorrt", "tensorrt", "TensorRT"),
}
# Precisions each runtime runs our graphs in. int8 means the QDQ graphs (*_int8.onnx) of an export made
# with int8 on; the others are the fp32 graphs compiled at that precision.
RUNTIME_PRECISIONS = {
    "onnxruntime": ("f32", "int8"),
    "openvino": ("f32", "bf16", "f16", "int8"),
    "opencv": ("f32",),
    "tensorrt": ("f32", "f16"),
    "torch": ("f32",),
}
# OpenVINO CPU capability that a precision needs (ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")).
_OV_CAPABILITY = {"bf16": "BF16", "f16": "FP16"}
TRT_ONLY = "model_trt"  # holds the EfficientNMS_TRT plugin


OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
              "all": "ORT_ENABLE_ALL"}


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
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EdgeAnchorError(
            f"ONNX Runtime cannot load {path} ({first[:200]}); the file is damaged or not an ONNX graph: "
            "export it again"
        ) from None


def require(runtime: str):
    """Import the runtime's Python module, or raise a one-line error naming the extra to install."""
    if runtime not in _MODULES:
        raise EdgeAnchorError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    module, extra, name = _MODULES[runtime]
    if runtime == "tensorrt":
        from .tensorrt import require_tensorrt

        return require_tensorrt()
    try:
        return importlib.import_module(module)
    except (ImportError, OSError):
        hint = f'pip install "edgeanchor[{extra}]"' if extra else f"pip install {module}"
        raise EdgeAnchorError(f"{name} is not installed; {hint}") from None


def is_installed(runtime: str) -> bool:
    """True if the runtime's Python module imports (TensorRT: and a CUDA GPU is there)."""
    try:
        require(runtime)
    except EdgeAnchorError:
        return False
    return True


def version(runtime: str) -> str:
    mod = require(runtime)
    text = str(getattr(mod, "__version__", None) or getattr(mod, "get_version", lambda: "unknown")())
    return text.split("-")[0]  # OpenVINO: "2026.4.1-22982-<commit>-releases/..." -> "2026.4.1"


def check_precision(runtime: str, precision: str) -> None:
    """Refuse a precision the runtime cannot run our graphs in (one line, before anything is opened)."""
    if precision not in PRECISIONS:
        raise EdgeAnchorError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    allowed = RUNTIME_PRECISIONS.get(runtime, ("f32",))
    if precision not in allowed:
        raise EdgeAnchorError(
            f"runtime {runtime} cannot run the exported graphs in {precision}; pass `precision` "
            f"{' or '.join(allowed)}"
            + (" (int8 needs the int8 graphs of an export made with `int8` on)" if "int8" in allowed else "")
        )
    if runtime == "openvino" and precision in _OV_CAPABILITY:
        caps = openvino_capabilities()
        if _OV_CAPABILITY[precision] not in caps:
            raise EdgeAnchorError(
                f"this CPU has no {precision} support in OpenVINO (its capabilities: {', '.join(caps)}); "
                "pass `precision` f32"
            )


def openvino_capabilities() -> list[str]:
    ov = require("openvino")
    return list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def check_graph_for_runtime(path: str | os.PathLike, runtime: str) -> None:
    """``model_trt.onnx`` (the TensorRT NMS plugin) on any other runtime is a one-line error."""
    if Path(path).stem.startswith(TRT_ONLY) and runtime != "tensorrt":
        raise EdgeAnchorError(
            f"{Path(path).name} is for TensorRT only (its NMS is the EfficientNMS_TRT plugin); "
            f"on {runtime} use model.onnx, or model_nonms.onnx with your own NMS"
        )


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

    def timed(self, feeds: dict) -> tuple[dict[str, np.ndarray], int]:
        """``run`` and its wall time in nanoseconds."""
        t0 = time.perf_counter_ns()
        out = self.run(feeds)
        return out, time.perf_counter_ns() - t0


def as_arrays(feeds: dict) -> dict[str, np.ndarray]:
    """Feeds as contiguous numpy arrays (torch tensors are detached and moved to the CPU)."""
    out = {}
    for k, v in feeds.items():
        if hasattr(v, "detach"):  # a torch tensor
            v = v.detach().cpu().numpy()
        out[k] = np.ascontiguousarray(v)
    return out


class OrtGraph(Graph):
    runtime = "onnxruntime"

    def __init__(self, path, *, threads: int = 0, opt_level: str = "all", precision: str = "f32"):
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
        return dict(zip(self.output_names, self.session.run(self.output_names, as_arrays(feeds))))


class OpenVinoGraph(Graph):
    """A graph compiled for OpenVINO's CPU plugin, latency mode, one stream, explicit precision.

    int8 runs a QDQ graph: its quantized ops run in int8, the rest in f32.
    """

    runtime = "openvino"

    def __init__(self, path, *, threads: int = 0, precision: str = "f32"):
        super().__init__(path, precision)
        ov = require("openvino")
        core = ov.Core()
        hint = "f32" if precision == "int8" else precision
        config = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            model = core.read_model(str(path))
            self.compiled = compile_off_thread(core, model, config)
        except Exception as exc:  # OpenVINO raises RuntimeError/its own types with long multi-line texts
            raise EdgeAnchorError(f"OpenVINO cannot load {path} ({_first_line(exc)}); "
                                  "check that it is an exported graph of this edgeanchor") from None
        self.request = self.compiled.create_infer_request()
        self.input_names = [i.get_any_name() for i in self.compiled.inputs]
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]
        self.settings = {"runtime": self.runtime, "version": version("openvino"), "device": "CPU",
                         "precision": precision,
                         "inference_precision_hint": str(self.compiled.get_property("INFERENCE_PRECISION_HINT")),
                         "performance_hint": "LATENCY", "num_streams": 1,
                         "inference_num_threads": int(self.compiled.get_property("INFERENCE_NUM_THREADS"))}

    def run(self, feeds):
        arrays = as_arrays(feeds)
        self.request.infer({name: arrays[name] for name in self.input_names})
        return {name: np.array(self.request.get_tensor(name).data) for name in self.output_names}


class OpenCvGraph(Graph):
    """A graph read with ``cv2.dnn.readNetFromONNX``: OpenCV backend, CPU target, Winograd off.

    OpenCV 4.x runs 3x3 convolutions with Winograd by default, which moves model_nonms's boxes up to
    1.5e-4 px from ONNX Runtime (6.1e-5 px without); it is off unless ``winograd``. Outputs get the
    graph's declared static shapes (OpenCV 4.x may add or drop unit axes) and ``metadata`` holds the
    graph's metadata_props (model_nonms.onnx carries its NMS rule there).
    """

    runtime = "opencv"

    def __init__(self, path, *, threads: int = 0, precision: str = "f32", winograd: bool = False):
        super().__init__(path, precision)
        cv2 = require("opencv")
        cv2.setNumThreads(int(threads) if threads > 0 else -1)  # 0 would mean "no threads" to OpenCV
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        inits = {i.name for i in model.graph.initializer}
        self.input_names = [i.name for i in model.graph.input if i.name not in inits]
        self.output_names = [o.name for o in model.graph.output]
        self._shapes = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
        self.metadata = {m.key: m.value for m in model.metadata_props}
        major = int(cv2.__version__.split(".")[0])
        if major < 5 and any(n.op_type == "NonMaxSuppression" for n in model.graph.node):
            raise EdgeAnchorError(f"OpenCV {cv2.__version__} cannot load {Path(path).name} (OpenCV 4 has no "
                                  "NonMaxSuppression layer); use model_nonms.onnx with cv2.dnn.NMSBoxesBatched, "
                                  "or OpenCV 5")
        try:
            self.net = cv2.dnn.readNetFromONNX(str(path))
        except cv2.error as exc:
            raise EdgeAnchorError(f"OpenCV {cv2.__version__} cannot load {Path(path).name} "
                                  f"({_opencv_reason(exc)})") from None
        self.net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        self.net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        if hasattr(self.net, "enableWinograd"):
            self.net.enableWinograd(bool(winograd))
        self.settings = {"runtime": self.runtime, "version": cv2.__version__, "precision": precision,
                         "backend": "DNN_BACKEND_OPENCV", "target": "DNN_TARGET_CPU",
                         "engine": "ENGINE_AUTO (new engine, classic fallback)" if major >= 5 else "classic",
                         "threads": cv2.getNumThreads() if threads > 0 else f"default ({cv2.getNumThreads()})",
                         "winograd": bool(winograd)}

    def run(self, feeds):
        import cv2

        arrays = as_arrays(feeds)
        for name in self.input_names:
            self.net.setInput(np.ascontiguousarray(arrays[name], dtype=np.float32), name)
        try:
            outs = dict(zip(self.output_names, self.net.forward(self.output_names)))
        except cv2.error as exc:
            raise EdgeAnchorError(f"OpenCV {cv2.__version__} cannot run {self.path.name} "
                                  f"({_opencv_reason(exc)})") from None
        return {n: outs[n].reshape(shape) if shape and all(shape) else outs[n] for n, shape in self._shapes.items()}


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


def open_graph(runtime: str, path: str | os.PathLike, *, threads: int = 0, precision: str = "f32",
               opt_level: str = "all", winograd: bool = False, engine_path: str | os.PathLike | None = None) -> Graph:
    """Open ``path`` in ``runtime`` (onnxruntime, openvino, opencv or tensorrt) at ``precision``.

    ``opt_level`` is ONNX Runtime's graph optimisation level; ``winograd`` is OpenCV's (off: exact);
    ``engine_path`` is where TensorRT keeps the graph's engine (built there when missing; required for it).

    Raises:
        EdgeAnchorError: runtime not installed, precision it cannot run, a TensorRT-only graph, a missing
            or unloadable file.
    """
    check_graph_for_runtime(path, runtime)
    check_precision(runtime, precision)
    if not Path(path).is_file():
        raise EdgeAnchorError(f"graph file {path} does not exist; re-run prune-and-export to write it")
    if runtime == "onnxruntime":
        return OrtGraph(path, threads=threads, opt_level=opt_level, precision=precision)
    if runtime == "openvino":
        return OpenVinoGraph(path, threads=threads, precision=precision)
    if runtime == "opencv":
        return OpenCvGraph(path, threads=threads, precision=precision, winograd=winograd)
    if runtime == "tensorrt":
        from .tensorrt_graph import TrtGraph

        if engine_path is None:
            raise ValueError("engine_path is needed to open a graph in TensorRT")
        return TrtGraph(path, engine_path, precision=precision)
    raise EdgeAnchorError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]


def _opencv_reason(exc) -> str:
    """The informative part of a cv2.error: a missing layer type, else the last OpenCV message."""
    import re

    text = " ".join(str(exc).split())
    missing = re.search(r'Can\'t create layer "[^"]*" of type "([^"]+)"', text)
    if missing:
        hint = "; use model_nonms.onnx with cv2.dnn.NMSBoxesBatched" if missing.group(1) == "NonMaxSuppression" else ""
        return f"it has no {missing.group(1)} layer{hint}"
    node = re.search(r"Node \[([^@\]]+)@[^\]]*\]", text)
    last = text.rsplit("error:", 1)[-1].strip().rstrip(">").strip()
    last = re.sub(r"^\(-?\d+:[^)]*\)\s*", "", last)
    return (f"{node.group(1)} node: " if node else "") + last[:160]
