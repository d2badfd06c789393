"""The machine a measurement ran on: CPU, cores, memory, load, GPU, library versions (no torch import)."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import numpy as np


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
