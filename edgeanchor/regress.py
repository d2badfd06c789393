"""Accuracy and latency regression checks against a stored baseline.

Measures an export (or a model, exported on the fly): COCO mAP of the pruned
checkpoint, per-stage latency ratios pruned/unpruned measured in the same run
with the benchmark harness (absolute times drift between runs and machines;
ratios of interleaved measurements do not), and the exported head's output
channels per level. Then compares each metric with its bound.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import EdgeAnchorError
from .io import read_json, write_json

FORMAT = "edgeanchor.regress/1"
GATED_STAGES = ("backbone", "head", "postprocess", "end_to_end")


def measure(export_dir, *, data=None, ann=None, iters: int = 60, warmup: int = 10, threads: int = 1,
            progress: bool = True) -> dict:
    """mAP, latency ratios and head channels of a prune-and-export folder."""
    from .bench.harness import run_bench
    from .data.coco import CocoDetection
    from .evaluate.coco_map import coco_map
    from .evaluate.predict import predict
    from .models import load_checkpoint

    export_dir = Path(export_dir)
    report = read_json(export_dir / "report.json", "export report")
    data = data or report["data"]
    ann = ann or report["report_ann"]
    det = load_checkpoint(export_dir / "pruned.pt")
    dataset = CocoDetection(data, ann, num_classes=det.num_classes, image_size=det.image_size)
    metrics = coco_map(ann, predict(det, dataset, progress=progress))
    bench = run_bench(export_dir, threads=threads, iters=iters, warmup=warmup, progress=progress)
    return {
        "format": FORMAT,
        "mAP": metrics["mAP"],
        "mAP50": metrics["mAP50"],
        "ann": str(ann),
        "latency_ratios": {s: bench["ratio_of_medians"][s] for s in GATED_STAGES},
        "absolute_ms": {v: {s: bench["stages"][v][s]["median"] for s in GATED_STAGES} for v in bench["stages"]},
        "head_channels": read_head_channels(export_dir),
        "bench_settings": {"runtime": "onnxruntime", "threads": threads, "iters": iters, "warmup": warmup},
        "machine": bench["machine"],
    }


def read_head_channels(export_dir) -> list[dict]:
    """Per active level, (cls, box) output channels read from the exported head.onnx."""
    import onnx

    from .export.onnx_export import read_head_channels as from_graph

    model = onnx.load(str(Path(export_dir) / "head.onnx"))
    levels = sorted(int(o.name.split("_")[1]) for o in model.graph.output if o.name.startswith("cls_"))
    return from_graph(model, levels)


def compare(measured: dict, baseline: dict, *, map_tol: float, latency_tol: float) -> list[dict]:
    """One row per metric: value, bound, passed."""
    rows = [{"metric": "mAP", "value": measured["mAP"], "baseline": baseline["mAP"],
             "bound": f">= {baseline['mAP'] - map_tol:.4f}", "passed": measured["mAP"] >= baseline["mAP"] - map_tol}]
    for stage in GATED_STAGES:
        value, ref = measured["latency_ratios"][stage], baseline["latency_ratios"][stage]
        limit = ref * (1 + latency_tol)
        rows.append({"metric": f"latency ratio {stage} (pruned/unpruned)", "value": value, "baseline": ref,
                     "bound": f"<= {limit:.3f}", "passed": value <= limit})
    same = measured["head_channels"] == baseline["head_channels"]
    rows.append({"metric": "head channels per level", "value": _channels(measured["head_channels"]),
                 "baseline": _channels(baseline["head_channels"]), "bound": "equal", "passed": same})
    return rows


def _channels(chs: list[dict]) -> str:
    return " ".join(f"L{c['level']}:{c['cls_channels']}/{c['box_channels']}" for c in chs)


def markdown(rows: list[dict], measured: dict) -> str:
    """A Markdown summary for a CI job summary."""
    ok = all(r["passed"] for r in rows)
    lines = [f"### edgeanchor regress: {'passed' if ok else 'FAILED'}", "",
             "| metric | value | baseline | bound | result |", "| --- | ---: | ---: | --- | --- |"]
    for r in rows:
        fmt = (lambda v: f"{v:.4f}") if isinstance(r["value"], float) else str
        lines.append(f"| {r['metric']} | {fmt(r['value'])} | {fmt(r['baseline'])} | {r['bound']} | "
                     f"{'pass' if r['passed'] else '**FAIL**'} |")
    m = measured["machine"]
    lines += ["", f"Latency ratios are medians of interleaved onnxruntime runs "
              f"({measured['bench_settings']['iters']} iterations, {measured['bench_settings']['threads']} thread(s)) "
              f"on {m.get('cpu')} ({m.get('logical_cores')} cores); absolute medians (ms, for information): "
              + json.dumps({v: {s: round(t, 3) for s, t in d.items()} for v, d in measured["absolute_ms"].items()}),
              ""]
    return "\n".join(lines)


def load_baseline(path) -> dict:
    obj = read_json(path, "regression baseline")
    missing = {"mAP", "latency_ratios", "head_channels"} - set(obj)
    if obj.get("format") != FORMAT or missing:
        raise EdgeAnchorError(
            f"{path} is not an edgeanchor regression baseline (missing {sorted(missing) or 'format'}); "
            "create one with 'edgeanchor regress --update'"
        )
    return obj


def save_baseline(path, measured: dict, *, map_tol: float, latency_tol: float) -> None:
    write_json(path, {**measured, "tolerances_when_written": {"map_tol": map_tol, "latency_tol": latency_tol}})
