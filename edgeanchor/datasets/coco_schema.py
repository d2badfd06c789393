"""A COCO annotation file's fields, checked (no torch: the device path checks an export's copy with it).

:class:`~edgeanchor.datasets.coco.CocoDetection` runs these on every file it
reads; :func:`check_coco` runs the same checks for a reader that needs no
images loaded (an export folder's ``data/annotations.json`` on a device).
"""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import EdgeAnchorError
from ..io import plural


def require_list(data: dict, key: str, ann_file: Path) -> list:
    value = data.get(key)
    if not isinstance(value, list):
        raise EdgeAnchorError(
            f"annotation file {ann_file} has no '{key}' list; a COCO file needs 'images', 'annotations' "
            "and 'categories'"
        )
    return value


def index_images(images: list, ann_file: Path) -> tuple[list[int], dict[int, dict]]:
    ids, by_id = [], {}
    for n, img in enumerate(images):
        if not isinstance(img, dict) or not _is_int(img.get("id")) or not isinstance(img.get("file_name"), str):
            raise EdgeAnchorError(f"{ann_file}: images[{n}] needs an integer 'id' and a 'file_name'; fix the entry")
        image_id = int(img["id"])
        if image_id in by_id:
            raise EdgeAnchorError(f"{ann_file}: image id {image_id} appears twice in 'images'; make ids unique")
        for key in ("height", "width"):
            if key in img and img[key] is not None and not (_is_int(img[key]) and img[key] > 0):
                raise EdgeAnchorError(
                    f"{ann_file}: images[{n}] (id {image_id}) has {key} {img[key]!r}; it must be a positive integer "
                    "(or left out)"
                )
        ids.append(image_id)
        by_id[image_id] = img
    return ids, by_id


def category_ids(categories: list, ann_file: Path) -> list[int]:
    for n, cat in enumerate(categories):
        if not isinstance(cat, dict) or "id" not in cat:
            raise EdgeAnchorError(f"{ann_file}: categories[{n}] has no 'id'; fix the entry")
        if not _is_int(cat["id"]):
            raise EdgeAnchorError(f"{ann_file}: categories[{n}] has id {cat['id']!r}; category ids must be integers")
    return sorted(int(c["id"]) for c in categories)


def check_references(annotations: list, image_ids: set, category_ids: set, ann_file: Path) -> None:
    """Raise on annotations whose image id or category id is not declared."""
    for key, known, where in (("image_id", image_ids, "images"), ("category_id", category_ids, "categories")):
        bad = [a for a in annotations if int(a[key]) not in known]
        if bad:
            first = bad[0]
            raise EdgeAnchorError(
                f"{ann_file}: {plural(len(bad), 'annotation')} {'refers' if len(bad) == 1 else 'refer'} to a {key} "
                f"not listed in '{where}' "
                f"(first: annotation {first.get('id', '?')} -> {key} {first[key]}); fix or remove them"
            )


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_annotation_fields(annotations: list, ann_file: Path) -> None:
    seen: dict[int, int] = {}
    for n, ann in enumerate(annotations):
        if isinstance(ann, dict) and _is_int(ann.get("id")):
            if ann["id"] in seen:
                raise EdgeAnchorError(
                    f"{ann_file}: annotation id {ann['id']} appears twice (annotations[{seen[ann['id']]}] and [{n}]); "
                    "COCO evaluation needs unique annotation ids: renumber them"
                )
            seen[ann["id"]] = n
        elif isinstance(ann, dict):
            raise EdgeAnchorError(
                f"{ann_file}: annotations[{n}] has no integer 'id'; COCO evaluation needs one per annotation"
            )
        ok = isinstance(ann, dict) and _is_int(ann.get("image_id")) and _is_int(ann.get("category_id"))
        bbox = ann.get("bbox") if ok else None
        ok = ok and isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(
            isinstance(v, (int, float)) and math.isfinite(v) for v in bbox
        )
        if not ok:
            ann_id = ann.get("id", "?") if isinstance(ann, dict) else "?"
            raise EdgeAnchorError(
                f"{ann_file}: annotations[{n}] (id {ann_id}) needs integer 'image_id' and 'category_id' and a 'bbox' "
                "of 4 finite numbers [x, y, w, h]; fix the entry"
            )


def check_coco(data, ann_file) -> dict:
    """Check a parsed COCO file as :class:`~edgeanchor.datasets.coco.CocoDetection` does (without its images).

    Raises:
        EdgeAnchorError: naming the file, the entry and the fix.
    """
    ann_file = Path(ann_file)
    if not isinstance(data, dict):
        raise EdgeAnchorError(f"annotation file {ann_file} is not a COCO JSON object; check the path")
    images = require_list(data, "images", ann_file)
    annotations = require_list(data, "annotations", ann_file)
    image_ids, _ = index_images(images, ann_file)
    cat_ids = category_ids(require_list(data, "categories", ann_file), ann_file)
    check_annotation_fields(annotations, ann_file)
    check_references(annotations, set(image_ids), set(cat_ids), ann_file)
    return data
