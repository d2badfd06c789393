"""The Python API's steps on a detector: evaluate, search, prune, save, fine-tune.

Each step takes plain values, raises :class:`~edgeanchor.errors.EdgeAnchorError` for a user mistake, shows
progress bars on stderr unless ``progress=False``, and prints nothing to stdout.
"""

from __future__ import annotations

import copy
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ONNX_NO_FINETUNE, ONNX_OUT, EdgeAnchorError
from ..settings import typechecked
from .data import Data
from .data import data as as_data
from .results import FrontPoint, SearchResult

if TYPE_CHECKING:
    from ..anchors import AnchorSet
    from ..exporting.folder import ExportFolder
    from ..models.base import Detector



@typechecked
def evaluate(det: Detector | ExportFolder | str | os.PathLike, data: Any = None, *, metric: str = "coco",
             backend: str = "faster", batch_size: int = 16, device: str = "cpu", progress: bool = True,
             detections: str | os.PathLike | None = None, overwrite: bool = False, runtime: str | None = None,
             precision: str = "fp32", variant: str = "pruned", threads: int = 0,
             pseudo_thresh: float | None = None) -> dict[str, Any]:
    """Box mAP of a detector in PyTorch, or of an export folder's deployed graph in a runtime.

    Args:
        det: the detector; or an export folder (an :class:`~edgeanchor.ExportFolder` or its path), whose
            end-to-end graph (``model.onnx``; ``model_int8.onnx`` at int8; TensorRT: its engine) runs in
            ``runtime``. An export needs no torch.
        data: the split (a :class:`Data`, or anything :func:`edgeanchor.data` accepts as its first argument).
            For an export: default its report split (the images it bundles); an image folder alone is where
            the report split's images are, for a folder that does not bundle them.
        metric: "coco" (mAP@[.5:.95] and the other 11 COCO box metrics), "voc07" (Pascal VOC mAP@0.5,
            11-point) or "voc" (VOC2010+ all-point); an export: coco.
        backend: the COCO evaluator, "faster" (faster-coco-eval) or "pycocotools".
        batch_size, device: of the PyTorch inference pass ("cpu", "cuda", "cuda:N").
        progress: show a progress bar.
        detections: also write the detections here, in COCO results format (boxes ``[x, y, w, h]`` in
            original image pixels); PyTorch only.
        overwrite: replace an existing detections file (only one edgeanchor wrote).
        runtime: an export's runtime, "onnxruntime" (default), "openvino" or "tensorrt".
        precision: an export's precision in that runtime ("fp32", "bf16", "fp16", "int8"; also "f32", "f16").
        variant: an export's "pruned" (default) or "baseline" model.
        threads: intra-op threads of the runtime (0: its default).
        pseudo_thresh: an unlabelled split (an image folder without annotations, or a video) is scored against
            ``det``'s own detections with at least this score (default: its deploy threshold, YOLO 0.25, else
            0.5): the model's fidelity to itself, the baseline a pruned model's fidelity is compared with.

    Returns:
        COCO: ``mAP``, ``mAP50``, ``mAP75``, ``mAP_small`` ... ``AR_large``; VOC: ``mAP`` and ``AP_per_class``
        (class name -> AP, None for a class without objects); both with ``num_images`` and ``num_detections``.
        An export adds the runtime, its settings, precision, graph, annotation file, COCO backend and
        ``pytorch_mAP``: PyTorch's mAP with the graph's post-processing rule as the export's report recorded
        it (None on other annotations), which the deployed mAP should equal up to runtime rounding.

    Raises:
        EdgeAnchorError: a bad setting, a runtime that is not installed, an export setting given with a
            detector (or the reverse), a folder that is not an export.
    """
    from ..evaluation.pseudo import check_pseudo_thresh
    from ..exporting.folder import ExportFolder
    from ..runtimes import canonical_precision

    precision = canonical_precision(precision)
    if isinstance(det, (ExportFolder, str, os.PathLike)):
        return _evaluate_export(det, data, metric=metric, backend=backend, batch_size=batch_size, device=device,
                                detections=detections, runtime=runtime or "onnxruntime", precision=precision,
                                variant=variant, threads=threads, progress=progress)
    given = ["runtime"] if runtime is not None else []
    given += [name for name, value, default in (("precision", precision, "fp32"), ("variant", variant, "pruned"),
                                                ("threads", threads, 0)) if value != default]
    if given:
        named = ", ".join(f"`{n}`" for n in given)
        raise EdgeAnchorError(f"{named} apply to an export folder, not to a detector in PyTorch; "
                              "drop them, or evaluate the export folder")
    check_evaluate_settings(metric=metric, batch_size=batch_size, device=device)
    message = check_pseudo_thresh(pseudo_thresh)
    if message:
        raise EdgeAnchorError(message)
    split = as_data(data)
    if detections:  # never over the split's own files
        check_evaluate_settings(detections=detections, overwrite=overwrite, inputs=[split.images, split.ann])
    return evaluate_checked(det, split, metric=metric, backend=backend, batch_size=batch_size, device=device,
                            detections=detections, pseudo_thresh=pseudo_thresh, progress=progress)


