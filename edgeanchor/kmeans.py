"""Anchor shapes fitted to training boxes, in the manner of YOLOv5's autoanchor.

:func:`kmeans_anchors` clusters box sizes (w, h) with k-means (k-means++
start, Lloyd iterations) on sizes divided by their per-dimension standard
deviation, as ``scipy.cluster.vq.whiten`` does, and scales the centres back
to pixels. Unlike autoanchor there is no genetic refinement afterwards.
:func:`anchor_fitness` reports the two numbers autoanchor prints: the best
possible recall and the mean best-ratio metric. :func:`assign_to_levels`
spreads the anchors over the feature levels, smallest first, and
:func:`fitted_anchor_set` makes an anchor set of them (YOLO's ``overanchorized``).
"""

from __future__ import annotations

import numpy as np

from .errors import EdgeAnchorError
from .io import log

# Boxes with a side below this many pixels are too small to fit anchors to (autoanchor's bound).
MIN_BOX_SIDE = 2.0


def kmeans_anchors(wh: np.ndarray, k: int, *, seed: int = 0, iters: int = 300, thr: float = 4.0) -> np.ndarray:
    """Fit ``k`` anchor shapes to box sizes with k-means.

    Boxes with either side below 2 px are ignored.

    Args:
        wh: (n, 2) box widths and heights in input pixels.
        k: number of anchors.
        seed: seed of the k-means++ start (same seed, same anchors).
        iters: the most Lloyd iterations (it stops earlier once stable).
        thr: the anchor-to-box size ratio bound, used to log the fit.

    Returns:
        (k, 2) float64 anchor (w, h) in pixels, sorted by area ascending.

    Raises:
        EdgeAnchorError: ``k`` < 1, or fewer than ``k`` distinct box sizes
            of at least 2 px on each side.
    """
    if k < 1:
        raise EdgeAnchorError(f"kmeans_anchors needs k >= 1 anchors (got k={k})")
    wh = _as_wh(wh)
    kept = wh[(wh >= MIN_BOX_SIDE).all(1)]
    num_distinct = len(np.unique(kept, axis=0))
    if num_distinct < k:
        raise EdgeAnchorError(
            f"only {len(kept)} of {len(wh)} boxes are at least {MIN_BOX_SIDE:g} px on each side "
            f"({num_distinct} distinct sizes), fewer than k={k}; use more training boxes or fewer anchors"
        )
    scale = kept.std(0)
    scale[scale == 0] = 1.0  # one size in a dimension: nothing to whiten
    points = kept / scale
    centres = _lloyd(points, _kmeans_pp(points, k, np.random.default_rng(seed)), iters) * scale
    anchors = centres[np.argsort(centres.prod(1), kind="stable")]
    recall, metric = anchor_fitness(anchors, kept, thr)
    log(f"kmeans_anchors: {len(kept)} boxes ({len(wh) - len(kept)} under {MIN_BOX_SIDE:g} px dropped), "
        f"best possible recall {recall:.4f}, mean best ratio {metric:.4f}")
    return anchors


def anchor_fitness(anchors: np.ndarray, wh: np.ndarray, thr: float = 4.0) -> tuple[float, float]:
    """How well anchors fit box sizes, as autoanchor reports it.

    For box and anchor, the ratio metric is 1 / max(r, 1/r) over both sides,
    r = box size / anchor size; each box is scored by its best anchor.

    Args:
        anchors: (k, 2) anchor (w, h) in pixels.
        wh: (n, 2) box (w, h) in pixels.
        thr: the size ratio bound of the loss's matching (YOLOv5's anchor_t).

    Returns:
        (best possible recall: fraction of boxes whose best anchor has
        max(r, 1/r) < ``thr``; mean of the boxes' best ratio metric).

    Raises:
        EdgeAnchorError: no boxes.
    """
    anchors, wh = _as_wh(anchors), _as_wh(wh)
    if len(wh) == 0:
        raise EdgeAnchorError("anchor_fitness needs at least one box size (wh is empty)")
    ratio = wh[:, None] / anchors[None]  # (n, k, 2)
    worst = np.maximum(ratio, 1 / ratio).max(2)  # (n, k): the worse side per box and anchor
    best = worst.min(1)  # (n,)
    return float((best < thr).mean()), float((1 / best).mean())


def assign_to_levels(anchors: np.ndarray, num_levels: int) -> list[np.ndarray]:
    """Split anchors evenly over levels by area, the smallest to the first level.

    Args:
        anchors: (k, 2) anchor (w, h) in pixels.
        num_levels: number of feature levels; must divide k.

    Returns:
        ``num_levels`` arrays of shape (k / num_levels, 2), areas ascending.

    Raises:
        EdgeAnchorError: ``num_levels`` < 1 or not a divisor of k.
    """
    anchors = _as_wh(anchors)
    if num_levels < 1 or len(anchors) % num_levels:
        raise EdgeAnchorError(
            f"cannot split {len(anchors)} anchors evenly over {num_levels} levels; "
            "use a number of anchors that is a multiple of the number of levels"
        )
    ordered = anchors[np.argsort(anchors.prod(1), kind="stable")]
    return list(np.split(ordered, num_levels))


def _as_wh(wh: np.ndarray) -> np.ndarray:
    wh = np.asarray(wh, dtype=np.float64)
    if wh.ndim != 2 or wh.shape[1] != 2:
        raise ValueError(f"expected (n, 2) widths and heights, got shape {wh.shape}")
    return wh


def _kmeans_pp(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """(k, 2) k-means++ starting centres: each next one drawn with probability ~ squared distance."""
    centres = [points[rng.integers(len(points))]]
    dist2 = ((points - centres[0]) ** 2).sum(1)  # (n,) to the nearest centre so far
    for _ in range(1, k):
        centres.append(points[rng.choice(len(points), p=dist2 / dist2.sum())])
        dist2 = np.minimum(dist2, ((points - centres[-1]) ** 2).sum(1))
    return np.stack(centres)


def _lloyd(points: np.ndarray, centres: np.ndarray, iters: int) -> np.ndarray:
    """Lloyd iterations from ``centres`` (k, 2); an emptied cluster keeps its centre."""
    assign = None
    for _ in range(iters):
        new = ((points[:, None] - centres[None]) ** 2).sum(2).argmin(1)  # (n,) nearest centre
        if assign is not None and np.array_equal(new, assign):
            break
        assign = new
        for c in range(len(centres)):
            members = points[assign == c]
            if len(members):
                centres[c] = members.mean(0)
    return centres


def fitted_anchor_set(template, wh: np.ndarray, per_level: int, *, seed: int = 0):
    """``template``'s levels with ``per_level`` anchors each, fitted to box sizes by k-means.

    k = per_level x levels clusters, smallest to the finest level, ids level-major from 0.

    Args:
        template: an :class:`~edgeanchor.anchors.AnchorSet` (levels, feature sizes and strides kept).
        wh: (n, 2) box sizes in input pixels.
        per_level: anchors per level.
        seed: k-means seed.
    """
    from dataclasses import replace

    from .anchors import AnchorBox

    anchors = kmeans_anchors(wh, per_level * template.num_levels, seed=seed)
    levels, next_id = [], 0
    for level, shapes in zip(template.levels, assign_to_levels(anchors, template.num_levels)):
        specs = []
        for w, h in shapes:
            specs.append(AnchorBox(next_id, float(w), float(h)))
            next_id += 1
        levels.append(replace(level, anchors=tuple(specs)))
    return replace(template, levels=tuple(levels))
