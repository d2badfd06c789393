"""Pascal VOC mAP@0.5: the VOC2007 11-point and the VOC2010+ all-point interpolation.

The rules are the VOC devkit's (``VOCevaldet.m``), on COCO-format data:

- per class, every detection of every image sorted by score, highest first
  (ties: ascending image id, then the detection's order in its image);
- each detection is compared with the ground truth of its image and class;
  its best box is the one of highest IoU (the first in file order on a tie);
  if that IoU is > 0.5 (strictly): a ``difficult`` box makes the detection
  ignored (neither TP nor FP), a box not matched yet makes it a TP (and the
  box matched), a box already matched makes it a FP (a duplicate); otherwise FP;
- positives are the class's boxes that are not difficult; recall = TP / positives,
  precision = TP / (TP + FP) at each detection (ignored ones skipped);
- ``voc07``: AP = mean over recall thresholds 0, 0.1, ..., 1 of the highest
  precision at recall >= the threshold (0 if none), as VOC2007's devkit and
  py-faster-rcnn; ``voc``: the area under the precision envelope at every
  recall change (VOC2010 onwards);
- mAP is the mean AP over the classes that have a positive (a class without
  one has no defined recall; COCO leaves such classes out too).

IoU is computed in continuous coordinates, without the devkit's ``+1``: the
VOC reader (:mod:`edgeanchor.datasets.voc`) stores boxes as ``[xmin - 1, ymin - 1,
xmax, ymax]``, on which this IoU equals the devkit's on the XML's integer
indices. A box is ``difficult`` when its annotation has ``"difficult": 1``, or,
without that key, ``"iscrowd": 1`` (a COCO crowd region is the nearest thing).
There is no limit on detections per image (COCO's 100 does not apply).

:func:`voc_map` is the plain statement of these rules (the reference).
:func:`match_pair_voc` is the same matching compiled, which
:class:`edgeanchor.evaluation.incremental.ShardScorer` uses per (image, class)
when asked for a VOC metric (the matching decomposes per image and class,
because the global score order restricted to one image is that image's order),
and :func:`class_ap` is the accumulation both use.
"""

from __future__ import annotations

import numba
import numpy as np

COCO, VOC07, VOC = "coco", "voc07", "voc"
METRICS = (COCO, VOC07, VOC)
VOC_METRICS = (VOC07, VOC)
IOU_THRESH = 0.5
RECALL_POINTS_07 = np.arange(0.0, 1.1, 0.1)  # 0, 0.1, ..., 1.0 as py-faster-rcnn's voc_eval builds them
METRIC_TITLES = {COCO: "COCO mAP@[.5:.95]", VOC07: "VOC2007 mAP@0.5 (11-point)", VOC: "VOC mAP@0.5 (all-point)"}


def is_difficult(ann: dict) -> bool:
    """A ground-truth box VOC ignores: ``difficult``, or a crowd region when the key is absent."""
    return bool(ann.get("difficult", ann.get("iscrowd", 0)))


@numba.njit(cache=True, nogil=True)
def match_pair_voc(dx, dy, dw, dh, gx, gy, gw, gh, g_difficult, m_out, ig_out):
    """The devkit's matching for one (image, class): detections sorted by score, boxes in file order.

    Writes ``m_out[d] = 1`` for a TP and ``ig_out[d] = 1`` for an ignored detection (0 otherwise).
    """
    D = dx.shape[0]
    G = gx.shape[0]
    taken = np.zeros(G, dtype=np.bool_)
    for d in range(D):
        m_out[d] = 0
        ig_out[d] = 0
        best = -1.0
        jmax = -1
        for g in range(G):
            iw = min(dx[d] + dw[d], gx[g] + gw[g]) - max(dx[d], gx[g])
            ih = min(dy[d] + dh[d], gy[g] + gh[g]) - max(dy[d], gy[g])
            if iw > 0 and ih > 0:
                inter = iw * ih
                ov = inter / ((dw[d] * dh[d] + gw[g] * gh[g]) - inter)
                if ov > best:
                    best = ov
                    jmax = g
        if jmax >= 0 and best > IOU_THRESH:
            if g_difficult[jmax]:
                ig_out[d] = 1
            elif not taken[jmax]:
                m_out[d] = 1
                taken[jmax] = True


