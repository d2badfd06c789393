"""Pseudo-labels: the unpruned model's own detections as the reference of an unlabelled split.

Scoring a subset against them measures *fidelity*: how well the pruned model agrees with the unpruned one
on the deployment's own images (COCO mAP@[.5:.95] of its detections against the unpruned model's above a
score threshold), not accuracy against ground truth. The reference is a COCO annotation file, so the
candidate cache, the exact incremental scorer and the report builder treat it as any labelled split.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import EdgeAnchorError
from ..io import cache_root, read_json, write_json

REFERENCE = "pseudo-labels"
PSEUDO_FORMAT = "edgeanchor.pseudo-labels/1"
NO_DEPLOY_THRESH = 0.5  # models whose rule has no separate deploy preset: a middle confidence


def default_pseudo_thresh(det, deploy_score_thresh: float | None = None) -> float:
    """The threshold the reference keeps detections at, when none is given.

    The score the model is deployed at: ``deploy_score_thresh`` if given, else YOLO's deploy preset (0.25),
    whose detections are what a YOLO deployment acts on; SSD and RetinaNet rules have no deploy preset
    (their own thresholds, 0.01 or 0.05, are for mAP, and keep mostly noise), so 0.5.
    """
    if deploy_score_thresh is not None:
        return float(deploy_score_thresh)
    if det.postprocess_spec.score_fn == "yolo" or det.arch == "onnx":  # a deploy preset / the head spec's
        return float(det.deploy_rule().score_thresh)
    return NO_DEPLOY_THRESH


def check_pseudo_thresh(value) -> str | None:
    """A check: None (the model's default) or a number strictly between 0 and 1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        return f"`pseudo_thresh` must be between 0 and 1, both excluded (got {value})"
    return None


def model_digest(det) -> str:
    """SHA-256 of what the model's detections depend on: weights, anchors, rule, input size and classes."""
    from .cache import hash_model

    h = hashlib.sha256()
    hash_model(h, det)
    h.update(json.dumps([list(det.image_size), det.arch, det.num_classes, det.resize_mode]).encode())
    return h.hexdigest()


def model_categories(det) -> list[dict]:
    """One COCO category per model class: id = label + 1 - first_label (1..K; SSD's background has none)."""
    offset = 1 - int(det.first_label)
    first = int(det.first_label)
    return [{"id": label + offset, "name": f"class_{label}"} for label in range(first, int(det.num_classes))]


def images_fingerprint(images: str, listed: list[dict]) -> list[list]:
    """What the reference depends on in the images, by the candidate cache's rule (README): each image's SHA-256
    when the split is at most :data:`~.cache.HASH_ALWAYS_MAX_BYTES`, else its size and modification time."""
    from ..io import file_sha256
    from .cache import HASH_ALWAYS_MAX_BYTES

    paths = [Path(images) / im["file_name"] for im in listed]
    stats = [path.stat() for path in paths]
    if sum(st.st_size for st in stats) <= HASH_ALWAYS_MAX_BYTES:
        return [[im["file_name"], file_sha256(path)] for im, path in zip(listed, paths)]
    return [[im["file_name"], st.st_size, st.st_mtime_ns] for im, st in zip(listed, stats)]


def pseudo_labels(det, images: str, listing: str, thresh: float, *, progress: bool = True,
                  batch_size: int = 16) -> tuple[str, dict]:
    """Write the reference of an unlabelled split: ``det``'s detections with score >= ``thresh``.

    Args:
        det: the unpruned detector.
        images: the split's image folder.
        listing: its COCO file without annotations (:func:`~edgeanchor.datasets.unlabelled.unlabelled_split`).
        thresh: the score threshold, in (0, 1).

    Returns:
        (the COCO file, under the cache root and named by a hash of the listing, the images' contents
        (:func:`images_fingerprint`), the model and ``thresh``;
        its ``info``: reference, threshold, model digest, number of boxes and images).
    """
    from ..datasets.coco import CocoDetection
    from .predict import predict

    message = check_pseudo_thresh(thresh)
    if message:
        raise EdgeAnchorError(message)
    listed = read_json(listing, "image listing")
    digest = model_digest(det)
    key = hashlib.sha256(json.dumps([PSEUDO_FORMAT, listed["images"], str(Path(images).resolve()), digest,
                                     float(thresh), images_fingerprint(images, listed["images"])]
                                    ).encode()).hexdigest()
    path = cache_root() / "pseudo" / f"{key[:24]}.json"
    if path.is_file():
        ref = read_json(path, "pseudo-label file")
        return str(path), ref["info"]
    template = {**listed, "categories": model_categories(det)}
    template_path = cache_root() / "pseudo" / f"{key[:24]}.images.json"
    write_json(template_path, template)
    dataset = CocoDetection.for_detector(det, images, template_path)
    detections = predict(det, dataset, batch_size=batch_size, progress=progress, desc="pseudo-labels")
    template_path.unlink()
    ref = reference_from_detections(listed["images"], template["categories"], detections, thresh)
    ref["info"].update(reference_model=digest, arch=det.arch)
    write_json(path, ref)
    return str(path), ref["info"]


def reference_from_detections(images: list[dict], categories: list[dict], detections: list[dict],
                              thresh: float) -> dict:
    """A COCO annotation file whose objects are the detections with score >= ``thresh``, in their order.

    Each box is the detection's ``[x, y, w, h]`` unchanged (original image pixels); ``area`` is w·h.
    """
    kept = [d for d in detections if d["score"] >= thresh]
    annotations = [{"id": n, "image_id": d["image_id"], "category_id": d["category_id"], "bbox": list(d["bbox"]),
                    "area": d["bbox"][2] * d["bbox"][3], "iscrowd": 0, "score": d["score"]}
                   for n, d in enumerate(kept, start=1)]
    info = {"format": PSEUDO_FORMAT, "reference": REFERENCE, "pseudo_thresh": float(thresh),
            "num_boxes": len(annotations), "num_images": len(images)}
    return {"info": info, "images": images, "annotations": annotations, "categories": categories}


def reference_info(ann) -> dict | None:
    """The pseudo-label ``info`` of an annotation file (a path or its contents), or None for real labels."""
    obj = ann if isinstance(ann, dict) else read_json(ann, "annotation file")
    info = obj.get("info") if isinstance(obj, dict) else None
    return info if isinstance(info, dict) and info.get("reference") == REFERENCE else None
