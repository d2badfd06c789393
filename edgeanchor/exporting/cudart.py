"""CUDA through NVIDIA's cuda-python (imported lazily): device buffers, copies, a stream, events.

The TensorRT graphs run with these instead of torch, so the device path
needs no torch. ``cuda-python`` 12.6+ has ``cuda.bindings.runtime``; older
releases ``cuda.cudart``; both are accepted. Every call returns an error
code first; :func:`check` turns a failure into one line.
"""

from __future__ import annotations

import numpy as np

from ..errors import EdgeAnchorError

INSTALL = "pip install cuda-python (NVIDIA's CUDA bindings; on a Jetson the one matching JetPack's CUDA)"


def require_cudart():
    """The cuda-python runtime module.

    Raises:
        EdgeAnchorError: cuda-python is not installed (naming the package to install).
    """
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            raise EdgeAnchorError(f"running TensorRT here needs cuda-python for device memory and timing; "
                                  f"{INSTALL}") from None
    return cudart


def check(result, what: str = "CUDA call"):
    """The values of a cuda-python call after its error code; a failure is a one-line error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise EdgeAnchorError(f"{what} failed ({getattr(err, 'name', err)}); check the GPU and its driver")
    return values[0] if len(values) == 1 else tuple(values)


def gpu_name() -> str:
    """Name of CUDA device 0.

    Raises:
        EdgeAnchorError: cuda-python missing, or no CUDA GPU.
    """
    cudart = require_cudart()
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count < 1:
        raise EdgeAnchorError("TensorRT needs a CUDA GPU, and cuda-python finds none; run on a machine with an "
                              "NVIDIA GPU, or build on the device with the trtexec command from the export")
    props = check(cudart.cudaGetDeviceProperties(0), "cudaGetDeviceProperties")
    name = props.name
    return (name.split(b"\0")[0].decode() if isinstance(name, bytes) else str(name)).strip()


class DeviceBuffer:
    """``nbytes`` of device memory, freed with the object."""

    def __init__(self, nbytes: int):
        self.cudart = require_cudart()
        self.nbytes = int(nbytes)
        self.ptr = int(check(self.cudart.cudaMalloc(max(self.nbytes, 1)), "cudaMalloc"))

    def upload(self, array: np.ndarray, stream) -> None:
        """Copy a host array of exactly ``nbytes`` into the buffer (asynchronously on ``stream``)."""
        array = np.ascontiguousarray(array)
        assert array.nbytes == self.nbytes, (array.nbytes, self.nbytes)
        check(self.cudart.cudaMemcpyAsync(self.ptr, array.ctypes.data, self.nbytes,
                                          self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, stream), "copy to GPU")

    def download(self, out: np.ndarray, stream) -> np.ndarray:
        """Copy the buffer into the host array ``out`` (C-contiguous, ``nbytes``) and wait for it."""
        check(self.cudart.cudaMemcpyAsync(out.ctypes.data, self.ptr, self.nbytes,
                                          self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream), "copy from GPU")
        check(self.cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        return out

    def __del__(self):
        if getattr(self, "ptr", None):
            self.cudart.cudaFree(self.ptr)
            self.ptr = None


class Timer:
    """Two CUDA events on one stream: ``start()``, ``stop()`` -> nanoseconds between them on the GPU."""

    def __init__(self, stream):
        self.cudart = require_cudart()
        self.stream = stream
        self.begin = check(self.cudart.cudaEventCreate(), "cudaEventCreate")
        self.end = check(self.cudart.cudaEventCreate(), "cudaEventCreate")

    def start(self) -> None:
        check(self.cudart.cudaEventRecord(self.begin, self.stream), "cudaEventRecord")

    def stop(self) -> int:
        check(self.cudart.cudaEventRecord(self.end, self.stream), "cudaEventRecord")
        check(self.cudart.cudaEventSynchronize(self.end), "cudaEventSynchronize")
        ms = check(self.cudart.cudaEventElapsedTime(self.begin, self.end), "cudaEventElapsedTime")
        return int(round(float(ms) * 1e6))


def new_stream():
    """A new CUDA stream (its handle, as TensorRT's ``execute_async_v3`` takes it via ``int()``)."""
    return check(require_cudart().cudaStreamCreate(), "cudaStreamCreate")
