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


class OrtRunner:
    """ONNX Runtime sessions of the four stage graphs, with explicit, recorded options."""

    def __init__(self, graphs: dict[str, Path], *, threads: int = 0, opt_level: str = "all"):
        """``graphs``: stage -> ONNX file, for the stages in ``STAGES``."""
        import onnxruntime as ort

        from ..export.parity import make_session

        self.sessions = {}
        for stage in STAGES:
            self.sessions[stage] = make_session(graphs[stage], intra_op_num_threads=threads,
                                                inter_op_num_threads=1, graph_optimization_level=opt_level)
        self.settings = {
            "runtime": "onnxruntime", "version": ort.__version__,
            "providers": self.sessions["backbone"].get_providers(),
            "intra_op_num_threads": threads or "default (one per physical core)", "inter_op_num_threads": 1,
            "graph_optimization_level": opt_level, "execution_mode": "ORT_SEQUENTIAL",
        }
        self._names = {s: [o.name for o in sess.get_outputs()] for s, sess in self.sessions.items()}
        self._inputs = {s: [i.name for i in sess.get_inputs()] for s, sess in self.sessions.items()}

    def _run(self, stage: str, feeds: dict) -> tuple[dict, int]:
        sess = self.sessions[stage]
        t0 = _now()
        out = sess.run(self._names[stage], feeds)
        return dict(zip(self._names[stage], out)), _now() - t0

    def run_all(self, image: np.ndarray) -> dict[str, int]:
        """Nanoseconds per stage for one image."""
        feats, t_b = self._run("backbone", {"images": image})
        head, t_h = self._run("head", {k: feats[k] for k in self._inputs["head"]})
        _, t_p = self._run("postprocess", {k: head[k] for k in self._inputs["postprocess"]})
        _, t_e = self._run("end_to_end", {"images": image})
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


def make_runner(runtime: str, folder, variant: str, *, threads: int, opt_level: str = "all"):
    """The runner for ``runtime`` over one variant of an :class:`~edgeanchor.export.folder.ExportFolder`."""
    if runtime == "onnxruntime":
        return OrtRunner(folder.graphs_for_runtime(runtime, variant), threads=threads, opt_level=opt_level)
    if runtime == "torch":
        return TorchRunner(folder.graph_detector(variant), threads=threads)
    if runtime == "tensorrt":
        from .tensorrt_runner import TrtRunner

        return TrtRunner(folder.graphs_for_runtime(runtime, variant))
    raise EdgeAnchorError(f"unknown runtime {runtime!r}; choose onnxruntime, torch or tensorrt")


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