def evaluate_checked(det: Detector, data: Data, *, metric: str = "coco", backend: str = "faster",
                     batch_size: int = 16, device: str = "cpu", detections: str | os.PathLike | None = None,
                     pseudo_thresh: float | None = None, progress: bool = True) -> dict[str, Any]:
    """:func:`evaluate` of a detector, its settings (and ``detections``' path) already checked, e.g. by
    :meth:`~edgeanchor.api.settings.EvaluateSettings.validate` before the model was built."""
    from ..datasets.coco import CocoDetection
    from ..evaluation.coco_map import coco_map
    from ..evaluation.predict import predict
    from ..io import read_json, write_json

    split = data.with_reference(det, pseudo_thresh, progress=progress)
    dataset = CocoDetection.for_detector(det, split.images, split.ann)
    dataset.require_objects("evaluate on")
    dets = predict(det, dataset, batch_size=batch_size, device=device, progress=progress)
    metrics: dict[str, Any]
    if metric == "coco":
        metrics = coco_map(split.ann, dets, backend=backend)
    else:
        from ..evaluation.voc_map import voc_map

        gt = read_json(split.ann, "annotation file")
        result = voc_map(gt, dets, metric)
        names = {int(c["id"]): c["name"] for c in gt["categories"]}
        metrics = {"mAP": result["mAP"],
                   "AP_per_class": {names[k]: v for k, v in result["AP"].items()}}
    if detections:
        write_json(detections, dets)
    reference = {"reference": "pseudo-labels"} if split.source == "pseudo" else {}
    return {**metrics, "num_images": len(dataset), "num_detections": len(dets), **reference}


def _evaluate_export(export, data, *, metric, backend, batch_size, device, detections, runtime, precision, variant,
                     threads, progress) -> dict[str, Any]:
    """:func:`evaluate` on an export folder: settings checked first, then the deployed graph in ``runtime``."""
    from ..benchmark.accuracy import evaluate_export
    from ..exporting.folder import ExportFolder
    from ..runtimes import check_precision, require

    given = [name for name, value, default in (("batch_size", batch_size, 16), ("device", device, "cpu"),
                                               ("detections", detections, None)) if value != default]
    if given:
        named = ", ".join(f"`{n}`" for n in given)
        raise EdgeAnchorError(f"{named} apply to a detector in PyTorch, not to an export folder "
                              "(its graph runs in the runtime); drop them")
    if metric != "coco":
        raise EdgeAnchorError(f"`metric` {metric} is not available for an export folder yet; use `metric` coco")
    if variant not in ("pruned", "baseline"):
        raise EdgeAnchorError(f"unknown `variant` {variant!r}; choose pruned or baseline")
    if threads < 0:
        raise EdgeAnchorError(f"`threads` must be 0 (the runtime's default) or more, got {threads}")
    require(runtime)  # one line naming what to install
    check_precision(runtime, precision)
    if not isinstance(export, ExportFolder) and not Path(export).is_dir():
        raise EdgeAnchorError(f"{export} is not an export folder; evaluate a detector (load({str(export)!r}) first) "
                              "or the path of a folder prune-and-export or export wrote")
    folder = export if isinstance(export, ExportFolder) else ExportFolder.open(export)
    images, ann = _export_split(data)
    return evaluate_export(folder, runtime=runtime, precision=precision, variant=variant, data=images, ann=ann,
                           backend=backend, threads=threads, progress=progress)


