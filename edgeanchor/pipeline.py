"""The export step: a baseline and a pruned detector in, a full, checked export folder out.

:func:`write_export_folder` is the one report builder. ``ea.export`` and ``ea.prune_and_export`` (and so
``edgeanchor prune-and-export``) both end in it, so every export folder holds the same ``report.json``: both
variants' mAP on the report split, ``mAP_as_deployed``, costs, graphs and parity, the runtime matrix, int8 and
TensorRT where asked for. Everything is written through
:class:`~edgeanchor.exporting.folder.ExportFolder`, which builds the folder beside the output and renames it
into place at the end, so a failure never leaves a half-written export.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch

from .cost import measure_cost
from .errors import CheckFailed, EdgeAnchorError
from .evaluation.cache import cache_key, load_or_build_cache
from .evaluation.coco_map import coco_map
from .evaluation.predict import predict
from .evaluation.subset import SubsetScorer
from .exporting.folder import ExportFolder, variant_map
from .exporting.report_schema import Chosen, Cost, DeployedMaps, Report, VariantMaps
from .io import cache_root, log, read_json
from .postprocess import check_rule_values
from .runtimes import is_installed
from .subset_search.run import default_cache_path

# 11: NonMaxSuppression with a score threshold; 20: the TorchScript exporter's newest opset (torch 2.15).
MIN_OPSET, MAX_OPSET = 11, 20
TENSORRT_PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class ExportOptions:
    """What the export step writes and checks (``ea.export``'s and prune-and-export's export settings).

    Attributes:
        opset: ONNX opset (11 to 20; int8 needs 13 or later).
        parity_images: report-split images the graphs are checked against PyTorch on.
        check: run that parity check (ONNX Runtime, and OpenVINO's IR at fp32); a mismatch raises CheckFailed.
        openvino: write the OpenVINO IR (None: where OpenVINO is installed).
        int8: also write int8 (QDQ) graphs, calibrated on the calibration split, and report their mAP.
        tensorrt: also build TensorRT engines at this precision (fp32, fp16, int8).
        matrix_iters: timed runs per graph of the runtime matrix; 0 leaves the matrix out.
        nonms_topk: K of model_nonms.onnx, the best candidates before NMS.
        deploy_score_thresh, deploy_nms_thresh: the exported graphs' rule (default: the model's own; YOLO: its
            deploy preset, 0.25 / 0.45).
        metric: the metric of the reported mAP (coco, voc07, voc); ``mAP_as_deployed`` is always COCO's.
    """

    opset: int = 17
    parity_images: int = 4
    check: bool = True
    openvino: bool | None = None
    int8: bool = False
    tensorrt: str | None = None
    matrix_iters: int = 20
    nonms_topk: int = 1000
    deploy_score_thresh: float | None = None
    deploy_nms_thresh: float | None = None
    metric: str = "coco"

    @property
    def deploy(self) -> dict:
        return {"score_thresh": self.deploy_score_thresh, "nms_thresh": self.deploy_nms_thresh}

    def validate(self) -> None:
        """Every check that needs no model or data.

        Raises:
            EdgeAnchorError: naming the setting and the accepted values.
        """
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise EdgeAnchorError(f"`opset` {self.opset} is not supported; choose {MIN_OPSET} to {MAX_OPSET}")
        if self.parity_images < 1:
            raise EdgeAnchorError(f"`parity_images` must be >= 1 (got {self.parity_images})")
        if self.nonms_topk < 1:
            raise EdgeAnchorError(f"`nonms_topk` must be at least 1 (got {self.nonms_topk})")
        if self.matrix_iters < 0:
            raise EdgeAnchorError(f"`matrix_iters` must be >= 0 (got {self.matrix_iters}); 0 leaves the runtime "
                                  "matrix out")
        if self.int8:
            from .exporting.int8 import Int8Options, check_int8_options

            check_int8_options(Int8Options(), opset=self.opset)
        check_rule_values(self.deploy_score_thresh, self.deploy_nms_thresh, prefix="deploy_")
        from .evaluation.voc_map import METRICS

        if self.metric not in METRICS:
            raise EdgeAnchorError(f"unknown metric {self.metric!r}; choose one of {', '.join(METRICS)}")
        if self.tensorrt is not None:
            if self.tensorrt not in TENSORRT_PRECISIONS:
                raise EdgeAnchorError(f"unknown `tensorrt` precision {self.tensorrt!r}; choose one of "
                                      f"{', '.join(TENSORRT_PRECISIONS)}")
            from .runtimes.tensorrt import require_tensorrt

            require_tensorrt()
        if self.openvino:
            from .runtimes import require

            require("openvino")


def search_dir(key: str, search) -> Path:
    """A persistent search folder per (candidate cache content key, settings), so reruns reuse it."""
    floor = f"min{search.min_map}" if search.min_map is not None else f"drop{search.max_drop}"
    metric = "" if search.metric == "coco" else f"-{search.metric}"  # COCO searches keep their old folders
    return cache_root() / "searches" / f"{key[:16]}-{search.method}-{search.cost}-{floor}-tol{search.tol}{metric}"


def write_export_folder(folder: ExportFolder, baseline, pruned, *, settings: ExportOptions, report_data,
                        calib_data=None, model_name: str, out, chosen: dict | None = None,
                        search_ann: str | None = None, search_split: str | None = None, finetuned_from=None,
                        seconds: dict | None = None, pseudo_thresh: float | None = None, progress: bool = True,
                        log=log) -> Report:
    """Write both variants, measure and check them, and write the report; returns the report.

    Args:
        folder: the export folder being built (:meth:`ExportFolder.build`).
        baseline: the unpruned detector; pruned: the pruned one (fine-tuned or not).
        settings: what to write and check.
        report_data: the report split (a :class:`~edgeanchor.api.data.Data`): mAP, parity images, bundled data.
        calib_data: the split int8 calibrates on (default ``report_data``).
        model_name: the model as the user named it.
        out: the folder's final path (recorded in the report).
        chosen: how the anchors were chosen (the report's ``chosen``; default: given).
        search_ann: the split the anchors were searched on; search_split: its name (as :attr:`Data.name`).
        finetuned_from: the pruned detector before fine-tuning, when ``pruned`` is fine-tuned: its mAP is
            reported as ``pruned`` and ``pruned``'s as ``finetuned``.
        seconds: timings of earlier steps (search, finetune), merged into the report's ``seconds``.
        pseudo_thresh: the threshold of a label-free search's pseudo-labels (None: the search had labels); with
            labels on the report split, the report adds the variants' fidelity against pseudo-labels at it.

    Raises:
        CheckFailed: a runtime does not match PyTorch.
    """
    t0 = time.perf_counter()
    timings = dict(seconds or {})
    report_set = report_data.dataset(baseline)
    report: Report = {"model": model_name, "arch": baseline.arch, "data": report_data.images,
                              "search_ann": search_ann, "report_ann": report_data.ann,
                              "search_split": search_split, "report_split": report_data.name,
                              "image_size": list(baseline.image_size), "resize": baseline.resize_mode,
                              "chosen": cast(Chosen, chosen or {"source": "given"}), "metric": settings.metric}
    t = time.perf_counter()
    report["mAP"] = report_maps(baseline, pruned, report_set, metric=settings.metric, finetuned_from=finetuned_from,
                                progress=progress, log=log)
    report["mAP_as_deployed"] = _map_as_deployed(baseline, pruned, settings, report_set, report["mAP"])
    report.update(cast(Report, reference_json(baseline, pruned, report_set, pseudo_thresh=pseudo_thresh,
                                              metric=settings.metric, progress=progress, log=log)))
    timings["evaluate"] = timings.get("evaluate", 0.0) + time.perf_counter() - t
    folder.write_variant("pruned", pruned, meta={"pruned_from": model_name, "kept_ids": sorted(pruned.anchor_set.ids)})
    folder.write_variant("baseline", baseline, meta={"model": model_name})
    report["cost"] = {"baseline": cost_json(baseline), "pruned": cost_json(pruned)}
    t = time.perf_counter()
    images = first_images(report_set, settings.parity_images) if settings.check else None
    report["export"] = export_pair(folder, baseline, pruned, opset=settings.opset, deploy=settings.deploy,
                                   nonms_topk=settings.nonms_topk, images=images, openvino=settings.openvino,
                                   log=log)
    timings["export"] = time.perf_counter() - t
    if settings.int8:
        t = time.perf_counter()
        calib_set = (calib_data or report_data).dataset(baseline)
        report["int8"] = _int8(folder, calib_set, report_set, report["mAP_as_deployed"], log, progress)
        timings["int8"] = time.perf_counter() - t
    if settings.matrix_iters > 0:  # every graph in every installed runtime: loads, parity, latency
        from .exporting.matrix import runtime_matrix

        t = time.perf_counter()
        matrix_images = images if images is not None else first_images(report_set, 1)
        report["runtimes"] = runtime_matrix(folder, matrix_images, iters=settings.matrix_iters, threads=1, log=log,
                                            detectors={"pruned": deployed(pruned, settings.deploy),
                                                       "baseline": deployed(baseline, settings.deploy)})
        timings["runtime_matrix"] = time.perf_counter() - t
    if settings.tensorrt:
        report["tensorrt"] = _tensorrt(folder, settings.tensorrt, report_set, log)
    report["trtexec"] = _trtexec_lines(settings.tensorrt or "fp16")
    total = sum(seconds.values()) if seconds else 0.0
    report["seconds"] = ({k: round(v, 1) for k, v in timings.items()}
                         | {"total": round(total + time.perf_counter() - t0, 1)})
    report["out"] = str(out)
    from .exporting.report_md import render_markdown

    return folder.write_report(report, render=render_markdown, annotations=report_set.coco_json)


def report_maps(baseline, pruned, report_set, *, metric: str = "coco", finetuned_from=None, progress: bool = True,
                log=log) -> VariantMaps:
    """Each variant's PyTorch mAP on the report split, in ``metric``: ``baseline``, ``pruned`` and, for a
    fine-tuned model, ``finetuned``.

    The baseline's comes from the report split's candidate cache (built once, kept under the cache root); a
    pruned model that is an exact slice of the baseline is scored from the same cache (exact: its detections
    are the baseline's for the kept anchors), any other model (fine-tuned) by inference.
    """
    cache = load_or_build_cache(baseline, report_set, default_cache_path(cache_key(baseline, report_set)),
                                progress=progress, log=log)
    scorer = SubsetScorer(cache, report_set.coco_json, metric=metric)
    maps: VariantMaps = {"baseline": scorer.score((), full=False)["mAP"]}
    sliced = finetuned_from if finetuned_from is not None else pruned
    if is_slice_of(baseline, sliced):
        removed = sorted(set(baseline.anchor_set.ids) - set(sliced.anchor_set.ids))
        maps["pruned"] = scorer.score(removed, full=False)["mAP"]
    else:
        maps["pruned"] = _map(report_set.coco_json, predict(sliced, report_set, progress=False), metric)
    if finetuned_from is not None:
        maps["finetuned"] = _map(report_set.coco_json, predict(pruned, report_set, progress=False), metric)
    return maps


def reference_json(baseline, pruned, report_set, *, pseudo_thresh: float | None, metric: str, progress: bool,
                   log=log) -> dict:
    """What the report's mAPs were measured against: ``reference`` ("labels" or "pseudo-labels") and, label-free,
    ``pseudo_labels`` (threshold, reference boxes, and each variant's recall of them at IoU 0.5 and 0.75).

    With labels on the report split and a label-free search (``pseudo_thresh`` given), the report split is
    also pseudo-labelled at that threshold and ``fidelity`` holds both variants' mAP against that reference.
    """
    from .datasets.coco import CocoDetection
    from .evaluation.coco_map import coco_recall
    from .evaluation.pseudo import REFERENCE, pseudo_labels, reference_info

    info = reference_info(report_set.coco_json)
    if info is None and pseudo_thresh is None:
        return {"reference": "labels"}
    out: dict = {"reference": REFERENCE if info is not None else "labels"}
    ref_set = report_set
    if info is None:  # labels here, a label-free search: also measure fidelity on these images
        assert pseudo_thresh is not None, "checked above"
        ann, info = pseudo_labels(baseline, str(report_set.image_dir), str(report_set.ann_file), pseudo_thresh,
                                  progress=progress)
        ref_set = CocoDetection.for_detector(baseline, report_set.image_dir, ann)
        out["fidelity"] = report_maps(baseline, pruned, ref_set, metric=metric, progress=progress, log=log)
    recall = {name: {k: round(v, 6) for k, v in coco_recall(ref_set.coco_json,
                                                             predict(model, ref_set, progress=False)).items()}
              for name, model in (("baseline", baseline), ("pruned", pruned))}
    out["pseudo_labels"] = {"pseudo_thresh": info["pseudo_thresh"], "num_boxes": info["num_boxes"],
                            "num_images": info["num_images"], "recall": recall,
                            "meaning": "agreement with the unpruned model on unlabelled images, not accuracy"}
    return out


def is_slice_of(baseline, model) -> bool:
    """True if ``model`` is ``baseline`` with its head sliced to some of its anchors (weights unchanged)."""
    from .pruning import prune

    ids = set(model.anchor_set.ids)
    if model.arch != baseline.arch or not ids or not ids <= set(baseline.anchor_set.ids):
        return False
    if model.postprocess_spec != baseline.postprocess_spec:
        return False
    expected = prune(baseline, ids).state_dict()
    got = model.state_dict()
    return expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)


def cost_json(det) -> Cost:
    """Head and total MACs, boxes and anchors of a detector, per level too."""
    cost = measure_cost(det)
    return {"head_macs": cost.head_macs, "total_macs": cost.total_macs, "num_boxes": cost.num_boxes,
            "num_anchors": det.anchor_set.num_anchors, "anchors_per_level": det.anchor_set.anchors_per_level(),
            "head_macs_per_level": cost.head_macs_per_level, "boxes_per_level": cost.boxes_per_level}


def first_images(dataset, n: int) -> torch.Tensor:
    """The first ``n`` images of a split, (n, 3, H, W); tracing uses a fixed random image, so these are unseen."""
    n = min(n, len(dataset))
    return torch.stack([dataset[i][0] for i in range(n)])


def deployed(model, deploy: dict | None = None):
    """``model`` with the post-processing rule of the exported graphs (see ``PostprocessRule.for_deployment``).

    A shallow copy shares the weights; only its rule differs (YOLO: the "deploy" preset).
    """
    return model.with_postprocess(model.deploy_rule(**(deploy or {})))


def export_pair(folder: ExportFolder, reference, pruned, *, opset: int = 17, images: torch.Tensor | None,
                deploy: dict | None = None, nonms_topk: int = 1000, openvino: bool | None = None, log=log) -> dict:
    """Export both variants' graphs into ``folder``; check parity on ``images`` unless None.

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
        if images is not None:
            entry["parity"] = require_parity(check_parity(model, vdir, images), "ONNX Runtime", variant)
        if openvino or (openvino is None and is_installed("openvino")):  # the IR, checked as ONNX Runtime's are
            entry["openvino"] = _openvino_ir(folder, variant, model, exported["files"], images, log)
        paths = folder.drop_in_paths(variant)
        drop_in = model.write_drop_in(paths)  # an ONNX source: its own graph, pruned, with its priors
        if drop_in is not None:
            entry["drop_in"] = {**drop_in, "files": {k: str(p.relative_to(folder.root)) for k, p in paths.items()}}
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
    entry = {"version": version("openvino"),
             "files": {g: str(Path(x).relative_to(folder.root)) for g, x in written.items()}}
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
                 tensorrt: str | None = None, matrix_iters: int = 0, log=log) -> ExportFolder:
    """:func:`edgeanchor.export` from paths, for ``regress --model``, the benchmarks and tests.

    The same export step as ``ea.export`` and prune-and-export (a full export folder, its mAPs measured);
    the runtime matrix is left out unless ``matrix_iters`` is given.
    """
    from .api.data import data_from_paths
    from .api.deploy import export_checked

    settings = ExportOptions(opset=opset, parity_images=num_parity_images, check=check, openvino=openvino,
                              int8=bool(int8_calib), tensorrt=tensorrt, matrix_iters=matrix_iters)
    settings.validate()
    calib = data_from_paths(*int8_calib) if int8_calib else None
    return export_checked(pruned, out, baseline=reference, report=data_from_paths(data, report_ann), calib=calib,
                          settings=settings, overwrite=overwrite, model_name=model_name, progress=False, log=log)


def _tensorrt(folder: ExportFolder, precision: str, report_set, log) -> dict:
    """Build each variant's model_trt engine where bench and evaluate look for it (:meth:`ExportFolder.engine_files`).

    Returns:
        Per variant, :func:`~edgeanchor.runtimes.tensorrt.build_engine`'s record, its paths relative to the folder.
    """
    from .runtimes.tensorrt import build_engine, check_gpu, require_tensorrt

    trt = require_tensorrt()
    gpu = check_gpu()
    result = {}
    calib = first_images(report_set, 64) if precision == "int8" else None
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


def _int8(folder: ExportFolder, calib_set, report_set, as_deployed: DeployedMaps, log, progress: bool) -> dict:
    """int8 graphs of both variants and their mAP through ONNX Runtime, beside model.onnx's (exporting/int8.py).

    ``map_pytorch`` is each variant's PyTorch COCO mAP with the graphs' rule (``as_deployed``, from
    :func:`_map_as_deployed`), so model.onnx's and model_int8.onnx's mAPs can be checked against it.
    """
    from .exporting.int8 import quantize_and_evaluate

    result = quantize_and_evaluate(folder, calib_set, report_set, progress=progress, log=log)
    for variant in ("pruned", "baseline"):
        result[variant]["map_pytorch"] = as_deployed[variant]
    return result


def _map_as_deployed(det, pruned, settings: ExportOptions, report_set, maps: VariantMaps) -> DeployedMaps:
    """Each variant's PyTorch COCO mAP on the report split with the rule of its exported graphs.

    This is what the deployed graph's mAP (``evaluate --export``, ``regress``) must equal up to runtime
    rounding. It is the reported mAP when that was COCO's with the same rule; otherwise it is measured here:
    YOLO's graphs use the deploy preset (0.25 / 0.45) where the checkpoint is evaluated with the val preset, a
    deploy threshold may be given, and a VOC search reports VOC's mAP.
    """
    same = (deployed(det, settings.deploy).postprocess_spec == det.postprocess_spec and settings.metric == "coco")
    values: dict[str, float | None] = {}
    for variant, model in (("baseline", det), ("pruned", pruned)):
        if same:
            values[variant] = variant_map(dict(maps), variant)
        else:
            detections = predict(deployed(model, settings.deploy), report_set, progress=False)
            values[variant] = _map(report_set.coco_json, detections, "coco")
    return {"metric": "coco", "same_as_reported": same, "baseline": values["baseline"], "pruned": values["pruned"]}


def _map(ann, detections: list, metric: str) -> float:
    """mAP of COCO results in ``metric`` ("coco", or VOC's "voc07" / "voc"); ``ann``: a file or its contents."""
    if metric == "coco":
        return coco_map(ann, detections)["mAP"]
    from .evaluation.voc_map import voc_map

    return voc_map(ann if isinstance(ann, dict) else read_json(ann, "annotation file"), detections, metric)["mAP"]


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
