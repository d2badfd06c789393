"""The Python API's deployment steps: export, bench, and the whole prune-and-export workflow."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import ONNX_NO_FINETUNE, EdgeAnchorError
from ..settings import typechecked
from .data import Data
from .data import data as as_data
from .results import BenchResult, FrontPoint, SearchResult

if TYPE_CHECKING:
    from ..exporting.folder import ExportFolder
    from ..models.base import Detector


FORMATS = ("onnx", "openvino", "tensorrt")


@typechecked
def export(pruned: Detector, out: str | os.PathLike, *, baseline: Detector, data: Any,
           formats: Sequence[str] | None = None, int8: bool = False, calib_data: Any = None, opset: int = 17,
           parity_images: int = 4, check: bool = True, overwrite: bool = False,
           model_name: str | None = None, metric: str = "coco", deploy_score_thresh: float | None = None,
           deploy_nms_thresh: float | None = None, nonms_topk: int = 1000, matrix_iters: int = 20,
           finetuned_from: Detector | None = None, progress: bool = True) -> ExportFolder:
    """Export a pruned detector and its unpruned baseline into a new export folder, checked against PyTorch.

    Per variant: ``backbone.onnx``, ``head.onnx``, ``postprocess.onnx``, ``model.onnx`` (image (1, 3, H, W)
    float32 RGB in [0, 1] -> detections (1, max_det, 6): x1, y1, x2, y2 in input pixels, score, label),
    ``model_nonms.onnx``, ``model_ncnn.onnx``, ``model_trt.onnx`` (TensorRT's EfficientNMS), the checkpoint
    and the anchor set (w, h in input pixels; ratio h/w), and what ``formats`` and ``int8`` add.
    The folder is built beside ``out`` and renamed into place when complete. Its ``report.json`` is the one
    prune-and-export writes (both variants' mAP on ``data``, ``mAP_as_deployed``, costs, graphs, parity and
    the runtime matrix), so bench, regress and evaluate treat both alike.

    Args:
        pruned: the pruned detector.
        baseline: the detector it was pruned from (same architecture and classes); bench compares the two.
        out: the export folder to create.
        data: the report split: the variants' mAP, bench and regress measure on it, parity images are its
            first ``parity_images``, and it is bundled into the folder.
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
        metric: the metric of the reported mAP: coco, voc07 or voc.
        deploy_score_thresh, deploy_nms_thresh: the exported graphs' rule (default: the model's own; YOLO's
            deploy preset 0.25 / 0.45).
        nonms_topk: candidates kept by model_nonms.onnx.
        matrix_iters: timed runs per graph in the report's runtime matrix (0 leaves it out).
        finetuned_from: the pruned detector before fine-tuning, when ``pruned`` is fine-tuned; its mAP is
            reported beside the fine-tuned one's.
        progress: show progress bars.

    Returns:
        The opened export folder (its ``report`` holds mAPs, costs, head channels and parity).

    Raises:
        EdgeAnchorError: a baseline of another architecture, a bad opset, format or output folder, or a
            format whose runtime is not installed here; all before anything is exported.
        CheckFailed: a runtime does not match PyTorch (nothing is written).
    """
    from ..pipeline import ExportOptions

    wanted = _check_formats(formats)
    tensorrt = ("int8" if int8 else "fp16") if "tensorrt" in wanted else None
    settings = ExportOptions(opset=opset, parity_images=parity_images, check=check, openvino="openvino" in wanted,
                              int8=int8, tensorrt=tensorrt, matrix_iters=matrix_iters, nonms_topk=nonms_topk,
                              deploy_score_thresh=deploy_score_thresh, deploy_nms_thresh=deploy_nms_thresh,
                              metric=metric)
    settings.validate()
    return export_checked(pruned, out, baseline=baseline, report=as_data(data),
                          calib=as_data(calib_data) if calib_data is not None else None, settings=settings,
                          overwrite=overwrite, model_name=model_name, finetuned_from=finetuned_from,
                          progress=progress)


def export_checked(pruned: Detector, out: str | os.PathLike, *, baseline: Detector, report: Data,
                   calib: Data | None, settings: Any, overwrite: bool = False, model_name: str | None = None,
                   finetuned_from: Detector | None = None, progress: bool = True, log=None) -> ExportFolder:
    """:func:`export` with its settings (an :class:`~edgeanchor.pipeline.ExportOptions`) already checked."""
    from ..exporting.folder import ExportFolder
    from ..io import log as default_log
    from ..pipeline import write_export_folder

    if baseline.arch != pruned.arch or baseline.num_classes != pruned.num_classes:
        raise EdgeAnchorError(
            f"the pruned model ({pruned.arch}, {pruned.num_classes} classes) is not a pruned "
            f"{baseline.arch} with {baseline.num_classes} classes; give its unpruned reference"
        )
    report = report.with_reference(baseline, progress=progress, log=log)  # unlabelled: the baseline's pseudo-labels
    calib = calib.with_reference(baseline, progress=progress, log=log) if calib is not None else None
    inputs = [report.images, report.ann, *((calib.images, calib.ann) if calib is not None else ())]
    with ExportFolder.build(out, overwrite=overwrite, inputs=inputs) as folder:
        written = write_export_folder(folder, baseline, pruned, settings=settings, report_data=report,
                                      calib_data=calib, model_name=model_name or baseline.arch, out=out,
                                      finetuned_from=finetuned_from, progress=progress, log=log or default_log)
    return ExportFolder(out, written)


def _check_formats(formats: Sequence[str] | None) -> set[str]:
    """The formats to write. Whether their runtimes are installed is :meth:`ExportOptions.validate`'s check.

    Raises:
        EdgeAnchorError: an unknown format, or formats without "onnx".
    """
    from ..runtimes import is_installed

    if formats is None:
        return {"onnx", "openvino"} if is_installed("openvino") else {"onnx"}
    if isinstance(formats, str):
        formats = (formats,)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise EdgeAnchorError(f"unknown format {unknown[0]!r} in `formats`; choose from {', '.join(FORMATS)}")
    if "onnx" not in formats:
        raise EdgeAnchorError("`formats` must include onnx (every other format is built from the ONNX graphs)")
    return set(formats)


@typechecked
def bench(folder: ExportFolder | str | os.PathLike | None = None, *, runtime: str = "onnxruntime", threads: int = 0,
          iters: int | Literal["auto"] = "auto", max_time: float = 60.0, clock: str = "wall", warmup: int = 10,
          precision: str = "fp32",
          images: str | os.PathLike | None = None,
          end_to_end: str | None = None, opt_level: str = "all", progress: bool = True, write: bool = False,
          json_path: str | os.PathLike | None = None, plot_path: str | os.PathLike | None = None) -> BenchResult:
    """Time backbone, head, postprocess (decode + NMS) and end to end, baseline against pruned, interleaved.

    Args:
        folder: an export folder or its path (default: ``exports/demo``).
        runtime: onnxruntime, openvino, opencv, torch or tensorrt.
        threads: intra-op threads (0: the runtime's default).
        iters: timed rounds, each running both variants on the same real image; ``"auto"``: until every
            pruned/baseline ratio's 95 % interval is within ±3 % of it, or ``max_time`` seconds have passed.
        max_time: with ``iters="auto"``, the most seconds of timed rounds.
        clock: ``wall`` (latency) or ``cpu``, this process's CPU time, which leaves out waiting for a CPU on a
            busy machine (TensorRT: GPU time either way).
        warmup: untimed rounds first.
        precision: fp32, bf16, fp16 or int8 (the int8 graphs of an export made with int8); also f32, f16.
        images: an image folder to time on (default: the export's report split).
        end_to_end: the graph of the end-to-end stage (model, model_nonms or model_trt).
        opt_level: onnxruntime's graph optimisation level (disable, basic, extended, all).
        progress: show a progress bar.
        write: also write the result JSON (``json_path``, default ``bench_<runtime>[_<precision>].json`` in the
            export folder) and, where matplotlib is installed, its plot (``plot_path``, default beside the
            JSON); files of ours are rewritten, anything else is refused before the timing. A ``json_path``
            implies ``write``.

    The settings are :class:`~edgeanchor.api.settings.BenchSettings`' fields (``edgeanchor bench``'s flags).

    One line on stderr says whether the target was reached, and a warning names the cause and the fix when
    the timing is unstable (a wide interval, a load above the CPU count, or a p90 far above the median).

    Returns:
        Per stage and variant, latency statistics in milliseconds with the median's 95 % interval, and the
        pruned/baseline ratios with theirs (with ``json_path`` and ``plot_path`` set to the files written,
        if any).

    Raises:
        EdgeAnchorError: bad settings, a runtime that is not installed, or a missing or malformed export.
    """
    from ..benchmark.harness import report_timing, run_bench
    from ..exporting.folder import ExportFolder, default_export_dir
    from ..runtimes import canonical_precision
    from .settings import BenchSettings

    precision = canonical_precision(precision)  # f32, f16: the older spellings
    BenchSettings(folder=folder, runtime=runtime, threads=threads, iters=iters, max_time=max_time, clock=clock,
                  warmup=warmup, precision=precision, images=images, end_to_end=end_to_end, opt_level=opt_level,
                  progress=progress, write=write, json_path=json_path,
                  plot_path=plot_path).validate()  # once, before the folder is opened
    if not isinstance(folder, ExportFolder):
        folder = ExportFolder.open(folder or default_export_dir())
    outputs = _bench_outputs(folder, runtime, precision, images, json_path, plot_path) if write or json_path else None
    result = BenchResult(run_bench(folder, runtime=runtime, threads=threads, warmup=warmup, iters=iters,
                                   max_time=max_time, clock=clock, image_dir=images, opt_level=opt_level,
                                   progress=progress, precision=precision, end_to_end=end_to_end))
    report_timing(result.to_json(), "bench")
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


def prune_and_export(model: str = "demo", **settings: Any) -> ExportFolder:
    """Search, choose, slice, optionally fine-tune, export and check: ``edgeanchor prune-and-export``.

    A composition of the public steps: :func:`edgeanchor.search` -> :meth:`SearchResult.choose` ->
    :func:`edgeanchor.prune` -> :func:`edgeanchor.finetune` -> :func:`edgeanchor.export`. The settings are
    :class:`~edgeanchor.api.settings.PruneAndExportSettings`'s fields (the command's flags), checked once
    before the model is built or any data is read. The defaults are the command's: with no arguments it
    prunes the demo model on its synthetic data (search on val, report on test) into ``exports/demo``.

    Args:
{args}

    Returns:
        The export folder; ``folder.report`` is report.json.
    """
    from .settings import PruneAndExportSettings

    return _prune_and_export(PruneAndExportSettings(model=model, **settings))


def _prune_and_export(s: Any) -> ExportFolder:
    import time
    from dataclasses import replace

    from ..evaluation.pseudo import default_pseudo_thresh
    from ..exporting.folder import ExportFolder
    from ..pipeline import write_export_folder
    from ..subset_search.run import check_target_head_macs, resolve_method
    from .data import roles
    from .loading import load
    from .workflow import finetune_checked, prune, search_checked

    # 1. Every setting is checked once, before the model is built or any data is read or generated.
    s.validate()
    spec, settings = s.search_options(), s.export_options()
    splits = roles(s.data, s.ann, split=s.split, report_ann=s.report_ann, train_ann=s.train_ann,
                   frame_step=s.frame_step, max_frames=s.max_frames)  # lazy, but an unlabelled split is listed now
    if s.finetune_epochs > 0 and str(s.model).startswith("onnx:"):
        raise EdgeAnchorError(ONNX_NO_FINETUNE)
    if s.finetune_epochs > 0 and splits.train is None:
        if s.data and not s.ann and not splits.search.labelled:
            raise EdgeAnchorError("`finetune_epochs` needs labels, and `data` is unlabelled (searched label-free): "
                                  "drop `finetune_epochs`, or pass `train_ann` (COCO labels of these images)")
        raise EdgeAnchorError("`finetune_epochs` needs training data: pass `train_ann` (a COCO file of the image "
                              "folder)")
    out = s.out or default_out(s.model)
    seconds: dict[str, float] = {}
    with ExportFolder.build(out, overwrite=s.overwrite, inputs=s.inputs()) as folder:
        det = load(s.model, **s.load_kwargs())
        thresh = s.pseudo_thresh if s.pseudo_thresh is not None else default_pseudo_thresh(det, s.deploy_score_thresh)
        search_split = splits.search.with_reference(det, thresh, progress=s.progress)  # label-free: pseudo-labels
        report_split = splits.report.with_reference(det, thresh, progress=s.progress)
        t = time.perf_counter()
        if s.keep_anchors:  # 2. the anchors to keep: given ...
            pruned = prune(det, s.keep_anchors)
            chosen: dict[str, Any] = {"source": str(s.keep_anchors)}
        else:  # ... or searched and chosen
            spec = replace(spec, method=resolve_method(spec.method, det))
            check_target_head_macs(det, s.target_head_macs)
            result = search_checked(det, search_split, spec, cache=s.cache, latency_model=s.latency_model,
                                    pseudo_thresh=thresh, progress=s.progress)
            point = result.choose(target_head_macs=s.target_head_macs)
            pruned = prune(det, point)
            chosen = _chosen(result, point, spec, folder, target_head_macs=s.target_head_macs)
        seconds["search"] = time.perf_counter() - t
        tuned = None
        if s.finetune_epochs > 0 and splits.train is not None:  # 3. optional fine-tuning
            t = time.perf_counter()
            tuned = finetune_checked(pruned, splits.train, epochs=s.finetune_epochs, lr=s.finetune_lr,
                                     progress=s.progress)
            seconds["finetune"] = time.perf_counter() - t
        # 4. the export step: measure, export, check, report
        report = write_export_folder(folder, det, tuned if tuned is not None else pruned, settings=settings,
                                     report_data=report_split, calib_data=search_split, model_name=s.model,
                                     out=out, chosen=chosen, search_ann=search_split.ann,
                                     search_split=search_split.name,
                                     pseudo_thresh=thresh if search_split.source == "pseudo" else None,
                                     finetuned_from=pruned if tuned is not None else None, seconds=seconds,
                                     progress=s.progress)
    return ExportFolder(out, report)  # the report written (and validated) by the export step


def _chosen(result: SearchResult, point: FrontPoint, spec: Any, folder: ExportFolder, *,
            target_head_macs: float | None = None) -> dict[str, Any]:
    """The report's ``chosen`` entry of a searched keep set; the search's result goes into the folder, and its
    plot with the chosen point marked."""
    import shutil

    from ..subset_search.run import search_outputs

    shutil.copy(search_outputs(result.out)["result"], folder.search_json_path)
    result.plot(folder.pareto_path, chosen=point)
    raw = result.to_json()
    budget = {"min_map": spec.min_map} if spec.min_map is not None else {"max_drop": spec.max_drop}
    return {"source": "search", "search_dir": str(result.out), "removed": list(point.removed),
            "search_mAP": point.map, "search_baseline_mAP": result.baseline["mAP"], "floor": result.floor,
            "budget": budget, "target_head_macs": target_head_macs, "plot": folder.pareto_path.name,
            "method": spec.method, "cost": spec.cost,
            "num_front_points": len(raw["front"]), "num_evals": result.num_evals, "scoring": raw.get("scoring")}


def default_out(model: str) -> str:
    """exports/<model name>: the checkpoint's stem, or the name after the family prefix."""
    from ..exporting.folder import default_export_dir

    name = Path(model).stem if model.endswith(".pt") else model.split(":")[-1]
    if model.startswith("yolov5:"):  # yolov5:n -> yolov5n, yolov5:path/custom.yaml -> custom
        name = Path(name).stem if name.endswith((".yaml", ".yml")) else f"yolov5{name}"
    return str(default_export_dir(name))


def _document_prune_and_export() -> None:
    """prune_and_export's signature and Args: generated from its settings, the one place they are defined."""
    from ..settings import api_signature, args_doc
    from .settings import PruneAndExportSettings

    prune_and_export.__signature__ = api_signature(  # type: ignore[attr-defined]
        PruneAndExportSettings, positional=("model",), returns="ExportFolder")
    prune_and_export.__doc__ = (prune_and_export.__doc__ or "").replace("{args}", args_doc(PruneAndExportSettings))


_document_prune_and_export()
