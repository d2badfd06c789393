"""The runtimes, one module each, and the one place that opens and runs an exported graph.

:func:`open_graph` returns a :class:`~.base.Graph` whose ``run(feeds)`` maps input names to numpy
arrays and returns output name -> numpy array, whatever the runtime. Parity checks, the runtime matrix
of the report, ``edgeanchor bench`` and ``evaluate --export`` all open graphs here, so what is timed is
what is checked. As in Polygraphy's ``backend/``, each runtime is one module that owns its loader, its
graph (or runner) and its capability checks:

- :mod:`.onnxruntime`: ONNX Runtime sessions with explicit options;
- :mod:`.openvino`: OpenVINO's CPU plugin (ONNX or IR ``.xml``), explicit inference precision;
- :mod:`.opencv`: OpenCV DNN, and its runner (model_nonms.onnx + ``cv2.dnn.NMSBoxesBatched``);
- :mod:`.tensorrt`: an engine built on first use, run with cuda-python (no torch), and engine building;
- :mod:`.torch`: eager PyTorch stages of a checkpoint (``bench --runtime torch``), the only one with torch.

This package imports no runtime and no torch: each module is imported when its runtime is asked for,
and each imports its library inside its functions. A missing runtime is a one-line
:class:`~edgeanchor.errors.EdgeAnchorError` naming what to install.

Precision is spelled one way, as TensorRT and ONNX Runtime spell it: ``fp32``, ``fp16``, ``bf16``,
``int8``; :func:`canonical_precision` turns the older ``f32`` / ``f16`` into them at the boundaries.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from ..errors import EdgeAnchorError
from .base import STAGES, Graph, GraphRunner, as_arrays, first_line  # noqa: F401 - the package's shared names

RUNTIMES = ("onnxruntime", "openvino", "opencv", "tensorrt")  # the runtimes of the exported graphs
BENCH_RUNTIMES = (*RUNTIMES, "torch")  # bench also times the checkpoint in eager PyTorch
PRECISIONS = ("fp32", "bf16", "fp16", "int8")
# Older spellings, still accepted wherever a user gives a precision (flags, API arguments, stored results).
PRECISION_ALIASES = {"f32": "fp32", "f16": "fp16"}
TRT_ONLY = "model_trt"  # holds the EfficientNMS_TRT plugin


def canonical_precision(precision: str) -> str:
    """``precision`` in the one spelling (``f32`` -> ``fp32``, ``f16`` -> ``fp16``); other values unchanged.

    Unknown values pass through, so the check that follows (:func:`check_precision`, argparse's
    choices) names them.
    """
    return PRECISION_ALIASES.get(precision, precision)


def runtime_module(runtime: str):
    """The module of ``runtime`` (imported now; it imports its library only when used).

    Raises:
        EdgeAnchorError: an unknown runtime.
    """
    if runtime not in BENCH_RUNTIMES:
        raise EdgeAnchorError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    return importlib.import_module(f"{__name__}.{runtime}")


def require(runtime: str):
    """Import the runtime's Python module, or raise a one-line error naming the extra to install."""
    if runtime not in RUNTIMES:
        raise EdgeAnchorError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    return runtime_module(runtime).load()


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


def precisions(runtime: str) -> tuple[str, ...]:
    """The precisions ``runtime`` runs our graphs in (int8: the QDQ graphs of an export made with int8 on)."""
    return runtime_module(runtime).PRECISIONS


def check_precision(runtime: str, precision: str) -> None:
    """Refuse a precision the runtime cannot run our graphs in (one line, before anything is opened)."""
    precision = canonical_precision(precision)
    if precision not in PRECISIONS:
        raise EdgeAnchorError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    module = runtime_module(runtime)
    allowed = module.PRECISIONS
    if precision not in allowed:
        raise EdgeAnchorError(
            f"runtime {runtime} cannot run the exported graphs in {precision}; pass `precision` "
            f"{' or '.join(allowed)}"
            + (" (int8 needs the int8 graphs of an export made with `int8` on)" if "int8" in allowed else "")
        )
    if hasattr(module, "check_precision"):  # what this machine supports (OpenVINO: the CPU's capabilities)
        module.check_precision(precision)


