"""Stage runners: one object per model variant that runs backbone, head,
postprocess and end to end separately, on one runtime.

All runners take a float32 (1, 3, H, W) image in [0, 1] and keep each
stage's outputs to feed the next, so every stage sees the real workload
(the NMS sees the candidates the model really produces). Nothing here
imports torch (the device path): the eager PyTorch runner is in
:mod:`.torch_runner`, loaded only for runtime torch.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import EdgeAnchorError

STAGES = ("backbone", "head", "postprocess", "end_to_end")


class GraphRunner:
    """The four stage graphs of one variant in one runtime (ONNX Runtime, OpenVINO or TensorRT), explicit options.

    Graphs are opened by :func:`edgeanchor.exporting.runtimes.open_graph`, the same way parity opens them.
    """

    def __init__(self, runtime: str, graphs: dict[str, Path], *, threads: int = 0, opt_level: str = "all",
                 precision: str = "f32", engines: dict[str, Path] | None = None):
        """``graphs``: stage -> graph file, for the stages in ``STAGES``; ``engines``: TensorRT's engine files."""
        from ..exporting.runtimes import open_graph

        kwargs = {"opt_level": opt_level} if runtime == "onnxruntime" else {}
        self.graphs = {stage: open_graph(runtime, graphs[stage], threads=threads, precision=precision,
                                         engine_path=(engines or {}).get(stage), **kwargs)
                       for stage in STAGES}
        self.settings = {**self.graphs["backbone"].settings,
                         "graphs": {s: Path(g.path).name for s, g in self.graphs.items()}}

    def run_all(self, image: np.ndarray) -> dict[str, int]:
        """Nanoseconds per stage for one image."""
        g = self.graphs
        feats, t_b = g["backbone"].timed({"images": image})
        head, t_h = g["head"].timed({k: feats[k] for k in g["head"].input_names})
        _, t_p = g["postprocess"].timed({k: head[k] for k in g["postprocess"].input_names})
        _, t_e = g["end_to_end"].timed({"images": image})
        return {"backbone": t_b, "head": t_h, "postprocess": t_p, "end_to_end": t_e}


def make_runner(runtime: str, folder, variant: str, *, threads: int, opt_level: str = "all", precision: str = "f32",
                end_to_end: str | None = None):
    """The runner for ``runtime`` over one variant of an :class:`~edgeanchor.exporting.folder.ExportFolder`.

    ``end_to_end``: the graph of the end-to-end stage (default model; OpenCV: model_nonms).
    """
    from ..exporting.folder import STAGE_GRAPHS
    from ..exporting.runtimes import check_graph_for_runtime, check_precision

    check_precision(runtime, precision)
    stage_graphs = dict(OPENCV_STAGE_GRAPHS if runtime == "opencv" else STAGE_GRAPHS)
    if end_to_end:
        check_graph_for_runtime(f"{end_to_end}.onnx", runtime)
        stage_graphs["end_to_end"] = end_to_end
    if runtime in ("onnxruntime", "openvino"):
        return GraphRunner(runtime, folder.graphs_for_runtime(runtime, variant, precision, stage_graphs), threads=threads,
                           opt_level=opt_level, precision=precision)
    if runtime == "opencv":
        from .opencv_runner import OpenCvRunner

        return OpenCvRunner(folder.graphs_for_runtime(runtime, variant, precision, stage_graphs), threads=threads)
    if runtime == "torch":
        from .torch_runner import TorchRunner

        return TorchRunner(folder.graph_detector(variant), threads=threads)
    if runtime == "tensorrt":
        graphs = folder.graphs_for_runtime(runtime, variant, precision, stage_graphs)
        return GraphRunner(runtime, graphs, precision=precision, engines=engine_paths(folder, variant, graphs, precision))
    raise EdgeAnchorError(f"unknown runtime {runtime!r}; choose onnxruntime, openvino, opencv, torch or tensorrt")


# OpenCV: the deployment path of model_nonms.onnx; its end to end is the graph plus cv2.dnn.NMSBoxesBatched.
OPENCV_STAGE_GRAPHS = {"backbone": "backbone", "head": "head", "end_to_end": "model_nonms"}


def engine_paths(folder, variant: str, graphs: dict[str, Path], precision: str) -> dict[str, Path]:
    """Stage -> the TensorRT engine of its graph for this TensorRT version and GPU (imports TensorRT).

    Raises:
        EdgeAnchorError: TensorRT, cuda-python or a GPU missing; a precision TensorRT graphs are not built in.
    """
    from ..exporting.tensorrt import check_gpu, require_tensorrt
    from ..exporting.tensorrt_graph import require_engine_precision

    builder_precision = require_engine_precision(precision)
    trt = require_tensorrt()
    gpu = check_gpu()
    return {stage: folder.engine_path(variant, Path(path).stem, builder_precision, trt_version=trt.__version__,
                                      gpu=gpu) for stage, path in graphs.items()}


def machine_info() -> dict:
    """CPU model, cores, memory and library versions, for the record."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:  # timings are only comparable on a quiet machine: record how busy it was
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - not on every platform
        load = None
    info = {"cpu": cpu, "logical_cores": os.cpu_count(), "memory_gib": mem, "load_average_1_5_15min": load,
            "platform": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__}
    torch = sys.modules.get("torch")  # recorded when this process uses it; never imported here
    if torch is not None:
        info["torch"] = torch.__version__
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:  # pragma: no cover
        pass
    gpu = _gpu_name()
    if gpu:
        info["gpu"] = gpu
    nvp = _nvpmodel()
    if nvp:
        info["jetson_power_mode"] = nvp
    return info


def _gpu_name() -> str | None:
    """The first NVIDIA GPU's name from ``nvidia-smi`` when there is one (no CUDA library needed)."""
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def _nvpmodel() -> str | None:
    """Jetson power mode from ``nvpmodel -q`` when readable."""
    import shutil
    import subprocess

    if not shutil.which("nvpmodel"):
        return None
    try:
        out = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
