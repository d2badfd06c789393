"""Export: ONNX graphs (backbone, head, postprocess, end to end), parity checks, TensorRT.

TensorRT is optional and loads lazily: importing this package never imports
``tensorrt``.
"""

from .onnx_export import export_decoded_onnx, export_onnx
from .parity import check_parity, make_session, run_session

__all__ = ["check_parity", "export_decoded_onnx", "export_onnx", "make_session", "run_session"]
