"""Exact COCO bbox mAP, decomposed per (image, category) (groundwork for issue 14).

COCO evaluation splits into two steps:

- :func:`match_image_class` matches the detections of one (image, category)
  against its ground truth, as pycocotools' ``COCOeval.evaluateImg`` does,
  and keeps only what accumulation needs (sorted scores, match and ignore
  flags per IoU threshold, the count of non-ignored ground truth);
- :func:`accumulate_class` merges those parts of one category into its
  101-point precision, as ``COCOeval.accumulate`` does.

Both reproduce pycocotools' arithmetic and tie order exactly, so
:func:`map_from_parts` equals pycocotools' ``stats[0]`` bit for bit (the tests
check within 1e-9). The code is our own, written from the algorithm's
description; pycocotools is BSD-licensed.

pycocotools details reproduced here:

- detections sorted by -score with a stable mergesort (ties keep input order),
  cut to ``max_det`` per image and category;
- ground truth ignored when crowd or its annotation ``area`` is outside the
  area range, sorted with ignored ground truth last (stable);
- box IoU as ``maskUtils.iou`` computes it in C on [x, y, w, h]; a crowd
  ground truth's union is the detection's area;
- greedy matching per IoU threshold ``min(t, 1 - 1e-10)``: a matched
  non-crowd ground truth is skipped, the scan stops at the first ignored
  ground truth once a non-ignored one matched, ties in IoU go to the later
  ground truth;
- unmatched detections whose area (w * h, as ``loadRes`` sets it) is outside
  the range are ignored;
- pycocotools marks a detection matched by storing the ground truth's id, so
  a ground truth with id 0 leaves its detection looking unmatched (a false
  positive unless ignored); ``gt_ids`` reproduces that.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np

IOU_THRS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1)
REC_THRS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1)
AREA_ALL = (0, 1e10)  # pycocotools' "all": [0 ** 2, 1e5 ** 2]


def box_iou(dets_xywh: np.ndarray, gt_xywh: np.ndarray, gt_iscrowd: np.ndarray) -> np.ndarray:
    """(D, G) IoU of [x, y, w, h] boxes with the same float operations as pycocotools' ``bbIou``."""
    d = np.asarray(dets_xywh, dtype=np.float64).reshape(-1, 4)
    g = np.asarray(gt_xywh, dtype=np.float64).reshape(-1, 4)
    crowd = np.asarray(gt_iscrowd).reshape(-1).astype(bool)
    da = (d[:, 2] * d[:, 3])[:, None]
    ga = (g[:, 2] * g[:, 3])[None, :]
    w = (np.minimum((d[:, 2] + d[:, 0])[:, None], (g[:, 2] + g[:, 0])[None, :])
         - np.maximum(d[:, None, 0], g[None, :, 0]))
    h = (np.minimum((d[:, 3] + d[:, 1])[:, None], (g[:, 3] + g[:, 1])[None, :])
         - np.maximum(d[:, None, 1], g[None, :, 1]))
    inter = w * h
    union = np.where(crowd[None, :], np.broadcast_to(da, inter.shape), (da + ga) - inter)
    ok = (w > 0) & (h > 0)
    out = np.zeros(inter.shape, dtype=np.float64)
    np.divide(inter, union, out=out, where=ok)
    return out


