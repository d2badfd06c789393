"""Bounds on what a file from elsewhere may ask for, and the field checks that enforce them.

A checkpoint, a yolov5 checkpoint or an export folder's report.json can come
from anyone. Their sizes (classes, input side, width and depth multiples,
anchors) decide how much memory building or running the model takes, so they
are checked against these bounds before anything is built or allocated. The
bounds come from what real models need, with room; docs/trust.md lists
them. A value outside them is one line naming the file, the field, the
value and the bound. No torch: the device path uses these too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from .errors import EdgeAnchorError

MAX_CLASSES = 100_000  # COCO has 80, LVIS 1,203, ImageNet-21k 21,841
MAX_IMAGE_SIDE = 16_384  # pixels; detectors run at 320 to 1,536
MAX_MULTIPLE = 4.0  # yolov5 width / depth multiple; yolov5x is 1.25 / 1.33
MAX_ANCHORS_PER_LEVEL = 1_000  # an overanchorized level has 16 x 16 = 256 at most
MAX_LEVELS = 16  # feature levels (SSD300 has 6, RetinaNet 5, yolov5 P6 4)
MAX_LAYERS = 1_000  # layers of a yolov5 model definition (v7.0's P5 models have 25)
MAX_PARAMETERS = 1_000_000_000  # a model's parameters (4 GB in fp32); yolov5x has 86.7 million
MAX_REPEATS = 100  # a layer's repeat count in a yolov5 model definition (v7.0: 9)
MAX_ONNX_BYTES = 4 * 1024**3  # an ONNX model file, and its external data all together; protobuf caps a file at 2 GiB


def _shown(value) -> str:
    """``value`` for a one-line message: its repr, shortened."""
    try:
        text = repr(value)
    except ValueError:  # an int of more than sys.get_int_max_str_digits() digits
        return f"an integer of {value.bit_length():,} bits"
    return text if len(text) <= 60 else text[:57] + "..."


def out_of_bounds(source, field: str, value, expected: str, *, described: bool = False) -> EdgeAnchorError:
    """The one-line error for a field of an untrusted file: the file, the field, the value, what it must be.

    ``described``: ``value`` is already words ("3 levels"), not the value itself.
    """
    shown = value if described else _shown(value)
    return EdgeAnchorError(f"{source}: {field} is {shown}, but it must be {expected}; the file is not one "
                           "edgeanchor can use (was it written by another tool or altered?)")


def is_int(value) -> bool:
    """True for an int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(value, source, field: str, low: int, high: int) -> int:
    """``value`` if it is an int in [low, high]; else :func:`out_of_bounds`."""
    if not (is_int(value) and low <= value <= high):
        raise out_of_bounds(source, field, value, f"an integer from {low} to {high:,}")
    return value


def check_number(value, source, field: str, low: float, high: float, *, low_open: bool = False) -> float:
    """``value`` as a float if it is a finite number in [low, high] (or (low, high] with ``low_open``)."""
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
          and (is_int(value) or math.isfinite(value))  # isfinite overflows on an int too large for a float
          and (value > low if low_open else value >= low) and value <= high)
    if not ok:
        raise out_of_bounds(source, field, value, f"a number {'above' if low_open else 'from'} {low} "
                                                  f"{'and at most' if low_open else 'to'} {high:g}")
    return float(value)


def check_type(value, kind: type | tuple[type, ...], source, field: str, what: str):
    """``value`` if it is an instance of ``kind`` (described as ``what``); else :func:`out_of_bounds`."""
    if not isinstance(value, kind) or isinstance(value, bool) and kind in (int, float):
        raise out_of_bounds(source, field, value, what)
    return value


def check_image_side_pair(value, source, field: str, low: int = 1) -> list[int]:
    """``value`` if it is [height, width], each an int from ``low`` to :data:`MAX_IMAGE_SIDE`."""
    if not (isinstance(value, (list, tuple)) and len(value) == 2
            and all(is_int(v) and low <= v <= MAX_IMAGE_SIDE for v in value)):
        raise out_of_bounds(source, field, value,
                            f"[height, width] in pixels, each from {low} to {MAX_IMAGE_SIDE:,}")
    return [int(v) for v in value]


def require_keys(obj: Mapping, keys, source, where: str) -> None:
    """Refuse a mapping that lacks one of ``keys`` (the first missing one is named)."""
    missing = next((k for k in keys if k not in obj), None)
    if missing is not None:
        raise EdgeAnchorError(f"{source}: {where} has no {missing!r}; the file is not one edgeanchor can use "
                              "(was it written by another tool or altered?)")
