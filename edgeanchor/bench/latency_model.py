"""A per-anchor latency model, calibrated with the benchmark harness on this machine.

predicted latency(keep) = sum over levels with anchors of (base_l + per_anchor_l * A_l)
                        + nms_fixed + nms_per_box * (boxes entering NMS per image)

- ``base_l`` and ``per_anchor_l``: onnxruntime time of level l's head graph,
  measured with all of its anchors and with half of them (a line through the
  two), so the head cost per output channel is what this machine really pays;
- ``nms_fixed`` and ``nms_per_box``: a least-squares line through the
  postprocess graph's time against the number of boxes entering NMS, on real
  images;
- boxes entering NMS for a keep set: the sum over kept anchors of each
  anchor's mean number of top-k candidates per image.

``edgeanchor search --cost latency`` ranks keep sets by this prediction, so
the front reflects the target device rather than FLOPs alone.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..io import read_json, write_json


@dataclass
class LatencyModel:
    """Calibrated latency terms, milliseconds."""

    level_base_ms: list[float]
    level_per_anchor_ms: list[float]
    nms_fixed_ms: float
    nms_per_box_ms: float
    anchor_nms_boxes: dict[int, float]
    level_of: dict[int, int]
    settings: dict

    def predict(self, removed=()) -> float:
        """Predicted head + postprocess milliseconds with ``removed`` anchors taken out."""
        removed = set(removed)
        counts: dict[int, int] = {}
        for a, lv in self.level_of.items():
            if a not in removed:
                counts[lv] = counts.get(lv, 0) + 1
        head = sum(self.level_base_ms[lv] + self.level_per_anchor_ms[lv] * n for lv, n in counts.items())
        boxes = sum(v for a, v in self.anchor_nms_boxes.items() if a not in removed)
        return head + self.nms_fixed_ms + self.nms_per_box_ms * boxes

    def save(self, path) -> None:
        obj = asdict(self)
        obj["anchor_nms_boxes"] = {str(k): v for k, v in self.anchor_nms_boxes.items()}
        obj["level_of"] = {str(k): v for k, v in self.level_of.items()}
        write_json(path, {"format": "edgeanchor.latency_model/1", **obj})

    @classmethod
    def load(cls, path) -> "LatencyModel":
        obj = read_json(path, "latency model")
        obj.pop("format", None)
        obj["anchor_nms_boxes"] = {int(k): v for k, v in obj["anchor_nms_boxes"].items()}
        obj["level_of"] = {int(k): v for k, v in obj["level_of"].items()}
        return cls(**obj)


class _LevelHead(torch.nn.Module):
    def __init__(self, det, j):
        super().__init__()
        self.det, self.j = det, j

    def forward(self, feature):
        return self.det.head_at(self.j, feature)


def time_session(session, feeds: dict, iters: int, warmup: int = 3) -> float:
    """Median milliseconds of ``iters`` runs after ``warmup``."""
    names = [o.name for o in session.get_outputs()]
    for _ in range(warmup):
        session.run(names, feeds)
    samples = []
    for _ in range(iters):
        t0 = time.perf_counter_ns()
        session.run(names, feeds)
        samples.append(time.perf_counter_ns() - t0)
    return float(np.median(samples)) / 1e6


def _level_time(det, j: int, feature: torch.Tensor, threads: int, iters: int, tmp: Path) -> float:
    from ..export.onnx_export import save_onnx, trace_to_onnx
    from ..export.parity import make_session

    path = tmp / f"level{j}_{det.anchor_set.num_anchors}.onnx"
    save_onnx(trace_to_onnx(_LevelHead(det, j).eval(), (feature,), ["feature"], ["cls", "box"], 17), path)
    session = make_session(path, intra_op_num_threads=threads, inter_op_num_threads=1)
    return time_session(session, {"feature": feature.numpy()}, iters)


@torch.no_grad()
def calibrate(det, images: torch.Tensor, *, threads: int = 1, iters: int = 30, log=None) -> LatencyModel:
    """Measure the latency terms of ``det`` with onnxruntime on ``images`` (N, 3, H, W) in [0, 1]."""
    from ..export import export_onnx
    from ..export.parity import make_session
    from ..postprocess import topk_indices
    from ..prune import prune

    det = det.eval()
    num_levels = det.anchor_set.num_levels
    base, per_anchor = [0.0] * num_levels, [0.0] * num_levels
    feats = det.backbone(images[:1])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for j, level in enumerate(det.active_levels):
            anchors = det.anchor_set.levels[level].anchors
            t_full = _level_time(det, j, feats[j], threads, iters, tmp)
            if len(anchors) > 1:
                half = anchors[: len(anchors) // 2]
                others = {a.id for lv in det.anchor_set.levels for a in lv.anchors if a not in anchors}
                small = prune(det, others | {a.id for a in half})
                j_small = small.active_levels.index(level)
                t_half = _level_time(small, j_small, feats[j], threads, iters, tmp)
                slope = max(0.0, (t_full - t_half) / (len(anchors) - len(half)))
            else:
                slope = t_full
            per_anchor[level] = slope
            base[level] = max(0.0, t_full - slope * len(anchors))
            if log:
                log(f"latency model: level {level}: {base[level]:.3f} ms + {slope:.4f} ms per anchor")
        export_onnx(det, tmp / "export", simplify=False)
        post = make_session(tmp / "export" / "postprocess.onnx", intra_op_num_threads=threads, inter_op_num_threads=1)
        in_names = [i.name for i in post.get_inputs()]
        xs, ys = [], []
        anchor_boxes: dict[int, float] = {a: 0.0 for a in det.anchor_set.ids}
        box_anchor = det.box_anchor_ids()
        for image in images:
            head = det.head(det.backbone(image[None]))
            flat = {n: t.numpy() for n, t in zip(in_names, [t for pair in head for t in pair])}
            cands = det.image_candidates(head)[0]
            entered = cands.box_index[topk_indices(cands, det.spec, det.level_starts)]
            for a in box_anchor[entered].tolist():
                anchor_boxes[a] += 1.0 / len(images)
            xs.append(float(entered.numel()))
            ys.append(time_session(post, flat, max(5, iters // 3), warmup=1))
    slope, intercept = np.polyfit(xs, ys, 1) if len(set(xs)) > 1 else (0.0, float(np.mean(ys)))
    from .runtimes import machine_info

    return LatencyModel(
        level_base_ms=base, level_per_anchor_ms=per_anchor, nms_fixed_ms=float(intercept),
        nms_per_box_ms=float(max(0.0, slope)), anchor_nms_boxes=anchor_boxes,
        level_of=det.anchor_set.level_of(),
        settings={"runtime": "onnxruntime", "threads": threads, "iters": iters, "num_images": int(len(images)),
                  "machine": machine_info(), "arch": det.arch},
    )


def calibrate_on_data(det, data_dir, ann, path, *, num_images: int = 16, threads: int = 1, log=None) -> LatencyModel:
    """Calibrate on the first images of a COCO split and save the model to ``path``."""
    from ..data.coco import CocoDetection

    dataset = CocoDetection(data_dir, ann, num_classes=det.num_classes, image_size=det.image_size)
    images = torch.stack([dataset[i][0] for i in range(min(num_images, len(dataset)))])
    model = calibrate(det, images, threads=threads, log=log)
    model.save(path)
    if log:
        log(f"latency model calibrated on {len(images)} images, saved to {path}")
    return model
