"""COCO category ids <-> model labels (no torch: the device path maps a runtime's labels with it)."""

from __future__ import annotations

from collections import Counter

from ..errors import EdgeAnchorError


def make_label_map(category_ids: list[int], num_classes: int, first_label: int = 1) -> dict[int, int]:
    """Map COCO category ids to model labels.

    With ``first_label=1`` (label 0 is background): contiguous when
    ``num_classes == K + 1`` (sorted ids get labels 1..K); otherwise identity
    when every id fits below ``num_classes`` (torchvision's COCO convention:
    91 classes, ids 1..90 with gaps).

    With ``first_label=0`` (YOLO: no background class): sorted ids get labels
    0..K-1 when ``num_classes == K`` (so COCO's 80 gapped ids become YOLO's
    coco80 classes); a YOLO data set converted by :mod:`.yolo` has ids 1..nc.

    Args:
        category_ids: the K category ids of the annotation file, any order.
        num_classes: number of model classes (background included when ``first_label`` is 1).
        first_label: the label of the first category, 1 or 0.

    Returns:
        dict category id -> label.

    Raises:
        EdgeAnchorError: no categories, duplicate ids, or ids that fit neither rule.
    """
    ids = sorted(int(c) for c in category_ids)
    if not ids:
        raise EdgeAnchorError("the annotation file has no categories; add a 'categories' list")
    if len(set(ids)) != len(ids):
        dup = next(c for c, n in Counter(ids).items() if n > 1)
        raise EdgeAnchorError(f"category id {dup} appears twice in 'categories'; make category ids unique")
    k = len(ids)
    if first_label == 0:
        if num_classes == k:
            return {cat: label for label, cat in enumerate(ids)}
        raise EdgeAnchorError(f"{k} categories do not fit a model with {num_classes} classes (nc; no background "
                              f"class): use `num_classes` {k}")
    if num_classes == k + 1:
        return {cat: label for label, cat in enumerate(ids, start=1)}
    if ids[-1] < num_classes and ids[0] >= 1:
        return {cat: cat for cat in ids}
    raise EdgeAnchorError(
        f"{k} categories (ids {ids[0]}..{ids[-1]}) do not fit a model with {num_classes} classes: "
        f"need {k + 1} for contiguous labels or more than {ids[-1]} for labels equal to category ids "
        f"(with ids >= 1); use `num_classes` {k + 1}"
    )


def invert_label_map(label_map: dict[int, int]) -> dict[int, int]:
    """Invert :func:`make_label_map`: model label -> COCO category id.

    Args:
        label_map: dict category id -> label, one-to-one.

    Returns:
        dict label -> category id.
    """
    inverse = {label: cat for cat, label in label_map.items()}
    assert len(inverse) == len(label_map), "label map is not one-to-one"
    return inverse
