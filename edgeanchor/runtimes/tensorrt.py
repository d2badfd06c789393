"""TensorRT: its loader and GPU check, CUDA through cuda-python, engine building, and its :class:`~.base.Graph`.

Nothing here imports torch on the device path: device memory, copies, the stream and the timing
events come from NVIDIA's cuda-python (``cuda.bindings.runtime`` in 12.6+, ``cuda.cudart`` before;
both are accepted; every call returns an error code first and :func:`check` turns a failure into one
line). ``tensorrt`` and cuda-python are imported when a graph is opened or an engine built, so that
this module, ONNX export and ``--help`` work on machines without TensorRT or a GPU.

- :class:`TrtGraph` runs one exported graph as an engine, built from the ONNX graph on first use and
  cached where the export folder says (:meth:`~edgeanchor.exporting.folder.ExportFolder.engine_files`:
  one per precision, TensorRT version and GPU model). Inputs are copied to the GPU, the graph runs with
  ``execute_async_v3`` on a stream of its own, timed by two CUDA events around that call alone, and
  outputs are copied back.
- :func:`build_engine` builds a serialized engine with the TensorRT Python API (fp32, fp16, or int8
  with an entropy calibrator fed by images). The TensorRT graph itself (the EfficientNMS_TRT plugin)
  and the equivalent ``trtexec`` line are export, in :mod:`edgeanchor.exporting.tensorrt`.

Precision flags: ``BuilderFlag.FP16``/``INT8`` and the INT8 calibrator exist in TensorRT 8.x-10.x
(JetPack 5 and 6). TensorRT 11 removed them in favour of strongly typed networks and explicit Q/DQ
quantization; there only fp32 builds, and fp16/int8 raise a clear error.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgeAnchorError
from ..exporting.folder import default_build_log, default_calib_cache
from ..io import atomic_path, write_text
from .base import Graph, as_arrays, first_line, input_does_not_fit

NAME = "TensorRT"
PRECISIONS = ("fp32", "fp16")  # what bench and evaluate run the exported graphs' engines in
BUILD_PRECISIONS = ("fp32", "fp16", "int8")  # what build_engine builds (int8: with calibration images)


def load():
    """The ``tensorrt`` module once TensorRT and a CUDA GPU are found (:func:`require_tensorrt`)."""
    return require_tensorrt()


def require_tensorrt():
    """Import TensorRT, or raise a one-line EdgeAnchorError saying what is missing.

    Returns:
        The ``tensorrt`` module.
    """
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:
        raise EdgeAnchorError(
            f"TensorRT is not available here ({type(exc).__name__}: {first_line(exc)}); "
            "install it (pip install tensorrt, or JetPack on a Jetson), or build on the device with the "
            "trtexec command from the export"
        ) from None
    check_gpu()
    return trt


def check_gpu() -> str:
    """The CUDA GPU's name, found with cuda-python (the device path has no torch), else with torch.

    Raises:
        EdgeAnchorError: no CUDA GPU, or neither cuda-python nor torch to look for one with.
    """
    try:
        require_cudart()
    except EdgeAnchorError:
        try:
            import torch
        except ImportError:
            raise  # the device path: cuda-python is what is missing
        if not torch.cuda.is_available():
            raise EdgeAnchorError(
                "TensorRT needs a CUDA GPU, but torch.cuda.is_available() is False; run on a machine with an NVIDIA "
                "GPU, or build on the device with the trtexec command from the export"
            ) from None
        return torch.cuda.get_device_name(0)
    return gpu_name()


# ---- CUDA through cuda-python ---------------------------------------------
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
        self.ptr: int | None = int(check(self.cudart.cudaMalloc(max(self.nbytes, 1)), "cudaMalloc"))

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


# ---- one graph as an engine ------------------------------------------------
class TrtGraph(Graph):
    """A TensorRT engine of one graph, with its own device buffers, stream and events.

    Attributes:
        engine_path: the serialized engine (built from ``path`` when missing).
    """

    runtime = "tensorrt"

    def __init__(self, path, engine, *, precision: str = "fp32"):
        """Open (or first build) the engine of ``path``.

        Args:
            path: the ONNX graph.
            engine: where its engine, timing cache and build log go (an
                :class:`~edgeanchor.exporting.folder.EngineFiles`).
            precision: "fp32" or "fp16" (checked by :func:`edgeanchor.runtimes.check_precision`).
        """
        super().__init__(path, precision)
        trt = require_tensorrt()
        self.engine_path = Path(engine.engine)
        if not self.engine_path.is_file():
            _build_missing(self.path, engine, precision)
        logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(logger, "")  # EfficientNMS_TRT, for model_trt
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise EdgeAnchorError(f"TensorRT {trt.__version__} cannot load the engine {self.engine_path}; delete it "
                                  "to have it rebuilt from the ONNX graph")
        self.context = self.engine.create_execution_context()
        self.stream = new_stream()
        self.timer = Timer(self.stream)
        self.buffers, self.specs = {}, {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            shape = tuple(self.engine.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise EdgeAnchorError(f"{self.path.name}: tensor {name} has a dynamic shape {list(shape)}; "
                                      "the exported graphs have static shapes, re-run prune-and-export")
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            self.specs[name] = (shape, dtype)
            self.buffers[name] = DeviceBuffer(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
            self.context.set_tensor_address(name, self.buffers[name].ptr)
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.input_names if is_input else self.output_names).append(name)
        self.settings = {"runtime": self.runtime, "version": trt.__version__, "precision": precision,
                         "engine": self.engine_path.name, "gpu": check_gpu(),
                         "timing": "CUDA events around execute_async_v3 (copies not timed)",
                         "memory": "cuda-python device buffers"}

    def run(self, feeds: dict) -> dict[str, np.ndarray]:
        return self.timed(feeds)[0]

    def timed(self, feeds: dict, clock=None) -> tuple[dict[str, np.ndarray], int]:
        """Outputs as host arrays, and the GPU time of the engine alone in nanoseconds (whatever ``clock``)."""
        arrays = as_arrays(feeds)
        for name in self.input_names:
            shape, dtype = self.specs[name]
            if arrays[name].size != int(np.prod(shape)):
                raise input_does_not_fit(NAME, self.engine_path, ValueError(
                    f"input {name} has shape {list(arrays[name].shape)}, the engine takes {list(shape)}"))
            self.buffers[name].upload(arrays[name].astype(dtype, copy=False).reshape(shape), self.stream)
        self.timer.start()
        if not self.context.execute_async_v3(int(self.stream)):
            raise EdgeAnchorError(f"TensorRT failed to run {self.engine_path.name}; see its build log")
        elapsed = self.timer.stop()
        outs = {name: self.buffers[name].download(np.empty(*self.specs[name]), self.stream)
                for name in self.output_names}
        return outs, elapsed



def open_graph(path, *, threads: int = 0, precision: str = "fp32", engine=None) -> TrtGraph:
    """``path`` as a TensorRT engine at ``engine`` (an :class:`~edgeanchor.exporting.folder.EngineFiles`).

    ``threads`` is not TensorRT's to choose and is ignored.
    """
    if engine is None:
        raise ValueError("engine is needed to open a graph in TensorRT")
    return TrtGraph(path, engine, precision=precision)


def engine_files(folder, variant: str, graphs: dict[str, Path], precision: str) -> dict:
    """Stage -> the TensorRT engine files of its graph for this TensorRT version and GPU (imports TensorRT).

    Returns:
        Stage -> :class:`~edgeanchor.exporting.folder.EngineFiles` (engine, timing cache, build log).

    Raises:
        EdgeAnchorError: TensorRT, cuda-python or a GPU missing; a precision TensorRT graphs are not built in.
    """
    from . import check_precision

    check_precision("tensorrt", precision)
    trt = require_tensorrt()
    gpu = check_gpu()
    return {stage: folder.engine_files(variant, Path(path).stem, precision, trt_version=trt.__version__, gpu=gpu)
            for stage, path in graphs.items()}


def _build_missing(onnx_path: Path, engine, precision: str) -> None:
    """Build the engine of ``onnx_path`` at ``engine.engine`` (its timing cache and build log where ``engine`` says)."""
    from ..io import log

    if not onnx_path.is_file():
        raise EdgeAnchorError(f"graph file {onnx_path} does not exist; re-run prune-and-export to write it")
    log(f"building the TensorRT engine {engine.engine} ({precision}); it is reused on later runs")
    build_engine(onnx_path, engine.engine, precision=precision, timing_cache=engine.timing_cache,
                 log_path=engine.build_log)


# ---- engine building (TensorRT and a CUDA GPU needed) -------------------
def check_build_precision(precision: str) -> None:
    """Refuse a precision :func:`build_engine` (and trtexec) cannot build in (one line)."""
    if precision not in BUILD_PRECISIONS:
        raise EdgeAnchorError(f"unknown precision {precision!r}; choose one of {', '.join(BUILD_PRECISIONS)}")


def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    *,
    precision: str = "fp16",
    calib_images=None,
    calib_cache: str | os.PathLike | None = None,
    timing_cache: str | os.PathLike | None = None,
    log_path: str | os.PathLike | None = None,
    workspace_mib: int = 1024,
) -> dict:
    """Build and serialize a TensorRT engine from an ONNX graph.

    Args:
        onnx_path: the TensorRT graph (from :func:`edgeanchor.exporting.tensorrt.make_trt_graph`), batch 1.
        engine_path: where to write the serialized engine (atomically).
        precision: "fp32", "fp16" or "int8" (int8 also enables fp16 fallback).
        calib_images: int8 only: float32 (N, 3, H, W) in [0, 1] (tensor or
            array), fed one image per calibration batch.
        calib_cache: int8 only: calibration cache to reuse and write;
            ``<engine>.calib`` if None.
        timing_cache: timing cache file, loaded if it exists and saved after the build.
        log_path: the builder's log (INFO and above); ``<engine>.log`` if None.
        workspace_mib: builder workspace limit.

    Returns:
        Dict with ``engine``, ``precision``, ``log``, ``timing_cache``,
        ``calib_cache``, ``tensorrt_version``.

    Raises:
        EdgeAnchorError: no TensorRT or GPU, unknown precision, int8 without
            calibration data, a graph TensorRT cannot parse or build.
    """
    check_build_precision(precision)
    engine_path = Path(engine_path)
    log_path = Path(log_path) if log_path else default_build_log(engine_path)
    calib_cache = Path(calib_cache) if calib_cache else default_calib_cache(engine_path)
    if precision == "int8" and calib_images is None and not calib_cache.is_file():
        raise EdgeAnchorError("int8 needs calibration images (or an existing calibration cache); pass calib_images")
    trt = require_tensorrt()
    logger = _file_logger(trt)
    try:
        serialized, config = _build(trt, logger, Path(onnx_path), precision, calib_images, calib_cache,
                                    timing_cache, workspace_mib)
        with atomic_path(engine_path) as tmp:
            tmp.write_bytes(bytes(memoryview(serialized)))
        if timing_cache is not None:
            with atomic_path(timing_cache) as tmp:
                tmp.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    finally:
        write_text(log_path, "".join(logger.lines))
    return {"engine": str(engine_path), "precision": precision, "log": str(log_path),
            "timing_cache": str(timing_cache) if timing_cache else None,
            "calib_cache": str(calib_cache) if precision == "int8" else None, "tensorrt_version": trt.__version__}


def _build(trt, logger, onnx_path, precision, calib_images, calib_cache, timing_cache, workspace_mib):
    trt.init_libnvinfer_plugins(logger, "")  # registers EfficientNMS_TRT
    builder = trt.Builder(logger)
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    major = int(trt.__version__.split(".")[0])
    network = builder.create_network(1 << int(explicit) if explicit is not None and major < 10 else 0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EdgeAnchorError(f"TensorRT cannot parse {onnx_path}: {errors[:500]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    if precision in ("fp16", "int8"):
        _set_flag(trt, config, "FP16")
    if precision == "int8":
        _set_flag(trt, config, "INT8")
        shape = tuple(network.get_input(0).shape)
        config.int8_calibrator = _entropy_calibrator(trt, calib_images, shape, calib_cache)
    cache_bytes = Path(timing_cache).read_bytes() if timing_cache and Path(timing_cache).is_file() else b""
    config.set_timing_cache(config.create_timing_cache(cache_bytes), False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EdgeAnchorError(f"TensorRT could not build an engine from {onnx_path}; see the build log")
    return serialized, config


def _set_flag(trt, config, name: str) -> None:
    flag = getattr(trt.BuilderFlag, name, None)
    if flag is None:
        raise EdgeAnchorError(
            f"TensorRT {trt.__version__} has no BuilderFlag.{name} (removed in TensorRT 11); "
            "build fp32 here, or use TensorRT 10.x (JetPack 6) for fp16/int8"
        )
    config.set_flag(flag)


def _file_logger(trt: Any):
    """A TensorRT logger that keeps INFO-and-above messages for the build log."""

    class BuildLog(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.lines: list[str] = []

        def log(self, severity, msg):
            if int(severity) <= int(trt.ILogger.Severity.INFO):
                self.lines.append(f"[{getattr(severity, 'name', severity)}] {msg}\n")

    return BuildLog()


def _entropy_calibrator(trt, images, input_shape, cache_path: Path):
    """An IInt8EntropyCalibrator2 that feeds one image per batch from GPU memory."""
    import torch

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            data = torch.as_tensor(images, dtype=torch.float32).cpu() if images is not None else None
            if data is not None and tuple(data.shape[1:]) != tuple(input_shape[1:]):
                raise EdgeAnchorError(
                    f"calibration images have shape {list(data.shape)} but the engine input is {list(input_shape)}"
                )
            self.data = data
            self.index = 0
            self.batch = torch.empty(tuple(input_shape), dtype=torch.float32, device="cuda")

        def get_batch_size(self):
            return 1

        def get_batch(self, names):
            if self.data is None or self.index >= len(self.data):
                return None
            self.batch.copy_(self.data[self.index:self.index + 1])
            self.index += 1
            torch.cuda.synchronize()
            return [int(self.batch.data_ptr())]

        def read_calibration_cache(self):
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache):
            with atomic_path(cache_path) as tmp:
                tmp.write_bytes(bytes(memoryview(cache)))

    return EntropyCalibrator()
