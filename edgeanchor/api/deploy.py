"""The Python API's deployment steps: export, bench, and the whole prune-and-export workflow."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import EdgeAnchorError
from ..runtimes import require
from .data import data as as_data
from .results import BenchResult

if TYPE_CHECKING:
    from ..exporting.folder import ExportFolder
    from ..models.base import Detector


FORMATS = ("onnx", "openvino", "tensorrt")


def export(pruned: Detector, out: str | os.PathLike, *, baseline: Detector, data: Any,
           formats: Sequence[str] | None = None, int8: bool = False, calib_data: Any = None, opset: int = 17,
           parity_images: int = 4, check: bool = True, overwrite: bool = False,
           model_name: str | None = None) -> ExportFolder:
    """Export a pruned detector and its unpruned baseline into a new export folder, checked against PyTorch.

    Per variant: ``backbone.onnx``, ``head.onnx``, ``postprocess.onnx``, ``model.onnx`` (image (1, 3, H, W)
    float32 RGB in [0, 1] -> detections (1, max_det, 6): x1, y1, x2, y2 in input pixels, score, label),
    ``model_nonms.onnx``, ``model_ncnn.onnx``, ``model_trt.onnx`` (TensorRT's EfficientNMS), the checkpoint
    and the anchor set (w, h in input pixels; ratio h/w), and what ``formats`` and ``int8`` add.
    The folder is built beside ``out`` and renamed into place when complete.

    Args:
        pruned: the pruned detector.
        baseline: the detector it was pruned from (same architecture and classes); bench compares the two.
        out: the export folder to create.
        data: the split bench and regress measure on (parity images are its first ``parity_images``).
        formats: what to write beside the ONNX graphs, which are always written: "openvino" (the IR,
            ``openvino/*.xml``, checked against PyTorch at fp32) and "tensorrt" (an engine per variant, built
            here: needs TensorRT and an NVIDIA GPU; fp16, int8 with ``int8``). Default: ("onnx", "openvino")
            where OpenVINO is installed, else ("onnx",).
        int8: also write int8 graphs (``model_int8.onnx`` and its stages: QDQ, calibrated on ``calib_data``)
            and measure model.onnx's and model_int8.onnx's mAP on ``data`` in ONNX Runtime (``report["int8"]``).
        calib_data: the split int8 calibrates on (default ``data``; better a split other than the one measured).
        opset: ONNX opset (11 to 20; int8 needs 13 or later).
        parity_images: images for the ONNX Runtime parity check.
        check: run the parity check.
        overwrite: replace an existing export folder at ``out`` (only one edgeanchor wrote).
        model_name: recorded in the report (default: the architecture).

    Returns:
        The opened export folder (its ``report`` holds costs, head channels and parity).

    Raises:
        EdgeAnchorError: a baseline of another architecture, a bad opset, format or output folder, or a
            format whose runtime is not installed here; all before anything is exported.
        CheckFailed: a runtime does not match PyTorch (nothing is written).
    """
    from ..exporting.folder import check_output
    from ..pipeline import MAX_OPSET, MIN_OPSET, write_export

    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise EdgeAnchorError(f"`opset` {opset} is not supported; choose {MIN_OPSET} to {MAX_OPSET}")
    wanted = _check_formats(formats)
    calib = None
    if int8:
        from ..exporting.int8 import Int8Spec, check_int8_spec

        check_int8_spec(Int8Spec(), opset=opset)
    split = as_data(data)
    if int8:
        calib_split = as_data(calib_data) if calib_data is not None else split
        calib = (calib_split.images, calib_split.ann)
    check_output(out, overwrite=overwrite, inputs=[split.images, split.ann, *(calib or ())])
    return write_export(baseline, pruned, out, data=split.images, report_ann=split.ann, opset=opset,
                        num_parity_images=parity_images, check=check, overwrite=overwrite, model_name=model_name,
                        openvino="openvino" in wanted, int8_calib=calib,
                        tensorrt=("int8" if int8 else "fp16") if "tensorrt" in wanted else None)


def _check_formats(formats: Sequence[str] | None) -> set[str]:
    """The formats to write; the runtimes they need are imported now (a one-line error naming the install).

    Raises:
        EdgeAnchorError: an unknown format, formats without "onnx", or a missing runtime.
    """
    from ..runtimes import is_installed

    if formats is None:
        return {"onnx", "openvino"} if is_installed("openvino") else {"onnx"}
    if isinstance(formats, str):
        formats = (formats,)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise EdgeAnchorError(f"unknown format {unknown[0]!r}; choose from {', '.join(FORMATS)}")
    if "onnx" not in formats:
        raise EdgeAnchorError("formats must include onnx (every other format is built from the ONNX graphs)")
    for fmt in formats:
        if fmt != "onnx":
            require(fmt)
    return set(formats)


def bench(folder: ExportFolder | str | os.PathLike | None = None, *, runtime: str = "onnxruntime", threads: int = 0,
          iters: int = 100, warmup: int = 10, precision: str = "fp32", images: str | os.PathLike | None = None,
          end_to_end: str | None = None, opt_level: str = "all", progress: bool = True, write: bool = False,
          json_path: str | os.PathLike | None = None, plot_path: str | os.PathLike | None = None) -> BenchResult:
    """Time backbone, head, postprocess (decode + NMS) and end to end, baseline against pruned, interleaved.

    Args:
        folder: an export folder or its path (default: ``exports/demo``).
        runtime: onnxruntime, openvino, opencv, torch or tensorrt.
        threads: intra-op threads (0: the runtime's default).
        iters, warmup: timed and untimed iterations; each runs both variants on the same real image.
        precision: fp32, bf16, fp16 or int8 (the int8 graphs of an export made with int8); also f32, f16.
        images: an image folder to time on (default: the export's report split).
        end_to_end: the graph of the end-to-end stage (model, model_nonms or model_trt).
        opt_level: onnxruntime's graph optimisation level (disable, basic, extended, all).
        progress: show a progress bar.
        write: also write the result JSON (``json_path``, default ``bench_<runtime>[_<precision>].json`` in the
            export folder) and, where matplotlib is installed, its plot (``plot_path``, default beside the
            JSON); files of ours are rewritten, anything else is refused before the timing. A ``json_path``
            implies ``write``.

    Returns:
        Per stage and variant, latency statistics in milliseconds, and the pruned/baseline ratios (with
        ``json_path`` and ``plot_path`` set to the files written, if any).

    Raises:
        EdgeAnchorError: bad settings, a runtime that is not installed, or a missing or malformed export.
    """
    from ..benchmark.harness import check_timing, run_bench
    from ..exporting.folder import ExportFolder, default_export_dir
    from ..runtimes import canonical_precision, check_precision

    precision = canonical_precision(precision)  # f32, f16: the older spellings
    check_timing(iters, warmup, threads)
    if runtime != "torch":
        require(runtime)
    check_precision(runtime, precision)
    if not isinstance(folder, ExportFolder):
        folder = ExportFolder.open(folder or default_export_dir())
    outputs = _bench_outputs(folder, runtime, precision, images, json_path, plot_path) if write or json_path else None
    result = BenchResult(run_bench(folder, runtime=runtime, threads=threads, warmup=warmup, iters=iters,
                                   image_dir=images, opt_level=opt_level, progress=progress, precision=precision,
                                   end_to_end=end_to_end))
    if outputs:
        _write_bench(result, *outputs)
    return result


def _bench_outputs(folder, runtime: str, precision: str, images, json_path, plot_path) -> tuple[Path, Path]:
    """Where bench writes its JSON and plot; refused now (before the timing) unless new or bench's own."""
    from ..benchmark.harness import is_bench_result, is_png
    from ..io import check_output_file

    json_path = Path(json_path) if json_path else folder.bench_path(runtime, precision)
    plot_path = Path(plot_path or json_path.with_suffix(".png"))
    check_output_file(json_path, overwrite=True, is_ours=is_bench_result, what="bench result",
                      inputs=[folder.report_path, images])
    check_output_file(plot_path, overwrite=True, is_ours=is_png, what="bench plot", inputs=[images])
    return json_path, plot_path


def _write_bench(result: BenchResult, json_path: Path, plot_path: Path) -> None:
    from ..benchmark.harness import can_plot, plot_result
    from ..io import log, write_json

    write_json(json_path, result.to_json())
    result.json_path = json_path
    if can_plot():
        plot_result(result.to_json(), plot_path)
        result.plot_path = plot_path
    else:
        log("matplotlib is not installed: no plot (the JSON has every figure)")


def prune_and_export(model: str = "demo", *, num_classes: int | None = None, weights: str | None = None,
                     image_size: Sequence[int] | None = None, score_thresh: float | None = None,
                     nms_thresh: float | None = None, max_det: int | None = None, data: str | None = None,
                     ann: str | None = None, split: str | None = None, report_ann: str | None = None,
                     train_ann: str | None = None, keep_anchors: str | None = None,
                     target_head_macs: float | None = None, finetune_epochs: int = 0, finetune_lr: float = 5e-4,
                     deploy_score_thresh: float | None = None, deploy_nms_thresh: float | None = None,
                     nonms_topk: int = 1000, opset: int = 17, matrix_iters: int = 20, int8: bool = False,
                     tensorrt: str | None = None, parity_images: int = 4, out: str | os.PathLike | None = None,
                     overwrite: bool = False, method: str | None = None, cost: str = "head_macs",
                     metric: str = "coco", min_map: float | None = None, max_drop: float | None = None,
                     tol: float = 1e-4,
                     max_per_level: int = 1, max_evals: int = 3000, workers: int = 2, executor: str = "processes",
                     ray_address: str | None = None, backend: str = "faster", cache: str | None = None,
                     latency_model: str | None = None, progress: bool = True) -> ExportFolder:
    """Search, choose, slice, optionally fine-tune, export and check: ``edgeanchor prune-and-export``.

    The defaults are the command's: with no arguments it prunes the demo model on its synthetic data
    (search on val, report on test) into ``exports/demo``. Every check that needs no data runs first.

    Args:
        model, num_classes, weights, image_size, score_thresh, nms_thresh, max_det: the model, as :func:`load`.
        data: image folder, YOLO data.yaml or Pascal VOC folder (default: the demo's synthetic data); ann: the
            COCO split searched on; split: a data.yaml's or VOCdevkit's search split (default val; reported on
            test, fine-tuned on train, where the data set has them).
        report_ann: the split results are reported on (default: ann, or the demo's test split).
        train_ann: training split for ``finetune_epochs`` (default for the demo: its train split).
        keep_anchors: skip the search and keep this anchor file's anchors.
        target_head_macs: choose the most accurate front point with at most this many head MACs.
        finetune_epochs, finetune_lr: fine-tune the pruned model.
        deploy_score_thresh, deploy_nms_thresh: the exported graphs' rule (default: the searched one's;
            YOLO's deploy preset 0.25 / 0.45).
        nonms_topk: candidates kept by model_nonms.onnx.
        opset: ONNX opset. matrix_iters: timed runs per graph in the runtime matrix (0 leaves it out).
        int8: also write int8 graphs and report their mAP. tensorrt: also build an engine (fp32, fp16, int8).
        parity_images: images of the parity check.
        out: the export folder (default ``exports/<model name>``); overwrite: replace one edgeanchor wrote.
        method ... latency_model: the search, as :func:`edgeanchor.search`.
        progress: show progress bars.

    Returns:
        The export folder; ``folder.report`` is report.json.
    """
    from ..exporting.folder import ExportFolder, check_output
    from ..pipeline import PipelineSpec, check_pipeline_spec, run_pipeline
    from ..subset_search.run import SearchSpec, check_target_head_macs, resolve_method
    from .loading import load

    if max_drop is None and min_map is None:
        max_drop = 0.005
    search = SearchSpec(method=method, cost=cost, min_map=min_map, max_drop=max_drop, tol=tol,
                        max_per_level=max_per_level, max_evals=max_evals, workers=workers, backend=backend,
                        executor=executor, ray_address=ray_address, metric=metric)
    settings = dict(anchors=keep_anchors, target_head_macs=target_head_macs, finetune_epochs=finetune_epochs,
                    finetune_lr=finetune_lr, opset=opset, tensorrt=tensorrt, parity_images=parity_images,
                    search=search, cache=cache, latency_model=latency_model, model_name=model,
                    deploy_score_thresh=deploy_score_thresh, deploy_nms_thresh=deploy_nms_thresh,
                    nonms_topk=nonms_topk, int8=int8, matrix_iters=matrix_iters)
    # Every check that needs no data runs before the data is generated or read.
    splits = dict(data=data, ann=ann, split=split, report_ann=report_ann, train_ann=train_ann)
    preliminary = PipelineSpec(**_pipeline_splits(**splits, generate=False), **settings)
    check_pipeline_spec(preliminary)
    out = out or default_out(model)
    check_output(out, overwrite=overwrite, inputs=[*preliminary.inputs(), weights])
    det = load(model, num_classes=num_classes, weights=weights, image_size=image_size, score_thresh=score_thresh,
               nms_thresh=nms_thresh, max_det=max_det)
    if not keep_anchors:
        resolve_method(method, det)
        check_target_head_macs(det, target_head_macs)
    pipeline = PipelineSpec(**_pipeline_splits(**splits), **settings)
    report = run_pipeline(det, pipeline, out, overwrite=overwrite, progress=progress)
    return ExportFolder(out, report)  # the report written (and validated) by the pipeline


def _pipeline_splits(*, data, ann, split, report_ann, train_ann, generate: bool = True) -> dict:
    """The pipeline's data, ann, report_ann and train_ann, defaulting to the demo's synthetic splits.

    With ``generate=False`` the demo's paths are placeholders (nothing is generated): for checks
    that must run before any long work.
    """
    from ..datasets.voc import is_voc_data
    from ..datasets.yolo import is_yolo_yaml

    if not generate and not data and not ann:
        return {"data": "<demo>", "ann": "<demo val>", "report_ann": report_ann or "<demo test>",
                "train_ann": train_ann or "<demo train>"}
    if data and is_yolo_yaml(data):
        return _yolo_splits(data, ann, split, report_ann, train_ann, generate)
    if data and not ann and is_voc_data(data):
        return _voc_splits(data, split, report_ann, train_ann, generate)
    searched = as_data(data, ann)
    if searched.source != "demo":
        return {"data": searched.images, "ann": searched.ann, "report_ann": report_ann or searched.ann,
                "train_ann": train_ann}
    return {"data": searched.images, "ann": searched.ann, "report_ann": report_ann or searched.other_split("test").ann,
            "train_ann": train_ann or searched.other_split("train").ann}


def _yolo_splits(data_yaml, ann, split, report_ann, train_ann, generate: bool) -> dict:
    """A YOLO data.yaml: search on ``split`` (val), report on test if present, fine-tune on train."""
    from ..datasets.yolo import read_data_yaml, yolo_splits

    if ann or report_ann or train_ann:
        raise EdgeAnchorError("`ann`, `report_ann` and `train_ann` are not used with a YOLO data.yaml (its splits "
                              "are in the file); choose the search split with `split`")
    spec = read_data_yaml(data_yaml)
    search_split = split or "val"
    report_split = "test" if "test" in spec.splits else search_split
    train_split = "train" if "train" in spec.splits else None
    if not generate:
        return {"data": str(data_yaml), "ann": f"<{search_split}>", "report_ann": f"<{report_split}>",
                "train_ann": f"<{train_split}>" if train_split else None}
    root, anns = yolo_splits(data_yaml, [search_split, report_split, *([train_split] if train_split else [])])
    return {"data": root, "ann": anns[0], "report_ann": anns[1], "train_ann": anns[2] if train_split else None}


def _voc_splits(folder, split, report_ann, train_ann, generate: bool) -> dict:
    """Pascal VOC: a VOCdevkit is searched on ``split`` (val), reported on test if it has a test split,
    fine-tuned on train; a plain folder of images with XML is all three (no fine-tuning data)."""
    from ..datasets.voc import available_splits, is_devkit, voc_splits

    if report_ann or train_ann:
        raise EdgeAnchorError("`report_ann` and `train_ann` are not used with Pascal VOC data (its splits are in "
                              "ImageSets/Main); choose the search split with `split`")
    if not is_devkit(folder):
        names = [split, split]  # searched and reported on the whole folder
    else:
        have = available_splits(folder)
        search_split = split or "val"
        names = [search_split, "test" if "test" in have else search_split, *(["train"] if "train" in have else [])]
    if not generate:
        return {"data": str(folder), "ann": f"<{names[0] or 'all'}>", "report_ann": f"<{names[1] or 'all'}>",
                "train_ann": f"<{names[2]}>" if len(names) > 2 else None}
    if not is_devkit(folder):
        names = [split for _ in names]
    root, anns = voc_splits(folder, names)
    return {"data": root, "ann": anns[0], "report_ann": anns[1], "train_ann": anns[2] if len(anns) > 2 else None}


def default_out(model: str) -> str:
    """exports/<model name>: the checkpoint's stem, or the name after the family prefix."""
    from ..exporting.folder import default_export_dir

    name = Path(model).stem if model.endswith(".pt") else model.split(":")[-1]
    if model.startswith("yolov5:"):  # yolov5:n -> yolov5n, yolov5:path/custom.yaml -> custom
        name = Path(name).stem if name.endswith((".yaml", ".yml")) else f"yolov5{name}"
    return str(default_export_dir(name))
