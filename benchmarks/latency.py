"""Per-stage onnxruntime CPU latency, baseline against pruned, and NMS time against candidates.

  python benchmarks/latency.py [--demo-export exports/demo] [--iters 30] [--threads 2]

Measures, with the project's harness (interleaved baseline/pruned runs on
real images, stages fed by the previous stage's real outputs):

- the demo model and its chosen pruned configuration (from a prune-and-export folder);
- SSD300-VGG16, SSDLite320 and RetinaNet-R50-FPN with random weights and
  pruned anchor sets that drop a comparable share of head MACs (SSD300: the
  paper's configuration B; SSDLite: half the anchors and the last level;
  RetinaNet: the paper's pruned set). Random weights give meaningless
  scores, so each classifier's biases are shifted until a realistic number of
  candidates (about 300 per image) passes the score threshold; the NMS then
  sees a trained model's workload;
- postprocess (decode + NMS) time against the number of boxes entering NMS,
  for SSD300 (biases shifted to give 30 to 10,000 candidates per image).

Writes benchmarks/results/latency.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeanchor.anchors import from_reference  # noqa: E402
from edgeanchor.benchmark.harness import run_bench  # noqa: E402
from edgeanchor.benchmark.latency_model import time_session  # noqa: E402
from edgeanchor.benchmark.machine import machine_info  # noqa: E402
from edgeanchor.cost import measure_cost  # noqa: E402
from edgeanchor.datasets.demo_data import demo_split  # noqa: E402
from edgeanchor.exporting import export_onnx  # noqa: E402
from edgeanchor.exporting.folder import ExportFolder  # noqa: E402
from edgeanchor.exporting.parity import make_session  # noqa: E402
from edgeanchor.io import configure_logging, write_json  # noqa: E402
from edgeanchor.models import build_detector  # noqa: E402
from edgeanchor.pipeline import write_export  # noqa: E402
from edgeanchor.postprocess import topk_indices  # noqa: E402
from edgeanchor.pruning import prune  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper_head_cost import SSD_CONFIG_B  # noqa: E402


def final_classifiers(det) -> list[torch.nn.Conv2d]:
    return list({id(c): c for c in (det.final_convs(j)[0] for j in range(len(det.active_levels)))}.values())


@torch.no_grad()
def mean_candidates(det, images) -> float:
    counts = []
    for image in images:
        cands = det.image_candidates(det.head(det.backbone(image[None])))[0]
        counts.append(int(topk_indices(cands, det.postprocess_spec, det.level_starts).numel()))
    return float(np.mean(counts))


@torch.no_grad()
def set_realistic_scores(det, images, target: float) -> float:
    """Shift classifier biases (background up for softmax, all down for sigmoid) to ~target candidates."""
    convs = final_classifiers(det)
    original = [c.bias.detach().clone() for c in convs]
    k = det.num_classes

    def apply(shift: float) -> float:
        for c, b in zip(convs, original):
            bias = b.clone().view(-1, k)
            if det.postprocess_spec.score_fn == "softmax":
                bias[:, 0] += shift  # a more confident background
            else:
                bias -= shift
            c.bias.copy_(bias.view(-1))
        return mean_candidates(det, images)

    lo, hi = -20.0, 40.0
    for _ in range(18):
        mid = (lo + hi) / 2
        if apply(mid) > target:
            lo = mid
        else:
            hi = mid
    return apply((lo + hi) / 2)


def make_export(det, pruned, folder: Path, data: str, ann: str) -> ExportFolder:
    """An export folder of (det, pruned) for the harness; random weights, so no parity check."""
    return write_export(det, pruned, folder, data=data, report_ann=ann, check=False, log=lambda m: None)


def random_model_rows(images, data, ann, iters, threads, tmp: Path) -> list[dict]:
    rows = []
    ssd = build_detector("torchvision:ssd300_vgg16", num_classes=81)
    cfg_b = build_detector("torchvision:ssd300_vgg16", num_classes=81,
                           anchors=from_reference(SSD_CONFIG_B, ssd.anchor_set)).anchor_set.anchors_per_level()
    ssd_keep = {a.id for lv, n in zip(ssd.anchor_set.levels, cfg_b) for a in lv.anchors[:n]}
    lite = build_detector("torchvision:ssdlite320_mobilenet_v3_large", num_classes=91)
    lite_keep = {a.id for lv in lite.anchor_set.levels[:-1] for a in lv.anchors[::2]}
    retina = build_detector("torchvision:retinanet_resnet50_fpn", num_classes=91, image_size=(800, 800))
    retina_keep = {a.id for lv in retina.anchor_set.levels[1:] for p, a in enumerate(lv.anchors) if p != 5}
    for name, det, keep in (("ssd300_vgg16", ssd, ssd_keep), ("ssdlite320_mobilenet_v3_large", lite, lite_keep),
                            ("retinanet_resnet50_fpn", retina, retina_keep)):
        sized = torch.nn.functional.interpolate(images, size=det.image_size, mode="bilinear", align_corners=False)
        cands = set_realistic_scores(det, sized[:4], target=300)
        pruned = prune(det, keep)
        folder = make_export(det, pruned, tmp / name, data, ann)
        bench = run_bench(folder, threads=threads, iters=iters, warmup=3, progress=False)
        rows.append(bench_row(name, det, pruned, bench, {"baseline_candidates_per_image_calibrated": cands}))
        print(summary_line(rows[-1]), flush=True)
    return rows


def bench_row(name, det, pruned, bench, extra=None) -> dict:
    cb, cp = measure_cost(det), measure_cost(pruned)
    return {"model": name, "image_size": list(det.image_size),
            "head_macs": {"baseline": cb.head_macs, "pruned": cp.head_macs, "ratio": cp.head_macs / cb.head_macs},
            "boxes": {"baseline": cb.num_boxes, "pruned": cp.num_boxes},
            "median_ms": {v: {s: bench["stages"][v][s]["median"] for s in bench["stages"][v]} for v in bench["stages"]},
            "p90_ms": {v: {s: bench["stages"][v][s]["p90"] for s in bench["stages"][v]} for v in bench["stages"]},
            "ratio_of_medians": bench["ratio_of_medians"], "nms_input_boxes": {
                v: bench["nms_input_boxes"][v]["median"] for v in bench["nms_input_boxes"]},
            "iters": bench["iters"], **(extra or {})}


def summary_line(row) -> str:
    r = row["ratio_of_medians"]
    return (f"{row['model']:<32} head MACs x{row['head_macs']['ratio']:.3f}  head x{r['head']:.3f}  "
            f"postprocess x{r['postprocess']:.3f}  end-to-end x{r['end_to_end']:.3f}")


@torch.no_grad()
def nms_scaling(images, threads, tmp: Path) -> list[dict]:
    """Postprocess time of SSD300 against boxes entering NMS."""
    det = build_detector("torchvision:ssd300_vgg16", num_classes=81)
    sized = torch.nn.functional.interpolate(images[:3], size=det.image_size, mode="bilinear", align_corners=False)
    out = []
    for target in (30, 100, 300, 1000, 3000, 10000):
        got = set_realistic_scores(det, sized, target=target)
        folder = tmp / f"nms_{target}"
        graphs = export_onnx(det, folder, simplify=False)["files"]
        sess = make_session(graphs["postprocess"], intra_op_num_threads=threads, inter_op_num_threads=1)
        names = [i.name for i in sess.get_inputs()]
        times_ort, times_torch = [], []
        for image in sized:
            head = det.head(det.backbone(image[None]))
            feeds = {n: t.numpy() for n, t in zip(names, [t for pair in head for t in pair])}
            times_ort.append(time_session(sess, feeds, 10))
            samples = []
            for _ in range(10):
                s = time.perf_counter_ns()
                det.postprocess(head)
                samples.append(time.perf_counter_ns() - s)
            times_torch.append(float(np.median(samples)) / 1e6)
        row = {"target": target, "nms_input_boxes_mean": got, "onnxruntime_ms": float(np.median(times_ort)),
               "torch_ms": float(np.median(times_torch))}
        out.append(row)
        print(f"NMS input {got:8.0f} boxes: onnxruntime {row['onnxruntime_ms']:.2f} ms, torch {row['torch_ms']:.2f} ms",
              flush=True)
    return out


@torch.no_grad()
def latency_model_check(demo_export: ExportFolder, images, threads: int, tmp: Path) -> dict:
    """Calibrate the demo's latency model, then compare its predictions with measured head + postprocess time."""
    from edgeanchor.benchmark.latency_model import calibrate

    det = demo_export.load_detector("baseline")
    model = calibrate(det, images, threads=threads)
    search = json.loads(demo_export.search_json_path.read_text())
    front = sorted(search["front"], key=lambda n: n["head_macs"])
    picks = [()] + [tuple(front[i]["removed"]) for i in sorted({0, len(front) // 2, len(front) - 1})]
    rows = []
    for k, removed in enumerate(picks):
        pruned = prune(det, set(det.anchor_set.ids) - set(removed)) if removed else det
        folder = tmp / f"lm_{k}"
        graphs = export_onnx(pruned, folder, simplify=True)["files"]
        head = make_session(graphs["head"], intra_op_num_threads=threads, inter_op_num_threads=1)
        post = make_session(graphs["postprocess"], intra_op_num_threads=threads, inter_op_num_threads=1)
        measured = []
        for image in images:
            feats = pruned.backbone(image[None])
            outs = [t for pair in pruned.head(feats) for t in pair]
            hf = {i.name: f.numpy() for i, f in zip(head.get_inputs(), feats)}
            pf = {i.name: t.numpy() for i, t in zip(post.get_inputs(), outs)}
            measured.append(time_session(head, hf, 15) + time_session(post, pf, 15))
        rows.append({"num_anchors": pruned.anchor_set.num_anchors, "removed": list(removed),
                     "predicted_ms": model.predict(removed), "measured_ms": float(np.median(measured))})
        print(f"latency model: {rows[-1]['num_anchors']} anchors: predicted {rows[-1]['predicted_ms']:.3f} ms, "
              f"measured {rows[-1]['measured_ms']:.3f} ms", flush=True)
    errors = [abs(r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"] for r in rows]
    order_ok = [a["predicted_ms"] <= b["predicted_ms"] for a, b in zip(rows, rows[1:])] == \
        [a["measured_ms"] <= b["measured_ms"] for a, b in zip(rows, rows[1:])]
    skip = ("anchor_nms_boxes", "anchor_boxes", "level_of")
    return {"rows": rows, "mean_abs_relative_error": float(np.mean(errors)),
            "max_abs_relative_error": float(max(errors)), "same_ranking_as_measured": bool(order_ok),
            "model": {k: v for k, v in model.__dict__.items() if k not in skip}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-export", default="exports/demo", help="prune-and-export folder of the demo")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-random", action="store_true", help="only the demo and NMS scaling")
    parser.add_argument("--out", default="benchmarks/results/latency.json")
    args = parser.parse_args(argv)
    configure_logging()
    torch.set_num_threads(args.threads)
    data, ann = demo_split("test")
    from edgeanchor.datasets.coco import CocoDetection

    images = torch.stack([CocoDetection(data, ann)[i][0] for i in range(8)])
    result = {"benchmark": "latency", "date": datetime.date.today().isoformat(), "machine": machine_info(),
              "runtime": "onnxruntime CPU", "threads": args.threads, "iters": args.iters, "models": []}
    demo_export = ExportFolder.open(args.demo_export)
    demo_bench = run_bench(demo_export, threads=args.threads, iters=max(args.iters, 60), warmup=10, progress=False)
    demo_row = bench_row("demo (chosen configuration)", demo_export.load_detector("baseline"),
                         demo_export.load_detector("pruned"), demo_bench)
    result["models"].append(demo_row)
    print(summary_line(demo_row), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_random:
            result["models"] += random_model_rows(images, data, ann, args.iters, args.threads, Path(tmp))
        result["latency_model_check"] = latency_model_check(demo_export, images, args.threads, Path(tmp))
        result["nms_scaling"] = nms_scaling(images, args.threads, Path(tmp))
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
