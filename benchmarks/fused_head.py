"""Head latency with and without the fused SSD head, pruned against baseline (issue 13 item 7).

  python benchmarks/fused_head.py [--demo-export exports/demo] [--iters 2000] [--threads 1]
                                  [--json-out benchmarks/results/fused_head.json]

For (a) the demo (baseline and pruned checkpoints of a prune-and-export
folder) and (b) SSD300-VGG16 (81 classes, random weights) baseline against
the paper's configuration B counts (per level, the first n of torchvision's
anchors, sliced; as benchmarks/latency.py), exports ``head.onnx`` four ways
(baseline/pruned x unfused/fused: :mod:`edgeanchor.exporting.fused_head`) and
times the four ONNX Runtime CPU sessions (``make_session``, ``--threads``
intra-op threads, 1 inter-op) on the same backbone features of one real image
of the export's report split (resized for SSD300). Each iteration runs all four
once, in an order rotated every iteration, so drift of the machine hits them
alike. It reports per model: head MACs pruned/baseline, medians (ms), the
pruned/baseline latency ratio unfused and fused (ratio of medians, and the
median of the per-iteration ratios), fused/unfused per variant, the Conv count
of each graph, and the max abs difference fused against unfused (ONNX Runtime
on the same features; 0 means bit-identical). Timings are only meaningful on a
quiet machine: the load average is recorded before and after.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeanchor.anchors import from_reference  # noqa: E402
from edgeanchor.benchmark.harness import load_images, stats_ms  # noqa: E402
from edgeanchor.benchmark.machine import machine_info  # noqa: E402
from edgeanchor.cost import measure_cost  # noqa: E402
from edgeanchor.exporting.folder import ExportFolder  # noqa: E402
from edgeanchor.exporting.onnx_export import export_graphs  # noqa: E402
from edgeanchor.exporting.parity import make_session, run_session  # noqa: E402
from edgeanchor.io import write_json  # noqa: E402
from edgeanchor.models import build_detector  # noqa: E402
from edgeanchor.pruning import prune  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper_head_cost import SSD_CONFIG_B  # noqa: E402

VARIANTS = ("baseline", "pruned")
KINDS = ("unfused", "fused")
PREVIOUS = {"demo": {"head_latency_ratio_unfused": 0.63, "head_macs_ratio": 0.42},
            "ssd300_vgg16_config_b": {"head_latency_ratio_unfused": 0.644, "head_macs_ratio": 0.585}}


def ssd300_pair() -> tuple:
    """SSD300-VGG16 (random weights) and its slice to the paper's configuration B anchor counts."""
    torch.manual_seed(0)
    base = build_detector("torchvision:ssd300_vgg16", num_classes=81)
    counts = build_detector("torchvision:ssd300_vgg16", num_classes=81,
                            anchors=from_reference(SSD_CONFIG_B, base.anchor_set)).anchor_set.anchors_per_level()
    keep = {a.id for lv, n in zip(base.anchor_set.levels, counts) for a in lv.anchors[:n]}
    return base.eval(), prune(base, keep)


def export_heads(dets: dict, image: torch.Tensor, tmp: Path) -> dict:
    """(variant, kind) -> (head.onnx path, feeds, whether it was fused)."""
    out = {}
    for v, det in dets.items():
        with torch.no_grad():
            feats = det.backbone(image)
        for kind in KINDS:
            path = tmp / f"{v}_{kind}.onnx"
            res = export_graphs(det, {"head": path}, opset=17, simplify=True, trace_images=image,
                                fused_head=kind == "fused")
            names = [f"features_{i}" for i in det.active_levels]
            out[(v, kind)] = (path, {n: f.numpy() for n, f in zip(names, feats)}, res["fused_head"])
    return out


def time_interleaved(sessions: dict, iters: int, warmup: int) -> dict:
    """Per key, per-iteration nanoseconds; every iteration runs each session once, order rotated."""
    keys = list(sessions)
    samples = {k: [] for k in keys}
    for i in range(warmup + iters):
        shift = i % len(keys)
        for k in keys[shift:] + keys[:shift]:
            sess, feeds, names = sessions[k]
            t0 = time.perf_counter_ns()
            sess.run(names, feeds)
            dt = time.perf_counter_ns() - t0
            if i >= warmup:
                samples[k].append(dt)
    return samples


