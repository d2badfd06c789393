"""Exact, incremental COCO mAP of anchor subsets, on a shard of the cache's images.

The search scores hundreds of keep sets on the same candidate cache. A
:class:`ShardScorer` does it in compiled code (Numba) and keeps, for a
parent keep set, every image's detections, the anchors that entered its NMS,
and each detection's COCO match flags. A child that removes more anchors
then redoes only what can change:

1. post-processing, for the images where a newly removed anchor had a
   candidate among the boxes that entered NMS (any other image's detections
   are provably the parent's: a candidate outside the top-k never changes the
   top-k, and greedy NMS is decided by the kept boxes alone);
2. matching, for the (image, category) pairs of those images whose detections
   differ from the parent's. A class's detections can change without any of
   its candidates being removed: the per-image max-detections cut couples the
   classes, so the pairs are compared detection by detection after the cut;
3. accumulation, vectorised over every category's merged, score-sorted list.

Everything equals pycocotools (``COCOeval`` with area "all" and maxDets 100:
stats[0]) bit for bit, and the post-processing equals
:func:`edgeanchor.postprocess.select` (the model's own) exactly:

- top-k per class / level / image: one stable sort by (group, -score); a
  group with two equal scores at its top-k border, or any NaN, makes the
  image fall back to ``select`` itself (``torch.topk``'s tie order is
  unspecified), as does a tie between two boxes of one NMS group or at the
  max-detections cut;
- NMS: torchvision's CPU kernel (stable sort by score, float32 IoU, ``>``
  the threshold), on the boxes ``batched_nms`` feeds it: shifted by
  ``label * (max coordinate + 1)`` up to 1000 boxes (its coordinate trick),
  unshifted above (its per-class loop); YOLO's boxes shifted by
  ``label * 7680``. Classes never overlap after the shift, so each class is
  suppressed on its own (an image where they could, with negative or
  oversized coordinates, falls back to ``select``);
- COCO: detections mapped to the original image and clipped exactly as
  :meth:`SubsetScorer.detections` writes them, per (image, category) sorted
  by -score with a stable sort and cut to 100, greedy matching at the ten
  IoU thresholds with pycocotools' rules (crowd, ignore, area range "all",
  the id-0 quirk; see :mod:`edgeanchor.evaluation.decomposed`), and per
  category one stable merge by -score in ascending image-id order, then the
  101-point interpolated precision.

Sharding: a shard holds a contiguous range of the images in ascending id
order. :meth:`ShardScorer.partials` returns the shard's per-category
score-sorted lists; :func:`merge_map` merges the lists of all shards (in
shard order, which keeps pycocotools' tie order) and computes the mAP. One
shard is the whole cache.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
import torch

from ..datasets.coco import to_original
from ..postprocess import YOLO_CLASS_OFFSET, Candidates, PostprocessRule, select_indices
from .cache import CandidateCache
from .decomposed import AREA_ALL, IOU_THRS, REC_THRS
from .voc_map import COCO, METRICS, VOC_METRICS, accumulate_voc, is_difficult, match_pair_voc

MAX_DET = 100  # COCO's maxDets for mAP
_NO_MAX_DET = 1 << 40  # VOC evaluates every detection of a pair
_EPS = float(np.spacing(1))
_BATCHED_NMS_VANILLA_ABOVE = 1000  # batched_nms on the CPU loops over classes above 4000 box coordinates
_MODE_BATCHED, _MODE_YOLO = 0, 1
_GROUP_SCOPES = ("class", "level", "all")


# ---- post-processing (compiled) -------------------------------------------------
@numba.njit(cache=True, nogil=True)
def _nms_group(order, x1, y1, x2, y2, area, thresh, alive):
    """torchvision's CPU NMS over ``order`` (positions, by score descending): clears ``alive`` of suppressed."""
    n = order.shape[0]
    for a in range(n):
        i = order[a]
        if not alive[i]:
            continue
        ix1, iy1, ix2, iy2, iarea = x1[i], y1[i], x2[i], y2[i], area[i]
        for b in range(a + 1, n):
            j = order[b]
            if not alive[j]:
                continue
            xx1 = max(ix1, x1[j])
            yy1 = max(iy1, y1[j])
            xx2 = min(ix2, x2[j])
            yy2 = min(iy2, y2[j])
            w = xx2 - xx1
            if not (w > np.float32(0.0)):  # std::max(0, w), NaN included
                w = np.float32(0.0)
            h = yy2 - yy1
            if not (h > np.float32(0.0)):
                h = np.float32(0.0)
            inter = w * h
            ovr = inter / ((iarea + area[j]) - inter)
            if ovr > thresh:
                alive[j] = False


@numba.njit(cache=True, nogil=True)
def _counting_order(keys, n, num_keys, count, out):
    """Positions 0..n-1 stably ordered by ``keys`` (small ints < num_keys); ``count`` gets the segment starts."""
    count[: num_keys + 1] = 0
    for q in range(n):
        count[keys[q] + 1] += 1
    for g in range(num_keys):
        count[g + 1] += count[g]
    fill = count[:num_keys].copy()
    for q in range(n):
        g = keys[q]
        out[fill[g]] = q
        fill[g] += 1


