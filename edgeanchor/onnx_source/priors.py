"""A head spec's anchors and priors: the AnchorSet it implies, and its priors in the preset's own convention.

No torch here: :func:`anchor_set` imports :mod:`edgeanchor.anchors` (which does) only when called. The
public names are re-exported by :mod:`.spec`, where callers import them from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import EdgeAnchorError
from .spec_fields import feature_size, image_size_pair

if TYPE_CHECKING:
    from ..anchors import AnchorSet
    from .spec import HeadSpec

SIZE_DEPENDENT_PRESETS = ("tf-ssd", "mediapipe")  # anchors in pixels scale with the input size


def anchor_set(spec: HeadSpec, image_size: tuple[int, int] | None = None) -> AnchorSet:
    """The spec's anchors as an :class:`~edgeanchor.anchors.AnchorSet` (ids 0.. level-major, in-cell order).

    Args:
        spec: a loaded spec.
        image_size: (H, W); default ``spec.preprocess.image_size``. A preset whose anchors scale with the
            input (tf-ssd, mediapipe) is generated at one size: give another size to :func:`load_head_spec`.

    Raises:
        EdgeAnchorError: no size (a dynamic graph and none in the spec), a size the strides do not fit, or
            another size for a size-dependent preset.
    """
    from ..anchors import AnchorBox, AnchorLevel, AnchorSet

    source = f"head spec {spec.preset!r}" if spec.preset else "the head spec"
    size = spec.preprocess.image_size if image_size is None else image_size_pair(image_size, "`image_size`", source)
    if size is None:
        raise EdgeAnchorError(f"{source} has a dynamic input size; give the size in the spec (preprocess.image_size) "
                              "or `image_size`")
    if spec.preset in SIZE_DEPENDENT_PRESETS and spec.preprocess.image_size not in (None, size):
        raise EdgeAnchorError(f"{source}: its anchors were generated at {spec.preprocess.image_size}, not {size}; "
                              "load the spec at that size (`image_size`)")
    levels, next_id = [], 0
    for i, level in enumerate(spec.levels):
        feature = feature_size(level.stride, level.feature_size, size, f"levels[{i}]", source)
        step = level.step if level.step is not None else level.stride
        anchors = tuple(AnchorBox(next_id + k, float(w), float(h)) for k, (w, h) in enumerate(level.anchors))
        next_id += len(anchors)
        levels.append(AnchorLevel(feature_size=feature, anchors=anchors,
                                  stride=None if spec.centres == "tile" else (float(step[0]), float(step[1]))))
    return AnchorSet(image_size=size, centre_offset=spec.centre_offset, levels=tuple(levels))


_COLUMNS = {"retinaface": ("cx", "cy", "w", "h"), "mediapipe": ("x_center", "y_center", "w", "h"),
            "tf": ("ycenter", "xcenter", "h", "w"), "caffe": ("xmin", "ymin", "xmax", "ymax"),
            "yolov5": ("col", "row", "stride_x", "stride_y", "anchor_w", "anchor_h")}


def priors_array(spec: HeadSpec, anchors: AnchorSet) -> np.ndarray:
    """The (possibly pruned) anchor set's priors, one row per box in the graph's row order, float32.

    Rows are in ``spec.priors_format``'s convention (:func:`priors` names the columns); coordinates are
    normalised by the input size except YOLOv5's (cells and pixels).

    Returns:
        (num_boxes, 4) float32 (YOLOv5: (num_boxes, 6)).
    """
    return _rows(spec, anchors).astype(np.float32)


def priors(spec: HeadSpec, anchors: AnchorSet) -> dict:
    """The anchor set's priors in the preset's own convention, JSON-ready (``priors.json``).

    Keys: ``format``, ``image_size`` [H, W], ``order`` (of the rows), ``columns``, ``priors`` (the rows of
    :func:`priors_array`, as float64 values), the box coder's ``variances`` or ``scales`` where the
    convention has them, and ``levels`` ({stride, feature_size, anchors [[w, h] px], ids} per level, an
    emptied level included).
    """
    fmt, (sx, sy, sw, sh) = spec.priors_format, spec.box_coding.scales
    order = "level, anchor, cell row-major" if spec.cell_order == "anchor" else "level, cell row-major, anchor"
    result: dict = {"format": fmt, "image_size": list(anchors.image_size), "order": order,
                    "columns": list(_COLUMNS[fmt]), "priors": _rows(spec, anchors).tolist()}
    if fmt == "retinaface":
        result["variances"] = [1 / sx, 1 / sw] if (sx, sw) == (sy, sh) else [1 / sx, 1 / sy, 1 / sw, 1 / sh]
    elif fmt == "caffe":
        result["variances"] = [1 / sx, 1 / sy, 1 / sw, 1 / sh]
    elif fmt == "tf":
        result["scales"] = [sy, sx, sh, sw]  # TF's scale_factors are y, x, height, width
    elif fmt == "mediapipe":
        result["scales"] = {"x_scale": sx, "y_scale": sy, "w_scale": sw, "h_scale": sh}
    result["levels"] = [{"stride": None if level.stride is None else list(level.stride),
                         "feature_size": list(level.feature_size), "anchors": [[a.w, a.h] for a in level.anchors],
                         "ids": [a.id for a in level.anchors]}
                        for level in anchors.levels]
    return result


def _rows(spec: HeadSpec, anchors: AnchorSet) -> np.ndarray:
    """float64 rows of every level, in the graph's row order."""
    width = 6 if spec.priors_format == "yolov5" else 4
    parts = [_level_rows(spec, anchors, i) for i in range(anchors.num_levels)]
    return np.concatenate(parts) if parts else np.zeros((0, width))


