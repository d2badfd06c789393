"""Accuracy of the deployed graph: ``model.onnx`` (or its int8 form, or its TensorRT engine) in a runtime.

Every image of the report split goes through the preprocessing the export
records (:mod:`edgeanchor.datasets.imaging`), the end-to-end graph runs in the
chosen runtime, its ``detections`` rows (x1, y1, x2, y2, score, label in
input pixels; the first ``num_detections`` are real) go back to the file's
pixels and category ids with the export's label map, and COCO mAP comes
from faster-coco-eval or pycocotools, whichever is installed. No torch.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from ..errors import EdgeAnchorError
from ..exporting.folder import ExportFolder, label_map_json
from .harness import open_export, progress_bar

BACKENDS = {"faster": "faster_coco_eval", "pycocotools": "pycocotools"}


def pick_backend(backend: str = "faster") -> str:
    """``backend`` if installed, else the other COCO evaluator (they agree, tested).

    Raises:
        EdgeAnchorError: neither faster-coco-eval nor pycocotools is installed, or an unknown name.
    """
    if backend not in BACKENDS:
        raise EdgeAnchorError(f"unknown COCO evaluation backend {backend!r}; use 'faster' or 'pycocotools'")
    for name in (backend, *BACKENDS):
        if importlib.util.find_spec(BACKENDS[name]) is not None:
            return name
    raise EdgeAnchorError("no COCO evaluator is installed; pip install faster-coco-eval (or pycocotools)")


def open_detector_graph(folder: ExportFolder, runtime: str, variant: str, precision: str, *, threads: int = 0):
    """The variant's end-to-end graph (``model``; ``model_int8`` at int8) opened in ``runtime``.

    TensorRT runs the engine of model.onnx, built on first use where the folder keeps engines.
    """
    from ..runtimes import canonical_precision, check_precision, open_graph, require

    precision = canonical_precision(precision)
    require(runtime)
    check_precision(runtime, precision)
    path = folder.graphs_for_runtime(runtime, variant, precision, {"end_to_end": "model"})["end_to_end"]
    engine = None
    if runtime == "tensorrt":
        from ..runtimes.tensorrt import engine_files

        engine = engine_files(folder, variant, {"end_to_end": path}, precision)["end_to_end"]
    return open_graph(runtime, path, threads=threads, precision=precision, engine=engine)


def detections_to_results(out: dict, image_id: int, orig_size, input_size, resize: str,
                          label_to_cat: dict[int, int]) -> list[dict]:
    """One image's graph outputs as COCO results (boxes in the file's pixels, category ids).

    Args:
        out: ``detections`` float (1, max_det, 6) rows x1, y1, x2, y2, score, label (input pixels) and
            ``num_detections`` (1,): the real rows come first.
        image_id, orig_size: the image's id and (H, W) of its file.
        input_size, resize: the model input (H, W) and how the file reached it.
        label_to_cat: model label -> category id; labels without a category are dropped (not scorable).
    """
    from ..datasets.imaging import boxes_to_original

    rows = np.asarray(out["detections"], dtype=np.float64)[0][: int(np.asarray(out["num_detections"]).reshape(-1)[0])]
    boxes = boxes_to_original(rows[:, :4], orig_size, input_size, resize)  # (D, 4) xyxy, file pixels
    results = []
    for (x1, y1, x2, y2), score, label in zip(boxes.tolist(), rows[:, 4].tolist(), np.rint(rows[:, 5]).tolist()):
        cat = label_to_cat.get(int(label))
        if cat is not None:
            results.append({"image_id": int(image_id), "category_id": int(cat), "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "score": float(score)})
    return results


def evaluate_export(export, *, runtime: str = "onnxruntime", precision: str = "fp32", variant: str = "pruned",
                    data=None, ann=None, backend: str = "faster", threads: int = 0, progress: bool = True) -> dict:
    """COCO mAP of the deployed end-to-end graph of one variant of an export folder (or its path).

    Args:
        export: an :class:`ExportFolder` or its path.
        runtime, precision: where and how the graph runs (int8: the ``model_int8`` graph).
        variant: "pruned" or "baseline".
        data, ann: image folder and COCO annotations (default: the export's report split).
        backend: the preferred COCO evaluator ("faster" or "pycocotools"; the other if it is missing).
        threads: intra-op threads of the runtime (0: its default).

    Returns:
        JSON-ready dict: the metrics (mAP, mAP50, ...), runtime, its version and settings, precision, graph,
        images, detections, backend, and ``pytorch_mAP``: the variant's PyTorch mAP with the graphs' rule as
        the export's report recorded it (:func:`reported_map`; None where it is not recorded or ``ann`` is not
        the report split).
    """
    from ..datasets.coco_schema import check_coco
    from ..datasets.imaging import load_image_array
    from ..evaluation.coco_map import coco_map
    from ..io import read_json
    from ..runtimes import canonical_precision

    precision = canonical_precision(precision)
    backend = pick_backend(backend)
    folder = open_export(export)
    own_ann = ann is None  # the folder's copy of the report split; a user's `ann` may be anywhere
    data, ann = data or folder.data, ann or folder.report_ann
    info = folder.model_info
    label_to_cat = folder.label_to_category() if own_ann else label_map_json(ann, info["num_classes"],
                                                                              info["first_label"])
    images = _images(check_coco(read_json(ann, "annotation file"), ann), ann)
    graph = open_detector_graph(folder, runtime, variant, precision, threads=threads)
    size, resize = tuple(folder.preprocess["image_size"]), folder.preprocess["resize"]
    results: list[dict] = []
    for im in progress_bar(images, desc=f"evaluate {runtime}", disable=not progress):
        pixels, orig_size = load_image_array(_image_path(folder.image_file(data, im["file_name"], ann)), size,
                                             resize)
        out = graph.run({"images": pixels[None]})
        results.extend(detections_to_results(out, im["id"], orig_size, size, resize, label_to_cat))
    metrics = coco_map(str(ann), results, backend=backend)
    return {"export": str(folder.root), "variant": variant, "runtime": runtime, "precision": precision,
            "graph": graph.path.name, "settings": graph.settings, "ann": str(ann), "num_images": len(images),
            "num_detections": len(results), "backend": backend, **{k: float(v) for k, v in metrics.items()},
            "pytorch_mAP": reported_map(folder, variant) if own_ann else None}


def reported_map(folder: ExportFolder, variant: str) -> float | None:
    """The variant's PyTorch COCO mAP on the report split with its graphs' rule, as prune-and-export recorded it.

    This is ``mAP_as_deployed`` (fine-tuned if it was): the figure the deployed graph's mAP must equal up to
    runtime rounding. A report without it (written before it was recorded) gives its reported mAP where
    :func:`graphs_use_reported_rule`; else None.
    """
    from ..exporting.folder import variant_map
    from ..io import is_number

    report = folder.report
    as_deployed = report.get("mAP_as_deployed")
    if isinstance(as_deployed, dict):
        value = as_deployed.get(variant)
    elif graphs_use_reported_rule(folder) and isinstance(report.get("mAP"), dict):
        value = variant_map(report["mAP"], variant)
    else:
        value = None
    return float(value) if is_number(value) else None


def graphs_use_reported_rule(folder: ExportFolder) -> bool:
    """True if the report's mAP is comparable with the deployed graphs': COCO's, with the graphs' own rule.

    Not for YOLO exports (graphs: the deploy preset; checkpoints: the val preset), other deploy thresholds, or a
    VOC metric. Reports without ``mAP_as_deployed`` are judged by their metric and rule.
    """
    report = folder.report
    as_deployed = report.get("mAP_as_deployed")
    if isinstance(as_deployed, dict):
        return bool(as_deployed.get("same_as_reported"))
    rule = ((report.get("export") or {}).get("pruned") or {}).get("postprocess") or {}
    return report.get("metric", "coco") == "coco" and rule.get("score_fn") != "yolo"


def _images(ann, path) -> list[dict]:
    if not isinstance(ann, dict) or not isinstance(ann.get("images"), list) or not ann["images"]:
        raise EdgeAnchorError(f"{path} lists no images; give a COCO annotation file with images")
    return ann["images"]


def _image_path(path):
    if not path.is_file():
        raise EdgeAnchorError(f"image {path} does not exist (this export does not hold its images); pass `data`, the "
                              "folder that holds them")
    return path
