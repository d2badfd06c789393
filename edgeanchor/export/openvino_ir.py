"""OpenVINO IR of the exported ONNX graphs (written when OpenVINO is installed).

Each graph ``G.onnx`` of a variant becomes ``openvino/G.xml`` + ``openvino/G.bin`` beside it,
converted with ``openvino.convert_model`` and saved with f32 weights
(``compress_to_fp16=False``: OpenVINO's default would halve the weights and change the numbers).
The precision the IR runs at is chosen when it is compiled (``edgeanchor bench --runtime openvino
--precision ...``), not here. ``model_trt.onnx`` is TensorRT's and is not converted.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import EdgeAnchorError
from .runtimes import TRT_ONLY, _first_line, require

IR_DIR = "openvino"


def ir_path(onnx_path: str | Path) -> Path:
    """Where the IR of ``onnx_path`` goes: ``openvino/<stem>.xml`` in the same folder."""
    onnx_path = Path(onnx_path)
    return onnx_path.parent / IR_DIR / f"{onnx_path.stem}.xml"


def write_ir(onnx_paths: dict[str, Path]) -> dict[str, str]:
    """Convert each named ONNX graph to IR beside it; returns name -> .xml path.

    Raises:
        EdgeAnchorError: OpenVINO is not installed, or cannot convert a graph.
    """
    ov = require("openvino")
    written = {}
    for name, path in onnx_paths.items():
        if Path(path).stem.startswith(TRT_ONLY):
            continue
        xml = ir_path(path)
        xml.parent.mkdir(parents=True, exist_ok=True)
        try:
            model = ov.convert_model(str(path))
            ov.save_model(model, str(xml), compress_to_fp16=False)
        except Exception as exc:  # OpenVINO's conversion errors are long multi-line RuntimeErrors
            raise EdgeAnchorError(f"OpenVINO cannot convert {path} ({_first_line(exc)})") from None
        written[name] = str(xml)
    return written
