"""What an export folder's report.json holds: its format, validation, and the device section's values.

:class:`~edgeanchor.exporting.folder.ExportFolder` is this module's one user (and re-exports its names);
the folder's layout (file names) stays there. No torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

from ..errors import EdgeAnchorError
from ..io import read_json
from ..limits import (
    MAX_ANCHORS_PER_LEVEL,
    MAX_CLASSES,
    MAX_LEVELS,
    check_image_side_pair,
    check_int,
    check_type,
    is_int,
    out_of_bounds,
    require_keys,
)

FORMAT = "edgeanchor.export"
FORMAT_VERSION = 2


class VariantMaps(TypedDict, total=False):
    """PyTorch mAP per variant on the report split, in the report's ``metric`` (``finetuned``: after
    fine-tuning; ``pruned`` is then the sliced model before it)."""

    baseline: float
    pruned: float
    finetuned: float


class DeployedMaps(TypedDict):
    """Each variant's PyTorch COCO mAP with its exported graphs' rule: what the deployed graph must equal."""

    metric: str
    same_as_reported: bool
    baseline: float | None
    pruned: float | None


class Cost(TypedDict):
    """Head and total MACs at batch 1, boxes entering post-processing and anchors, in all and per level."""

    head_macs: int
    total_macs: int
    num_boxes: int
    num_anchors: int
    anchors_per_level: list[int]
    head_macs_per_level: list[int]
    boxes_per_level: list[int]


class Chosen(TypedDict, total=False):
    """How the kept anchors were chosen: ``source`` "search", "given" (ea.export) or the anchor file's path;
    a search adds its folder, the removed ids, its mAP, floor, method, cost and counts.

    The mAPs and the floor of a search are on the search split (the report's ``search_split``):
    ``search_mAP`` is the chosen keep set's, ``search_baseline_mAP`` the unpruned model's, ``floor`` the
    accuracy floor the ``budget`` (``{"max_drop": 0.005}`` or ``{"min_map": 0.7}``, in the search's metric)
    set there; ``target_head_macs`` is the head-MAC target the point was chosen by, if any; ``plot`` the
    Pareto plot in the folder, with the chosen point marked.
    """

    source: str
    search_dir: str
    removed: list[int]
    search_mAP: float
    search_baseline_mAP: float
    floor: float
    budget: dict[str, float]
    target_head_macs: float | None
    plot: str
    method: str
    cost: str
    num_front_points: int
    num_evals: int
    scoring: dict[str, Any] | None


class Report(TypedDict, total=False):
    """report.json of an export folder (format 2); every export folder has the same keys, whoever wrote it.

    ``int8``, ``runtimes`` and ``tensorrt`` are present when they were asked for (int8 graphs, a runtime
    matrix, TensorRT engines); ``format``, ``format_version``, ``graphs`` and ``device`` are stamped by
    :meth:`~edgeanchor.exporting.folder.ExportFolder.write_report`. ``report_split`` and ``search_split`` name
    the splits of ``report_ann`` and ``search_ann`` (val, test; or the annotation file's name) as the reports
    print them; reports written before they existed lack them.
    """

    format: str
    format_version: int
    model: str
    arch: str
    data: str
    search_ann: str | None
    report_ann: str
    search_split: str | None
    report_split: str
    image_size: list[int]
    resize: str
    chosen: Chosen
    metric: str
    mAP: VariantMaps
    mAP_as_deployed: DeployedMaps
    cost: dict[str, Cost]
    export: dict[str, dict[str, Any]]
    int8: dict[str, Any]
    runtimes: dict[str, Any]
    tensorrt: dict[str, Any]
    trtexec: dict[str, str]
    seconds: dict[str, float]
    reference: str  # "labels", or "pseudo-labels": mAP is fidelity, agreement with the unpruned model
    pseudo_labels: dict[str, Any]  # label-free: pseudo_thresh, num_boxes, num_images, recall per variant
    fidelity: VariantMaps  # a label-free search reported on labels: mAP against pseudo-labels as well
    out: str
    graphs: dict[str, dict[str, Any]]
    device: dict[str, Any]


# the keys every report of this edgeanchor has (besides the optional int8, runtimes and tensorrt)
REQUIRED_KEYS = frozenset(Report.__annotations__) - {"int8", "runtimes", "tensorrt", "reference", "pseudo_labels",
                                                     "fidelity"}


def preprocess_json(image_size, resize: str) -> dict:
    """The graphs' input, as a device application must build it (what :mod:`edgeanchor.datasets.imaging` does)."""
    return {"image_size": [int(v) for v in image_size], "resize": resize, "interpolation": "bilinear",
            "letterbox_fill": 114 if resize == "letterbox" else None, "channel_order": "RGB", "layout": "NCHW",
            "dtype": "float32", "scale": "1/255 (pixels in [0, 1])", "mean": None, "std": None,
            "input_name": "images"}


def model_json(detector) -> dict:
    """What a device needs to know of the model: architecture, classes, label start, input size, anchors."""
    return {"arch": detector.arch, "num_classes": int(detector.num_classes),
            "first_label": int(detector.first_label), "image_size": [int(v) for v in detector.image_size],
            "baseline_anchors": int(detector.anchor_set.num_anchors)}


def label_map_json(ann_path, num_classes: int, first_label: int) -> dict[int, int]:
    """Model label -> category id for the categories of an annotation file (a path, or its parsed contents)."""
    from ..datasets.labels import invert_label_map, make_label_map

    ann = ann_path if isinstance(ann_path, dict) else read_json(ann_path, "annotation file")
    cats = [c["id"] for c in ann.get("categories", [])] if isinstance(ann, dict) else []
    return invert_label_map(make_label_map(cats, num_classes, first_label))


def variant_map(maps: Mapping[str, Any], variant: str):
    """A variant's PyTorch mAP in a report's ``mAP`` (or ``mAP_as_deployed``) dict: the pruned model's is the
    fine-tuned one where it was fine-tuned."""
    return maps.get("finetuned", maps.get("pruned")) if variant == "pruned" else maps.get("baseline")


def validate_report(report, path) -> dict:
    """Check the fields readers rely on; return the report.

    Raises:
        EdgeAnchorError: not an edgeanchor export report, or an unknown format version.
    """
    if not isinstance(report, dict) or report.get("format") != FORMAT:
        raise EdgeAnchorError(f"{path} is not an edgeanchor export report; re-run prune-and-export to write one")
    version = report.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise EdgeAnchorError(f"{path} has no valid format_version; re-run prune-and-export to write it anew")
    if version > FORMAT_VERSION:
        raise EdgeAnchorError(
            f"{path} has export format version {version}, newer than this edgeanchor reads ({FORMAT_VERSION}); "
            "upgrade edgeanchor"
        )
    if version < 1:
        raise EdgeAnchorError(f"{path} has unknown export format version {version}; re-run prune-and-export")
    check_image_side_pair(report.get("image_size"), path, "image_size")
    for key in ("data", "report_ann"):
        if not isinstance(report.get(key), str):
            raise EdgeAnchorError(f"{path}: {key} must be a path, got {report.get(key)!r}")
    if version >= 2:
        _validate_device(report.get("device"), path)
    return report


def _validate_device(device, path) -> None:
    """The format-2 device section (preprocessing, label map, model identity, bundled data): types and bounds.

    Where its paths point is checked by :class:`~edgeanchor.exporting.folder.ExportFolder`, which knows the
    folder.
    """
    fix = "re-run prune-and-export to write it anew"
    if not isinstance(device, dict) or not all(isinstance(device.get(k), dict)
                                               for k in ("preprocess", "label_to_category", "model")):
        raise EdgeAnchorError(f"{path}: device must hold preprocess, label_to_category and model; {fix}")
    preprocess, model = device["preprocess"], device["model"]
    if preprocess.get("resize") not in ("stretch", "letterbox"):
        raise EdgeAnchorError(f"{path}: device.preprocess.resize must be stretch or letterbox; {fix}")
    check_image_side_pair(preprocess.get("image_size"), path, "device.preprocess.image_size")
    require_keys(model, ("arch", "num_classes", "first_label", "image_size", "baseline_anchors"), path,
                 "device.model")
    check_type(model["arch"], str, path, "device.model.arch", "an architecture name (a string)")
    check_int(model["num_classes"], path, "device.model.num_classes", 1, MAX_CLASSES)
    check_int(model["first_label"], path, "device.model.first_label", 0, 1)
    check_image_side_pair(model["image_size"], path, "device.model.image_size")
    check_int(model["baseline_anchors"], path, "device.model.baseline_anchors", 1,
              MAX_LEVELS * MAX_ANCHORS_PER_LEVEL)
    for label, category in device["label_to_category"].items():
        if not (isinstance(label, str) and label.isascii() and label.isdigit() and is_int(category)):
            raise out_of_bounds(path, "device.label_to_category", {label: category},
                                "a map of model label (a string of digits) -> category id (an integer)")
    if not isinstance(device.get("annotations"), str):
        raise EdgeAnchorError(f"{path}: device.annotations must be a path in the folder; {fix}")
    if device.get("images") is not None and not isinstance(device["images"], str):
        raise EdgeAnchorError(f"{path}: device.images must be a path in the folder, or null; {fix}")