def _export_split(data) -> tuple[str | None, str | None]:
    """(images, ann) an export is evaluated on: (None, None) for its report split; a folder alone (not Pascal
    VOC) holds the report split's images."""
    if data is None:
        return None, None
    if isinstance(data, (str, os.PathLike)) and Path(data).is_dir():
        from ..datasets.voc import is_voc_data

        if not is_voc_data(data):
            return str(data), None
    split = as_data(data)
    return split.images, split.ann


def check_evaluate_settings(*, metric: str = "coco", batch_size: int = 16, device: str = "cpu",
                            detections: str | os.PathLike | None = None, overwrite: bool = False,
                            inputs: Iterable = ()) -> None:
    """The settings :func:`evaluate` takes, checked before any model or data is touched.

    Raises:
        EdgeAnchorError: an unknown metric, batch_size < 1, an unusable device, or a detections file that
            must not be written (someone else's file, or one of ``inputs``).
    """
    from ..evaluation.predict import is_detections_file
    from ..evaluation.voc_map import METRICS
    from ..io import check_output_file
    from ..torch_device import resolve_device

    if metric not in METRICS:
        raise EdgeAnchorError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    if batch_size < 1:
        raise EdgeAnchorError(f"`batch_size` must be at least 1 (got {batch_size})")
    resolve_device(device)
    if detections:
        check_output_file(detections, overwrite=overwrite, is_ours=is_detections_file, what="detections file",
                          inputs=[p for p in inputs if p])


@typechecked
def search(det: Detector, data: Any, *, method: str | None = None, cost: str = "head_macs", metric: str = "coco",
           max_drop: float | None = None, min_map: float | None = None, tol: float = 1e-4, max_per_level: int = 1,
           max_evals: int = 3000, workers: int = 2, executor: str = "processes", ray_address: str | None = None,
           backend: str = "faster", report: Any = None, out: str | os.PathLike | None = None,
           cache: str | os.PathLike | None = None, latency_model: Any = None, pseudo_thresh: float | None = None,
           progress: bool = True) -> SearchResult:
    """Search anchor subsets of ``det`` for the Pareto front of mAP against cost.

    The model runs once over the split, keeping every candidate above its score threshold; each subset
    is then scored exactly from that cache. The search folder is resumed when rerun with the same settings.

    Args:
        det: the unpruned detector.
        data: the split searched on (see :func:`evaluate`).
        method: greedy, layerwise or shared (default: shared for a head shared across levels, else greedy).
        cost: head_macs, boxes or latency (needs ``latency_model``, or calibrates one).
        metric: what subsets are ranked by (and the floors are in): coco (mAP@[.5:.95]), voc07 or voc
            (Pascal VOC mAP@0.5, 11-point or all-point).
        max_drop: accuracy floor below the unpruned mAP, in mAP units (0.005 = half a point; the default
            when ``min_map`` is not given).
        min_map: absolute accuracy floor (COCO mAP).
        tol: two mAPs within ``tol`` are equal.
        max_per_level: layerwise: anchors left per level.
        max_evals: the evaluation budget of the whole search: resuming a stored search counts its nodes, so
            the same budget gives the same search (and scores nothing new once it is complete).
        workers: scoring processes, or Ray actors with ``executor="ray"``.
        executor: "processes" or "ray"; ray_address: the Ray cluster (default: a local Ray).
        backend: the COCO evaluator of the front's full metrics.
        report: also score the front on this split: a :class:`Data` over the same image folder, a split name
            of the same data set (e.g. "test"), or a COCO annotation file over the searched split's images.
        out: the search folder (default: one under the cache root keyed by the candidates and settings).
        cache: the candidate cache file (default: a keyed file under the cache root).
        latency_model: for cost "latency": a LatencyModel or its JSON path.
        pseudo_thresh: an unlabelled split (an image folder without annotations, or a video): ``det``'s own
            detections with at least this score are the reference (default: its deploy threshold, YOLO 0.25,
            else 0.5), and mAP is fidelity, agreement with ``det``, not accuracy.
        progress: show progress bars.

    Returns:
        The front, the baseline and the floor; ``search.json``, ``pareto.png`` and one anchor file per front
        point are in ``out`` (and, label-free, the reference as ``reference.json``).
    """
    spec = check_search_settings(method=method, cost=cost, metric=metric, max_drop=max_drop, min_map=min_map,
                                 tol=tol, max_per_level=max_per_level, max_evals=max_evals, workers=workers,
                                 executor=executor, ray_address=ray_address, backend=backend, out=out,
                                 cache=cache)
    from ..evaluation.pseudo import check_pseudo_thresh

    message = check_pseudo_thresh(pseudo_thresh)
    if message:
        raise EdgeAnchorError(message)
    return search_with_options(det, data, spec, report=report, out=out, cache=cache, latency_model=latency_model,
                               pseudo_thresh=pseudo_thresh, progress=progress)