def class_ap(tp: np.ndarray, ignored: np.ndarray, num_pos: int, metric: str) -> float:
    """AP of one class from its detections' flags, in score order.

    Args:
        tp: (n,) bool, true positive (a detection neither TP nor ignored is a FP).
        ignored: (n,) bool, matched a difficult box (skipped).
        num_pos: non-difficult boxes of the class, > 0.
        metric: "voc07" (11-point) or "voc" (all-point).
    """
    keep = ~np.asarray(ignored, dtype=bool)
    hits = np.asarray(tp, dtype=bool)[keep]
    ctp = np.cumsum(hits, dtype=np.float64)
    cfp = np.cumsum(~hits, dtype=np.float64)
    rec = ctp / num_pos
    prec = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
    if metric == VOC07:
        return float(sum((prec[rec >= t].max() if (rec >= t).any() else 0.0) for t in RECALL_POINTS_07) / 11.0)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # the precision envelope
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def mean_ap(aps: dict) -> float:
    """Mean of the defined APs (-1 when no class has a positive, as COCO's summary)."""
    values = [v for v in aps.values() if v is not None]
    return float(np.mean(values)) if values else -1.0


def _xywh(rows) -> np.ndarray:
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4)


def voc_map(gt: dict, detections, metric: str = VOC) -> dict:
    """VOC mAP@0.5 of COCO results against COCO ground truth (the reference implementation).

    Args:
        gt: COCO annotation dict (``images``, ``annotations``, ``categories``).
        detections: COCO results, as dicts (``image_id``, ``category_id``, ``bbox`` [x, y, w, h], ``score``)
            or as rows [image_id, x, y, w, h, score, category_id].
        metric: "voc07" or "voc".

    Returns:
        ``{"mAP": float, "AP": {category id: AP or None (no positive)}}``.
    """
    if metric not in VOC_METRICS:
        raise ValueError(f"metric must be one of {VOC_METRICS}, got {metric!r}")
    dets = _det_rows(detections)
    boxes: dict = {}
    for a in gt.get("annotations", []):
        boxes.setdefault((int(a["image_id"]), int(a["category_id"])), []).append((a["bbox"], is_difficult(a)))
    aps: dict[int, float | None] = {}
    for cat in sorted(int(c["id"]) for c in gt.get("categories", [])):
        num_pos = sum(1 for (_, c), items in boxes.items() if c == cat for _, diff in items if not diff)
        if num_pos == 0:
            aps[cat] = None
            continue
        mine = dets[dets[:, 6] == cat]
        mine = mine[np.argsort(mine[:, 0], kind="stable")]  # image order, each image's in given order
        mine = mine[np.argsort(-mine[:, 5], kind="stable")]
        tp, ignored = _match_class(mine, boxes, cat)
        aps[cat] = class_ap(tp, ignored, num_pos, metric)
    return {"mAP": mean_ap(aps), "AP": aps}


def _det_rows(detections) -> np.ndarray:
    if isinstance(detections, np.ndarray):
        return detections.reshape(-1, 7).astype(np.float64)
    return np.array([[d["image_id"], *d["bbox"], d["score"], d["category_id"]] for d in detections],
                    dtype=np.float64).reshape(-1, 7)


def _match_class(dets: np.ndarray, boxes: dict, cat: int) -> tuple[np.ndarray, np.ndarray]:
    """TP and ignored flags of one class's detections (score order), matched image by image."""
    tp = np.zeros(len(dets), dtype=bool)
    ignored = np.zeros(len(dets), dtype=bool)
    taken: dict = {}
    for d, row in enumerate(dets):
        items = boxes.get((int(row[0]), cat), [])
        if not items:
            continue
        g = _xywh([b for b, _ in items])
        x, y, w, h = row[1:5]
        iw = np.minimum(x + w, g[:, 0] + g[:, 2]) - np.maximum(x, g[:, 0])
        ih = np.minimum(y + h, g[:, 1] + g[:, 3]) - np.maximum(y, g[:, 1])
        inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
        ov = np.where(inter > 0, inter / np.maximum((w * h + g[:, 2] * g[:, 3]) - inter, 1e-300), -1.0)
        j = int(np.argmax(ov))  # the first of the highest
        if ov[j] <= IOU_THRESH:
            continue
        done = taken.setdefault(int(row[0]), set())
        if items[j][1]:
            ignored[d] = True
        elif j not in done:
            tp[d] = True
            done.add(j)
    return tp, ignored


def accumulate_voc(ptr: np.ndarray, matched: np.ndarray, ignored: np.ndarray, num_pos: np.ndarray,
                   metric: str) -> float:
    """mAP from per-category score-sorted lists (the incremental scorer's partials, merged).

    Args:
        ptr: (K+1,) category k's detections are ``[ptr[k], ptr[k+1])``, sorted by score.
        matched, ignored: (n,) flags (bit 0) per detection.
        num_pos: (K,) non-difficult boxes per category.
        metric: "voc07" or "voc".
    """
    aps: dict[int, float | None] = {}
    for k in range(len(num_pos)):
        if num_pos[k] == 0:
            aps[k] = None
            continue
        a, b = int(ptr[k]), int(ptr[k + 1])
        aps[k] = class_ap((matched[a:b] & 1).astype(bool), (ignored[a:b] & 1).astype(bool), int(num_pos[k]), metric)
    return mean_ap(aps)
