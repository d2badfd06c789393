"""TensorRT: the NMS-plugin graph, engine building, and the trtexec command line.

``tensorrt`` is imported lazily, only by :func:`require_tensorrt`, so that this
module (and ONNX export) works on machines without TensorRT or a GPU.

- :func:`make_trt_graph` needs only ``onnx``: it takes the decoded graph
  (``model_decoded.onnx`` from ``export_onnx(..., decoded=True)``: images ->
  ``boxes_xyxy`` (1, B, 4), ``scores`` (1, B, K)) and appends TensorRT's
  ``EfficientNMS_TRT`` plugin node. The plugin approximates
  ``Detector.postprocess``: class-aware NMS at the same IoU threshold, the same
  score threshold and max detections, but no per-class (SSD) or per-level
  (RetinaNet) top-k; it keeps the 4096 best scores before NMS instead.
- :func:`build_engine` builds a serialized engine with the TensorRT Python API
  (fp32, fp16, or int8 with an entropy calibrator fed by images).
- :func:`trtexec_command` gives the equivalent ``trtexec`` line, to build on
  the target device (e.g. a Jetson) where the Python API may be missing.

Precision flags: ``BuilderFlag.FP16``/``INT8`` and the INT8 calibrator exist in
TensorRT 8.x-10.x (JetPack 5 and 6). TensorRT 11 removed them in favour of
strongly typed networks and explicit Q/DQ quantization; there only fp32
builds, and fp16/int8 raise a clear error.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

import onnx
from onnx import TensorProto, helper

from ..errors import EdgeAnchorError
from ..io import atomic_path, write_text

if TYPE_CHECKING:  # torch-free at run time: the device path imports this module
    from ..postprocess import PostprocessSpec

PRECISIONS = ("fp32", "fp16", "int8")
PLUGIN_OP = "EfficientNMS_TRT"
PLUGIN_DOMAIN = "TRT"  # as in TensorRT-targeted exporters; the ONNX parser finds plugins by op type
TRT_OUTPUTS = ("num_detections", "detection_boxes", "detection_scores", "detection_classes")


def require_tensorrt():
    """Import TensorRT, or raise a one-line EdgeAnchorError saying what is missing.

    Returns:
        The ``tensorrt`` module.
    """
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:
        raise EdgeAnchorError(
            f"TensorRT is not available here ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
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
    from .cudart import gpu_name, require_cudart

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


# ---- graph rewrite (no TensorRT needed) ----------------------------------
def plugin_attributes(postprocess_spec: PostprocessSpec) -> dict:
    """EfficientNMS_TRT attributes that match the detector's post-processing rule."""
    return {
        "plugin_version": "1",
        "score_threshold": float(postprocess_spec.score_thresh),
        "iou_threshold": float(postprocess_spec.nms_thresh),
        "max_output_boxes": int(postprocess_spec.detections_per_img),
        # SSD's scores keep the softmax background column 0, so classes equal the model's labels.
        "background_class": 0 if postprocess_spec.score_fn == "softmax" else -1,
        "score_activation": 0,  # scores are already probabilities
        "box_coding": 0,  # BoxCorner: x1, y1, x2, y2
    }