def search_with_options(det: Detector, data: Any, spec: Any, *, report: Any = None,
                        out: str | os.PathLike | None = None, cache: str | os.PathLike | None = None,
                        latency_model: Any = None, pseudo_thresh: float | None = None,
                        progress: bool = True) -> SearchResult:
    """:func:`search` with its settings already checked (``spec``: the SearchOptions
    :func:`check_search_settings` returned, and ``pseudo_thresh`` checked, e.g. in the command's ``validate``
    before the model was built): the method is resolved for ``det`` and the report split matched to the
    searched one."""
    from ..subset_search.run import resolve_method

    spec = replace(spec, method=resolve_method(spec.method, det))  # before the data is generated or read
    split = as_data(data)
    report_split = _report_split(split, report)
    if report_split is not None and Path(report_split.images) != Path(split.images):
        raise EdgeAnchorError(f"the report split's images ({report_split.images}) are not in the searched split's "
                              f"folder ({split.images}); give a report annotation file over the same images")
    return search_checked(det, split, spec, report=report_split, out=out, cache=cache, latency_model=latency_model,
                          pseudo_thresh=pseudo_thresh, progress=progress)


def search_checked(det: Detector, split: Data, spec: Any, *, report: Data | None = None,
                   out: str | os.PathLike | None = None, cache: str | os.PathLike | None = None,
                   latency_model: Any = None, pseudo_thresh: float | None = None,
                   progress: bool = True) -> SearchResult:
    """:func:`search` with settings already checked and the method resolved (``spec``: a SearchOptions).

    The split is read once (:meth:`Data.dataset`); the candidate cache is loaded once; the search folder
    defaults to one keyed by the candidates and settings (:func:`~edgeanchor.pipeline.search_dir`). An
    unlabelled split is scored against ``det``'s pseudo-labels (:meth:`Data.with_reference`), whose file
    is in the annotations the cache and the search folder are keyed by.
    """
    import shutil

    from ..io import log
    from ..subset_search.run import run_search

    split = split.with_reference(det, pseudo_thresh, progress=progress)
    if report is not None:
        report = report.with_reference(det, pseudo_thresh, progress=progress)
    dataset = split.dataset(det)
    dataset.require_objects("search on")
    loaded, cache_path = _load_cache(det, dataset, cache, progress)
    if out is None:
        from ..pipeline import search_dir

        out = search_dir(loaded.content_key, spec)
    log(f"searching anchor subsets ({spec.method}, cost {spec.cost}) in {out}")
    result = run_search(det, split.images, split.ann, out, spec, report_ann=report.ann if report else None,
                        cache_path=cache_path, cache=loaded, latency_model=latency_model, progress=progress,
                        dataset=dataset, checked=True, split_name=split.name)
    if split.source == "pseudo":
        shutil.copyfile(split.ann, Path(out) / REFERENCE_FILE)
    else:  # a folder searched label-free before, now on labels
        (Path(out) / REFERENCE_FILE).unlink(missing_ok=True)
    return SearchResult(result, det.anchor_set.ids, Path(out))


REFERENCE_FILE = "reference.json"  # a label-free search's pseudo-labels, in its folder


