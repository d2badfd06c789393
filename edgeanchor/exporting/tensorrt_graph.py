"""One exported graph as a TensorRT engine, run with cuda-python (no torch): the :class:`Graph` of TensorRT.

The engine is built from the ONNX graph on first use and cached at the path
the export folder gives (one per precision, TensorRT version and GPU model,
see :meth:`~edgeanchor.exporting.folder.ExportFolder.engine_path`). Inputs are
copied to the GPU, the graph runs with ``execute_async_v3`` on a stream of
its own, timed by two CUDA events around that call alone, and outputs are
copied back. TensorRT and cuda-python are imported when a graph is opened.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import EdgeAnchorError
from .runtimes import Graph, as_arrays

# bench/evaluate precision -> the engine builder's
ENGINE_PRECISION = {"f32": "fp32", "f16": "fp16"}


def require_engine_precision(precision: str) -> str:
    """The builder's name of ``precision``; one line for a precision TensorRT graphs are not built in here."""
    if precision not in ENGINE_PRECISION:
        raise EdgeAnchorError(f"runtime tensorrt cannot run the exported graphs in {precision}; pass `precision` "
                              f"{' or '.join(ENGINE_PRECISION)}")
    return ENGINE_PRECISION[precision]


class TrtGraph(Graph):
    """A TensorRT engine of one graph, with its own device buffers, stream and events.

    Attributes:
        engine_path: the serialized engine (built from ``path`` when missing).
    """

    runtime = "tensorrt"

    def __init__(self, path, engine_path, *, precision: str = "f32"):
        super().__init__(path, precision)
        from .cudart import DeviceBuffer, Timer, new_stream
        from .tensorrt import check_gpu, require_tensorrt

        builder_precision = require_engine_precision(precision)
        trt = require_tensorrt()
        self.engine_path = Path(engine_path)
        if not self.engine_path.is_file():
            _build(self.path, self.engine_path, builder_precision)
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

    def timed(self, feeds: dict) -> tuple[dict[str, np.ndarray], int]:
        """Outputs as host arrays, and the GPU time of the engine alone in nanoseconds."""
        arrays = as_arrays(feeds)
        for name in self.input_names:
            shape, dtype = self.specs[name]
            self.buffers[name].upload(arrays[name].astype(dtype, copy=False).reshape(shape), self.stream)
        self.timer.start()
        if not self.context.execute_async_v3(int(self.stream)):
            raise EdgeAnchorError(f"TensorRT failed to run {self.engine_path.name}; see its build log")
        elapsed = self.timer.stop()
        outs = {name: self.buffers[name].download(np.empty(*self.specs[name]), self.stream)
                for name in self.output_names}
        return outs, elapsed


def _build(onnx_path: Path, engine_path: Path, precision: str) -> None:
    """Build the engine of ``onnx_path`` (timing cache and build log beside the engine)."""
    from ..io import log
    from .tensorrt import build_engine

    if not onnx_path.is_file():
        raise EdgeAnchorError(f"graph file {onnx_path} does not exist; re-run prune-and-export to write it")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    log(f"building the TensorRT engine {engine_path} ({precision}); it is reused on later runs")
    build_engine(onnx_path, engine_path, precision=precision, timing_cache=engine_path.parent / "timing.cache",
                 log_path=engine_path.with_suffix(".log"))