def check_graph_for_runtime(graph: str | os.PathLike, runtime: str) -> None:
    """``model_trt`` (the TensorRT NMS plugin) on any other runtime is a one-line error.

    Args:
        graph: a graph's file, or its name.
    """
    name = Path(graph).stem
    if name.startswith(TRT_ONLY) and runtime != "tensorrt":
        raise EdgeAnchorError(
            f"{name}.onnx is for TensorRT only (its NMS is the EfficientNMS_TRT plugin); "
            f"on {runtime} use model.onnx, or model_nonms.onnx with your own NMS"
        )


def open_graph(runtime: str, path: str | os.PathLike, *, threads: int = 0, precision: str = "fp32",
               opt_level: str = "all", winograd: bool = False, engine=None) -> Graph:
    """Open ``path`` in ``runtime`` (onnxruntime, openvino, opencv or tensorrt) at ``precision``.

    ``opt_level`` is ONNX Runtime's graph optimisation level; ``winograd`` is OpenCV's (off: exact);
    ``engine`` is where TensorRT keeps the graph's engine, its timing cache and build log (an
    :class:`~edgeanchor.exporting.folder.EngineFiles`; built there when missing; required for it).

    Raises:
        EdgeAnchorError: runtime not installed, precision it cannot run, a TensorRT-only graph, a missing
            or unloadable file.
    """
    precision = canonical_precision(precision)
    if runtime not in RUNTIMES:
        raise EdgeAnchorError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    check_graph_for_runtime(path, runtime)
    check_precision(runtime, precision)
    if not Path(path).is_file():
        raise EdgeAnchorError(f"graph file {path} does not exist; re-run prune-and-export to write it")
    per_runtime: dict[str, dict[str, Any]] = {"onnxruntime": {"opt_level": opt_level}, "opencv": {"winograd": winograd},
                                              "tensorrt": {"engine": engine}}
    options = per_runtime.get(runtime, {})
    return runtime_module(runtime).open_graph(path, threads=threads, precision=precision, **options)


def make_runner(runtime: str, folder, variant: str, *, threads: int, opt_level: str = "all", precision: str = "fp32",
                end_to_end: str | None = None):
    """The stage runner for ``runtime`` over one variant of an :class:`~edgeanchor.exporting.folder.ExportFolder`.

    ``end_to_end``: the graph of the end-to-end stage (default model; OpenCV: model_nonms). The runner's
    ``run_all(image)`` gives nanoseconds per stage; its ``stages`` (when it has them) the stages it times.
    """
    from ..exporting.folder import STAGE_GRAPHS

    precision = canonical_precision(precision)
    if runtime not in BENCH_RUNTIMES:
        raise EdgeAnchorError(f"unknown runtime {runtime!r}; choose onnxruntime, openvino, opencv, torch or tensorrt")
    check_precision(runtime, precision)
    module = runtime_module(runtime)
    if runtime == "torch":
        return module.TorchRunner(folder.graph_detector(variant), threads=threads)
    stage_graphs = dict(getattr(module, "STAGE_GRAPHS", STAGE_GRAPHS))
    if end_to_end:
        check_graph_for_runtime(end_to_end, runtime)
        stage_graphs["end_to_end"] = end_to_end
    graphs = folder.graphs_for_runtime(runtime, variant, precision, stage_graphs)
    if runtime == "opencv":
        return module.OpenCvRunner(graphs, threads=threads)
    engines = module.engine_files(folder, variant, graphs, precision) if runtime == "tensorrt" else {}
    return GraphRunner({stage: open_graph(runtime, graphs[stage], threads=threads, precision=precision,
                                          opt_level=opt_level, engine=engines.get(stage))
                        for stage in STAGES})