def check_search_settings(*, method: str | None = None, cost: str = "head_macs", metric: str = "coco",
                          max_drop: float | None = None, min_map: float | None = None, tol: float = 1e-4,
                          max_per_level: int = 1, max_evals: int = 3000, workers: int = 2, executor: str = "processes",
                          ray_address: str | None = None, backend: str = "faster",
                          out: str | os.PathLike | None = None, cache: str | os.PathLike | None = None) -> Any:
    """The search settings :func:`search` takes, checked before any model or data is touched.

    Returns:
        The :class:`~edgeanchor.subset_search.run.SearchOptions` (``max_drop`` 0.005 when no floor is given).

    Raises:
        EdgeAnchorError: a setting out of range, Ray missing or not answering, an output folder that
            holds something other than a search, a cache path holding a file that is not a cache of ours,
            or an output that cannot be written.
    """
    from ..subset_search.run import SearchOptions, check_search_folder, check_search_options

    if max_drop is None and min_map is None:
        max_drop = 0.005
    spec = SearchOptions(method=method, cost=cost, min_map=min_map, max_drop=max_drop, tol=tol,
                      max_per_level=max_per_level, max_evals=max_evals, workers=workers, backend=backend,
                      executor=executor, ray_address=ray_address, metric=metric)
    check_search_options(spec)
    if out is not None:
        check_search_folder(Path(out))
    check_cache_setting(cache)
    return spec


def check_cache_setting(cache: str | os.PathLike | None) -> None:
    """The candidate cache path (default: edgeanchor's cache folder), checked before the work.

    Raises:
        EdgeAnchorError: a file there that is not a cache of ours, or a place that cannot be written.
    """
    from ..evaluation.cache import check_cache_file
    from ..io import cache_root, check_writable

    if cache is not None:
        check_cache_file(cache, load=False)
    else:
        check_writable(cache_root() / "candidates", "candidate cache folder")


def _report_split(split: Data, report: Any) -> Data | None:
    if report is None or isinstance(report, Data):
        return report
    if str(report) in ("train", "val", "test", "trainval"):
        return split.other_split(str(report))
    return split.with_ann(report)


def _load_cache(det, dataset, cache, progress: bool):
    from ..evaluation.cache import cache_key, load_or_build_cache
    from ..subset_search.run import default_cache_path

    path = Path(cache) if cache else default_cache_path(cache_key(det, dataset))
    return load_or_build_cache(det, dataset, path, progress=progress), path


@typechecked
def prune(det: Detector, keep: Iterable[int] | FrontPoint | str | os.PathLike | AnchorSet | None = None, *,
          remove: Iterable[int] | None = None) -> Detector:
    """Slice ``det``'s head to a subset of its anchors (exactly: the kept anchors' outputs do not change).

    Args:
        det: the detector (left unchanged; the result has its own weights).
        keep: the anchors to keep: global anchor ids, integers each given once (see :func:`edgeanchor.inspect`;
            a float or a bool mask is refused, not rounded or read as ids), a search's
            :class:`FrontPoint`, or an anchor set / anchor file (edgeanchor or reference form) whose anchors
            are matched to ``det``'s.
        remove: instead of ``keep``, the global anchor ids to remove.

    Returns:
        The pruned detector: heads of levels left without anchors are dropped.

    Raises:
        EdgeAnchorError: neither or both of keep and remove, ids that are not integers, repeated or unknown
            ids, nothing kept, or a shared head
            (RetinaNet) keeping different anchors per level.
    """
    from ..anchors import AnchorSet
    from ..pruning import check_ids, keep_from_remove, keep_ids_from_file
    from ..pruning import prune as slice_head

    if (keep is None) == (remove is None):
        raise EdgeAnchorError("give `keep` (the anchors to keep) or `remove` (the anchors to remove), not both or "
                              "neither")
    if remove is not None:
        ids = keep_from_remove(det, remove)
    elif isinstance(keep, FrontPoint):
        ids = check_ids(det, keep.keep)
    elif isinstance(keep, (str, os.PathLike, AnchorSet)):
        if isinstance(keep, str) and not Path(keep).exists() and re.fullmatch(r"[\d\s,]*\d[\d\s,]*", keep):
            ids_text = ", ".join(t.strip() for t in keep.split(",") if t.strip())
            raise EdgeAnchorError(f"keep={keep!r} is read as an anchor file, and there is none; to keep anchor ids, "
                                  f"pass them as a list: prune(det, [{ids_text}])")
        ids = keep_ids_from_file(det, keep)
    else:
        ids = check_ids(det, keep if keep is not None else ())  # not `keep or ()`: a numpy array has no truth value
    return slice_head(det, ids)


