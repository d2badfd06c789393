"""Stage runners: one object per model variant that runs backbone, head,
postprocess and end to end separately, on one runtime.

All runners take a float32 (1, 3, H, W) image in [0, 1] and keep each
stage's outputs to feed the next, so every stage sees the real workload
(the NMS sees the candidates the model really produces).
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import EdgeAnchorError

STAGES = ("backbone", "head", "postprocess", "end_to_end")


def _now() -> int:
    return time.perf_counter_ns()


class GraphRunner:
    """The four stage graphs of one variant in one runtime (ONNX Runtime or OpenVINO), explicit options.

    Graphs are opened by :func:`edgeanchor.export.runtimes.open_graph`, the same way parity opens them.
    """

    def __init__(self, runtime: str, graphs: dict[str, Path], *, threads: int = 0, opt_level: str = "all",
                 precision: str = "f32"):
        """``graphs``: stage -> graph file, for the stages in ``STAGES``."""
        from ..export.runtimes import open_graph

        kwargs = {"opt_level": opt_level} if runtime == "onnxruntime" else {}
        self.graphs = {stage: open_graph(runtime, graphs[stage], threads=threads, precision=precision, **kwargs)
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


class TorchRunner:
    """Eager PyTorch stages of a checkpoint."""

    def __init__(self, det, *, threads: int = 0):
        if threads:
            torch.set_num_threads(threads)
        self.det = det.eval()
        self.settings = {"runtime": "torch", "version": torch.__version__, "mode": "eager, no_grad",
                         "intra_op_num_threads": torch.get_num_threads()}

    @torch.no_grad()
    def run_all(self, image: np.ndarray) -> dict[str, int]:
        x = torch.from_numpy(image)
        t0 = _now()
        feats = self.det.backbone(x)
        t1 = _now()
        head = self.det.head(feats)
        t2 = _now()
        self.det.postprocess(head)
        t3 = _now()
        self.det(x)
        t4 = _now()
        return {"backbone": t1 - t0, "head": t2 - t1, "postprocess": t3 - t2, "end_to_end": t4 - t3}


def make_runner(runtime: str, folder, variant: str, *, threads: int, opt_level: str = "all", precision: str = "f32",
                end_to_end: str | None = None):
    """The runner for ``runtime`` over one variant of an :class:`~edgeanchor.export.folder.ExportFolder`.

    ``end_to_end``: the graph of the end-to-end stage (default model; OpenCV: model_nonms).
    """
    from ..export.folder import STAGE_GRAPHS
    from ..export.runtimes import check_graph_for_runtime, check_precision

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
        return TorchRunner(folder.graph_detector(variant), threads=threads)
    if runtime == "tensorrt":
        from .tensorrt_runner import TrtRunner

        return TrtRunner(folder.graphs_for_runtime(runtime, variant, precision, stage_graphs),
                         precision=_TRT_PRECISION[precision])
    raise EdgeAnchorError(f"unknown runtime {runtime!r}; choose onnxruntime, openvino, opencv, torch or tensorrt")


# OpenCV: the deployment path of model_nonms.onnx; its end to end is the graph plus cv2.dnn.NMSBoxesBatched.
OPENCV_STAGE_GRAPHS = {"backbone": "backbone", "head": "head", "end_to_end": "model_nonms"}
_TRT_PRECISION = {"f32": "fp32", "f16": "fp16"}


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
            "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:  # pragma: no cover
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    nvp = _nvpmodel()
    if nvp:
        info["jetson_power_mode"] = nvp
    return info


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