def _level_rows(spec: HeadSpec, anchors: AnchorSet, index: int) -> np.ndarray:
    level, (img_h, img_w) = anchors.levels[index], anchors.image_size
    (fh, fw), off = level.feature_size, anchors.centre_offset
    wh = np.array([[a.w, a.h] for a in level.anchors], dtype=np.float64).reshape(-1, 2)
    cols, rows = np.arange(fw, dtype=np.float64), np.arange(fh, dtype=np.float64)
    if level.stride is None:  # cells tile the image (TensorFlow, MediaPipe)
        step_y, step_x = img_h / fh, img_w / fw
        cx, cy = (cols + off) / fw, (rows + off) / fh
    else:  # the same arithmetic as retinaface.postprocess.generate_anchors: (i + 0.5) * stride / size
        step_y, step_x = level.stride
        cx, cy = (cols + off) * step_x / img_w, (rows + off) * step_y / img_h
    grid_y, grid_x = np.meshgrid(np.arange(fh), np.arange(fw), indexing="ij")
    cell = np.stack([cx[grid_x.ravel()], cy[grid_y.ravel()], grid_x.ravel(), grid_y.ravel()], axis=1)  # (fh*fw, 4)
    num_a, num_c = len(wh), len(cell)
    if spec.cell_order == "anchor":  # (A, fh*fw): every cell of anchor 0, then anchor 1
        cell_idx, anchor_idx = np.tile(np.arange(num_c), num_a), np.repeat(np.arange(num_a), num_c)
    else:  # (fh*fw, A): the anchors of one cell together
        cell_idx, anchor_idx = np.repeat(np.arange(num_c), num_a), np.tile(np.arange(num_a), num_c)
    c, size = cell[cell_idx], wh[anchor_idx]
    w, h = size[:, 0] / img_w, size[:, 1] / img_h
    fmt = spec.priors_format
    if fmt in ("retinaface", "mediapipe"):
        return np.stack([c[:, 0], c[:, 1], w, h], axis=1)
    if fmt == "tf":
        return np.stack([c[:, 1], c[:, 0], h, w], axis=1)
    if fmt == "caffe":
        return np.stack([c[:, 0] - w / 2, c[:, 1] - h / 2, c[:, 0] + w / 2, c[:, 1] + h / 2], axis=1)
    ones = np.ones(len(c))
    return np.stack([c[:, 2], c[:, 3], ones * step_x, ones * step_y, size[:, 0], size[:, 1]], axis=1)
