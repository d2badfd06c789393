"""Score an anchor subset from the candidate cache, with no forward pass.

``SubsetScorer.score(removed)`` filters each image's cached candidates to the
kept anchors, applies the model's own top-k / class-aware NMS /
max-detections (:func:`edgeanchor.postprocess.select`, the same code the model
runs), and computes COCO mAP. The result equals slicing the model and
evaluating it. ``score(removed, full=False)`` computes only mAP@[.5:.95]
(area all, 100 detections), the number the search ranks nodes by; it equals
the full evaluation's mAP exactly and is faster.

Scoring a child that removes one more anchor than its parent is incremental:
an image's detections can only change if a removed anchor had a candidate
among the boxes that entered NMS for the parent (a candidate outside the
top-k never influences the result, and greedy NMS is only ever decided by
kept boxes), so only those images are recomputed. The parent's per-image
results come from :meth:`SubsetScorer.pin` (kept until another parent is
pinned) or from a small memo of recent results.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch

from ..data.coco import to_original
from ..postprocess import Candidates, PostprocessSpec, select
from .cache import CandidateCache
from .coco_map import coco_map, load_gt
from .predict import clip_original

_EMPTY = np.zeros((0, 7), dtype=np.float64)
# Per-image detections: boxes float32 (D, 4) xyxy input pixels, scores float32 (D,), labels int64 (D,).
_NO_DETECTIONS = (np.zeros((0, 4), dtype=np.float32), np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64))


class SubsetScorer:
    """Scores keep sets (given as removed anchor ids) against ground truth.

    Args:
        cache: the candidate cache.
        ann: annotation file (or dict) of the cached images.
        backend: "faster" (faster-coco-eval) or "pycocotools".
        memo_size: number of recent per-image results kept for incremental
            scoring (a pinned parent is kept besides these).
    """

    def __init__(self, cache: CandidateCache, ann, *, backend: str = "faster", memo_size: int = 4):
        self.cache = cache
        self.backend = backend
        self.postprocess_spec = PostprocessSpec.from_json(cache.meta["postprocess_spec"])
        self.level_starts = torch.tensor(cache.meta["level_starts"], dtype=torch.int64)
        self.gt = load_gt(ann, backend)
        label_to_cat = {int(v): int(k) for k, v in cache.meta["label_map"].items()}
        self.cat_of_label = np.zeros(max(label_to_cat) + 1, dtype=np.float64)
        for label, cat in label_to_cat.items():
            self.cat_of_label[label] = cat
        self.has_cat = np.zeros_like(self.cat_of_label, dtype=bool)
        self.has_cat[list(label_to_cat)] = True
        input_size = tuple(cache.meta["image_size"])
        resize = cache.meta.get("resize", "stretch")
        # per image, input pixels -> original pixels as (xyxy - pad) * scale, exactly as predict maps them
        maps = np.array([to_original(tuple(int(v) for v in size), input_size, resize) for size in cache.orig_sizes],
                        dtype=np.float64).reshape(-1, 4)  # (I, 4): scale_x, scale_y, pad_x, pad_y
        self.scales = np.concatenate([maps[:, :2], maps[:, :2]], axis=1)  # (I, 4) xyxy order
        self.pads = np.concatenate([maps[:, 2:], maps[:, 2:]], axis=1)  # (I, 4)
        self.num_anchor_ids = int(cache.anchor_id.max()) + 1 if cache.num_candidates else 0
        # box index -> anchor id, for the boxes that have candidates (the only ones that can enter NMS)
        self._box_anchor = np.zeros(int(cache.box_index.max()) + 1 if cache.num_candidates else 0, dtype=np.int64)
        self._box_anchor[cache.box_index] = cache.anchor_id
        self._box_index = cache.box_index.astype(np.int64)
        self._labels = cache.labels.astype(np.int64)
        self._images = [self._image_candidates(i) for i in range(cache.num_images)]
        self._memo: OrderedDict[frozenset, list] = OrderedDict()
        self._pinned: tuple[frozenset, list] | None = None
        self.memo_size = memo_size
        self.images_recomputed = 0

    def _image_candidates(self, i: int) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
        """Image i's candidate arrays (box_index, labels, scores, boxes_xyxy) and anchor ids, as views."""
        c, lo, hi = self.cache, int(self.cache.offsets[i]), int(self.cache.offsets[i + 1])
        return (self._box_index[lo:hi], self._labels[lo:hi], c.scores[lo:hi], c.boxes_xyxy[lo:hi]), c.anchor_id[lo:hi]

    # ---- per image -------------------------------------------------------
    def _image_result(self, i: int, removed_mask: np.ndarray | None) -> tuple[tuple, frozenset]:
        """Detections (boxes, scores, labels) of image i, and the anchor ids that entered NMS.

        Args:
            i: image index.
            removed_mask: bool (num_anchor_ids,), True for removed anchors; None removes nothing.
        """
        arrays, anchor_ids = self._images[i]
        if anchor_ids.size and removed_mask is not None:
            keep = ~removed_mask[anchor_ids]  # (M,) bool
            if not keep.all():
                arrays = tuple(a[keep] for a in arrays)  # NumPy: cheaper than torch on small arrays
        self.images_recomputed += 1
        if not arrays[0].size:
            return _NO_DETECTIONS, frozenset()
        out = select(Candidates(*(torch.from_numpy(a) for a in arrays)), self.postprocess_spec, self.level_starts)
        entered = frozenset(self._box_anchor[out["topk_box_index"].numpy()].tolist())
        return (out["boxes"].numpy(), out["scores"].numpy(), out["labels"].numpy()), entered

    def _removed_mask(self, removed: frozenset) -> np.ndarray | None:
        ids = [r for r in removed if 0 <= r < self.num_anchor_ids]  # other ids have no candidates
        if not ids:
            return None
        mask = np.zeros(self.num_anchor_ids, dtype=bool)
        mask[ids] = True
        return mask

    def _lookup(self, removed: frozenset) -> list | None:
        if self._pinned is not None and self._pinned[0] == removed:
            return self._pinned[1]
        if removed in self._memo:
            self._memo.move_to_end(removed)
            return self._memo[removed]
        return None

    def pin(self, removed) -> None:
        """Keep the per-image results of ``removed`` as the base for scoring its children.

        They are computed (detections only, no evaluation) unless memoised,
        and stay until another set is pinned, however many children are
        scored in between.
        """
        key = frozenset(int(r) for r in removed)
        if self._pinned is None or self._pinned[0] != key:
            self._pinned = (key, self.image_results(key))

    def image_results(self, removed, parent=None) -> list:
        """Per image ((boxes, scores, labels), entered-anchor set) for a removed set.

        Incremental from ``parent`` when its results are pinned or memoised.
        """
        removed = frozenset(int(r) for r in removed)
        found = self._lookup(removed)
        if found is not None:
            return found
        mask = self._removed_mask(removed)
        parent = frozenset(int(r) for r in parent) if parent is not None else None
        base = self._lookup(parent) if parent is not None and parent <= removed else None
        if base is not None:
            new = removed - parent
            if self._pinned is None or self._pinned[0] != parent:
                self._pinned = (parent, base)  # siblings scored next reuse it even after the memo turns over
            results = [self._image_result(i, mask) if new & entered else (dets, entered)
                       for i, (dets, entered) in enumerate(base)]
        else:
            results = [self._image_result(i, mask) for i in range(self.cache.num_images)]
        if self.memo_size > 0:
            self._memo[removed] = results
            while len(self._memo) > self.memo_size:
                self._memo.popitem(last=False)
        return results

    # ---- scores ----------------------------------------------------------
    def detections(self, removed, parent=None) -> np.ndarray:
        """All COCO result rows [image_id, x, y, w, h, score, category_id] for a removed set.

        Rows are in image order, each image's in detection order.
        """
        dets = [d for d, _ in self.image_results(removed, parent)]
        if not dets:
            return _EMPTY
        labels = np.concatenate([d[2] for d in dets])
        image = np.repeat(np.arange(len(dets)), [d[2].shape[0] for d in dets])  # (N,) image of each row
        ok = self.has_cat[labels] if labels.size else np.zeros(0, dtype=bool)
        image, labels = image[ok], labels[ok]
        boxes = (np.concatenate([d[0] for d in dets]).astype(np.float64)[ok] - self.pads[image]) * self.scales[image]
        sizes = self.cache.orig_sizes[image].astype(np.float64)  # (D, 2) h, w
        boxes = clip_original(boxes, sizes[:, 0:1], sizes[:, 1:2])  # as predict clips
        rows = np.empty((boxes.shape[0], 7), dtype=np.float64)
        rows[:, 0] = self.cache.image_ids[image]
        rows[:, 1:3] = boxes[:, :2]
        rows[:, 3:5] = boxes[:, 2:] - boxes[:, :2]
        rows[:, 5] = np.concatenate([d[1] for d in dets]).astype(np.float64)[ok]
        rows[:, 6] = self.cat_of_label[labels]
        return rows

    def score(self, removed=(), parent=None, *, full: bool = True) -> dict[str, float]:
        """COCO metrics of the model with the anchors in ``removed`` taken out.

        Args:
            removed: anchor ids taken out.
            parent: a subset of ``removed`` whose results can be reused (see :meth:`pin`).
            full: every metric of :data:`~edgeanchor.evaluate.coco_map.METRIC_NAMES`;
                False: only ``{"mAP": ...}``, faster and exactly equal.
        """
        return coco_map(self.gt, self.detections(removed, parent), backend=self.backend,
                        image_ids=self.cache.image_ids.tolist(), full=full)
