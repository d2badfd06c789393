"""COCO box mAP with faster-coco-eval (default) or pycocotools.

Detections are in COCO results format: ``{"image_id", "category_id",
"bbox": [x, y, w, h] in original-image pixels, "score"}``.
"""

from __future__ import annotations

import contextlib
import copy
import io
from pathlib import Path

import numpy as np

from ..errors import EdgeAnchorError

METRIC_NAMES = ("mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large",
                "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")


def load_gt(ann, backend: str = "faster"):
    """A COCO ground-truth object from a path or a loaded dict (deep-copied)."""
    COCO, _ = _backend(backend)
    with contextlib.redirect_stdout(io.StringIO()):
        if isinstance(ann, (str, Path)):
            return COCO(str(ann))
        gt = COCO()
        gt.dataset = copy.deepcopy(ann)
        gt.createIndex()
        return gt


def coco_map(
    ann,
    detections: list[dict],
    *,
    backend: str = "faster",
    image_ids: list[int] | None = None,
    max_dets: int = 100,
) -> dict[str, float]:
    """COCO bbox metrics of ``detections`` against the annotations.

    Args:
        ann: annotation file path, annotation dict, or a COCO object of the backend.
        detections: COCO results-format dicts, or an (N, 7) array of rows
            [image_id, x, y, w, h, score, category_id].
        backend: "faster" (faster-coco-eval) or "pycocotools".
        image_ids: restrict to these images (default: every image of ``ann``).
        max_dets: the largest maxDets setting (COCO's default is 100).

    Returns:
        Dict with :data:`METRIC_NAMES` (mAP = AP@[.5:.95]); no detections give zeros.
    """
    _, COCOeval = _backend(backend)
    gt = ann if hasattr(ann, "getImgIds") else load_gt(ann, backend)
    ids = list(image_ids) if image_ids is not None else gt.getImgIds()
    if len(detections) == 0:
        return {name: 0.0 for name in METRIC_NAMES}
    # Both backends load an Nx7 array directly (faster than copying dicts), with the same boxes.
    rows = detections if isinstance(detections, np.ndarray) else _as_array(detections)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(rows)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = ids
        ev.params.maxDets = [1, 10, max_dets]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [float(s) for s in ev.stats[: len(METRIC_NAMES)]]
    return {name: max(value, 0.0) for name, value in zip(METRIC_NAMES, stats)}


def _as_array(detections: list[dict]) -> np.ndarray:
    return np.array(
        [[d["image_id"], *d["bbox"], d["score"], d["category_id"]] for d in detections], dtype=np.float64
    )


def _backend(name: str):
    if name == "faster":
        from faster_coco_eval import COCO, COCOeval_faster

        return COCO, COCOeval_faster
    if name == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return COCO, COCOeval
    raise EdgeAnchorError(f"unknown COCO evaluation backend {name!r}; use 'faster' or 'pycocotools'")