@numba.njit(cache=True, nogil=True)
def _select_images(images, offsets, anchor_id, group, num_groups, labels, num_labels, scores, boxes, removed, k,
                   thresh, max_det, mode, class_groups, det_rows, det_count, entered, fallback):
    """Post-process ``images`` (cache image indices) with the anchors in ``removed`` taken out.

    Writes, for image position p: ``det_rows[p, :det_count[p]]`` the cache rows of its detections in
    output order, ``entered[p, a]`` for the anchors with a candidate among the boxes that entered NMS,
    and ``fallback[p]`` when the result is ambiguous here and must come from ``select``.
    ``class_groups``: the top-k groups are the labels (then the kept rows are already per class, by score).
    """
    nmax = 1
    for p in range(images.shape[0]):
        nmax = max(nmax, offsets[images[p] + 1] - offsets[images[p]])
    rows = np.empty(nmax, dtype=np.int64)
    keys = np.empty(nmax, dtype=np.int64)
    neg = np.empty(nmax, dtype=np.float64)
    order = np.empty(nmax, dtype=np.int64)
    kept = np.empty(nmax, dtype=np.int64)
    cls_order = np.empty(nmax, dtype=np.int64)
    x1 = np.empty(nmax, dtype=np.float32)
    y1 = np.empty(nmax, dtype=np.float32)
    x2 = np.empty(nmax, dtype=np.float32)
    y2 = np.empty(nmax, dtype=np.float32)
    area = np.empty(nmax, dtype=np.float32)
    kneg = np.empty(nmax, dtype=np.float64)
    alive = np.empty(nmax, dtype=np.bool_)
    surv = np.empty(nmax, dtype=np.int64)
    gcount = np.empty(max(num_groups, num_labels) + 1, dtype=np.int64)
    for p in range(images.shape[0]):
        img = images[p]
        det_count[p] = 0
        n = 0
        bad = False
        for r in range(offsets[img], offsets[img + 1]):
            if not removed[anchor_id[r]]:
                rows[n] = r
                keys[n] = group[r]
                s = scores[r]
                if s != s:
                    bad = True
                neg[n] = -np.float64(s)
                n += 1
        if bad:
            fallback[p] = True
            continue
        if n == 0:
            continue
        # top-k: per group (stable counting sort), by score; a tie with its first inside the top k is ambiguous
        _counting_order(keys, n, num_groups, gcount, order)
        m = 0
        for g in range(num_groups):
            a, b = gcount[g], gcount[g + 1]
            if b - a == 0:
                continue
            seg = order[a:b]
            srt = seg[np.argsort(neg[seg])]
            for t in range(1, b - a):
                if t - 1 < k and neg[srt[t]] == neg[srt[t - 1]]:
                    bad = True
            for t in range(min(k, b - a)):
                kept[m] = rows[srt[t]]
                m += 1
        if bad:
            fallback[p] = True
            continue
        for q in range(m):
            entered[p, anchor_id[kept[q]]] = True
        # boxes as the NMS kernel sees them
        lo_c = np.float32(np.inf)
        hi_c = np.float32(-np.inf)
        for q in range(m):
            r = kept[q]
            for c in range(4):
                v = boxes[r, c]
                lo_c = min(lo_c, v)
                hi_c = max(hi_c, v)
        step = np.float32(0.0)
        if mode == 1:  # YOLO: boxes + label * 7680
            if not (hi_c - lo_c < np.float32(YOLO_CLASS_OFFSET)):
                fallback[p] = True  # classes could overlap after the shift
                continue
            step = np.float32(YOLO_CLASS_OFFSET)
        elif m <= _BATCHED_NMS_VANILLA_ABOVE:  # batched_nms' coordinate trick: label * (max + 1)
            if not (lo_c >= np.float32(0.0)):
                fallback[p] = True
                continue
            step = hi_c + np.float32(1.0)
        for q in range(m):  # else batched_nms' per-class loop: the boxes themselves
            r = kept[q]
            off = np.float32(labels[r]) * step
            x1[q] = boxes[r, 0] + off
            y1[q] = boxes[r, 1] + off
            x2[q] = boxes[r, 2] + off
            y2[q] = boxes[r, 3] + off
            area[q] = (x2[q] - x1[q]) * (y2[q] - y1[q])
            kneg[q] = -np.float64(scores[r])
            keys[q] = labels[r]
            alive[q] = True
        # each class on its own, by score (torchvision sorts stably; a tie inside a class is ambiguous here)
        if class_groups:
            for q in range(m):
                cls_order[q] = q
            start = 0
            for q in range(1, m + 1):
                if q == m or keys[q] != keys[start]:
                    for t in range(start + 1, q):
                        if kneg[t] == kneg[t - 1]:
                            bad = True
                    if not bad:
                        _nms_group(cls_order[start:q], x1, y1, x2, y2, area, thresh, alive)
                    start = q
        else:
            _counting_order(keys, m, num_labels, gcount, cls_order)
            for c in range(num_labels):
                a, b = gcount[c], gcount[c + 1]
                if b - a == 0:
                    continue
                seg = cls_order[a:b]
                srt = seg[np.argsort(kneg[seg])]
                for t in range(1, b - a):
                    if kneg[srt[t]] == kneg[srt[t - 1]]:
                        bad = True
                if not bad:
                    _nms_group(srt, x1, y1, x2, y2, area, thresh, alive)
        if bad:
            fallback[p] = True
            continue
        # survivors by score, stable over the kept order (the coordinate trick's output order), cut
        ns = 0
        for q in range(m):
            if alive[q]:
                surv[ns] = q
                ns += 1
        by_score = surv[:ns][np.argsort(kneg[surv[:ns]], kind="mergesort")]
        d = min(ns, max_det)
        if ns > max_det and kneg[by_score[max_det]] == kneg[by_score[max_det - 1]]:
            fallback[p] = True  # a tie at the max-detections cut
            continue
        for q in range(d):
            det_rows[p, q] = kept[by_score[q]]
        det_count[p] = d


