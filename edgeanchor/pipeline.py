"""prune-and-export: search, choose, slice, fine-tune, export, check, report.

Everything is written through :class:`~edgeanchor.exporting.folder.ExportFolder`,
which builds the folder beside the output and renames it into place at the
end, so a failure never leaves a half-written export. :func:`write_export`
is the export step on its own (a reference and a pruned detector in, a
checked export folder out), for ``regress --model`` and the benchmarks.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .cost import measure_cost
from .datasets.coco import CocoDetection
from .errors import CheckFailed, EdgeAnchorError
from .evaluation.cache import cache_key, load_or_build_cache
from .evaluation.coco_map import coco_map
from .evaluation.predict import predict
from .evaluation.subset import SubsetScorer
from .exporting.folder import ExportFolder, variant_map
from .runtimes import is_installed
from .io import cache_root, log, read_json
from .postprocess import check_rule_values
from .pruning import keep_ids_from_file, prune
from .subset_search.run import (SearchSpec, check_search_spec, check_target_head_macs, choose_point, default_cache_path,
                         resolve_method, run_search, search_outputs)

# 11: NonMaxSuppression with a score threshold; 20: the TorchScript exporter's newest opset (torch 2.15).
MIN_OPSET, MAX_OPSET = 11, 20


@dataclass(frozen=True)
class PipelineSpec:
    """Plain settings of one prune-and-export run.

    Attributes:
        data: image folder.
        ann: COCO annotations the search runs on.
        report_ann: split the results are reported on (and fine-tuning validation).
        train_ann: fine-tuning data (needed when ``finetune_epochs`` > 0).
        anchors: an anchor file to keep instead of searching.
        target_head_macs: choose the most accurate front point with at most this many head MACs.
        finetune_epochs, finetune_lr: fine-tuning of the pruned model.
        opset: ONNX opset.
        tensorrt: also build TensorRT engines at this precision (fp32, fp16, int8).
        parity_images: report-split images used for the ONNX Runtime parity check.
        search: the search settings.
        cache: candidate cache file of the search split (default: a keyed file under the cache root).
        latency_model: latency model JSON for ``search.cost == "latency"`` (default: calibrate one).
        model_name: the model as the user named it (recorded in the report).
        deploy_score_thresh, deploy_nms_thresh: the exported graphs' thresholds (default: the searched
            rule's; YOLO: its deploy preset, 0.25 / 0.45).
        nonms_topk: K of model_nonms.onnx, the best candidates before NMS.
        int8: also write int8 (QDQ) backbone, head and end-to-end graphs per variant, calibrated on search-split
            images, and report their mAP against model.onnx's (see exporting/int8.py).
        matrix_iters: timed runs per graph of the runtime matrix (every installed runtime x graph: loads,
            parity, latency pruned vs baseline; see exporting/matrix.py); 0 leaves the matrix out.
    """

    data: str
    ann: str
    report_ann: str
    train_ann: str | None = None
    anchors: str | None = None
    target_head_macs: float | None = None
    finetune_epochs: int = 0
    finetune_lr: float = 5e-4
    opset: int = 17
    tensorrt: str | None = None
    parity_images: int = 4
    search: SearchSpec = SearchSpec()
    cache: str | None = None
    latency_model: str | None = None
    model_name: str = "demo"
    deploy_score_thresh: float | None = None
    deploy_nms_thresh: float | None = None
    nonms_topk: int = 1000
    int8: bool = False
    matrix_iters: int = 20

    @property
    def deploy(self) -> dict:
        return {"score_thresh": self.deploy_score_thresh, "nms_thresh": self.deploy_nms_thresh}

    def inputs(self) -> list[str]:
        """Every path this run reads (an output may not be any of them)."""
        paths = [self.data, self.ann, self.report_ann, self.train_ann, self.anchors, self.latency_model, self.cache]
        if self.model_name.endswith(".pt"):
            paths.append(self.model_name)
        return [p for p in paths if p]


def check_pipeline_spec(pipeline: PipelineSpec) -> None:
    """Every check that needs no data, done before the long work.

    Raises:
        EdgeAnchorError: naming the parameter and the accepted values.
    """
    if not MIN_OPSET <= pipeline.opset <= MAX_OPSET:
        raise EdgeAnchorError(f"`opset` {pipeline.opset} is not supported; choose {MIN_OPSET} to {MAX_OPSET}")
    if pipeline.finetune_epochs < 0:
        raise EdgeAnchorError(f"`finetune_epochs` must be >= 0 (got {pipeline.finetune_epochs})")
    if pipeline.finetune_epochs > 0 and not pipeline.train_ann:
        raise EdgeAnchorError("`finetune_epochs` needs training data: pass `train_ann` (a COCO file of the image folder)")
    if not pipeline.finetune_lr > 0:
        raise EdgeAnchorError(f"`finetune_lr` must be a positive number (got {pipeline.finetune_lr})")
    if pipeline.parity_images < 1:
        raise EdgeAnchorError(f"`parity_images` must be >= 1 (got {pipeline.parity_images})")
    if pipeline.target_head_macs is not None and not pipeline.target_head_macs > 0:
        raise EdgeAnchorError(f"`target_head_macs` must be a positive number (got {pipeline.target_head_macs})")
    check_search_spec(pipeline.search)
    if pipeline.nonms_topk < 1:
        raise EdgeAnchorError(f"`nonms_topk` must be at least 1 (got {pipeline.nonms_topk})")
    if pipeline.matrix_iters < 0:
        raise EdgeAnchorError(f"`matrix_iters` must be >= 0 (got {pipeline.matrix_iters}); 0 leaves the runtime matrix out")
    if pipeline.int8:
        from .exporting.int8 import Int8Spec, check_int8_spec

        check_int8_spec(Int8Spec(), opset=pipeline.opset)
    check_rule_values(pipeline.deploy_score_thresh, pipeline.deploy_nms_thresh, prefix="deploy_")
    if pipeline.tensorrt:
        from .runtimes.tensorrt import require_tensorrt

        require_tensorrt()


def search_dir(key: str, search: SearchSpec) -> Path:
    """A persistent search folder per (candidate cache content key, settings), so reruns reuse it."""
    floor = f"min{search.min_map}" if search.min_map is not None else f"drop{search.max_drop}"
    metric = "" if search.metric == "coco" else f"-{search.metric}"  # COCO searches keep their old folders
    return cache_root() / "searches" / f"{key[:16]}-{search.method}-{search.cost}-{floor}-tol{search.tol}{metric}"


def run_pipeline(det, pipeline: PipelineSpec, out, *, overwrite: bool = False, log=log, progress: bool = True) -> dict:
    """The whole job; returns the report dict (also written to report.json)."""
    check_pipeline_spec(pipeline)
    if not pipeline.anchors:
        # the same method rule and error as the search command, and a reachable MAC target, before any work
        resolve_method(pipeline.search.method, det)
        check_target_head_macs(det, pipeline.target_head_macs)
    with ExportFolder.build(out, overwrite=overwrite, inputs=pipeline.inputs()) as folder:
        report = _run(det, pipeline, folder, Path(out), log, progress)
    return report


def _run(det, pipeline: PipelineSpec, folder: ExportFolder, out: Path, log, progress: bool) -> dict:
    t0 = time.perf_counter()
    timings = {}
    report: dict = {"model": pipeline.model_name, "arch": det.arch, "data": pipeline.data,
                    "search_ann": pipeline.ann, "report_ann": pipeline.report_ann, "image_size": list(det.image_size),
                    "resize": det.resize_mode}
    # 1-3. search and choose, or take the given anchors
    keep, report["chosen"] = _choose_keep_set(det, pipeline, folder, log, progress)
    timings["search"] = time.perf_counter() - t0
    pruned = prune(det, keep)
    # 4. accuracy before / after, on the report split (exact, from the candidate cache)
    t = time.perf_counter()
    report_set = CocoDetection.for_detector(det, pipeline.data, pipeline.report_ann)
    cache = load_or_build_cache(det, report_set, default_cache_path(cache_key(det, report_set)), progress=progress,
                                log=log)
    scorer = SubsetScorer(cache, pipeline.report_ann, metric=pipeline.search.metric)
    removed = sorted(set(det.anchor_set.ids) - keep)
    # Only mAP is reported (in the search's metric); the mAP-only evaluation equals the full one's mAP exactly.
    report["metric"] = pipeline.search.metric
    report["mAP"] = {"baseline": scorer.score((), full=False)["mAP"],
                     "pruned": scorer.score(removed, full=False)["mAP"]}
    timings["evaluate"] = time.perf_counter() - t
    # 5. optional fine-tuning
    if pipeline.finetune_epochs > 0:
        t = time.perf_counter()
        pruned = _finetune(pruned, pipeline, report_set, folder.root, progress)
        report["mAP"]["finetuned"] = _map(pipeline.report_ann, predict(pruned, report_set, progress=False),
                                          pipeline.search.metric)
        timings["finetune"] = time.perf_counter() - t
    # the deployed graphs' reference: each variant's mAP with their rule (measured only where it differs)
    t = time.perf_counter()
    report["mAP_as_deployed"] = _map_as_deployed(det, pruned, pipeline, report_set, report["mAP"])
    timings["evaluate"] += time.perf_counter() - t
    # 6. checkpoints, anchors, costs
    folder.write_variant("pruned", pruned, meta={"pruned_from": pipeline.model_name, "kept_ids": sorted(keep)})
    folder.write_variant("baseline", det, meta={"model": pipeline.model_name})
    report["cost"] = {"baseline": cost_json(det), "pruned": cost_json(pruned)}
    # 7. export and parity
    t = time.perf_counter()
    report["export"] = export_pair(folder, det, pruned, opset=pipeline.opset, deploy=pipeline.deploy,
                                   nonms_topk=pipeline.nonms_topk,
                                   parity_images=parity_images(report_set, pipeline.parity_images), log=log)
    timings["export"] = time.perf_counter() - t
    if pipeline.int8:
        t = time.perf_counter()
        report["int8"] = _int8(folder, det, pipeline, report_set, report["mAP_as_deployed"], log, progress)
        timings["int8"] = time.perf_counter() - t
    # 8. every graph in every installed runtime: loads, parity, latency pruned vs baseline
    if pipeline.matrix_iters > 0:
        from .exporting.matrix import runtime_matrix

        t = time.perf_counter()
        report["runtimes"] = runtime_matrix(folder, parity_images(report_set, pipeline.parity_images),
                                            iters=pipeline.matrix_iters, threads=1, log=log,
                                            detectors={"pruned": deployed(pruned, pipeline.deploy),
                                                       "baseline": deployed(det, pipeline.deploy)})
        timings["runtime_matrix"] = time.perf_counter() - t
    if pipeline.tensorrt:
        report["tensorrt"] = _tensorrt(folder, pipeline.tensorrt, report_set, log)
    report["trtexec"] = _trtexec_lines(pipeline.tensorrt or "fp16")
    report["seconds"] = {k: round(v, 1) for k, v in timings.items()} | {"total": round(time.perf_counter() - t0, 1)}
    report["out"] = str(out)
    from .exporting.report_md import render_markdown

    return folder.write_report(report, render=render_markdown)


def _choose_keep_set(det, pipeline: PipelineSpec, folder: ExportFolder, log, progress: bool) -> tuple[set, dict]:
    """(kept anchor ids, the report's ``chosen`` entry): from the anchor file, or searched and chosen."""
    if pipeline.anchors:
        return keep_ids_from_file(det, pipeline.anchors), {"source": str(pipeline.anchors)}
    search = replace(pipeline.search, method=resolve_method(pipeline.search.method, det))
    dataset = CocoDetection.for_detector(det, pipeline.data, pipeline.ann)
    dataset.require_objects("search on")
    cache_path = Path(pipeline.cache) if pipeline.cache else default_cache_path(cache_key(det, dataset))
    cache = load_or_build_cache(det, dataset, cache_path, progress=progress, log=log)
    # The search folder is ours: one per (weights, anchors, rule, annotations, image contents, settings), so a
    # rerun resumes it, and other images start a new search instead of reusing scores of the old ones.
    search_folder = search_dir(cache.content_key, search)
    log(f"searching anchor subsets ({search.method}, cost {search.cost}) in {search_folder}")
    result = run_search(det, pipeline.data, pipeline.ann, search_folder, search, cache_path=cache_path, cache=cache,
                        latency_model=pipeline.latency_model, progress=progress, log=log)
    point = choose_point(result, target_head_macs=pipeline.target_head_macs)
    shutil.copy(search_outputs(search_folder)["plot"], folder.pareto_path)
    shutil.copy(search_outputs(search_folder)["result"], folder.search_json_path)
    chosen = {"source": "search", "search_dir": str(search_folder), "removed": point["removed"],
              "search_mAP": point["mAP"], "floor": result["floor"], "method": search.method, "cost": search.cost,
              "num_front_points": len(result["front"]), "num_evals": result["num_evals"],
              "scoring": result.get("scoring")}
    return set(det.anchor_set.ids) - set(point["removed"]), chosen


def cost_json(det) -> dict:
    """Head and total MACs, boxes and anchors of a detector, per level too."""
    cost = measure_cost(det)
    return {"head_macs": cost.head_macs, "total_macs": cost.total_macs, "num_boxes": cost.num_boxes,
            "num_anchors": det.anchor_set.num_anchors, "anchors_per_level": det.anchor_set.anchors_per_level(),
            "head_macs_per_level": cost.head_macs_per_level, "boxes_per_level": cost.boxes_per_level}


def _finetune(pruned, pipeline: PipelineSpec, report_set, workdir: Path, progress: bool):
    from .models import load_checkpoint
    from .train.loop import TrainConfig, train

    train_set = CocoDetection.for_detector(pruned, pipeline.data, pipeline.train_ann, train=True)
    cfg = TrainConfig(epochs=pipeline.finetune_epochs, lr=pipeline.finetune_lr, warmup_iters=20, progress=progress,
                      extra_meta={"command": "edgeanchor prune-and-export --finetune-epochs"})
    path = workdir / "finetune.pt"
    train(pruned, train_set, cfg, out=str(path))
    tuned = load_checkpoint(path)
    path.unlink()
    return tuned


def parity_images(dataset: CocoDetection, n: int) -> torch.Tensor:
    """The first ``n`` images of a split, (n, 3, H, W); tracing uses a fixed random image, so these are unseen."""
    n = min(n, len(dataset))
    return torch.stack([dataset[i][0] for i in range(n)])


def deployed(model, deploy: dict | None = None):
    """``model`` with the post-processing rule of the exported graphs (see ``PostprocessSpec.for_deployment``).

    A shallow copy shares the weights; only its rule differs (YOLO: the "deploy" preset).
    """
    return model.with_postprocess(model.postprocess_spec.for_deployment(**(deploy or {})))


def export_pair(folder: ExportFolder, reference, pruned, *, opset: int = 17, parity_images: torch.Tensor | None,
                deploy: dict | None = None, nonms_topk: int = 1000, openvino: bool | None = None, log=log) -> dict:
    """Export both variants' graphs into ``folder``; check parity on ``parity_images`` unless None.

    The graphs use the deployment rule (``deploy``: optional score_thresh / nms_thresh overrides);
    ``model_nonms.onnx`` keeps the best ``nonms_topk`` candidates;
    the checkpoints keep the model's own rule, which evaluation uses. The OpenVINO IR is written where
    ``openvino`` is True, or None and OpenVINO is installed.

    Returns:
        Per variant: head channels read from head.onnx, ``fused_head`` (whether head.onnx and the end-to-end
        graphs run each level's cls and box convolutions as one), simplification, exporter, opset, parity, files.

    Raises:
        CheckFailed: ONNX Runtime does not match PyTorch.
    """
    from .exporting import check_parity, export_onnx
    from .exporting.ncnn_graph import export_ncnn_graph
    from .exporting.tensorrt import make_trt_graph

    result = {}
    for variant, model in (("pruned", pruned), ("baseline", reference)):
        model = deployed(model, deploy)
        log(f"exporting the {variant} model to ONNX (opset {opset})")
        vdir = folder.variant_dir(variant)
        exported = export_onnx(model, vdir, opset=opset, decoded=True, nonms_topk=nonms_topk)
        # The TensorRT variant (EfficientNMS_TRT in place of NonMaxSuppression) is written
        # even without TensorRT here, so the export can be built into an engine on the device.
        decoded = Path(exported["files"].pop("decoded"))
        make_trt_graph(decoded, folder.graph_path(variant, "model_trt"), model.postprocess_spec)
        decoded.unlink()
        exported["files"]["model_trt"] = str(folder.graph_path(variant, "model_trt"))
        # ncnn has no TopK/Gather/Where: its graph stops after the decode (exporting/ncnn_graph.py)
        export_ncnn_graph(model, folder.graph_path(variant, "model_ncnn"), opset=opset)
        exported["files"]["model_ncnn"] = str(folder.graph_path(variant, "model_ncnn"))
        entry = {"postprocess": model.postprocess_spec.to_json(), "fused_head": exported["fused_head"],
                 "head_channels": exported["head_channels"], "simplified": exported["simplified"],
                 "simplify_notes": exported["simplify_notes"], "exporter": exported["exporter"],
                 "opset": exported["opset"],
                 "files": {k: str(Path(v).relative_to(folder.root)) for k, v in exported["files"].items()}}
        if parity_images is not None:
            entry["parity"] = require_parity(check_parity(model, vdir, parity_images), "ONNX Runtime", variant)
        if openvino or (openvino is None and is_installed("openvino")):  # the IR, checked as ONNX Runtime's are
            entry["openvino"] = _openvino_ir(folder, variant, model, exported["files"], parity_images, log)
        result[variant] = entry
    return result


def _openvino_ir(folder: ExportFolder, variant: str, model, files: dict, images, log) -> dict:
    """Write ``openvino/<graph>.xml`` for the variant's graphs; parity of the IR at f32 unless ``images`` is None.

    Raises:
        CheckFailed: OpenVINO's f32 results do not match PyTorch.
    """
    from .exporting import check_parity
    from .exporting.openvino_ir import write_ir
    from .runtimes import version

    log(f"writing the {variant} model's OpenVINO IR (OpenVINO {version('openvino')})")
    written = write_ir({g: (Path(f), folder.ir_path(variant, g)) for g, f in files.items()})
    entry = {"version": version("openvino"), "files": {g: str(Path(x).relative_to(folder.root)) for g, x in written.items()}}
    if images is not None:
        parity = check_parity(model, folder.variant_dir(variant), images, runtime="openvino",
                              files={g: Path(x) for g, x in written.items()})
        entry["parity"] = require_parity(parity, "OpenVINO (f32)", variant)
    return entry


def require_parity(parity: dict, runtime: str, variant: str) -> dict:
    """``parity`` (a :func:`~edgeanchor.exporting.parity.check_parity` result) if it passed.

    Raises:
        CheckFailed: naming the runtime, the variant, the head's max abs diff and the matched detections.
    """
    if not parity["passed"]:
        raise CheckFailed(
            f"{runtime} does not match PyTorch for the {variant} model: head max abs diff "
            f"{parity['head']['max_abs_diff']:.3g}, detections matched {parity['model']['matched_fraction']:.3f}; "
            "the export was not written"
        )
    return parity


def write_export(reference, pruned, out, *, data: str, report_ann: str, opset: int = 17, num_parity_images: int = 4,
                 check: bool = True, overwrite: bool = False, model_name: str | None = None,
                 openvino: bool | None = None, int8_calib: tuple[str, str] | None = None,
                 tensorrt: str | None = None, log=log) -> ExportFolder:
    """Export ``reference`` (as the baseline) and ``pruned`` into a new export folder; no search.

    Args:
        reference: the unpruned detector.
        pruned: the pruned detector (same architecture and classes).
        out: the export folder to create.
        data, report_ann: the split bench and regress measure on (and parity images come from).
        opset: ONNX opset.
        num_parity_images: images for the ONNX Runtime parity check (if ``check``).
        check: run the parity check (raises :class:`CheckFailed` if it fails).
        overwrite: replace an existing export folder at ``out``.
        model_name: recorded in the report.
        openvino: write the OpenVINO IR (None: where OpenVINO is installed).
        int8_calib: (images, COCO annotations) to calibrate int8 graphs on; they are written, and their mAP
            and model.onnx's measured on the report split, only when given.
        tensorrt: build TensorRT engines at this precision (fp32, fp16, int8; needs TensorRT and a GPU).

    Returns:
        The opened export folder.
    """
    if reference.arch != pruned.arch or reference.num_classes != pruned.num_classes:
        raise EdgeAnchorError(
            f"the pruned model ({pruned.arch}, {pruned.num_classes} classes) is not a pruned "
            f"{reference.arch} with {reference.num_classes} classes; give its unpruned reference"
        )
    report_set = CocoDetection.for_detector(pruned, data, report_ann)
    images = parity_images(report_set, num_parity_images) if check else None
    inputs = [data, report_ann, *(int8_calib or ())]
    with ExportFolder.build(out, overwrite=overwrite, inputs=inputs) as folder:
        folder.write_variant("pruned", pruned, meta={"pruned_from": model_name or reference.arch})
        folder.write_variant("baseline", reference, meta={"model": model_name or reference.arch})
        export = export_pair(folder, reference, pruned, opset=opset, parity_images=images, openvino=openvino,
                             log=log)
        report = {"model": model_name or reference.arch, "arch": reference.arch, "data": str(data),
                  "report_ann": str(report_ann), "image_size": list(pruned.image_size),
                  "resize": pruned.resize_mode, "chosen": {"source": "given"},
                  "cost": {"baseline": cost_json(reference), "pruned": cost_json(pruned)}, "export": export}
        if int8_calib:
            from .exporting.int8 import quantize_and_evaluate

            calib_set = CocoDetection.for_detector(reference, *int8_calib)
            report["int8"] = quantize_and_evaluate(folder, calib_set, report_set, progress=False, log=log)
            for variant in ("pruned", "baseline"):
                report["int8"][variant]["map_pytorch"] = None  # no PyTorch mAP is measured here
        if tensorrt:
            report["tensorrt"] = _tensorrt(folder, tensorrt, report_set, log)
        report["trtexec"] = _trtexec_lines(tensorrt or "fp16")
        folder.write_report(report)
    return ExportFolder.open(out)


def _tensorrt(folder: ExportFolder, precision: str, report_set, log) -> dict:
    """Build each variant's model_trt engine where bench and evaluate look for it (:meth:`ExportFolder.engine_files`).

    Returns:
        Per variant, :func:`~edgeanchor.runtimes.tensorrt.build_engine`'s record, its paths relative to the folder.
    """
    from .runtimes.tensorrt import build_engine, check_gpu, require_tensorrt

    trt = require_tensorrt()
    gpu = check_gpu()
    result = {}
    calib = parity_images(report_set, 64) if precision == "int8" else None
    for variant in ("pruned", "baseline"):
        files = folder.engine_files(variant, "model_trt", precision, trt_version=trt.__version__, gpu=gpu)
        log(f"building the {variant} TensorRT engine ({precision})")
        built = build_engine(folder.graph_path(variant, "model_trt"), files.engine, precision=precision,
                             calib_images=calib, timing_cache=files.timing_cache,
                             calib_cache=files.calib_cache if calib is not None else None, log_path=files.build_log)
        # relative: the folder is built beside its final path and renamed into place
        result[variant] = {k: str(Path(v).relative_to(folder.root)) if k in _TRT_FILES and v else v
                           for k, v in built.items()}
    return result


_TRT_FILES = ("engine", "log", "timing_cache", "calib_cache")  # build_engine's record: the keys that are paths


def _int8(folder: ExportFolder, det, pipeline: PipelineSpec, report_set, as_deployed: dict, log,
          progress: bool) -> dict:
    """int8 graphs of both variants and their mAP through ONNX Runtime, beside model.onnx's (exporting/int8.py).

    ``map_pytorch`` is each variant's PyTorch COCO mAP with the graphs' rule (``as_deployed``, from
    :func:`_map_as_deployed`), so model.onnx's and model_int8.onnx's mAPs can be checked against it.
    """
    from .exporting.int8 import quantize_and_evaluate

    calib_set = CocoDetection.for_detector(det, pipeline.data, pipeline.ann)
    result = quantize_and_evaluate(folder, calib_set, report_set, progress=progress, log=log)
    for variant in ("pruned", "baseline"):
        result[variant]["map_pytorch"] = as_deployed[variant]
    return result


def _map_as_deployed(det, pruned, pipeline: PipelineSpec, report_set, maps: dict) -> dict:
    """Each variant's PyTorch COCO mAP on the report split with the rule of its exported graphs.

    This is what the deployed graph's mAP (``evaluate --export``, ``regress``) must equal up to runtime
    rounding. It is the reported mAP when that was COCO's with the same rule; otherwise it is measured here:
    YOLO's graphs use the deploy preset (0.25 / 0.45) where the checkpoint is evaluated with the val preset, a
    deploy threshold may be given, and a VOC search reports VOC's mAP.
    """
    same = (deployed(det, pipeline.deploy).postprocess_spec == det.postprocess_spec
            and pipeline.search.metric == "coco")
    result = {"metric": "coco", "same_as_reported": same}
    models = {"baseline": det, "pruned": pruned}
    for variant, model in models.items():
        if same:
            result[variant] = variant_map(maps, variant)
        else:
            detections = predict(deployed(model, pipeline.deploy), report_set, progress=False)
            result[variant] = _map(pipeline.report_ann, detections, "coco")
    return result


def _map(ann, detections: list, metric: str) -> float:
    """mAP of COCO results in ``metric`` ("coco", or VOC's "voc07" / "voc")."""
    if metric == "coco":
        return coco_map(ann, detections)["mAP"]
    from .evaluation.voc_map import voc_map

    return voc_map(read_json(ann, "annotation file"), detections, metric)["mAP"]


def _trtexec_lines(precision: str) -> dict:
    """trtexec command lines, relative to the export folder, for building the engines on the device."""
    from .exporting.tensorrt import trtexec_command

    relative = ExportFolder(Path("."))  # paths relative to the export folder's root
    lines = {}
    for variant in ("pruned", "baseline"):
        calib = relative.calib_cache_path(variant) if precision == "int8" else None
        lines[variant] = trtexec_command(relative.graph_path(variant, "model_trt"), precision,
                                         engine_path=relative.trtexec_engine_path(variant, "model_trt", precision),
                                         timing_cache=relative.timing_cache_path(variant), calib_cache=calib)
    return lines
