"""COCO box mAP with faster-coco-eval (default) or pycocotools.

Detections are in COCO results format: ``{"image_id", "category_id",
"bbox": [x, y, w, h] in original-image pixels, "score"}``.
"""

from __future__ import annotations

import contextlib
import copy
import gc
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
    detections: list[dict] | np.ndarray,
    *,
    backend: str = "faster",
    image_ids: list[int] | None = None,
    max_dets: int = 100,
    full: bool = True,
) -> dict[str, float]:
    """COCO bbox metrics of ``detections`` against the annotations.

    Args:
        ann: annotation file path, annotation dict, or a COCO object of the backend.
        detections: COCO results-format dicts, or an (N, 7) array of rows
            [image_id, x, y, w, h, score, category_id].
        backend: "faster" (faster-coco-eval) or "pycocotools".
        image_ids: restrict to these images (default: every image of ``ann``).
        max_dets: the largest maxDets setting (COCO's default is 100).
        full: every metric; False evaluates only area "all" at ``max_dets``
            and returns mAP alone, equal to the full evaluation's mAP.

    Returns:
        Dict with :data:`METRIC_NAMES` (mAP = AP@[.5:.95]), or only "mAP" when
        ``full`` is False; no detections give zeros.
    """
    _, COCOeval = _backend(backend)
    gt = ann if hasattr(ann, "getImgIds") else load_gt(ann, backend)
    ids = list(image_ids) if image_ids is not None else gt.getImgIds()
    names = METRIC_NAMES if full else METRIC_NAMES[:1]
    if len(detections) == 0:
        return {name: 0.0 for name in names}
    rows = detections if isinstance(detections, np.ndarray) else _as_array(detections)
    with contextlib.redirect_stdout(io.StringIO()), _gc_paused():
        stats = _evaluate(COCOeval, gt, rows, ids, max_dets, full)
    return {name: max(value, 0.0) for name, value in zip(names, stats)}


def _evaluate(COCOeval, gt, rows: np.ndarray, ids: list[int], max_dets: int, full: bool) -> list[float]:
    """Run the backend; returns stats[:12], or [mAP] when not ``full``."""
    dt = gt.loadRes(_result_dicts(rows))
    ev = COCOeval(gt, dt, "bbox")
    ev.params.imgIds = ids
    if full:
        ev.params.maxDets = [1, 10, max_dets]
    else:
        _only_map_params(ev.params, max_dets)
    ev.evaluate()
    ev.accumulate()
    if not full:
        return [_map_of(ev.eval["precision"])]
    ev.summarize()
    return [float(s) for s in ev.stats[: len(METRIC_NAMES)]]


def coco_recall(ann, detections: list[dict], *, iou_thresholds=(0.5, 0.75), backend: str = "pycocotools",
                max_dets: int = 100) -> dict[str, float]:
    """COCOeval's recall at single IoU thresholds: per category, the share of annotated boxes matched by a
    detection (at most ``max_dets`` per image, area "all"), averaged over the categories that have boxes.

    Returns:
        ``{"recall50": ..., "recall75": ...}`` (keys ``recall`` + the IoU in hundredths); 0 without detections.
    """
    names = [f"recall{round(t * 100)}" for t in iou_thresholds]
    if len(detections) == 0:
        return {name: 0.0 for name in names}
    _, COCOeval = _backend(backend)
    gt = ann if hasattr(ann, "getImgIds") else load_gt(ann, backend)
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(_result_dicts(_as_array(detections))), "bbox")
        ev.params.imgIds = gt.getImgIds()
        ev.params.iouThrs = np.asarray(iou_thresholds, dtype=np.float64)
        _only_map_params(ev.params, max_dets)
        ev.evaluate()
        ev.accumulate()
    recall = ev.eval["recall"][:, :, 0, -1]  # (T, K): area "all", max_dets
    out = {}
    for name, row in zip(names, recall):
        valid = row[row > -1]
        out[name] = float(valid.mean()) if valid.size else 0.0
    return out


def _only_map_params(params, max_dets: int) -> None:
    """Evaluate area "all" at ``max_dets`` only: the mAP summarize() reports, without the rest.

    Every (image, category, area range) is matched and every (category, area
    range, maxDets) accumulated independently, so dropping the other ranges
    and limits leaves the "all"/``max_dets`` precision entries unchanged.
    """
    assert params.areaRngLbl[0] == "all" and params.areaRng[0] == [0, 1e10], params.areaRng
    params.areaRng = [params.areaRng[0]]  # [[0, 1e5 ** 2]], as the backend defines "all"
    params.areaRngLbl = ["all"]
    params.maxDets = [max_dets]


def _map_of(precision: np.ndarray) -> float:
    """AP@[.5:.95] from accumulate()'s precision (T, R, K, A, M), as summarize() computes stats[0]."""
    s = precision[:, :, :, 0, -1]  # area "all", the largest maxDets
    valid = s[s > -1]
    return float(np.mean(valid)) if valid.size else -1.0


@contextlib.contextmanager
def _gc_paused():
    """Pause the cyclic garbage collector while the backend builds ~1e5-1e6 small dicts.

    Each allocation burst otherwise triggers full collections that walk every
    live object (the ground truth, the candidate cache), which costs more than
    the evaluation itself; the results do not depend on it. The evaluation's
    objects (acyclic: freed by reference counting) must be gone before the
    collector resumes, or its first pass walks all of them.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _result_dicts(rows: np.ndarray) -> list[dict]:
    """(N, 7) rows as COCO results dicts, the values both backends' ``loadNumpyAnnotations`` give.

    Those convert row by row with NumPy scalar indexing; converting columns
    with ``tolist`` gives the same numbers (Python floats equal the float64
    values, ids truncated to int alike) several times faster.
    """
    image_ids = rows[:, 0].astype(np.int64).tolist()
    cat_ids = rows[:, 6].astype(np.int64).tolist()
    return [{"image_id": i, "bbox": b, "score": s, "category_id": c}
            for i, b, s, c in zip(image_ids, rows[:, 1:5].tolist(), rows[:, 5].tolist(), cat_ids)]


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