# ---- COCO matching and accumulation (compiled) ---------------------------------
@numba.njit(cache=True, nogil=True)
def _match_pair(dx, dy, dw, dh, gx, gy, gw, gh, g_crowd, g_ign, g_zero, thrs, lo, hi, m_out, ig_out):
    """pycocotools' evaluateImg for one (image, category): dets sorted by score, gts ignored-last.

    Writes bit t of ``m_out[d]`` / ``ig_out[d]`` for matched / ignored at threshold t.
    """
    D = dx.shape[0]
    G = gx.shape[0]
    for d in range(D):
        m_out[d] = 0
        ig_out[d] = 0
    if G > 0 and D > 0:
        ious = np.zeros((D, G), dtype=np.float64)
        for d in range(D):
            da = dw[d] * dh[d]
            for g in range(G):
                w = min(dx[d] + dw[d], gx[g] + gw[g]) - max(dx[d], gx[g])
                h = min(dy[d] + dh[d], gy[g] + gh[g]) - max(dy[d], gy[g])
                if w > 0 and h > 0:
                    inter = w * h
                    if g_crowd[g]:
                        union = da
                    else:
                        union = (da + gw[g] * gh[g]) - inter
                    ious[d, g] = inter / union
        taken = np.zeros(G, dtype=np.bool_)
        for t in range(thrs.shape[0]):
            bit = np.uint16(1) << np.uint16(t)
            taken[:] = False
            for d in range(D):
                best = min(thrs[t], 1 - 1e-10)
                mm = -1
                for g in range(G):
                    if taken[g] and not g_crowd[g]:
                        continue
                    if mm > -1 and not g_ign[mm] and g_ign[g]:
                        break
                    if ious[d, g] < best:
                        continue
                    best = ious[d, g]
                    mm = g
                if mm == -1:
                    continue
                if g_ign[mm]:
                    ig_out[d] |= bit
                if not g_zero[mm]:
                    m_out[d] |= bit
                taken[mm] = True
    all_bits = np.uint16((1 << thrs.shape[0]) - 1)
    for d in range(D):
        a = dw[d] * dh[d]
        if a < lo or a > hi:
            ig_out[d] |= all_bits & ~m_out[d]


@numba.njit(cache=True, nogil=True)
def _match_pairs(pair_img, pair_cat, det_ptr, det_row, labels, kidx_of_label, scores, boxes, pads, scales, sizes,
                 gt_ptr, gt_cat, gt_xywh, gt_crowd, gt_ign, gt_zero, thrs, lo, hi, max_det, det_m, det_ig, det_eval,
                 voc):
    """Match the listed (image position, category index) pairs as pycocotools' evaluateImg does
    (``voc``: as the VOC devkit does, :func:`~edgeanchor.evaluation.voc_map.match_pair_voc`; ``gt_ign`` is then
    the difficult flag and the boxes are in file order).

    Each detection is first written as the COCO results row gives it: (box - pad) * scale, clipped to
    the original image, as [x, y, w, h]. Per detection, writes the match / ignore bits and ``det_eval``
    (among the pair's first ``max_det`` by score: pycocotools' cut).
    """
    width = 1
    for p in range(det_ptr.shape[0] - 1):
        width = max(width, det_ptr[p + 1] - det_ptr[p])
    idx = np.empty(width, dtype=np.int64)
    neg = np.empty(width, dtype=np.float64)
    dx = np.empty(width, dtype=np.float64)
    dy = np.empty(width, dtype=np.float64)
    dw = np.empty(width, dtype=np.float64)
    dh = np.empty(width, dtype=np.float64)
    m_out = np.empty(width, dtype=np.uint16)
    ig_out = np.empty(width, dtype=np.uint16)
    xyxy = np.empty(4, dtype=np.float64)
    for q in range(pair_img.shape[0]):
        p = pair_img[q]
        k = pair_cat[q]
        n = 0
        ordered = True
        for j in range(det_ptr[p], det_ptr[p + 1]):
            if kidx_of_label[labels[det_row[j]]] == k:
                idx[n] = j
                neg[n] = -np.float64(scores[det_row[j]])
                if n > 0 and neg[n] < neg[n - 1]:
                    ordered = False
                n += 1
        srt = idx[:n]
        if not ordered:  # pycocotools sorts each pair's detections by -score, stably
            srt = srt[np.argsort(neg[:n], kind="mergesort")]
        for t in range(max_det, n):
            det_eval[srt[t]] = False
            det_m[srt[t]] = 0
            det_ig[srt[t]] = 0
        D = min(n, max_det)
        h_img, w_img = sizes[p, 0], sizes[p, 1]
        for d in range(D):
            r = det_row[srt[d]]
            for c in range(4):
                v = (np.float64(boxes[r, c]) - pads[p, c]) * scales[p, c]
                lim = w_img if c % 2 == 0 else h_img
                xyxy[c] = min(max(v, 0.0), lim)
            dx[d] = xyxy[0]
            dy[d] = xyxy[1]
            dw[d] = xyxy[2] - xyxy[0]
            dh[d] = xyxy[3] - xyxy[1]
        # the pair's ground truth: the image's gts are sorted by (category, ignored, file order)
        ga, gb = gt_ptr[p], gt_ptr[p + 1]
        g0 = ga + np.searchsorted(gt_cat[ga:gb], k, side="left")
        g1 = ga + np.searchsorted(gt_cat[ga:gb], k, side="right")
        if voc:
            match_pair_voc(dx[:D], dy[:D], dw[:D], dh[:D], gt_xywh[g0:g1, 0], gt_xywh[g0:g1, 1], gt_xywh[g0:g1, 2],
                           gt_xywh[g0:g1, 3], gt_ign[g0:g1], m_out, ig_out)
        else:
            _match_pair(dx[:D], dy[:D], dw[:D], dh[:D], gt_xywh[g0:g1, 0], gt_xywh[g0:g1, 1], gt_xywh[g0:g1, 2],
                        gt_xywh[g0:g1, 3], gt_crowd[g0:g1], gt_ign[g0:g1], gt_zero[g0:g1], thrs, lo, hi, m_out,
                        ig_out)
        for d in range(D):
            det_eval[srt[d]] = True
            det_m[srt[d]] = m_out[d]
            det_ig[srt[d]] = ig_out[d]


