"""OpenVINO IR of the exported ONNX graphs (written when OpenVINO is installed).

Each graph ``G.onnx`` of a variant becomes ``openvino/G.xml`` + ``openvino/G.bin`` beside it
(``ExportFolder.ir_path`` owns the name),
converted as ``openvino.convert_model`` converts an ONNX file (its ONNX frontend, then the same offline
transformations) and saved with f32 weights (``compress_to_fp16=False``: OpenVINO's default would halve the
weights and change the numbers).

``convert_model`` itself is not called: unless the user opted out of OpenVINO's usage telemetry, it sends
an event per conversion step, each on a new thread with a write to ``~/intel/stats`` (4 s of CPU and more
of system time in a demo export). ``import openvino`` still sends one event of its own, which OpenVINO's
``opt_in_out --opt_out`` turns off.
The precision the IR runs at is chosen when it is compiled (``edgeanchor bench --runtime openvino
--precision ...``), not here. ``model_trt.onnx`` is TensorRT's and is not converted.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import EdgeAnchorError
from ..runtimes import TRT_ONLY, first_line, require


def write_ir(targets: dict[str, tuple[Path, Path]]) -> dict[str, str]:
    """Convert each named ONNX graph to IR; ``targets``: name -> (ONNX file, .xml file). Returns name -> .xml path.

    Raises:
        EdgeAnchorError: OpenVINO is not installed, or cannot convert a graph.
    """
    ov = require("openvino")
    core = ov.Core()
    written = {}
    for name, (path, xml) in targets.items():
        if Path(path).stem.startswith(TRT_ONLY):
            continue
        xml = Path(xml)
        xml.parent.mkdir(parents=True, exist_ok=True)
        try:
            model = core.read_model(str(path))
            _offline_transformations(model)
            ov.save_model(model, str(xml), compress_to_fp16=False)
        except Exception as exc:  # OpenVINO's conversion errors are long multi-line RuntimeErrors
            raise EdgeAnchorError(f"OpenVINO cannot convert {path} ({first_line(exc)})") from None
        written[name] = str(xml)
    return written


def _offline_transformations(model) -> None:
    """What ``openvino.convert_model`` applies to a model read from ONNX (OpenVINO's ``moc_emit_ir``): shape
    and constant folding, fusions and the legacy layout, so the IR is the one ``convert_model`` saves (tested).
    Without them (an OpenVINO that moved them) the IR is unfolded but computes the same."""
    try:
        from openvino._offline_transformations import (
            apply_fused_names_cleanup,
            apply_moc_legacy_transformations,
            apply_moc_transformations,
            compress_quantize_weights_transformation,
        )
    except ImportError:
        return
    apply_moc_transformations(model, cf=False, smart_reshape=True)
    compress_quantize_weights_transformation(model)
    apply_moc_legacy_transformations(model, [])
    apply_fused_names_cleanup(model)
