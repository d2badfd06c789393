"""OpenCV DNN as a runtime: its graph, its runner (backbone.onnx, head.onnx and model_nonms.onnx), parity.

A graph is read with ``cv2.dnn.readNetFromONNX`` (OpenCV backend, CPU target, Winograd off unless
asked for: on the demo exports OpenCV 4.x's Winograd moves model_nonms's boxes up to 1.5e-4 px from
ONNX Runtime, 6.1e-5 px without; OpenCV 5.0 gives 6.1e-5 px either way). OpenCV 4.x returns int64
outputs as float32; ``labels`` is rounded back to int64 here.

OpenCV cannot run ``model.onnx`` in 4.x (no NonMaxSuppression layer), so its end-to-end stage is what
a user of OpenCV does: ``model_nonms.onnx`` (the best K candidates, fixed shapes), then
``cv2.dnn.NMSBoxesBatched`` at the model's IoU threshold and the best ``detections_per_img``, both
read from the graph's metadata_props (:meth:`edgeanchor.exporting.graphs.NoNmsGraph.metadata`).

``cv2`` is imported when a graph or runner is made, so everything else works without OpenCV. While
edgeanchor loads or runs a graph, OpenCV's own log lines (e.g. OpenCV 5.1's ``[ WARN:0@136] ...
setPreferableTarget Targets are not supported by the new graph engine``, one per graph opened) are held back
to errors (:func:`quiet_logs`); the level is restored afterwards, and a level the user set with
``OPENCV_LOG_LEVEL`` is left alone.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np

from ..errors import EdgeAnchorError
from .base import Graph, as_arrays, import_runtime

NAME = "OpenCV"
PRECISIONS = ("fp32",)
OPENCV_STAGES = ("backbone", "head", "end_to_end")
# bench's stages on OpenCV: the deployment path of model_nonms.onnx; its end to end is the graph plus
# cv2.dnn.NMSBoxesBatched.
STAGE_GRAPHS = {"backbone": "backbone", "head": "head", "end_to_end": "model_nonms"}


def load():
    """The ``cv2`` module, or a one-line :class:`EdgeAnchorError` naming the extra to install."""
    return import_runtime("cv2", "opencv", NAME)


@contextmanager
def quiet_logs(cv2) -> Iterator[None]:
    """OpenCV's log level lowered to errors for the ``with`` block, then restored.

    Warnings and info lines of OpenCV's own logger are not the user's business while edgeanchor drives it
    (they are about OpenCV's engine choice, not the user's graph); errors still print, and a failing call
    still raises ``cv2.error``. A level already quieter is kept, and so is any level chosen with the
    ``OPENCV_LOG_LEVEL`` environment variable (someone debugging OpenCV asked for its lines).
    """
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is None or "OPENCV_LOG_LEVEL" in os.environ:
        yield
        return
    previous = logging.getLogLevel()
    logging.setLogLevel(min(previous, logging.LOG_LEVEL_ERROR))  # lower levels print less (0 = silent)
    try:
        yield
    finally:
        logging.setLogLevel(previous)


class OpenCvGraph(Graph):
    """A graph read with ``cv2.dnn.readNetFromONNX``: OpenCV backend, CPU target, Winograd off.

    OpenCV 4.x runs 3x3 convolutions with Winograd by default, which moves model_nonms's boxes up to
    1.5e-4 px from ONNX Runtime (6.1e-5 px without); it is off unless ``winograd``. Outputs get the
    graph's declared static shapes (OpenCV 4.x may add or drop unit axes) and ``metadata`` holds the
    graph's metadata_props (model_nonms.onnx carries its NMS rule there).
    """

    runtime = "opencv"

    def __init__(self, path, *, threads: int = 0, precision: str = "fp32", winograd: bool = False):
        super().__init__(path, precision)
        cv2 = load()
        cv2.setNumThreads(int(threads) if threads > 0 else -1)  # 0 would mean "no threads" to OpenCV
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        inits = {i.name for i in model.graph.initializer}
        self.input_names = [i.name for i in model.graph.input if i.name not in inits]
        self.output_names = [o.name for o in model.graph.output]
        self._shapes = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
        self.metadata = {m.key: m.value for m in model.metadata_props}
        major = int(cv2.__version__.split(".")[0])
        if major < 5 and any(n.op_type == "NonMaxSuppression" for n in model.graph.node):
            raise EdgeAnchorError(f"OpenCV {cv2.__version__} cannot load {Path(path).name} (OpenCV 4 has no "
                                  "NonMaxSuppression layer); use model_nonms.onnx with cv2.dnn.NMSBoxesBatched, "
                                  "or OpenCV 5")
        with quiet_logs(cv2):
            try:
                self.net = cv2.dnn.readNetFromONNX(str(path))
            except cv2.error as exc:
                raise EdgeAnchorError(f"OpenCV {cv2.__version__} cannot load {Path(path).name} "
                                      f"({_opencv_reason(exc)})") from None
            self.net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
            self.net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
            if hasattr(self.net, "enableWinograd"):
                self.net.enableWinograd(bool(winograd))
        self.settings = {"runtime": self.runtime, "version": cv2.__version__, "precision": precision,
                         "backend": "DNN_BACKEND_OPENCV", "target": "DNN_TARGET_CPU",
                         "engine": "ENGINE_AUTO (new engine, classic fallback)" if major >= 5 else "classic",
                         "threads": cv2.getNumThreads() if threads > 0 else f"default ({cv2.getNumThreads()})",
                         "winograd": bool(winograd)}

    def run(self, feeds):
        import cv2

        arrays = as_arrays(feeds)
        for name in self.input_names:
            self.net.setInput(np.ascontiguousarray(arrays[name], dtype=np.float32), name)
        try:
            with quiet_logs(cv2):  # a get and a set: well under a microsecond beside the forward pass
                outs = dict(zip(self.output_names, self.net.forward(self.output_names)))
        except cv2.error as exc:
            raise EdgeAnchorError(f"OpenCV {cv2.__version__} cannot run {self.path.name} "
                                  f"({_opencv_reason(exc)})") from None
        return {n: outs[n].reshape(shape) if shape and all(shape) else outs[n] for n, shape in self._shapes.items()}


def open_graph(path, *, threads: int = 0, precision: str = "fp32", winograd: bool = False) -> OpenCvGraph:
    """``path`` in OpenCV DNN (checked by :func:`edgeanchor.runtimes.open_graph` first)."""
    return OpenCvGraph(path, threads=threads, precision=precision, winograd=winograd)


def _opencv_reason(exc) -> str:
    """The informative part of a cv2.error: a missing layer type, else the last OpenCV message."""
    text = " ".join(str(exc).split())
    missing = re.search(r'Can\'t create layer "[^"]*" of type "([^"]+)"', text)
    if missing:
        hint = "; use model_nonms.onnx with cv2.dnn.NMSBoxesBatched" if missing.group(1) == "NonMaxSuppression" else ""
        return f"it has no {missing.group(1)} layer{hint}"
    node = re.search(r"Node \[([^@\]]+)@[^\]]*\]", text)
    last = text.rsplit("error:", 1)[-1].strip().rstrip(">").strip()
    last = re.sub(r"^\(-?\d+:[^)]*\)\s*", "", last)
    return (f"{node.group(1)} node: " if node else "") + last[:160]


def nms_rule(path: Path, meta: dict[str, str]) -> tuple[float, int]:
    """(IoU threshold, detections kept) from a model_nonms.onnx's metadata.

    Raises:
        EdgeAnchorError: the graph was exported before the rule was written into it.
    """
    try:
        return float(meta["nms_iou_threshold"]), int(meta["detections_per_img"])
    except (KeyError, ValueError):
        raise EdgeAnchorError(
            f"{path} has no NMS rule in its metadata (nms_iou_threshold, detections_per_img); "
            "re-run prune-and-export to write it"
        ) from None


def nms_detections(cv2, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, *, iou_thresh: float,
                   max_det: int) -> np.ndarray:
    """The NMS-free graph's rows -> detections: class-aware NMS, then the best ``max_det``.

    Args:
        cv2: the OpenCV module.
        boxes: float32 (K, 4) xyxy in input pixels; scores: (K,), 0 on padding rows; labels: (K,) int.
        iou_thresh: NMS IoU threshold (a box is dropped above it).
        max_det: detections kept.

    Returns:
        float32 (N, 6) rows (x1, y1, x2, y2, score, label), best first, N <= max_det.
    """
    real = scores > 0  # padding rows have score 0; every candidate is above the threshold (>= 0)
    boxes, scores, labels = boxes[real].astype(np.float64), scores[real].astype(np.float32), labels[real]
    if not len(scores):
        return np.zeros((0, 6), np.float32)
    # xywh in float64 from float32 corners: x + w gives x2 back exactly inside OpenCV's Rect2d
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    keep = np.asarray(cv2.dnn.NMSBoxesBatched(xywh, scores, labels.astype(np.int32), 0.0, float(iou_thresh)),
                      dtype=np.int64).reshape(-1)
    keep = keep[np.argsort(-scores[keep], kind="stable")][:max_det]
    return np.concatenate([boxes[keep], scores[keep, None], labels[keep, None]], axis=1).astype(np.float32)


class OpenCvRunner:
    """OpenCV DNN nets of backbone, head and model_nonms (+ NMSBoxesBatched), with recorded settings."""

    stages = OPENCV_STAGES

    def __init__(self, graphs: dict[str, Path], *, threads: int = 0, winograd: bool = False):
        """Load the graphs.

        Args:
            graphs: "backbone", "head" and "end_to_end" -> backbone.onnx, head.onnx, model_nonms.onnx.
            threads: OpenCV's thread count (``cv2.setNumThreads``, process-wide); 0 keeps its default.
            winograd: OpenCV 4.x's Winograd 3x3 convolutions (faster, less exact; see the module doc).

        Raises:
            EdgeAnchorError: OpenCV missing, a graph missing, a graph OpenCV cannot load, or a
                model_nonms.onnx without its NMS rule.
        """
        self.clock: Callable[[], int] = time.perf_counter_ns  # what run_all counts (base.CLOCKS)
        from . import open_graph

        self.cv2 = load()
        self.graphs = {stage: open_graph("opencv", graphs[stage], threads=threads, winograd=winograd)
                       for stage in OPENCV_STAGES}
        end = cast(OpenCvGraph, self.graphs["end_to_end"])
        self.iou_thresh, self.max_det = nms_rule(end.path, end.metadata)
        self.settings = {**self.graphs["backbone"].settings,
                         "graphs": {s: g.path.name for s, g in self.graphs.items()},
                         "end_to_end": f"{end.path.name} + cv2.dnn.NMSBoxesBatched",
                         "nms_iou_threshold": self.iou_thresh, "detections_per_img": self.max_det}

    def forward(self, stage: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one graph; outputs get the graph's declared shapes (OpenCV 4.x may add unit axes)."""
        return self.graphs[stage].run(feeds)

    def run_nonms(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """model_nonms.onnx on a float32 (1, 3, H, W) image.

        Returns:
            ``boxes`` (1, K, 4), ``scores`` (1, K) and ``labels`` (1, K) int64.
        """
        out = self.forward("end_to_end", {"images": image})
        out["labels"] = np.rint(out["labels"]).astype(np.int64)  # OpenCV 4.x gives float32
        return out

    def detections(self, image: np.ndarray) -> np.ndarray:
        """float32 (N, 6) rows (x1, y1, x2, y2, score, label) in input pixels, as model.onnx's first N rows."""
        out = self.run_nonms(image)
        return nms_detections(self.cv2, out["boxes"][0], out["scores"][0], out["labels"][0],
                              iou_thresh=self.iou_thresh, max_det=self.max_det)

    def run_all(self, image: np.ndarray) -> dict[str, int]:
        """Nanoseconds per stage for one float32 (1, 3, H, W) image; end_to_end includes the NMS."""
        t0 = self.clock()
        feats = self.forward("backbone", {"images": image})
        t1 = self.clock()
        self.forward("head", feats)
        t2 = self.clock()
        self.detections(image)
        t3 = self.clock()
        return {"backbone": t1 - t0, "head": t2 - t1, "end_to_end": t3 - t2}


def opencv_parity(folder, variant: str, images, *, threads: int = 0, winograd: bool = False,
                  box_tol: float = 1e-4, score_tol: float = 1e-4) -> dict:
    """OpenCV against ONNX Runtime on one variant of an export folder.

    Args:
        folder: an :class:`~edgeanchor.exporting.folder.ExportFolder`.
        variant: "pruned" or "baseline".
        images: float32 (N, 3, H, W) in [0, 1] as the model sees them (NumPy or torch).
        threads, winograd: as for :class:`OpenCvRunner`.
        box_tol: pixels; score_tol: absolute. For model_nonms's rows and the detections.

    Returns:
        Dict with ``runtime`` (the runner's settings), ``backbone`` and ``head`` (head on ONNX
        Runtime's features; :func:`~edgeanchor.exporting.parity.compare_tensors`'s ``max_abs_diff``,
        ``allclose``, ``passed``), ``model_nonms`` (rows matched one to one by label, score and box, ties
        at the top-K cut allowed: ``counts_ort``, ``counts_opencv``, ``max_box_diff``,
        ``max_score_diff``, ``passed``), ``end_to_end`` (OpenCV's detections against model.onnx's under
        ONNX Runtime, every row matched: the same fields plus ``matched_fraction``), ``num_images``
        and ``passed``.
    """
    from ..exporting.parity import compare_tensors, make_session, run_session

    paths = {g: folder.graph_path(variant, g) for g in ("backbone", "head", "model_nonms", "model")}
    runner = OpenCvRunner({"backbone": paths["backbone"], "head": paths["head"], "end_to_end": paths["model_nonms"]},
                          threads=threads, winograd=winograd)
    ort = {g: make_session(p) for g, p in paths.items()}
    raw: dict[str, list[dict[str, Any]]] = {"backbone": [], "head": []}
    rows: dict[str, list[dict[str, Any]]] = {"model_nonms": [], "end_to_end": []}
    for image in images:
        x = np.ascontiguousarray(np.asarray(image, dtype=np.float32)[None])  # (3, H, W) -> (1, 3, H, W)
        feats = run_session(ort["backbone"], {"images": x})
        raw["backbone"].append(compare_tensors(feats, runner.forward("backbone", {"images": x}), 1e-3, 1e-5))
        raw["head"].append(compare_tensors(run_session(ort["head"], feats), runner.forward("head", feats), 1e-3, 1e-5))
        ref = run_session(ort["model_nonms"], {"images": x})
        rows["model_nonms"].append(compare_rows(ref, runner.run_nonms(x), box_tol, score_tol))
        det = run_session(ort["model"], {"images": x})
        n = int(det["num_detections"][0])
        rows["end_to_end"].append(compare_rows(_as_rows(det["detections"][0][:n]), _as_rows(runner.detections(x)),
                                               box_tol, score_tol, exact_count=True))
    result: dict[str, Any] = {"runtime": runner.settings, "num_images": len(rows["end_to_end"])}
    for g, rs in raw.items():
        result[g] = {"max_abs_diff": max(r["max_abs_diff"] for r in rs), "allclose": all(r["allclose"] for r in rs)}
        result[g]["passed"] = result[g]["allclose"]
    for g, rs in rows.items():
        total = sum(max(r["num_torch"], r["num_onnx"]) for r in rs)
        result[g] = {"counts_ort": [r["num_torch"] for r in rs], "counts_opencv": [r["num_onnx"] for r in rs],
                     "matched_fraction": sum(r["num_matched"] for r in rs) / total if total else 1.0,
                     "max_box_diff": max(r["max_box_diff"] for r in rs),
                     "max_score_diff": max(r["max_score_diff"] for r in rs), "passed": all(r["passed"] for r in rs)}
    result["passed"] = all(result[g]["passed"] for g in ("backbone", "head", "model_nonms", "end_to_end"))
    return result


def _as_rows(dets: np.ndarray) -> dict[str, np.ndarray]:
    """(N, 6) detection rows -> the NMS-free graph's output form (scores > 0 are real rows)."""
    return {"boxes": dets[None, :, :4], "scores": dets[None, :, 4],
            "labels": np.rint(dets[None, :, 5]).astype(np.int64)}


def compare_rows(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], box_tol: float, score_tol: float, *,
                 exact_count: bool = False) -> dict:
    """Rows of ``got`` against ``ref`` (both in model_nonms's output form), matched one to one.

    :func:`~edgeanchor.exporting.parity.compare_nonms` with ``ref``'s real rows as the candidates: the same
    label, score within ``score_tol``, box within ``box_tol``; an unmatched row is allowed only at the
    top-K cut, unless ``exact_count`` (detections: every row must match).
    """
    import torch

    from ..exporting.parity import compare_nonms

    real = ref["scores"][0] > 0
    cands = SimpleNamespace(scores=torch.from_numpy(ref["scores"][0][real].astype(np.float32)),
                            boxes_xyxy=torch.from_numpy(ref["boxes"][0][real].astype(np.float32)),
                            labels=torch.from_numpy(ref["labels"][0][real].astype(np.int64)))
    out = compare_nonms(cands, got, int(ref["scores"].shape[1]), box_tol=box_tol, score_tol=score_tol)
    if exact_count:
        out["passed"] = out["num_torch"] == out["num_onnx"] == out["num_matched"]
    return out