@numba.njit(cache=True, nogil=True)
def _class_lists(det_cat, det_score, det_m, det_ig, det_eval, num_cats):
    """Per category, the evaluated detections sorted by -score, stable over (image, detection) order."""
    count = np.zeros(num_cats + 1, dtype=np.int64)
    for j in range(det_cat.shape[0]):
        if det_eval[j]:
            count[det_cat[j] + 1] += 1
    ptr = np.cumsum(count)
    fill = ptr[:-1].copy()
    n = ptr[-1]
    score = np.empty(n, dtype=np.float64)
    m = np.empty(n, dtype=np.uint16)
    ig = np.empty(n, dtype=np.uint16)
    for j in range(det_cat.shape[0]):
        if det_eval[j]:
            k = det_cat[j]
            s = fill[k]
            score[s] = det_score[j]
            m[s] = det_m[j]
            ig[s] = det_ig[j]
            fill[k] += 1
    for k in range(num_cats):
        a, b = ptr[k], ptr[k + 1]
        if b - a > 1:
            o = np.argsort(-score[a:b], kind="mergesort")
            score[a:b] = score[a:b][o]
            m[a:b] = m[a:b][o]
            ig[a:b] = ig[a:b][o]
    return ptr, score, m, ig


@numba.njit(cache=True, nogil=True)
def _precision(ptr, m, ig, npig, num_thrs, rec_thrs):
    """(T, R, K) precision as pycocotools' accumulate (-1 for a category without non-ignored gt)."""
    K = npig.shape[0]
    R = rec_thrs.shape[0]
    out = np.full((num_thrs, R, K), -1.0)
    for k in range(K):
        if npig[k] == 0:
            continue
        a, b = ptr[k], ptr[k + 1]
        nd = b - a
        tp = np.empty(nd, dtype=np.float64)
        fp = np.empty(nd, dtype=np.float64)
        pr = np.empty(nd, dtype=np.float64)
        rc = np.empty(nd, dtype=np.float64)
        for t in range(num_thrs):
            bit = np.uint16(1) << np.uint16(t)
            ctp = 0
            cfp = 0
            for d in range(nd):
                if not (ig[a + d] & bit):
                    if m[a + d] & bit:
                        ctp += 1
                    else:
                        cfp += 1
                tp[d] = ctp
                fp[d] = cfp
            for d in range(nd):
                rc[d] = tp[d] / npig[k]
                pr[d] = tp[d] / ((fp[d] + tp[d]) + _EPS)
            for d in range(nd - 1, 0, -1):
                if pr[d] > pr[d - 1]:
                    pr[d - 1] = pr[d]
            inds = np.searchsorted(rc, rec_thrs, side="left")
            for r in range(R):
                out[t, r, k] = pr[inds[r]] if inds[r] < nd else 0.0
    return out


# ---- data ----------------------------------------------------------------------------
@dataclass
class _State:
    """One keep set's results on the shard: detections, entered anchors, match flags (all by image position)."""

    removed: frozenset
    det_ptr: np.ndarray  # (P+1,) int64
    det_row: np.ndarray  # (N,) int64 cache rows, each image's in output order
    entered: np.ndarray  # (P, A) bool
    det_m: np.ndarray  # (N,) uint16 match bits
    det_ig: np.ndarray  # (N,) uint16 ignore bits
    det_eval: np.ndarray  # (N,) bool: in its pair's first 100 by score

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.det_ptr, self.det_row, self.entered, self.det_m, self.det_ig,
                                      self.det_eval))


@dataclass
class Partials:
    """One shard's per-category lists for a keep set: what :func:`merge_map` needs (picklable)."""

    ptr: np.ndarray  # (K+1,) int64
    score: np.ndarray  # (n,) float64, each category's sorted by -score
    matched: np.ndarray  # (n,) uint16 bits per IoU threshold
    ignored: np.ndarray  # (n,) uint16
    npig: np.ndarray  # (K,) int64 non-ignored ground truth per category (VOC: non-difficult)
    pairs_recomputed: int = 0
    metric: str = COCO  # "coco": bits per IoU threshold; "voc07" / "voc": bit 0 at IoU 0.5, VOC's rules

    @property
    def nbytes(self) -> int:
        return self.ptr.nbytes + self.score.nbytes + self.matched.nbytes + self.ignored.nbytes + self.npig.nbytes


