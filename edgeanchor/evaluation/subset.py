"""Score an anchor subset from the candidate cache, with no forward pass.

``SubsetScorer.score(removed)`` filters each image's cached candidates to the
kept anchors, applies the model's own top-k / class-aware NMS /
max-detections (the rule of :func:`edgeanchor.postprocess.select`), and
computes COCO mAP. The result equals slicing the model and evaluating it.
``score(removed, full=False)`` computes only mAP@[.5:.95] (area all, 100
detections), the number the search ranks nodes by: exactly pycocotools'
stats[0], computed by :class:`edgeanchor.evaluation.incremental.ShardScorer`,
incrementally from a parent (:meth:`SubsetScorer.pin`) when one is given.
The full twelve metrics use the COCO backend on the same detections.
With ``metric="voc07"`` or ``"voc"`` the mAP is VOC's mAP@0.5 (11-point or
all-point), incremental in the same way, and the full result is that mAP
(equal to :func:`edgeanchor.evaluation.voc_map.voc_map` on the same detections, tested).
"""

from __future__ import annotations

import numpy as np

from .cache import CandidateCache
from .coco_map import coco_map, load_gt
from .incremental import ShardScorer, merge_map
from .voc_map import COCO


class SubsetScorer:
    """Scores keep sets (given as removed anchor ids) against ground truth.

    Args:
        cache: the candidate cache.
        ann: annotation file (or dict) of the cached images.
        backend: "faster" (faster-coco-eval) or "pycocotools", for the full metrics.
        memo_size: number of recent keep sets whose per-image results are kept for incremental
            scoring (a pinned parent is kept besides these).
        metric: "coco" (mAP@[.5:.95]), "voc07" or "voc" (VOC mAP@0.5, 11-point or all-point).
    """

    def __init__(self, cache: CandidateCache, ann, *, backend: str = "faster", memo_size: int = 2,
                 metric: str = COCO):
        self.cache = cache
        self.backend = backend
        self.metric = metric
        self.gt = load_gt(ann, backend)
        self.shard = ShardScorer(cache, self.gt.dataset, memo_size=memo_size, metric=metric)

    @property
    def images_recomputed(self) -> int:
        """Images post-processed so far (a child redoes only the images it can change)."""
        return self.shard.images_recomputed

    @property
    def pairs_recomputed(self) -> int:
        """(image, category) pairs matched so far (a child re-matches only the pairs whose detections changed)."""
        return self.shard.pairs_recomputed

    def pin(self, removed) -> None:
        """Keep the results of ``removed`` as the base for scoring its children (see :meth:`ShardScorer.pin`)."""
        self.shard.pin(removed)

    def detections(self, removed, parent=None) -> np.ndarray:
        """All COCO result rows [image_id, x, y, w, h, score, category_id] for a removed set.

        Rows are in ascending image id order, each image's in detection order.
        """
        return self.shard.rows(removed, parent)

    def score(self, removed=(), parent=None, *, full: bool = True) -> dict[str, float]:
        """Metrics of the model with the anchors in ``removed`` taken out.

        Args:
            removed: anchor ids taken out.
            parent: a subset of ``removed`` whose results can be reused (see :meth:`pin`).
            full: every metric of :data:`~edgeanchor.evaluation.coco_map.METRIC_NAMES` (a VOC metric: its mAP);
                False: only ``{"mAP": ...}`` (pycocotools' stats[0], or the VOC mAP, exactly), incremental from
                ``parent``.
        """
        if not full or self.metric != COCO:
            return {"mAP": max(merge_map([self.shard.partials(removed, parent)]), 0.0)}
        return coco_map(self.gt, self.detections(removed, parent), backend=self.backend,
                        image_ids=self.cache.image_ids.tolist(), full=True)
