"""prune-and-export: search, choose, slice, fine-tune, export, check, report.

Everything is built in a temporary folder beside the output and renamed into
place at the end, so a failure never leaves a half-written export.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .cost import measure_cost
from .data.coco import CocoDetection
from .data.demo_data import cache_root
from .errors import EdgeAnchorError
from .evaluate.cache import cache_key, load_or_build_cache
from .evaluate.coco_map import coco_map
from .evaluate.predict import predict
from .evaluate.subset import SubsetScorer
from .io import log, make_temp_dir, write_json, write_text
from .models import save_checkpoint
from .prune import prune
from .search.run import SearchSpec, choose_point, default_cache_path, run_search


@dataclass(frozen=True)
class PipelineSpec:
    """Plain settings of one prune-and-export run."""

    data: str
    ann: str  # searched on
    report_ann: str  # reported on (and fine-tuning validation)
    train_ann: str | None = None  # fine-tuning data
    anchors: str | None = None  # skip the search: keep these anchors
    target_head_macs: float | None = None
    finetune_epochs: int = 0
    finetune_lr: float = 5e-4
    opset: int = 17
    tensorrt: str | None = None
    parity_images: int = 4
    search: SearchSpec = SearchSpec()
    model_name: str = "demo"


def search_dir(key: str, spec: SearchSpec) -> Path:
    """A persistent search folder per (weights+data key, settings), so reruns reuse it."""
    floor = f"min{spec.min_map}" if spec.min_map is not None else f"drop{spec.max_drop}"
    return cache_root() / "searches" / f"{key[:16]}-{spec.method}-{spec.cost}-{floor}-tol{spec.tol}"


def prepare_out(out, overwrite: bool) -> tuple[Path, Path]:
    """Check the output folder; return (final path, temporary build folder beside it)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise EdgeAnchorError(f"output folder {out} exists; pass --overwrite or choose another --out")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = make_temp_dir(out)
    except OSError as exc:
        raise EdgeAnchorError(f"cannot write to {out.parent}: {exc.strerror}; choose a writable --out") from None
    return out, tmp