def merge_map(partials: list[Partials]) -> float:
    """mAP@[.5:.95] (area all, 100 detections) from every shard's :class:`Partials`, in shard order.

    Equal to pycocotools' stats[0]; -1 when no category has ground truth. Partials of a VOC metric give
    that metric's mAP@0.5 (equal to :func:`edgeanchor.evaluation.voc_map.voc_map`).
    """
    if len(partials) == 1:
        p = partials[0]
        ptr, score, m, ig, npig = p.ptr, p.score, p.matched, p.ignored, p.npig
    else:
        npig = np.sum([p.npig for p in partials], axis=0)
        K = npig.shape[0]
        counts = np.sum([np.diff(p.ptr) for p in partials], axis=0)
        ptr = np.concatenate([[0], np.cumsum(counts)])
        score = np.empty(ptr[-1], dtype=np.float64)
        m = np.empty(ptr[-1], dtype=np.uint16)
        ig = np.empty(ptr[-1], dtype=np.uint16)
        for k in range(K):
            parts = [slice(p.ptr[k], p.ptr[k + 1]) for p in partials]
            s = np.concatenate([p.score[sl] for p, sl in zip(partials, parts)])
            o = np.argsort(-s, kind="stable")  # shards in image-id order: pycocotools' tie order
            score[ptr[k]:ptr[k + 1]] = s[o]
            m[ptr[k]:ptr[k + 1]] = np.concatenate([p.matched[sl] for p, sl in zip(partials, parts)])[o]
            ig[ptr[k]:ptr[k + 1]] = np.concatenate([p.ignored[sl] for p, sl in zip(partials, parts)])[o]
    if partials[0].metric in VOC_METRICS:
        return accumulate_voc(ptr, m, ig, npig, partials[0].metric)
    precision = _precision(ptr, m, ig, npig.astype(np.int64), len(IOU_THRS), REC_THRS)
    valid = precision[precision > -1]  # (T, R, K) flattened as summarize() does
    return float(np.mean(valid)) if valid.size else -1.0


def shard_images(image_ids: np.ndarray, shard: tuple[int, int]) -> np.ndarray:
    """Cache image indices of shard ``index`` of ``count``: contiguous in ascending image-id order."""
    index, count = shard
    if not (isinstance(count, int) and count >= 1 and isinstance(index, int) and 0 <= index < count):
        raise ValueError(f"shard must be (index, count) with 0 <= index < count, got {shard}")
    order = np.argsort(np.asarray(image_ids), kind="stable")
    return np.array_split(order, count)[index].astype(np.int64)


def _load_ann(ann) -> dict:
    if isinstance(ann, dict):
        return ann
    if hasattr(ann, "dataset"):  # a COCO object
        return ann.dataset
    return json.loads(Path(ann).read_text())