def make_trt_graph(model_onnx_path: str | os.PathLike, out_path: str | os.PathLike, postprocess_spec: PostprocessSpec) -> dict:
    """Append the EfficientNMS_TRT plugin to the decoded end-to-end graph.

    Args:
        model_onnx_path: ``model_decoded.onnx`` with outputs ``boxes_xyxy``
            float32 (1, B, 4) and ``scores`` float32 (1, B, K).
        out_path: where to write the TensorRT graph (atomically).
        postprocess_spec: the detector's post-processing rule (thresholds, max detections).

    Returns:
        Dict with ``path``, ``attributes``, ``num_boxes``, ``num_classes``.

    Raises:
        EdgeAnchorError: the input is not a decoded graph.
    """
    model = onnx.load(str(model_onnx_path))
    outputs = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    boxes, scores = outputs.get("boxes_xyxy"), outputs.get("scores")
    if not boxes or not scores or len(boxes) != 3 or len(scores) != 3 or boxes[2] != 4 or boxes[1] != scores[1]:
        raise EdgeAnchorError(
            f"{model_onnx_path} is not a decoded graph (outputs {outputs}); it needs boxes_xyxy [1, B, 4] and "
            "scores [1, B, K]: export it with export_onnx(..., decoded=True)"
        )
    num_boxes, num_classes = boxes[1], scores[2]
    attrs = plugin_attributes(postprocess_spec)
    max_out = attrs["max_output_boxes"]
    graph = model.graph
    graph.node.append(helper.make_node(PLUGIN_OP, ["boxes_xyxy", "scores"], list(TRT_OUTPUTS),
                                       name="nms/efficient_nms", domain=PLUGIN_DOMAIN, **attrs))
    del graph.output[:]
    graph.output.extend([
        helper.make_tensor_value_info("num_detections", TensorProto.INT32, [1, 1]),
        helper.make_tensor_value_info("detection_boxes", TensorProto.FLOAT, [1, max_out, 4]),
        helper.make_tensor_value_info("detection_scores", TensorProto.FLOAT, [1, max_out]),
        helper.make_tensor_value_info("detection_classes", TensorProto.INT32, [1, max_out]),
    ])
    if not any(o.domain == PLUGIN_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(PLUGIN_DOMAIN, 1))
    with atomic_path(out_path) as tmp:
        onnx.save(model, str(tmp))
    return {"path": str(out_path), "attributes": attrs, "num_boxes": num_boxes, "num_classes": num_classes}


def trtexec_command(
    onnx_path: str | os.PathLike,
    precision: str,
    *,
    engine_path: str | os.PathLike | None = None,
    timing_cache: str | os.PathLike | None = None,
    calib_cache: str | os.PathLike | None = None,
    workspace_mib: int = 1024,
    trtexec: str = "trtexec",
) -> str:
    """The trtexec line that builds the same engine (JetPack's is /usr/src/tensorrt/bin/trtexec).

    Args:
        onnx_path: the TensorRT graph (from :func:`make_trt_graph`).
        precision: "fp32", "fp16" or "int8".
        engine_path: output engine; ``<onnx stem>_<precision>.engine`` beside it if None.
        timing_cache: timing cache file to read and update.
        calib_cache: INT8 calibration cache (trtexec cannot calibrate from
            images; :func:`build_engine` writes one). Required for int8.
        workspace_mib: builder workspace limit.
        trtexec: the trtexec executable.

    Raises:
        EdgeAnchorError: unknown precision, or int8 without a calibration cache.
    """
    _check_precision(precision)
    onnx_path = Path(onnx_path)
    engine_path = engine_path or onnx_path.with_name(f"{onnx_path.stem}_{precision}.engine")
    args = [trtexec, f"--onnx={onnx_path}", f"--saveEngine={engine_path}", f"--memPoolSize=workspace:{int(workspace_mib)}"]
    if precision == "fp16":
        args.append("--fp16")
    if precision == "int8":
        if calib_cache is None:
            raise EdgeAnchorError(
                "an int8 trtexec build needs a calibration cache (trtexec cannot calibrate from images); "
                "build once with build_engine(..., precision='int8', calib_images=...) to write one"
            )
        args += ["--int8", "--fp16", f"--calib={calib_cache}"]  # fp16 for layers without an int8 kernel
    if timing_cache is not None:
        args.append(f"--timingCacheFile={timing_cache}")
    return " ".join(shlex.quote(str(a)) for a in args)


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise EdgeAnchorError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")


# ---- engine building (TensorRT and a CUDA GPU needed) -------------------
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
        onnx_path: the TensorRT graph (from :func:`make_trt_graph`), batch 1.
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
    _check_precision(precision)
    engine_path = Path(engine_path)
    log_path = Path(log_path) if log_path else engine_path.with_suffix(".log")
    calib_cache = Path(calib_cache) if calib_cache else engine_path.with_suffix(".calib")
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


def _file_logger(trt):
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