def anchors_path_of(path: str | os.PathLike) -> str:
    """The anchor file written beside a checkpoint: ``<path without .pt>.anchors.json``."""
    return str(path).removesuffix(".pt") + ".anchors.json"


def check_save_path(path: str | os.PathLike, *, overwrite: bool = False, inputs: Iterable = ()) -> None:
    """Refuse a checkpoint path (or its anchor file) that :func:`save` must not write, before any work.

    Raises:
        EdgeAnchorError: the file exists and ``overwrite`` is off, it is not one edgeanchor wrote, it is a
            folder, it is one of ``inputs``, or it lies in an export folder.
    """
    from ..anchors import is_anchor_file
    from ..exporting.folder import is_export_folder
    from ..io import check_output_file
    from ..models.registry import is_checkpoint

    parent = Path(path).parent
    if is_export_folder(parent):  # its graphs, priors and report go together; a stray file also blocks --overwrite
        raise EdgeAnchorError(f"{path} is inside the export folder {parent}, whose files belong together; "
                              "write the pruned model outside it (prune-and-export with `overwrite` rewrites the "
                              "folder)")
    inputs = list(inputs)
    if str(path).endswith(".onnx"):  # a pruned ONNX model: the graph, its head spec and priors beside it
        from ..onnx_source.export import drop_in_paths, is_drop_in

        files = drop_in_paths(path)

        def ours(_: object) -> bool:  # the companions are ours when the graph beside them is
            return files["model_raw"].is_file() and is_drop_in(files["model_raw"])

        for key, file in files.items():
            check_output_file(file, overwrite=overwrite, is_ours=ours, inputs=inputs,
                              what="pruned ONNX model" if key == "model_raw" else "pruned model's " + key[:-5])
        return
    check_output_file(path, overwrite=overwrite, is_ours=is_checkpoint, what="checkpoint", inputs=inputs)
    check_output_file(anchors_path_of(path), overwrite=overwrite, is_ours=is_anchor_file, what="anchor file",
                      inputs=inputs)


@typechecked
def save(det: Detector, path: str | os.PathLike, *, overwrite: bool = False, meta: dict | None = None) -> Path:
    """Write ``det`` as an edgeanchor checkpoint, and its anchor set beside it (``<path>.anchors.json``).

    A model loaded as ``onnx:PATH`` is saved as its own graph, pruned: ``path`` ends in ``.onnx``, and its head
    spec (``.head.json``, which loads it again with ``head``) and its priors (``.priors.json``, ``.npy``) are
    written beside it.

    The checkpoint holds the architecture, the anchor set, the post-processing rule and the weights:
    :func:`edgeanchor.load` rebuilds it exactly. Both files are written atomically, as a pair.

    Returns:
        The anchor file's path (an ONNX model: its head spec's).
    """
    from ..io import atomic_path, write_json
    from ..models import save_checkpoint

    onnx_out = str(path).endswith(".onnx")
    if (det.arch == "onnx") != onnx_out:
        raise EdgeAnchorError(ONNX_OUT if det.arch == "onnx" else f"{path}: an .onnx output is for a model loaded as "
                              "onnx:PATH; save this model as a .pt checkpoint")
    check_save_path(path, overwrite=overwrite)
    if onnx_out:
        from ..onnx_source.export import drop_in_paths

        files = drop_in_paths(path)
        det.write_drop_in(files)
        return files["head_json"]
    anchors = anchors_path_of(path)
    # Both are written before either is renamed into place, so a failure (a full disk) leaves the old pair.
    with atomic_path(path) as checkpoint_tmp, atomic_path(anchors) as anchors_tmp:
        save_checkpoint(det, checkpoint_tmp, meta=meta)
        write_json(anchors_tmp, det.anchor_set.to_json())
    return Path(anchors)