class ShardScorer:
    """Exact mAP of keep sets (given as removed anchor ids) on a shard of a candidate cache's images.

    Args:
        cache: the candidate cache. A cache already cut to one shard
            (``cache.take_images(shard_images(cache.image_ids, shard))``, what a remote worker is sent)
            is scored with shard (0, 1).
        ann: its annotations (path, dict or COCO object).
        shard: (index, count): this scorer holds the index-th of count contiguous image ranges in
            ascending image-id order, and only their candidates; (0, 1) is every image.
        memo_size: recent keep sets whose state is kept (besides a pinned parent).
        metric: "coco" (mAP@[.5:.95], pycocotools' stats[0]), "voc07" or "voc" (VOC mAP@0.5, 11-point or
            all-point; :mod:`edgeanchor.evaluation.voc_map`).
    """

    def __init__(self, cache: CandidateCache, ann, *, shard: tuple[int, int] = (0, 1), memo_size: int = 2,
                 metric: str = COCO):
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        self.metric = metric
        images = shard_images(cache.image_ids, shard)
        if shard[1] > 1 or not np.array_equal(images, np.arange(cache.num_images)):
            cache = cache.take_images(images)  # only the shard's candidates are held
        self.cache = cache
        self.spec = PostprocessRule.from_json(cache.meta["postprocess_spec"])
        self.level_starts = torch.tensor(cache.meta["level_starts"], dtype=torch.int64)
        self.images = np.arange(cache.num_images, dtype=np.int64)  # (P,) indices into self.cache, ascending ids
        self.shard = shard
        self.memo_size = memo_size
        self._memo: OrderedDict[frozenset, _State] = OrderedDict()
        self._pinned: _State | None = None
        self.pairs_recomputed = 0
        self.images_recomputed = 0
        self.fallback_images = 0
        c = cache
        self.num_anchor_ids = int(c.anchor_id.max()) + 1 if c.num_candidates else 1
        self._anchor_id = c.anchor_id.astype(np.int64)
        self._labels = c.labels.astype(np.int64)
        self._scores = np.ascontiguousarray(c.scores, dtype=np.float32)
        self._boxes = np.ascontiguousarray(c.boxes_xyxy, dtype=np.float32)
        self._offsets = c.offsets.astype(np.int64)
        if self.spec.topk_scope == "class":
            self._group = self._labels
        elif self.spec.topk_scope == "all":
            self._group = np.zeros_like(self._labels)
        else:
            self._group = np.searchsorted(self.level_starts.numpy()[1:], c.box_index, side="right").astype(np.int64)
        self._num_groups = int(self._group.max(initial=0)) + 1
        self._num_labels = int(self._labels.max(initial=0)) + 1
        self._mode = _MODE_YOLO if self.spec.score_fn == "yolo" else _MODE_BATCHED
        self._init_gt(_load_ann(ann))

    # ---- ground truth ---------------------------------------------------------------
    def _init_gt(self, gt: dict) -> None:
        c = self.cache
        self.cat_ids = np.array(sorted({int(x["id"]) for x in gt.get("categories", [])}), dtype=np.int64)
        K = len(self.cat_ids)
        cat_index = {int(cat): k for k, cat in enumerate(self.cat_ids.tolist())}
        label_to_cat = {int(v): int(k) for k, v in c.meta["label_map"].items()}
        size = max(max(label_to_cat, default=0), int(self._labels.max(initial=0))) + 1
        self.cat_of_label = np.zeros(size, dtype=np.float64)  # label -> category id of the results rows
        self.has_cat = np.zeros(size, dtype=np.bool_)  # labels written to the results (mapped to a category)
        self.kidx_of_label = np.full(size, -1, dtype=np.int64)  # label -> evaluated category index, -1: none
        for label, cat in label_to_cat.items():
            self.cat_of_label[label] = cat
            self.has_cat[label] = True
            self.kidx_of_label[label] = cat_index.get(cat, -1)
        pos_of_image = {int(c.image_ids[i]): p for p, i in enumerate(self.images.tolist())}
        rows = []  # (position, category index, ignored, file order, x, y, w, h, crowd, id is 0)
        for n, a in enumerate(gt.get("annotations", [])):
            p = pos_of_image.get(int(a["image_id"]))
            k = cat_index.get(int(a["category_id"]))
            if p is None or k is None:
                continue
            crowd = bool(a.get("iscrowd", 0))
            area = float(a["area"])
            ign = crowd or area < AREA_ALL[0] or area > AREA_ALL[1]
            if self.metric in VOC_METRICS:  # difficult boxes, kept in file order (the devkit's tie order)
                ign = is_difficult(a)
            rows.append((p, k, ign, n, *[float(v) for v in a["bbox"]], crowd, int(a["id"]) == 0))
        P = len(self.images)
        arr = np.array(rows, dtype=np.float64).reshape(-1, 10)
        ignored_last = arr[:, 2] if self.metric == COCO else np.zeros(len(arr))
        order = np.lexsort((arr[:, 3], ignored_last, arr[:, 1], arr[:, 0]))  # image, category, ignored last, file
        arr = arr[order]
        img = arr[:, 0].astype(np.int64)
        self.gt_ptr = np.searchsorted(img, np.arange(P + 1), side="left").astype(np.int64)
        self.gt_cat = arr[:, 1].astype(np.int64)
        self.gt_ign = arr[:, 2].astype(np.bool_)
        self.gt_xywh = np.ascontiguousarray(arr[:, 4:8])
        self.gt_crowd = arr[:, 8].astype(np.bool_)
        self.gt_zero = arr[:, 9].astype(np.bool_)
        self.npig = np.bincount(self.gt_cat[~self.gt_ign], minlength=K).astype(np.int64)
        self.num_cats = K
        in_h, in_w = c.meta["image_size"]
        maps = np.array([to_original((int(c.orig_sizes[i][0]), int(c.orig_sizes[i][1])), (in_h, in_w),
                                     c.meta.get("resize", "stretch")) for i in self.images.tolist()],
                        dtype=np.float64).reshape(-1, 4)  # (P, 4): scale_x, scale_y, pad_x, pad_y
        self._scales = np.concatenate([maps[:, :2], maps[:, :2]], axis=1)
        self._pads = np.concatenate([maps[:, 2:], maps[:, 2:]], axis=1)
        self._sizes = c.orig_sizes[self.images].astype(np.float64)  # (P, 2) h, w

    # ---- states -----------------------------------------------------------------------
    def _removed_mask(self, removed: frozenset) -> np.ndarray:
        mask = np.zeros(self.num_anchor_ids, dtype=np.bool_)
        ids = [r for r in removed if 0 <= r < self.num_anchor_ids]  # other ids have no candidates
        mask[ids] = True
        return mask

    def _select(self, positions: np.ndarray, mask: np.ndarray) -> tuple[list, np.ndarray]:
        """Detections (cache rows per position, in output order) and entered anchors of these image positions."""
        P = len(positions)
        md = self.spec.detections_per_img
        det_rows = np.empty((P, max(md, 1)), dtype=np.int64)
        det_count = np.zeros(P, dtype=np.int64)
        entered = np.zeros((P, self.num_anchor_ids), dtype=np.bool_)
        fallback = np.zeros(P, dtype=np.bool_)
        _select_images(self.images[positions], self._offsets, self._anchor_id, self._group, self._num_groups,
                       self._labels, self._num_labels, self._scores, self._boxes, mask, int(self.spec.topk_candidates),
                       float(self.spec.nms_thresh), int(md), self._mode, self.spec.topk_scope == "class", det_rows,
                       det_count, entered, fallback)
        out = [det_rows[q, :det_count[q]] for q in range(P)]
        for q in np.flatnonzero(fallback).tolist():
            out[q], entered[q] = self._select_torch(int(self.images[positions[q]]), mask)
        self.fallback_images += int(fallback.sum())
        self.images_recomputed += P
        return out, entered

    def _select_torch(self, img: int, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One image through :func:`edgeanchor.postprocess.select_indices` (the model's own code)."""
        c, lo, hi = self.cache, int(self._offsets[img]), int(self._offsets[img + 1])
        rows = np.arange(lo, hi)[~mask[self._anchor_id[lo:hi]]]
        entered = np.zeros(self.num_anchor_ids, dtype=np.bool_)
        if rows.size == 0:
            return rows, entered
        cands = Candidates(torch.from_numpy(c.box_index[rows].astype(np.int64)), torch.from_numpy(self._labels[rows]),
                           torch.from_numpy(self._scores[rows]), torch.from_numpy(self._boxes[rows]))
        kept_idx, keep = select_indices(cands, self.spec, self.level_starts)
        kept_rows = rows[kept_idx.numpy()]
        entered[self._anchor_id[kept_rows]] = True
        return kept_rows[keep.numpy()], entered

    def _coco(self, det_ptr: np.ndarray, det_row: np.ndarray):
        """Category index (-1: not evaluated), score and [x, y, w, h] of detections, as the COCO rows give them."""
        pos = np.repeat(np.arange(len(det_ptr) - 1), np.diff(det_ptr))
        kidx = self.kidx_of_label[self._labels[det_row]]
        boxes = (self._boxes[det_row].astype(np.float64) - self._pads[pos]) * self._scales[pos]
        h, w = self._sizes[pos, 0:1], self._sizes[pos, 1:2]
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)  # as predict.clip_original clips
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        xywh = np.empty_like(boxes)
        xywh[:, :2] = boxes[:, :2]
        xywh[:, 2:] = boxes[:, 2:] - boxes[:, :2]
        return kidx, self._scores[det_row].astype(np.float64), xywh

    def _match(self, state: _State, pair_img: np.ndarray, pair_cat: np.ndarray) -> None:
        _match_pairs(pair_img, pair_cat, state.det_ptr, state.det_row, self._labels, self.kidx_of_label, self._scores,
                     self._boxes, self._pads, self._scales, self._sizes, self.gt_ptr, self.gt_cat, self.gt_xywh,
                     self.gt_crowd, self.gt_ign, self.gt_zero, IOU_THRS, float(AREA_ALL[0]), float(AREA_ALL[1]),
                     MAX_DET if self.metric == COCO else _NO_MAX_DET, state.det_m, state.det_ig, state.det_eval,
                     self.metric != COCO)
        self.pairs_recomputed += len(pair_img)

    def _scratch(self, removed: frozenset) -> _State:
        positions = np.arange(len(self.images))
        rows, entered = self._select(positions, self._removed_mask(removed))
        det_ptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
        det_row = np.concatenate(rows).astype(np.int64) if rows else np.zeros(0, np.int64)
        n = len(det_row)
        state = _State(removed, det_ptr, det_row, entered, np.zeros(n, np.uint16), np.zeros(n, np.uint16),
                       np.zeros(n, np.bool_))
        self._match(state, *_image_pairs(positions, det_ptr, det_row, self._labels, self.kidx_of_label,
                                         self.num_cats))
        return state

    def _child(self, base: _State, removed: frozenset) -> _State:
        new = np.array(sorted(r for r in removed - base.removed if 0 <= r < self.num_anchor_ids), dtype=np.int64)
        affected = np.flatnonzero(base.entered[:, new].any(axis=1)) if new.size else np.zeros(0, np.int64)
        if affected.size == 0:
            return _State(removed, base.det_ptr, base.det_row, base.entered, base.det_m, base.det_ig, base.det_eval)
        rows, entered_aff = self._select(affected, self._removed_mask(removed))
        counts = np.diff(base.det_ptr)
        counts[affected] = [len(r) for r in rows]
        det_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        n = int(det_ptr[-1])
        det_row = np.empty(n, np.int64)
        det_m, det_ig, det_eval = np.empty(n, np.uint16), np.empty(n, np.uint16), np.empty(n, np.bool_)
        _splice(base.det_ptr, det_ptr, affected, base.det_row, det_row, base.det_m, det_m, base.det_ig, det_ig,
                base.det_eval, det_eval)
        for p, r in zip(affected.tolist(), rows):
            det_row[det_ptr[p]:det_ptr[p + 1]] = r
        entered = base.entered.copy()
        entered[affected] = entered_aff
        state = _State(removed, det_ptr, det_row, entered, det_m, det_ig, det_eval)
        # pairs whose detections are unchanged keep the parent's flags; the others are matched again
        pair_img, pair_cat = _diff_pairs(affected, base.det_ptr, base.det_row, base.det_m, base.det_ig,
                                         base.det_eval, det_ptr, det_row, det_m, det_ig, det_eval, self._labels,
                                         self.kidx_of_label, self.num_cats)
        self._match(state, pair_img, pair_cat)
        return state

    def _lookup(self, removed: frozenset) -> _State | None:
        if self._pinned is not None and self._pinned.removed == removed:
            return self._pinned
        if removed in self._memo:
            self._memo.move_to_end(removed)
            return self._memo[removed]
        return None

    def state(self, removed, parent=None) -> _State:
        """The state of ``removed``: memoised, else incremental from ``parent`` (or the pinned set) if it is a
        subset, else from scratch."""
        removed = frozenset(int(r) for r in removed)
        found = self._lookup(removed)
        if found is not None:
            return found
        base = None
        if parent is not None:
            parent = frozenset(int(r) for r in parent)
            if parent <= removed:
                base = self._lookup(parent)
        if base is None and self._pinned is not None and self._pinned.removed <= removed:
            base = self._pinned
        state = self._child(base, removed) if base is not None else self._scratch(removed)
        if self.memo_size > 0:
            self._memo[removed] = state
            while len(self._memo) > self.memo_size:
                self._memo.popitem(last=False)
        return state

    def pin(self, removed) -> None:
        """Keep ``removed``'s state as the base for its children until another set is pinned."""
        key = frozenset(int(r) for r in removed)
        if self._pinned is None or self._pinned.removed != key:
            self._pinned = self.state(key)

    def partials(self, removed, parent=None) -> Partials:
        """This shard's per-category lists for ``removed`` (see :func:`merge_map`)."""
        before = self.pairs_recomputed
        s = self.state(removed, parent)
        kidx = self.kidx_of_label[self._labels[s.det_row]]
        ptr, score, m, ig = _class_lists(kidx, self._scores[s.det_row].astype(np.float64), s.det_m, s.det_ig,
                                         s.det_eval & (kidx >= 0), self.num_cats)
        return Partials(ptr, score, m, ig, self.npig.copy(), self.pairs_recomputed - before, self.metric)

    def num_pairs(self, removed, parent=None) -> int:
        """(image, category) pairs with detections of ``removed``: what scoring it from scratch matches."""
        s = self.state(removed, parent)
        return len(_image_pairs(np.arange(len(self.images)), s.det_ptr, s.det_row, self._labels, self.kidx_of_label,
                                self.num_cats)[0])

    def map(self, removed, parent=None) -> float:
        """mAP of ``removed`` on this shard alone (COCO: pycocotools' stats[0]; VOC: mAP@0.5; -1: no ground
        truth)."""
        return merge_map([self.partials(removed, parent)])

    def rows(self, removed, parent=None) -> np.ndarray:
        """COCO result rows [image_id, x, y, w, h, score, category_id] of ``removed`` (each image in output order),
        for evaluators that need them (the full twelve metrics)."""
        s = self.state(removed, parent)
        _, score, xywh = self._coco(s.det_ptr, s.det_row)
        labels = self._labels[s.det_row]
        pos = np.repeat(np.arange(len(self.images)), np.diff(s.det_ptr))
        ok = self.has_cat[labels]
        rows = np.empty((int(ok.sum()), 7), dtype=np.float64)
        rows[:, 0] = self.cache.image_ids[self.images[pos[ok]]]
        rows[:, 1:5] = xywh[ok]
        rows[:, 5] = score[ok]
        rows[:, 6] = self.cat_of_label[labels[ok]]
        return rows

    @property
    def nbytes(self) -> int:
        """Bytes held in states (pinned and memoised) and ground truth, besides the cache."""
        states = {id(s): s for s in [self._pinned, *self._memo.values()] if s is not None}
        return sum(s.nbytes for s in states.values()) + self.gt_xywh.nbytes + self.gt_cat.nbytes


@numba.njit(cache=True, nogil=True)
def _splice(old_ptr, new_ptr, affected, old_row, new_row, old_m, new_m, old_ig, new_ig, old_ev, new_ev):
    """Copy the unaffected images' detections and flags from the parent's arrays to the child's."""
    P = old_ptr.shape[0] - 1
    is_aff = np.zeros(P, dtype=np.bool_)
    for p in affected:
        is_aff[p] = True
    for p in range(P):
        if is_aff[p]:
            continue
        a, b, c = old_ptr[p], old_ptr[p + 1], new_ptr[p]
        for j in range(b - a):
            new_row[c + j] = old_row[a + j]
            new_m[c + j] = old_m[a + j]
            new_ig[c + j] = old_ig[a + j]
            new_ev[c + j] = old_ev[a + j]


@numba.njit(cache=True, nogil=True)
def _image_pairs(positions, det_ptr, det_row, labels, kidx_of_label, num_cats):
    """The (image position, category index) pairs with detections, of the given images (each by category)."""
    total = 0
    for p in positions:
        total += det_ptr[p + 1] - det_ptr[p]
    out_img = np.empty(total, dtype=np.int64)
    out_cat = np.empty(total, dtype=np.int64)
    seen = np.zeros(num_cats + 1, dtype=np.bool_)
    n = 0
    for p in positions:
        for j in range(det_ptr[p], det_ptr[p + 1]):
            k = kidx_of_label[labels[det_row[j]]]
            if k >= 0:
                seen[k] = True
        for k in range(num_cats):
            if seen[k]:
                out_img[n] = p
                out_cat[n] = k
                n += 1
                seen[k] = False
    return out_img[:n], out_cat[:n]


@numba.njit(cache=True, nogil=True)
def _diff_pairs(affected, old_ptr, old_row, old_m, old_ig, old_ev, new_ptr, new_row, new_m, new_ig, new_ev, labels,
                kidx_of_label, num_cats):
    """Compare the affected images' detections with the parent's, per (image, category).

    A pair whose detections are the same rows in the same order keeps the parent's flags (copied here);
    the others are returned as (image positions, category indices) to be matched. Pairs left with no
    detections need nothing; detections of no evaluated category get no flags.
    """
    K1 = num_cats + 1
    co = np.empty(K1 + 1, dtype=np.int64)
    cn = np.empty(K1 + 1, dtype=np.int64)
    width = 1
    for p in affected:
        width = max(width, old_ptr[p + 1] - old_ptr[p], new_ptr[p + 1] - new_ptr[p])
    ko = np.empty(width, dtype=np.int64)
    kn = np.empty(width, dtype=np.int64)
    oo = np.empty(width, dtype=np.int64)
    on = np.empty(width, dtype=np.int64)
    total = 0
    for p in affected:
        total += new_ptr[p + 1] - new_ptr[p]
    out_img = np.empty(total, dtype=np.int64)
    out_cat = np.empty(total, dtype=np.int64)
    n = 0
    for p in affected:
        a, b, c, d = old_ptr[p], old_ptr[p + 1], new_ptr[p], new_ptr[p + 1]
        for j in range(b - a):
            ko[j] = kidx_of_label[labels[old_row[a + j]]] + 1
        for j in range(d - c):
            kn[j] = kidx_of_label[labels[new_row[c + j]]] + 1
            new_m[c + j] = 0
            new_ig[c + j] = 0
            new_ev[c + j] = False
        _counting_order(ko, b - a, K1, co, oo)
        _counting_order(kn, d - c, K1, cn, on)
        for g in range(1, K1):
            ln = cn[g + 1] - cn[g]
            if ln == 0:
                continue
            lo_ = co[g + 1] - co[g]
            same = lo_ == ln
            if same:
                for t in range(ln):
                    if old_row[a + oo[co[g] + t]] != new_row[c + on[cn[g] + t]]:
                        same = False
                        break
            if same:
                for t in range(ln):
                    jo = a + oo[co[g] + t]
                    jn = c + on[cn[g] + t]
                    new_m[jn] = old_m[jo]
                    new_ig[jn] = old_ig[jo]
                    new_ev[jn] = old_ev[jo]
            else:
                out_img[n] = p
                out_cat[n] = g - 1
                n += 1
    return out_img[:n], out_cat[:n]
