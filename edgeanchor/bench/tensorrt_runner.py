"""TensorRT stage runner (imported lazily; needs TensorRT and a CUDA GPU).

Each stage graph of the export is built into an engine once (cached beside
the ONNX file, with a timing cache), and timed with CUDA events around
``execute_async_v3`` on a dedicated stream.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..export.tensorrt import build_engine, require_tensorrt


class TrtRunner:
    """Engines of the four stage graphs, run with device buffers owned by torch."""

    def __init__(self, graphs: dict[str, Path], *, precision: str = "fp32"):
        """``graphs``: stage -> ONNX file; each engine is cached beside its graph."""
        self.trt = require_tensorrt()
        import torch

        self.torch = torch
        self.stream = torch.cuda.Stream()
        self.engines, self.contexts = {}, {}
        runtime = self.trt.Runtime(self.trt.Logger(self.trt.Logger.WARNING))
        for stage, onnx_path in graphs.items():
            onnx_path = Path(onnx_path)
            engine_path = onnx_path.with_name(f"{onnx_path.stem}_{precision}.engine")
            if not engine_path.is_file():
                build_engine(onnx_path, engine_path, precision=precision,
                             timing_cache=onnx_path.with_name("timing.cache"),
                             log_path=onnx_path.with_name(f"{onnx_path.stem}_trt_build.log"))
            engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
            self.engines[stage] = engine
            self.contexts[stage] = engine.create_execution_context()
        self.settings = {"runtime": "tensorrt", "version": self.trt.__version__, "precision": precision,
                         "gpu": torch.cuda.get_device_name(0), "timing": "CUDA events around execute_async_v3"}

    def _run(self, stage: str, feeds: dict) -> tuple[dict, int]:
        torch, trt = self.torch, self.trt
        engine, ctx = self.engines[stage], self.contexts[stage]
        outputs = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                t = feeds[name]
                t = t if isinstance(t, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(t)).cuda()
                feeds[name] = t.contiguous()
                ctx.set_tensor_address(name, feeds[name].data_ptr())
            else:
                shape = tuple(ctx.get_tensor_shape(name))
                dtype = torch.int64 if engine.get_tensor_dtype(name) == trt.DataType.INT64 else torch.float32
                if engine.get_tensor_dtype(name) == trt.DataType.INT32:
                    dtype = torch.int32
                outputs[name] = torch.empty(shape, dtype=dtype, device="cuda")
                ctx.set_tensor_address(name, outputs[name].data_ptr())
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(self.stream)
        ctx.execute_async_v3(self.stream.cuda_stream)
        end.record(self.stream)
        end.synchronize()
        return outputs, int(start.elapsed_time(end) * 1e6)

    def run_all(self, image: np.ndarray) -> dict[str, int]:
        feats, t_b = self._run("backbone", {"images": image})
        head, t_h = self._run("head", dict(feats))
        _, t_p = self._run("postprocess", dict(head))
        _, t_e = self._run("end_to_end", {"images": image})
        return {"backbone": t_b, "head": t_h, "postprocess": t_p, "end_to_end": t_e}