@typechecked
def finetune(det: Detector, train_data: Any, *, epochs: int, lr: float | None = None, val_data: Any = None,
             batch_size: int = 32, weight_decay: float = 5e-4, warmup_iters: int = 20, device: str = "cpu",
             workers: int = 1, seed: int = 0, max_iters_per_epoch: int | None = None,
             progress: bool = True) -> Detector:
    """Train a copy of ``det`` (e.g. a pruned one) with AdamW, warm-up and cosine decay.

    Args:
        det: the detector (left unchanged).
        train_data: the training split (see :func:`evaluate`); it must hold objects.
        epochs: passes over ``train_data``.
        lr: peak learning rate (default 5e-4, prune-and-export's fine-tuning rate).
        val_data: evaluated with COCO mAP after each epoch (logged).
        batch_size, weight_decay, warmup_iters, device, workers, seed: as ``edgeanchor train``.
        max_iters_per_epoch: stop each epoch after this many batches.
        progress: show progress bars.

    Returns:
        The trained detector, in eval mode on the CPU.
    """
    lr = 5e-4 if lr is None else lr
    check_train_settings(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                         warmup_iters=warmup_iters, workers=workers, seed=seed, device=device)
    return finetune_checked(det, as_data(train_data), epochs=epochs, lr=lr,
                            val_data=as_data(val_data) if val_data is not None else None, batch_size=batch_size,
                            weight_decay=weight_decay, warmup_iters=warmup_iters, device=device, workers=workers,
                            seed=seed, max_iters_per_epoch=max_iters_per_epoch, progress=progress)


def finetune_checked(det: Detector, train_data: Data, *, epochs: int, lr: float, val_data: Data | None = None,
                     batch_size: int = 32, weight_decay: float = 5e-4, warmup_iters: int = 20, device: str = "cpu",
                     workers: int = 1, seed: int = 0, max_iters_per_epoch: int | None = None,
                     progress: bool = True) -> Detector:
    """:func:`finetune` with its settings already checked."""
    from ..train.loop import TrainConfig, train

    if det.arch == "onnx":
        raise EdgeAnchorError(ONNX_NO_FINETUNE)

    tuned = copy.deepcopy(det)
    train_set = train_data.dataset(tuned, train=True)
    train_set.require_objects("train on")
    val_set = val_data.dataset(tuned) if val_data is not None else None
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                      warmup_iters=warmup_iters, device=device, workers=workers, seed=seed,
                      max_iters_per_epoch=max_iters_per_epoch, progress=progress,
                      extra_meta={"command": "edgeanchor.finetune"})
    with tempfile.TemporaryDirectory(prefix="edgeanchor-finetune-") as tmp:
        train(tuned, train_set, cfg, out=str(Path(tmp) / "finetune.pt"), val_set=val_set)
    return tuned.eval()


def check_train_settings(*, epochs: int, batch_size: int, lr: float, weight_decay: float, warmup_iters: int,
                         workers: int, seed: int, device: str) -> None:
    """Training settings that are wrong whatever the data, checked before any work.

    Raises:
        EdgeAnchorError: naming the setting and its value.
    """
    import math

    from ..torch_device import resolve_device

    checks = [(epochs >= 1, f"`epochs` must be at least 1 (got {epochs})"),
              (batch_size >= 1, f"`batch_size` must be at least 1 (got {batch_size})"),
              (math.isfinite(lr) and lr > 0, f"`lr` must be a positive number (got {lr})"),
              (math.isfinite(weight_decay) and weight_decay >= 0,
               f"`weight_decay` must be a number >= 0 (got {weight_decay})"),
              (warmup_iters >= 0, f"`warmup_iters` must be >= 0 (got {warmup_iters})"),
              (workers >= 0, f"`workers` must be >= 0 (got {workers})"),
              (seed >= 0, f"`seed` must be >= 0 (got {seed})")]
    for ok, message in checks:
        if not ok:
            raise EdgeAnchorError(message)
    resolve_device(device)