def match_image_class(
    dets_boxes_xywh,
    dets_scores,
    gt_boxes_xywh,
    gt_iscrowd,
    gt_area,
    *,
    iou_thrs=IOU_THRS,
    area_rng=AREA_ALL,
    max_det: int = 100,
    gt_ids=None,
) -> dict:
    """Match one (image, category) as pycocotools' ``evaluateImg`` does.

    Args:
        dets_boxes_xywh: (D, 4) detection boxes, in the order they were given to ``loadRes``.
        dets_scores: (D,) scores.
        gt_boxes_xywh, gt_iscrowd, gt_area: (G, 4), (G,), (G,) ground truth, ``area`` the annotation's field.
        iou_thrs: IoU thresholds (T,).
        area_rng: (lo, hi) area range.
        max_det: detections kept after sorting by score.
        gt_ids: (G,) annotation ids; only id 0 matters (see the module note). Default: none is 0.

    Returns:
        {"scores": (D',) sorted and cut, "matched": (T, D') bool, "ignored": (T, D') bool,
        "npig": number of non-ignored ground truth}; D' = min(D, max_det).
    """
    scores = np.asarray(dets_scores, dtype=np.float64).reshape(-1)
    dboxes = np.asarray(dets_boxes_xywh, dtype=np.float64).reshape(-1, 4)
    gboxes = np.asarray(gt_boxes_xywh, dtype=np.float64).reshape(-1, 4)
    crowd = np.asarray(gt_iscrowd).reshape(-1).astype(bool)
    garea = np.asarray(gt_area, dtype=np.float64).reshape(-1)
    thrs = np.asarray(iou_thrs, dtype=np.float64).reshape(-1)
    T, G = len(thrs), len(gboxes)
    lo, hi = area_rng

    g_ign = crowd | (garea < lo) | (garea > hi)
    gorder = np.argsort(g_ign.astype(np.int64), kind="mergesort")
    g_ign, crowd_s, gboxes = g_ign[gorder], crowd[gorder], gboxes[gorder]
    gid_zero = (np.zeros(G, dtype=bool) if gt_ids is None
                else (np.asarray(gt_ids).reshape(-1) == 0)[gorder])

    dorder = np.argsort(-scores, kind="mergesort")[:max_det]
    scores, dboxes = scores[dorder], dboxes[dorder]
    D = len(scores)

    matched = np.zeros((T, D), dtype=bool)  # pycocotools' dtm != 0
    ignored = np.zeros((T, D), dtype=bool)
    if D and G:
        ious = box_iou(dboxes, gboxes, crowd_s)
        for ti, t in enumerate(thrs):
            gt_taken = np.zeros(G, dtype=bool)
            for di in range(D):
                best = min(t, 1 - 1e-10)
                m = -1
                row = ious[di]
                for gi in range(G):
                    if gt_taken[gi] and not crowd_s[gi]:
                        continue
                    if m > -1 and not g_ign[m] and g_ign[gi]:
                        break
                    if row[gi] < best:
                        continue
                    best = row[gi]
                    m = gi
                if m == -1:
                    continue
                ignored[ti, di] = g_ign[m]
                matched[ti, di] = not gid_zero[m]
                gt_taken[m] = True
    darea = dboxes[:, 2] * dboxes[:, 3]
    outside = (darea < lo) | (darea > hi)
    ignored |= ~matched & outside[None, :]
    return {"scores": scores, "matched": matched, "ignored": ignored, "npig": int(np.count_nonzero(~g_ign))}


def accumulate_class(parts: list[dict], *, max_det: int = 100, rec_thrs=REC_THRS) -> np.ndarray:
    """(T, R) precision of one category and area range, as pycocotools' ``accumulate``.

    ``parts`` are :func:`match_image_class` results in pycocotools' image order
    (ascending image ids); each is cut to ``max_det`` again. All entries are -1
    when there are no parts or no non-ignored ground truth.
    """
    rec_thrs = np.asarray(rec_thrs, dtype=np.float64)
    R = len(rec_thrs)
    if not parts:  # every image's evaluateImg gave None
        return np.full((len(IOU_THRS), R), -1.0)
    T = parts[0]["matched"].shape[0]
    npig = sum(p["npig"] for p in parts)
    if npig == 0:
        return np.full((T, R), -1.0)
    scores = np.concatenate([p["scores"][:max_det] for p in parts])
    order = np.argsort(-scores, kind="mergesort")
    dtm = np.concatenate([p["matched"][:, :max_det] for p in parts], axis=1)[:, order]
    dtig = np.concatenate([p["ignored"][:, :max_det] for p in parts], axis=1)[:, order]
    tps = dtm & ~dtig
    fps = ~dtm & ~dtig
    tp_sum = np.cumsum(tps, axis=1).astype(np.float64)
    fp_sum = np.cumsum(fps, axis=1).astype(np.float64)
    precision = np.zeros((T, R))
    nd = tp_sum.shape[1]
    for t in range(T):
        tp, fp = tp_sum[t], fp_sum[t]
        rc = tp / npig
        pr = tp / (fp + tp + np.spacing(1))
        pr = np.maximum.accumulate(pr[::-1])[::-1]  # pr[i-1] = max(pr[i-1], pr[i]) from the end
        inds = np.searchsorted(rc, rec_thrs, side="left")
        valid = inds < nd
        precision[t, valid] = pr[inds[valid]]
    return precision


