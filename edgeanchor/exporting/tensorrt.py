"""TensorRT export: the NMS-plugin graph and the trtexec command line (neither needs TensorRT).

Building and running engines is the runtime's: :mod:`edgeanchor.runtimes.tensorrt`
(:func:`~edgeanchor.runtimes.tensorrt.build_engine`, ``TrtGraph``), which imports
``tensorrt`` only when called, so this module (and ONNX export) works on machines
without TensorRT or a GPU.

- :func:`make_trt_graph` needs only ``onnx``: it takes the decoded graph
  (``model_decoded.onnx`` from ``export_onnx(..., decoded=True)``: images ->
  ``boxes_xyxy`` (1, B, 4), ``scores`` (1, B, K)) and appends TensorRT's
  ``EfficientNMS_TRT`` plugin node. The plugin approximates
  ``Detector.postprocess``: class-aware NMS at the same IoU threshold, the same
  score threshold and max detections, but no per-class (SSD) or per-level
  (RetinaNet) top-k; it keeps the 4096 best scores before NMS instead.
- :func:`trtexec_command` gives the equivalent ``trtexec`` line, to build on
  the target device (e.g. a Jetson) where the Python API may be missing.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

import onnx
from onnx import TensorProto, helper

from ..errors import EdgeAnchorError
from ..io import atomic_path
from ..runtimes.tensorrt import check_build_precision
from .folder import engine_beside

if TYPE_CHECKING:  # torch-free at run time: the device path imports this module
    from ..postprocess import PostprocessRule

PLUGIN_OP = "EfficientNMS_TRT"
PLUGIN_DOMAIN = "TRT"  # as in TensorRT-targeted exporters; the ONNX parser finds plugins by op type
TRT_OUTPUTS = ("num_detections", "detection_boxes", "detection_scores", "detection_classes")


# ---- graph rewrite (no TensorRT needed) ----------------------------------
def plugin_attributes(postprocess_spec: PostprocessRule) -> dict:
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


def make_trt_graph(model_onnx_path: str | os.PathLike, out_path: str | os.PathLike,
                   postprocess_spec: PostprocessRule) -> dict:
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
            images; :func:`~edgeanchor.runtimes.tensorrt.build_engine` writes one). Required for int8.
        workspace_mib: builder workspace limit.
        trtexec: the trtexec executable.

    Raises:
        EdgeAnchorError: unknown precision, or int8 without a calibration cache.
    """
    check_build_precision(precision)
    onnx_path = Path(onnx_path)
    engine_path = engine_path or engine_beside(onnx_path, precision)
    args = [trtexec, f"--onnx={onnx_path}", f"--saveEngine={engine_path}",
            f"--memPoolSize=workspace:{int(workspace_mib)}"]
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


