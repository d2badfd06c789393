"""OpenVINO IR of the exported ONNX graphs (written when OpenVINO is installed).

Each graph ``G.onnx`` of a variant becomes ``openvino/G.xml`` + ``openvino/G.bin`` beside it
(``ExportFolder.ir_path`` owns the name),
converted with ``openvino.convert_model`` and saved with f32 weights
(``compress_to_fp16=False``: OpenVINO's default would halve the weights and change the numbers).
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
    written = {}
    for name, (path, xml) in targets.items():
        if Path(path).stem.startswith(TRT_ONLY):
            continue
        xml = Path(xml)
        xml.parent.mkdir(parents=True, exist_ok=True)
        try:
            model = ov.convert_model(str(path))
            ov.save_model(model, str(xml), compress_to_fp16=False)
        except Exception as exc:  # OpenVINO's conversion errors are long multi-line RuntimeErrors
            raise EdgeAnchorError(f"OpenVINO cannot convert {path} ({first_line(exc)})") from None
        written[name] = str(xml)
    return written