def map_from_parts(per_class_parts: dict, *, max_det: int = 100) -> float:
    """mAP@[.5:.95], area "all", ``max_det``: the mean of the entries > -1, as ``summarize()``'s stats[0].

    ``per_class_parts`` maps category id -> list of parts in ascending image id
    order; categories are taken in ascending id order as pycocotools does. A
    category with no parts counts as -1 (excluded); no valid entry gives -1.
    """
    blocks = []
    for cat in sorted(per_class_parts):
        blocks.append(accumulate_class(per_class_parts[cat], max_det=max_det))
    if not blocks:
        return -1.0
    s = np.stack(blocks, axis=2)  # (T, R, K), the layout summarize() flattens
    valid = s[s > -1]
    return float(np.mean(valid)) if valid.size else -1.0


def decomposed_parts(gt, detections: list[dict], *, area_rng=AREA_ALL, max_det: int = 100) -> dict:
    """{category id: [part per image that has ground truth or detections]} from a COCO gt and results.

    ``gt`` is a COCO dataset dict or a json path. Images and categories are those
    of ``gt`` (ascending ids, as COCOeval's defaults); detections of other
    categories are dropped, as COCOeval does. Detections keep their input order
    within each (image, category), which decides ties in score.
    """
    if isinstance(gt, (str, Path)):
        gt = json.loads(Path(gt).read_text())
    img_ids = sorted({im["id"] for im in gt.get("images", [])})
    cat_ids = sorted({c["id"] for c in gt.get("categories", [])})
    known_imgs, known_cats = set(img_ids), set(cat_ids)
    gts: dict = {}
    for a in gt.get("annotations", []):
        if a["image_id"] in known_imgs and a["category_id"] in known_cats:
            gts.setdefault((a["image_id"], a["category_id"]), []).append(a)
    dts: dict = {}
    for d in detections:
        if d["image_id"] not in known_imgs:
            raise ValueError(f"detection of image {d['image_id']}, which the ground truth does not have")
        if d["category_id"] in known_cats:
            dts.setdefault((d["image_id"], d["category_id"]), []).append(d)
    out: dict = {c: [] for c in cat_ids}
    empty = np.zeros((0, 4))
    for c in cat_ids:
        for i in img_ids:
            g = gts.get((i, c), [])
            d = dts.get((i, c), [])
            if not g and not d:
                continue  # evaluateImg returns None
            out[c].append(match_image_class(
                np.array([x["bbox"] for x in d], dtype=np.float64) if d else empty,
                np.array([x["score"] for x in d], dtype=np.float64),
                np.array([x["bbox"] for x in g], dtype=np.float64) if g else empty,
                np.array([int(x.get("iscrowd", 0)) for x in g], dtype=np.int64),
                np.array([x["area"] for x in g], dtype=np.float64),
                gt_ids=np.array([x["id"] for x in g], dtype=np.int64),
                area_rng=area_rng, max_det=max_det))
    return out


def decomposed_map(gt, detections: list[dict], *, max_det: int = 100) -> float:
    """COCO mAP@[.5:.95] (area "all", ``max_det``) of results-format ``detections``, equal to pycocotools' stats[0]."""
    return map_from_parts(decomposed_parts(gt, detections, max_det=max_det), max_det=max_det)


def pycocotools_map(gt, detections: list[dict]) -> float:
    """pycocotools' stats[0], for checks (needs pycocotools)."""
    import copy

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        if isinstance(gt, (str, Path)):
            coco = COCO(str(gt))
        else:
            coco = COCO()
            coco.dataset = copy.deepcopy(gt)
            coco.createIndex()
        if not detections:
            return -1.0
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(detections)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])