def model_row(name: str, dets: dict, image: torch.Tensor, iters: int, warmup: int, threads: int, tmp: Path) -> dict:
    heads = export_heads(dets, image, tmp / name)
    sessions, convs, max_diff = {}, {}, {}
    for (v, kind), (path, feeds, _) in heads.items():
        sess = make_session(path, intra_op_num_threads=threads, inter_op_num_threads=1)
        sessions[(v, kind)] = (sess, feeds, [o.name for o in sess.get_outputs()])
        convs[f"{v}_{kind}"] = sum(n.op_type == "Conv" for n in onnx.load(str(path)).graph.node)
    for v in VARIANTS:
        outs = [run_session(sessions[(v, k)][0], sessions[(v, k)][1]) for k in KINDS]
        max_diff[v] = max(float(np.abs(outs[0][n].astype(np.float64) - outs[1][n]).max()) for n in outs[0])
    samples = time_interleaved(sessions, iters, warmup)
    stats = {f"{v}_{k}": stats_ms(s) for (v, k), s in samples.items()}
    med = {key: s["median"] for key, s in stats.items()}
    arr = {f"{v}_{k}": np.asarray(s, dtype=np.float64) for (v, k), s in samples.items()}
    cb, cp = measure_cost(dets["baseline"]), measure_cost(dets["pruned"])
    row = {
        "model": name, "image_size": list(dets["baseline"].image_size),
        "anchors": {v: dets[v].anchor_set.anchors_per_level() for v in VARIANTS},
        "fused_applied": {f"{v}_{k}": heads[(v, k)][2] for v in VARIANTS for k in KINDS},
        "head_macs": {"baseline": cb.head_macs, "pruned": cp.head_macs, "ratio": cp.head_macs / cb.head_macs},
        "conv_nodes": convs, "max_abs_diff_fused_vs_unfused_onnxruntime": max_diff,
        "median_ms": med, "stats_ms": stats,
        "latency_ratio_pruned_over_baseline": {
            k: {"ratio_of_medians": med[f"pruned_{k}"] / med[f"baseline_{k}"],
                "median_of_paired_ratios": float(np.median(arr[f"pruned_{k}"] / arr[f"baseline_{k}"]))}
            for k in KINDS},
        "fused_over_unfused": {
            v: {"ratio_of_medians": med[f"{v}_fused"] / med[f"{v}_unfused"],
                "median_of_paired_ratios": float(np.median(arr[f"{v}_fused"] / arr[f"{v}_unfused"]))}
            for v in VARIANTS},
        "previously_measured": PREVIOUS.get(name),
    }
    return row


def summary_line(row: dict) -> str:
    r, f = row["latency_ratio_pruned_over_baseline"], row["fused_over_unfused"]
    return (f"{row['model']:<24} head MACs x{row['head_macs']['ratio']:.3f}  latency pruned/baseline: unfused "
            f"x{r['unfused']['ratio_of_medians']:.3f}, fused x{r['fused']['ratio_of_medians']:.3f}  fused/unfused: "
            f"baseline x{f['baseline']['ratio_of_medians']:.3f}, pruned x{f['pruned']['ratio_of_medians']:.3f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-export", default="exports/demo", help="prune-and-export folder of the demo")
    parser.add_argument("--iters", type=int, default=2000, help="timed iterations (each runs all four graphs)")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--skip-ssd300", action="store_true", help="only the demo")
    parser.add_argument("--json-out", default="benchmarks/results/fused_head.json")
    args = parser.parse_args(argv)
    if args.iters < 1 or args.warmup < 0 or args.threads < 1:
        parser.error("--iters and --threads must be >= 1, --warmup >= 0")
    torch.set_num_threads(max(1, args.threads))
    folder = ExportFolder.open(args.demo_export)
    image = torch.from_numpy(load_images(folder, limit=1)[0][0])  # (1, 3, H, W), the demo's input size
    result = {"benchmark": "fused_head", "date": datetime.date.today().isoformat(), "machine": machine_info(),
              "runtime": "onnxruntime CPU", "threads": args.threads, "iters": args.iters, "warmup": args.warmup,
              "demo_export": str(folder.root), "models": []}
    pairs = [("demo", lambda: (folder.load_detector("baseline"), folder.load_detector("pruned")))]
    if not args.skip_ssd300:
        pairs.append(("ssd300_vgg16_config_b", ssd300_pair))
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in pairs:
            base, pruned = make()
            sized = torch.nn.functional.interpolate(image, size=base.image_size, mode="bilinear", align_corners=False)
            row = model_row(name, {"baseline": base, "pruned": pruned}, sized, args.iters, args.warmup,
                            args.threads, Path(tmp))
            result["models"].append(row)
            print(summary_line(row), flush=True)
    try:
        result["load_average_after_1_5_15min"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - not on every platform
        pass
    write_json(args.json_out, result)
    print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
