"""Score an anchor subset from the candidate cache, with no forward pass.

``SubsetScorer.score(removed)`` filters each image's cached candidates to the
kept anchors, applies the model's own top-k / class-aware NMS /
max-detections (:func:`edgeanchor.postprocess.select`, the same code the model
runs), and computes COCO mAP. The result equals slicing the model and
evaluating it.

Scoring a child that removes one more anchor than its parent is incremental:
an image's detections can only change if a removed anchor had a candidate
among the boxes that entered NMS for the parent (a candidate outside the
top-k never influences the result, and greedy NMS is only ever decided by
kept boxes), so only those images are recomputed.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch

from ..postprocess import Candidates, PostprocessSpec, select
from .cache import CandidateCache
from .coco_map import METRIC_NAMES, coco_map, load_gt

_EMPTY = np.zeros((0, 7), dtype=np.float64)


class SubsetScorer:
    """Scores keep sets (given as removed anchor ids) against ground truth.

    Args:
        cache: the candidate cache.
        ann: annotation file (or dict) of the cached images.
        backend: "faster" (faster-coco-eval) or "pycocotools".
        memo_size: number of per-image results kept for incremental scoring.
    """

    def __init__(self, cache: CandidateCache, ann, *, backend: str = "faster", memo_size: int = 4):
        self.cache = cache
        self.backend = backend
        self.spec = PostprocessSpec.from_json(cache.meta["spec"])
        self.level_starts = torch.tensor(cache.meta["level_starts"], dtype=torch.int64)
        self.gt = load_gt(ann, backend)
        label_to_cat = {int(v): int(k) for k, v in cache.meta["label_map"].items()}
        self.cat_of_label = np.zeros(max(label_to_cat) + 1, dtype=np.float64)
        for label, cat in label_to_cat.items():
            self.cat_of_label[label] = cat
        self.has_cat = np.zeros_like(self.cat_of_label, dtype=bool)
        self.has_cat[list(label_to_cat)] = True
        in_h, in_w = cache.meta["image_size"]
        sizes = cache.orig_sizes.astype(np.float64)
        # (I, 4) per-image scale from input pixels back to original pixels, xyxy order
        self.scales = np.stack([sizes[:, 1] / in_w, sizes[:, 0] / in_h] * 2, axis=1)
        self._images = [self._image_candidates(i) for i in range(cache.num_images)]
        self._anchors_of = [set(np.unique(cache.anchor_id[cache.offsets[i]:cache.offsets[i + 1]]).tolist())
                            for i in range(cache.num_images)]
        self._memo: OrderedDict[frozenset, list] = OrderedDict()
        self.memo_size = memo_size
        self.images_recomputed = 0

    def _image_candidates(self, i: int) -> tuple[Candidates, torch.Tensor]:
        c, lo, hi = self.cache, int(self.cache.offsets[i]), int(self.cache.offsets[i + 1])
        cands = Candidates(
            torch.from_numpy(c.box_index[lo:hi].astype(np.int64)),
            torch.from_numpy(c.labels[lo:hi].astype(np.int64)),
            torch.from_numpy(c.scores[lo:hi]),
            torch.from_numpy(c.boxes_xyxy[lo:hi]),
        )
        return cands, torch.from_numpy(c.anchor_id[lo:hi].astype(np.int64))

    # ---- per image -------------------------------------------------------
    def _image_result(self, i: int, removed: torch.Tensor) -> tuple[np.ndarray, set]:
        """COCO result rows (Nx7) of image i, and the anchor ids that entered NMS."""
        cands, anchor_ids = self._images[i]
        if len(cands) and removed.numel():
            keep = ~torch.isin(anchor_ids, removed)
            cands, anchor_ids = cands.take(keep), anchor_ids[keep]
        if not len(cands):
            return _EMPTY, set()
        out = select(cands, self.spec, self.level_starts)
        box_anchor = dict(zip(cands.box_index.tolist(), anchor_ids.tolist()))
        entered = {box_anchor[b] for b in out["topk_box_index"].tolist()}
        self.images_recomputed += 1
        return self._rows(i, out), entered

    def _rows(self, i: int, out: dict) -> np.ndarray:
        labels = out["labels"].numpy()
        ok = self.has_cat[labels] if labels.size else np.zeros(0, dtype=bool)
        boxes = out["boxes"].double().numpy()[ok] * self.scales[i]  # (D, 4) xyxy, original pixels
        rows = np.empty((boxes.shape[0], 7), dtype=np.float64)
        rows[:, 0] = self.cache.image_ids[i]
        rows[:, 1:3] = boxes[:, :2]
        rows[:, 3:5] = boxes[:, 2:] - boxes[:, :2]
        rows[:, 5] = out["scores"].double().numpy()[ok]
        rows[:, 6] = self.cat_of_label[labels[ok]]
        return rows

    def image_results(self, removed, parent=None) -> list:
        """Per image (rows, entered-anchor set) for a removed set; incremental from ``parent``."""
        removed = frozenset(int(r) for r in removed)
        if removed in self._memo:
            self._memo.move_to_end(removed)
            return self._memo[removed]
        removed_t = torch.tensor(sorted(removed), dtype=torch.int64)
        base = self._memo.get(frozenset(parent)) if parent is not None else None
        if base is not None and frozenset(parent) <= removed:
            new = removed - frozenset(parent)
            results = [self._image_result(i, removed_t) if new & entered else (rows, entered)
                       for i, (rows, entered) in enumerate(base)]
        else:
            results = [self._image_result(i, removed_t) for i in range(self.cache.num_images)]
        self._memo[removed] = results
        while len(self._memo) > self.memo_size:
            self._memo.popitem(last=False)
        return results

    # ---- scores ----------------------------------------------------------
    def detections(self, removed, parent=None) -> np.ndarray:
        """All COCO result rows [image_id, x, y, w, h, score, category_id] for a removed set."""
        rows = [r for r, _ in self.image_results(removed, parent)]
        return np.concatenate(rows) if rows else _EMPTY

    def score(self, removed=(), parent=None) -> dict[str, float]:
        """COCO metrics of the model with the anchors in ``removed`` taken out."""
        return coco_map(self.gt, self.detections(removed, parent), backend=self.backend,
                        image_ids=self.cache.image_ids.tolist())
