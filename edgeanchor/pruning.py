"""Exact head slicing: keep a subset of anchors, drop the rest of the head.

``prune(detector, keep)`` returns a new detector whose last head
convolutions compute only the output channels of the kept anchors, whose
empty levels run no head, and whose anchor set is the kept subset. Its raw
outputs equal the unpruned head's outputs at the kept anchors, and its
detections equal the unpruned detector's with the removed anchors' candidates
taken out: that equivalence is what lets the search score a subset from a
cache without a forward pass.
"""

from __future__ import annotations

from collections.abc import Iterable

from .errors import EdgeAnchorError
from .models.base import Detector


def prune(detector: Detector, keep: Iterable[int]) -> Detector:
    """Slice ``detector`` to the anchors whose global ids are in ``keep``.

    Ids already removed earlier are ignored, so pruning twice equals pruning
    once with the intersection.

    Args:
        detector: the detector to slice (left unchanged; weights are copied).
        keep: global anchor ids (see :class:`edgeanchor.anchors.AnchorSet`).

    Raises:
        EdgeAnchorError: if nothing would be kept, an id is negative, or a
            shared head (RetinaNet) would keep different anchors per level.
    """
    keep = {int(k) for k in keep}
    if any(k < 0 for k in keep):
        raise EdgeAnchorError(f"anchor ids must be >= 0 (got {sorted(k for k in keep if k < 0)})")
    new_set = detector.anchor_set.subset(keep)
    keep_per_level = {
        i: [p for p, a in enumerate(detector.anchor_set.levels[i].anchors) if a.id in keep]
        for i in detector.active_levels
    }
    return detector._sliced(new_set, keep_per_level).eval()


def keep_from_remove(detector: Detector, remove: Iterable[int]) -> set[int]:
    """The keep set that removes ``remove`` from the detector's anchors."""
    return set(detector.anchor_set.ids) - check_ids(detector, remove, name="remove")


def check_ids(detector: Detector, ids: Iterable[int], *, name: str = "keep") -> set[int]:
    """``ids`` as a set, checked to be anchor ids of the detector, each given once.

    Anchor ids are integers (numpy's too). A float or a bool is refused rather than truncated: ``[0.5, 1.0]``
    would otherwise keep {0, 1}, and a bool mask ``[True, False]`` the anchors {1, 0}. A mask is not read
    as one either, even at the model's anchor count, because the same list would then mean ids on one
    model and a mask on another; the message says how to turn a mask into ids.

    Args:
        name: the parameter the ids came from (``keep`` or ``remove``), for the message.

    Raises:
        EdgeAnchorError: an id that is not an integer, an id given twice, or an id not among the detector's.
    """
    import numbers
    from collections import Counter

    from .settings import shown

    values = list(ids)
    odd = [v for v in values if isinstance(v, bool) or not isinstance(v, numbers.Integral)]
    if odd:
        mask = " (a mask? keep the ids it marks: [i for i, m in zip(det.anchor_set.ids, mask) if m])" if all(
            isinstance(v, bool) or type(v).__name__ == "bool_" for v in values) else ""
        raise EdgeAnchorError(f"`{name}` holds {shown(odd[0])}; anchor ids are integers, as "
                              f"edgeanchor inspect lists them{mask}")
    repeated = sorted(int(v) for v, n in Counter(int(v) for v in values).items() if n > 1)
    if repeated:
        raise EdgeAnchorError(f"`{name}` lists anchor ids {repeated} more than once; give each id once")
    found = {int(i) for i in values}
    unknown = found - set(detector.anchor_set.ids)
    if unknown:
        raise EdgeAnchorError(
            f"`{name}`: anchor ids {sorted(unknown)} are not in the model (it has {detector.anchor_set.ids}); "
            "see 'edgeanchor inspect' for the ids"
        )
    return found


def parse_anchor_ids(text: str) -> list[int]:
    """Comma-separated anchor ids, e.g. ``"0,3,5"``.

    Raises:
        EdgeAnchorError: the text is not a list of non-negative integers.
    """
    try:
        ids = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise EdgeAnchorError(f"cannot read anchor ids {text!r}; write comma-separated integers, e.g. 0,3,5") from None
    if not ids or any(i < 0 for i in ids):
        raise EdgeAnchorError(f"cannot read anchor ids {text!r}; write comma-separated integers >= 0, e.g. 0,3,5")
    return ids  # a repeated id is refused with the others, by check_ids


def keep_ids_from_file(detector: Detector, path) -> set[int]:
    """Ids of the detector's anchors that an anchor file keeps (edgeanchor or reference form)."""
    from .anchors import match_anchor_ids
    from .models.registry import resolve_anchors

    return match_anchor_ids(detector.anchor_set, resolve_anchors(path, detector.anchor_set), source=str(path))
