"""Export: ONNX graphs (backbone, head, postprocess, end to end), parity checks, TensorRT.

TensorRT is optional and loads lazily: importing this package never imports
``tensorrt``. The names below load on first use, so the torch-free modules here
(``folder``, ``tensorrt``) import without torch, as the device path needs; the runtimes
themselves are :mod:`edgeanchor.runtimes`.
"""

import importlib

_LAZY = {"export_decoded_onnx": ".onnx_export", "export_onnx": ".onnx_export", "check_parity": ".parity",
         "make_session": ".parity", "run_session": ".parity"}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
