"""A per-anchor latency model, calibrated with the benchmark harness on this machine.

predicted latency(keep) = sum over levels with anchors of (base_l + per_anchor_l * A_l)
                        + post_fixed + post_per_box * (boxes decoded)
                        + nms_per_box * (boxes entering NMS per image)

- ``base_l`` and ``per_anchor_l``: onnxruntime time of level l's head graph,
  measured with all of its anchors and with half of them (a line through the
  two), so the head cost per output channel is what this machine really pays;
- ``post_fixed``, ``post_per_box`` and ``nms_per_box``: a least-squares fit
  of the postprocess graph's time (decoding and thresholding every box, then
  NMS) against the number of boxes and the number entering NMS, on real
  images, for the full model and one with half its anchors;
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

from ..errors import EdgeAnchorError
from ..io import read_json, write_json


@dataclass
class LatencyModel:
    """Calibrated latency terms, milliseconds."""

    level_base_ms: list[float]
    level_per_anchor_ms: list[float]
    post_fixed_ms: float
    post_per_box_ms: float
    nms_per_box_ms: float
    anchor_boxes: dict[int, int]
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
        boxes = sum(v for a, v in self.anchor_boxes.items() if a not in removed)
        nms = sum(v for a, v in self.anchor_nms_boxes.items() if a not in removed)
        return head + self.post_fixed_ms + self.post_per_box_ms * boxes + self.nms_per_box_ms * nms

    def save(self, path) -> None:
        obj = asdict(self)
        obj["anchor_nms_boxes"] = {str(k): v for k, v in self.anchor_nms_boxes.items()}
        obj["anchor_boxes"] = {str(k): v for k, v in self.anchor_boxes.items()}
        obj["level_of"] = {str(k): v for k, v in self.level_of.items()}
        write_json(path, {"format": "edgeanchor.latency_model/1", **obj})

    @classmethod
    def load(cls, path) -> LatencyModel:
        obj = read_json(path, "latency model")
        fields = set(cls.__dataclass_fields__)
        if not isinstance(obj, dict) or obj.pop("format", None) != "edgeanchor.latency_model/1" or set(obj) != fields:
            raise EdgeAnchorError(f"{path} is not an edgeanchor latency model; calibrate one with cost latency")
        obj["anchor_nms_boxes"] = {int(k): v for k, v in obj["anchor_nms_boxes"].items()}
        obj["anchor_boxes"] = {int(k): v for k, v in obj["anchor_boxes"].items()}
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
    from ..exporting.onnx_export import save_onnx, trace_to_onnx
    from ..exporting.parity import make_session

    path = tmp / f"level{j}_{det.anchor_set.num_anchors}.onnx"
    save_onnx(trace_to_onnx(_LevelHead(det, j).eval(), (feature,), ["feature"], ["cls", "box"], 17), path)
    session = make_session(path, intra_op_num_threads=threads, inter_op_num_threads=1)
    return time_session(session, {"feature": feature.numpy()}, iters)


def _fit(rows: np.ndarray, ys: np.ndarray) -> tuple[float, float, float]:
    """Least squares t = fixed + per_box * boxes + per_nms * nms, with every term >= 0.

    Noise can drive a free fit negative; a negative term is dropped and the
    rest refitted, so predictions never go below zero.
    """
    active = [0, 1, 2]
    while True:
        coef, *_ = np.linalg.lstsq(rows[:, active], ys, rcond=None)
        if (coef >= 0).all() or len(active) == 1:
            break
        active.pop(int(np.argmin(coef)))
    out = [0.0, 0.0, 0.0]
    for i, c in zip(active, coef):
        out[i] = max(0.0, float(c))
    return out[0], out[1], out[2]


def _postprocess_samples(det, images, folder: Path, threads: int, iters: int):
    """(boxes, boxes entering NMS, ms, anchor ids entering NMS) of the postprocess graph per image."""
    from ..exporting import export_onnx
    from ..exporting.parity import make_session
    from ..postprocess import topk_indices

    graphs = export_onnx(det, folder, simplify=False)["files"]
    post = make_session(graphs["postprocess"], intra_op_num_threads=threads, inter_op_num_threads=1)
    in_names = [i.name for i in post.get_inputs()]
    box_anchor = det.box_anchor_ids()
    for image in images:
        head = det.head(det.backbone(image[None]))
        feeds = {n: t.numpy() for n, t in zip(in_names, [t for pair in head for t in pair])}
        cands = det.image_candidates(head)[0]
        entered = cands.box_index[topk_indices(cands, det.postprocess_spec, det.level_starts)]
        t = time_session(post, feeds, max(5, iters // 3), warmup=1)
        yield float(det.anchor_set.num_boxes), float(entered.numel()), t, box_anchor[entered].tolist()


@torch.no_grad()
def calibrate(det, images: torch.Tensor, *, threads: int = 1, iters: int = 30, log=None) -> LatencyModel:
    """Measure the latency terms of ``det`` with onnxruntime on ``images`` (N, 3, H, W) in [0, 1]."""
    from ..pruning import prune

    det = det.eval()
    num_levels = det.anchor_set.num_levels
    base, per_anchor = [0.0] * num_levels, [0.0] * num_levels
    feats = det.backbone(images[:1])
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
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
        half = prune(det, {a.id for lv in det.anchor_set.levels for a in lv.anchors[: (len(lv.anchors) + 1) // 2]})
        one = prune(det, {lv.anchors[0].id for lv in det.anchor_set.levels if lv.anchors})
        rows, ys = [], []
        anchor_nms = {a: 0.0 for a in det.anchor_set.ids}
        for k, model in enumerate((det, half, one)):
            for n_boxes, n_nms, t, entered in _postprocess_samples(model, images, tmp / f"post{k}", threads, iters):
                rows.append([1.0, n_boxes, n_nms])
                ys.append(t)
                if k == 0:
                    for a in entered:
                        anchor_nms[a] += 1.0 / len(images)
    fixed, per_box, per_nms = _fit(np.asarray(rows), np.asarray(ys))
    if log:
        log(f"latency model: postprocess {fixed:.3f} ms + {per_box * 1e3:.3f} us per box + "
            f"{per_nms * 1e3:.3f} us per box entering NMS")
    from .machine import machine_info

    return LatencyModel(
        level_base_ms=base, level_per_anchor_ms=per_anchor, post_fixed_ms=fixed, post_per_box_ms=per_box,
        nms_per_box_ms=per_nms, anchor_nms_boxes=anchor_nms,
        anchor_boxes={a.id: lv.feature_size[0] * lv.feature_size[1]
                      for lv in det.anchor_set.levels for a in lv.anchors},
        level_of=det.anchor_set.level_of(),
        settings={"runtime": "onnxruntime", "threads": threads, "iters": iters, "num_images": int(len(images)),
                  "machine": machine_info(), "arch": det.arch},
    )


def calibrate_on_data(det, data_dir, ann, path, *, num_images: int = 16, threads: int = 1, log=None) -> LatencyModel:
    """Calibrate on the first images of a COCO split and save the model to ``path``."""
    from ..datasets.coco import CocoDetection

    dataset = CocoDetection.for_detector(det, data_dir, ann)
    images = torch.stack([dataset[i][0] for i in range(min(num_images, len(dataset)))])
    model = calibrate(det, images, threads=threads, log=log)
    model.save(path)
    if log:
        log(f"latency model calibrated on {len(images)} images, saved to {path}")
    return model