def finish_out(tmp: Path, out: Path) -> None:
    """Rename the finished build folder into place (replacing an old export)."""
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def run_pipeline(det, spec: PipelineSpec, out, *, overwrite: bool = False, log=log, progress: bool = True) -> dict:
    """The whole job; returns the report dict (also written to report.json)."""
    if spec.tensorrt:
        from .export.tensorrt import require_tensorrt

        require_tensorrt()  # fail before the long work
    out, tmp = prepare_out(out, overwrite)
    try:
        report = _run(det, spec, tmp, out, log, progress)
        finish_out(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def _run(det, spec: PipelineSpec, tmp: Path, out: Path, log, progress: bool) -> dict:
    t0 = time.perf_counter()
    timings = {}
    report: dict = {"model": spec.model_name, "arch": det.arch, "data": spec.data, "search_ann": spec.ann,
                    "report_ann": spec.report_ann, "image_size": list(det.image_size)}
    # 1-3. search and choose, or take the given anchors
    if spec.anchors:
        from .cli.prune import keep_ids_from_file

        keep = keep_ids_from_file(det, spec.anchors)
        report["chosen"] = {"source": str(spec.anchors)}
    else:
        search_spec = spec.search
        if search_spec.method == "greedy" and det.shared_head:
            search_spec = replace(search_spec, method="shared")
        dataset = CocoDetection(spec.data, spec.ann, num_classes=det.num_classes, image_size=det.image_size)
        folder = search_dir(cache_key(det, dataset), search_spec)
        log(f"searching anchor subsets ({search_spec.method}, cost {search_spec.cost}) in {folder}")
        result = run_search(det, spec.data, spec.ann, folder, search_spec, progress=progress, log=log)
        point = choose_point(result, target_head_macs=spec.target_head_macs)
        keep = set(det.anchor_set.ids) - set(point["removed"])
        shutil.copy(folder / "pareto.png", tmp / "pareto.png")
        shutil.copy(folder / "search.json", tmp / "search.json")
        report["chosen"] = {"source": "search", "search_dir": str(folder), "removed": point["removed"],
                            "search_mAP": point["mAP"], "floor": result["floor"], "method": search_spec.method,
                            "cost": search_spec.cost, "num_front_points": len(result["front"])}
    timings["search"] = time.perf_counter() - t0
    pruned = prune(det, keep)
    # 4. accuracy before / after, on the report split (exact, from the candidate cache)
    t = time.perf_counter()
    report_set = CocoDetection(spec.data, spec.report_ann, num_classes=det.num_classes, image_size=det.image_size)
    cache = load_or_build_cache(det, report_set, default_cache_path(cache_key(det, report_set)), progress=progress,
                                log=log)
    scorer = SubsetScorer(cache, spec.report_ann)
    removed = sorted(set(det.anchor_set.ids) - keep)
    # Only mAP is reported; the mAP-only evaluation equals the full one's mAP exactly.
    report["mAP"] = {"baseline": scorer.score((), full=False)["mAP"],
                     "pruned": scorer.score(removed, full=False)["mAP"]}
    timings["evaluate"] = time.perf_counter() - t
    # 5. optional fine-tuning
    if spec.finetune_epochs > 0:
        t = time.perf_counter()
        pruned = _finetune(pruned, spec, report_set, tmp, progress)
        report["mAP"]["finetuned"] = coco_map(spec.report_ann, predict(pruned, report_set, progress=False))["mAP"]
        timings["finetune"] = time.perf_counter() - t
    # 6. checkpoints, anchors, costs
    save_checkpoint(pruned, tmp / "pruned.pt", meta={"pruned_from": spec.model_name, "kept_ids": sorted(keep)})
    write_json(tmp / "anchors.json", pruned.anchor_set.to_json())
    (tmp / "baseline").mkdir()
    save_checkpoint(det, tmp / "baseline" / "baseline.pt", meta={"model": spec.model_name})
    write_json(tmp / "baseline" / "anchors.json", det.anchor_set.to_json())
    report["cost"] = {"baseline": _cost_json(det), "pruned": _cost_json(pruned)}
    # 7. export and parity
    t = time.perf_counter()
    report["export"] = _export_and_check(det, pruned, spec, report_set, tmp, log)
    timings["export"] = time.perf_counter() - t
    if spec.tensorrt:
        report["tensorrt"] = _tensorrt(pruned, det, spec, report_set, tmp, log)
    report["trtexec"] = _trtexec_lines(spec, out)
    report["seconds"] = {k: round(v, 1) for k, v in timings.items()} | {"total": round(time.perf_counter() - t0, 1)}
    report["out"] = str(out)
    write_json(tmp / "report.json", report)
    write_text(tmp / "report.md", render_markdown(report))
    return report


def _cost_json(det) -> dict:
    cost = measure_cost(det)
    return {"head_macs": cost.head_macs, "total_macs": cost.total_macs, "num_boxes": cost.num_boxes,
            "num_anchors": det.anchor_set.num_anchors, "anchors_per_level": det.anchor_set.anchors_per_level(),
            "head_macs_per_level": cost.head_macs_per_level, "boxes_per_level": cost.boxes_per_level}


def _finetune(pruned, spec: PipelineSpec, report_set, tmp: Path, progress: bool):
    from .models import load_checkpoint
    from .train.loop import TrainConfig, train

    if not spec.train_ann:
        raise EdgeAnchorError("--finetune-epochs needs training data: pass --train-ann (a COCO file of --data)")
    train_set = CocoDetection(spec.data, spec.train_ann, num_classes=pruned.num_classes,
                              image_size=pruned.image_size, train=True)
    cfg = TrainConfig(epochs=spec.finetune_epochs, lr=spec.finetune_lr, warmup_iters=20, progress=progress,
                      extra_meta={"command": "edgeanchor prune-and-export --finetune-epochs"})
    path = tmp / "finetune.pt"
    train(pruned, train_set, cfg, out=str(path))
    tuned = load_checkpoint(path)
    path.unlink()
    return tuned


def _parity_images(report_set: CocoDetection, n: int) -> torch.Tensor:
    # images 1..n of the report split; tracing uses a fixed random image, so these are unseen
    n = min(n, len(report_set))
    return torch.stack([report_set[i][0] for i in range(n)])


def _export_and_check(det, pruned, spec: PipelineSpec, report_set, tmp: Path, log) -> dict:
    from .export import check_parity, export_onnx
    from .export.tensorrt import make_trt_graph

    images = _parity_images(report_set, spec.parity_images)
    result = {}
    for name, model, folder in (("pruned", pruned, tmp), ("baseline", det, tmp / "baseline")):
        log(f"exporting the {name} model to ONNX (opset {spec.opset})")
        exported = export_onnx(model, folder, opset=spec.opset, decoded=True)
        # The TensorRT variant (EfficientNMS_TRT in place of NonMaxSuppression) is written
        # even without TensorRT here, so the export can be built into an engine on the device.
        decoded = folder / "model_decoded.onnx"
        make_trt_graph(decoded, folder / "model_trt.onnx", model.spec)
        decoded.unlink()
        exported["files"].pop("decoded", None)
        exported["files"]["model_trt"] = str(folder / "model_trt.onnx")
        parity = check_parity(model, folder, images)
        result[name] = {"head_channels": exported["head_channels"], "simplified": exported["simplified"],
                        "simplify_notes": exported["simplify_notes"], "exporter": exported["exporter"],
                        "opset": exported["opset"], "parity": parity,
                        "files": {k: str(Path(v).relative_to(tmp)) for k, v in exported["files"].items()}}
        if not parity["passed"]:
            raise RuntimeError(f"ONNX parity failed for the {name} model: {parity}")
    return result


def _tensorrt(pruned, det, spec: PipelineSpec, report_set, tmp: Path, log) -> dict:
    from .export.tensorrt import build_engine

    result = {}
    calib = _parity_images(report_set, 64) if spec.tensorrt == "int8" else None
    for name, model, folder in (("pruned", pruned, tmp), ("baseline", det, tmp / "baseline")):
        trt_onnx = folder / "model_trt.onnx"
        log(f"building the {name} TensorRT engine ({spec.tensorrt})")
        result[name] = build_engine(trt_onnx, folder / f"model_trt_{spec.tensorrt}.engine", precision=spec.tensorrt,
                                    calib_images=calib, timing_cache=folder / "timing.cache",
                                    calib_cache=folder / "calib.cache" if calib is not None else None,
                                    log_path=folder / "trt_build.log")
    return result


def _trtexec_lines(spec: PipelineSpec, out: Path) -> dict:
    """trtexec command lines, relative to the export folder, for building the engines on the device."""
    from .export.tensorrt import trtexec_command

    precision = spec.tensorrt or "fp16"
    lines = {}
    for name, sub in (("pruned", Path(".")), ("baseline", Path("baseline"))):
        calib = sub / "calib.cache" if precision == "int8" else None
        lines[name] = trtexec_command(sub / "model_trt.onnx", precision, timing_cache=sub / "timing.cache",
                                      calib_cache=calib)
    return lines


def render_markdown(report: dict) -> str:
    """The human-readable report."""
    base, pr = report["cost"]["baseline"], report["cost"]["pruned"]
    maps = report["mAP"]
    lines = [f"# prune-and-export report: {report['model']} ({report['arch']})", "",
             f"Input {report['image_size'][0]}x{report['image_size'][1]}; searched on `{report['search_ann']}`, "
             f"reported on `{report['report_ann']}`.", "",
             "| | baseline | pruned | pruned / baseline |", "| --- | ---: | ---: | ---: |"]
    rows = [("mAP@[.5:.95]", maps["baseline"], maps["pruned"], None),
            ("head MACs", base["head_macs"], pr["head_macs"], pr["head_macs"] / base["head_macs"]),
            ("total MACs", base["total_macs"], pr["total_macs"], pr["total_macs"] / base["total_macs"]),
            ("boxes", base["num_boxes"], pr["num_boxes"], pr["num_boxes"] / base["num_boxes"]),
            ("anchors", base["num_anchors"], pr["num_anchors"], pr["num_anchors"] / base["num_anchors"])]
    if "finetuned" in maps:
        rows.insert(1, ("mAP after fine-tuning", maps["baseline"], maps["finetuned"], None))
    for name, b, p, r in rows:
        fmt = (lambda v: f"{v:.4f}") if isinstance(b, float) and b < 1.5 else (lambda v: f"{v:,}")
        lines.append(f"| {name} | {fmt(b)} | {fmt(p)} | {'' if r is None else f'{r:.3f}'} |")
    lines += ["", "## Head output channels per level (read from the exported head.onnx)", "",
              "| level | baseline cls / box | pruned cls / box |", "| --- | --- | --- |"]
    exp = report["export"]
    pruned_ch = {c["level"]: c for c in exp["pruned"]["head_channels"]}
    for c in exp["baseline"]["head_channels"]:
        p = pruned_ch.get(c["level"])
        kept = "dropped" if p is None else f"{p['cls_channels']} / {p['box_channels']}"
        lines.append(f"| {c['level']} | {c['cls_channels']} / {c['box_channels']} | {kept} |")
    lines += ["", "## Parity (ONNX Runtime against PyTorch, images not used for tracing)", ""]
    for name in ("baseline", "pruned"):
        par = exp[name]["parity"]
        lines.append(f"- {name}: head max abs diff {par['head']['max_abs_diff']:.2e} "
                     f"(allclose rtol 1e-3 atol 1e-5: {par['head']['allclose']}); end-to-end detections matched "
                     f"{par['model']['matched_fraction']:.3f} at IoU >= 0.99, counts {par['model']['counts_torch']} "
                     f"vs {par['model']['counts_onnx']}; passed: {par['passed']}")
    lines += ["", "## TensorRT", ""]
    if "tensorrt" in report:
        lines.append(f"Engines built: {report['tensorrt']}")
    else:
        lines.append("Not built in this run (needs TensorRT and a CUDA GPU). `model_trt.onnx` (EfficientNMS_TRT in "
                     "place of NonMaxSuppression) is in the folder; to build the engines on a Jetson, from this folder:")
    lines += ["", "```", report["trtexec"]["pruned"], report["trtexec"]["baseline"], "```", ""]
    return "\n".join(lines)
