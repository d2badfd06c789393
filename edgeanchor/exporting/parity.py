"""The exported graphs, in ONNX Runtime (or another runtime), against eager PyTorch.

:func:`check_parity` runs every graph that :func:`~edgeanchor.exporting.export_onnx`
wrote on images other than the tracing input and compares:

- raw tensors: ``backbone.onnx`` features, ``head.onnx`` outputs on the torch
  features (so backbone error does not leak into the head check), with
  ``np.allclose(rtol, atol)`` and the max abs difference;
- detections: ``postprocess.onnx`` on the torch head outputs and
  ``model.onnx`` on the images, against ``detector(images)``, matched one to
  one by label and IoU >= ``match_iou``.

:func:`make_session` and :func:`run_session` are the one place where ONNX
Runtime sessions are configured, so the benchmarks time what is checked here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou

from ..models.base import Detector
from ..runtimes.onnxruntime import OPT_LEVELS, make_session  # noqa: F401 - torch-free; re-exported here
from .folder import graph_file
from .graphs import DecodeBoxes, level_names


def run_session(session, feeds: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, np.ndarray]:
    """Run ``session`` once; tensors become contiguous numpy arrays. Returns output name -> array."""
    from ..runtimes import as_arrays

    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, as_arrays(dict(feeds)))))


def compare_tensors(expected: dict[str, np.ndarray], got: dict[str, np.ndarray], rtol: float, atol: float) -> dict:
    """Max abs diff and np.allclose over same-named arrays.

    ``allclose`` scales ``atol`` by each tensor's magnitude (max |ref|, at
    least 1): float32 convolutions in a different summation order differ by
    ~1e-6 of the tensor's scale, which near-zero elements of large-valued
    maps (random-weight ResNet features reach ~200) exceed at a fixed atol.
    ``strict_allclose`` is the unscaled check, reported alongside.
    """
    diffs, rel, close, strict = {}, {}, True, True
    for name, ref in expected.items():
        out = got[name]
        if out.shape != ref.shape:
            diffs[name], rel[name], close, strict = float("inf"), float("inf"), False, False
            continue
        scale = max(1.0, float(np.abs(ref).max())) if ref.size else 1.0
        diffs[name] = float(np.abs(out.astype(np.float64) - ref).max()) if ref.size else 0.0
        rel[name] = diffs[name] / scale
        close = close and bool(np.allclose(out, ref, rtol=rtol, atol=atol * scale))
        strict = strict and bool(np.allclose(out, ref, rtol=rtol, atol=atol))
    return {"max_abs_diff": max(diffs.values(), default=0.0), "max_diff_over_scale": max(rel.values(), default=0.0),
            "per_output": diffs, "allclose": close, "strict_allclose": strict}


def match_detections(ref: dict[str, torch.Tensor], rows: np.ndarray, count: int, match_iou: float) -> dict:
    """Match torch detections to exported rows one to one (same label, IoU >= match_iou).

    Args:
        ref: ``boxes`` (D, 4) xyxy, ``scores`` (D,), ``labels`` (D,) from the detector.
        rows: (max_det, 6) exported (x1, y1, x2, y2, score, label).
        count: the exported ``num_detections``.
        match_iou: IoU needed for a match.

    Returns:
        Dict with ``num_torch``, ``num_onnx``, ``num_matched`` and ``max_score_diff`` over matches.
    """
    got = torch.from_numpy(np.asarray(rows[:count], dtype=np.float32))
    boxes, labels = got[:, :4], got[:, 5].round().long()
    n_ref = len(ref["scores"])
    iou = torch.nan_to_num(box_iou(ref["boxes"].float(), boxes)) if n_ref and count else torch.zeros(n_ref, count)
    if n_ref and count:  # clipping can make zero-area boxes, whose IoU with themselves is 0/0
        same = (ref["boxes"].float()[:, None, :] - boxes[None, :, :]).abs().amax(-1) <= 1e-3  # (D, count)
        iou = torch.where(same, torch.ones_like(iou), iou)
    iou = torch.where(ref["labels"][:, None] == labels[None, :], iou, torch.zeros_like(iou))
    taken, matched, score_diff = set(), 0, 0.0
    for i in range(n_ref):  # greedy, best torch detection first
        order = torch.argsort(iou[i], descending=True).tolist() if count else []
        j = next((j for j in order if j not in taken and iou[i, j] >= match_iou), None)
        if j is not None:
            taken.add(j)
            matched += 1
            score_diff = max(score_diff, abs(float(ref["scores"][i]) - float(got[j, 4])))
    return {"num_torch": n_ref, "num_onnx": int(count), "num_matched": matched, "max_score_diff": score_diff}


def compare_nonms(cands, out: dict[str, np.ndarray], k: int, box_tol: float, score_tol: float = 1e-4) -> dict:
    """The NMS-free graph's rows against the detector's best ``k`` candidates of one image.

    Rows with score 0 are padding. Rows are matched one to one (same label, score within
    ``score_tol``, box within ``box_tol``), so exactly tied scores may come in any order; a row left
    unmatched is allowed only at the top-k cut (score within ``score_tol`` of the k-th), where a tie
    can let either candidate in.

    Returns:
        Dict with ``num_torch``, ``num_onnx``, ``num_matched``, ``max_score_diff``, ``max_box_diff``
        (over matched rows) and ``passed``.
    """
    order = torch.argsort(cands.scores, descending=True, stable=True)[:k]
    ref_s = cands.scores[order].double().numpy()
    ref_b, ref_l = cands.boxes_xyxy[order].double().numpy(), cands.labels[order].numpy()
    real = out["scores"][0] > 0
    got_s = out["scores"][0][real].astype(np.float64)
    got_b, got_l = out["boxes"][0][real].astype(np.float64), out["labels"][0][real]
    score_d = np.abs(ref_s[:, None] - got_s[None, :])  # (R, G)
    box_d = np.abs(ref_b[:, None, :] - got_b[None, :, :]).max(-1) if len(ref_s) and len(got_s) else score_d
    ok = (ref_l[:, None] == got_l[None, :]) & (score_d <= score_tol) & (box_d <= box_tol)
    taken = np.zeros(len(got_s), dtype=bool)
    matched, s_max, b_max, unmatched = 0, 0.0, 0.0, []
    for i in range(len(ref_s)):  # best first
        js = np.flatnonzero(ok[i] & ~taken)
        if len(js):
            j = js[np.argmin(box_d[i, js])]
            taken[j] = True
            matched += 1
            s_max, b_max = max(s_max, float(score_d[i, j])), max(b_max, float(box_d[i, j]))
        else:
            unmatched.append(ref_s[i])
    cut = ref_s[-1] if len(ref_s) else 0.0
    at_cut = all(abs(s - cut) <= score_tol for s in unmatched + got_s[~taken].tolist())
    return {"num_torch": len(ref_s), "num_onnx": len(got_s), "num_matched": matched, "max_score_diff": s_max,
            "max_box_diff": b_max, "passed": len(ref_s) == len(got_s) and at_cut}


def summarise_matches(per_image: list[dict]) -> dict:
    """Per-image counts, matched fraction, and pass: counts within one and at most one unmatched each side."""
    n_torch = [m["num_torch"] for m in per_image]
    n_onnx = [m["num_onnx"] for m in per_image]
    matched = sum(m["num_matched"] for m in per_image)
    total = sum(max(a, b) for a, b in zip(n_torch, n_onnx))
    ok = all(abs(a - b) <= 1 and m["num_matched"] >= max(a, b) - 1 for a, b, m in zip(n_torch, n_onnx, per_image))
    return {
        "counts_torch": n_torch,
        "counts_onnx": n_onnx,
        "matched_fraction": matched / total if total else 1.0,
        "max_score_diff": max((m["max_score_diff"] for m in per_image), default=0.0),
        "passed": bool(ok),
    }


PARITY_GRAPHS = ("backbone", "head", "postprocess", "model", "model_nonms", "model_ncnn")


@torch.no_grad()
def check_parity(
    detector: Detector,
    out_dir: str | os.PathLike,
    images: torch.Tensor,
    *,
    rtol: float = 1e-3,
    atol: float = 1e-5,
    match_iou: float = 0.99,
    intra_op_num_threads: int = 0,
    runtime: str = "onnxruntime",
    precision: str = "fp32",
    files: dict[str, Path] | None = None,
) -> dict:
    """Compare the graphs in ``out_dir`` (run in ``runtime``) with eager PyTorch on ``images``.

    Args:
        detector: the detector that was exported.
        out_dir: the folder written by ``export_onnx``.
        images: float32 (N, 3, H, W) in [0, 1], not the tracing input; run one at a time.
        rtol, atol: tolerance of the raw-tensor check (np.allclose; atol is multiplied
            by each tensor's max |value| when that exceeds 1).
        match_iou: IoU for a detection match (labels must be equal too).
        intra_op_num_threads: runtime threads; 0 lets the runtime choose.
        runtime, precision: where and how the graphs run (:func:`~edgeanchor.runtimes.open_graph`).
        files: graph name -> file to check instead of ``out_dir/<name>.onnx`` (e.g. OpenVINO IR); graphs
            not named are left out.

    Returns:
        Dict with ``backbone`` and ``head`` (``max_abs_diff``,
        ``max_diff_over_scale``, ``allclose`` with atol scaled by the tensor's
        magnitude, ``strict_allclose`` with atol as given; see
        :func:`compare_tensors`),
        ``postprocess`` and ``model`` (``counts_torch``, ``counts_onnx``,
        ``matched_fraction``, ``max_score_diff``, ``passed``), ``model_nonms`` and ``model_ncnn``
        (decoded boxes and scores, as backbone and head) when those graphs exist, ``runtime``,
        ``precision`` and ``passed``.
    """
    from ..runtimes import open_graph

    out_dir = Path(out_dir)
    detector = detector.eval()
    names = level_names(detector)
    if files is None:
        files = {g: graph_file(out_dir, g) for g in PARITY_GRAPHS}
        for g in ("model_nonms", "model_ncnn"):  # exports older than these graphs
            if not files[g].is_file():
                del files[g]
    sessions = {g: open_graph(runtime, path, threads=intra_op_num_threads, precision=precision)
                for g, path in files.items()}
    raw: dict[str, list[dict]] = {g: [] for g in ("backbone", "head", "model_ncnn") if g in sessions}
    decoder = DecodeBoxes(detector) if "model_ncnn" in sessions else None
    matches: dict[str, list[dict]] = {g: [] for g in ("postprocess", "model") if g in sessions}
    nonms: list[dict] = []
    for image in images.float():
        image = image[None].to(detector.anchors_xyxy.device)  # (3, H, W) -> (1, 3, H, W)
        feats = detector.backbone(image)
        head = [t for pair in detector.head(feats) for t in pair]
        ref = {k: v.cpu() for k, v in detector.postprocess(detector.head(feats))[0].items()}
        torch_feats = {n: f.cpu().numpy() for n, f in zip(names["features"], feats)}
        torch_head = {n: t.cpu().numpy() for n, t in zip(names["head"], head)}
        if "backbone" in raw:
            out_backbone = sessions["backbone"].run({"images": image})
            raw["backbone"].append(compare_tensors(torch_feats, out_backbone, rtol, atol))
        if "head" in raw:
            raw["head"].append(compare_tensors(torch_head, sessions["head"].run(torch_feats), rtol, atol))
        if decoder is not None:  # every box decoded and scored (SSD: background column dropped)
            boxes, probs = decoder(head)
            first = 1 if detector.postprocess_spec.score_fn == "softmax" else 0
            ref_dec = {"boxes": boxes[None].cpu().numpy(), "scores": probs[None, :, first:].cpu().numpy()}
            out_ncnn = sessions["model_ncnn"].run({"images": image})
            raw["model_ncnn"].append(compare_tensors(ref_dec, out_ncnn, rtol, atol))
        for graph, feeds in (("postprocess", torch_head), ("model", {"images": image})):
            if graph in matches:
                out = sessions[graph].run(feeds)
                matches[graph].append(match_detections(ref, np.asarray(out["detections"]).reshape(-1, 6),
                                                       int(np.asarray(out["num_detections"]).reshape(-1)[0]),
                                                       match_iou))
        if "model_nonms" in sessions:
            out = sessions["model_nonms"].run({"images": image})
            out = {"boxes": np.asarray(out["boxes"]).reshape(1, -1, 4),
                   "scores": np.asarray(out["scores"]).reshape(1, -1),
                   "labels": np.asarray(out["labels"]).reshape(1, -1)}
            cands = detector.image_candidates(detector.head(feats))[0]
            nonms.append(compare_nonms(cands, out, out["scores"].shape[1], box_tol=1e-3 * max(detector.image_size)))
    result: dict[str, Any] = {
        g: {
            "max_abs_diff": max(r["max_abs_diff"] for r in rs),
            "max_diff_over_scale": max(r["max_diff_over_scale"] for r in rs),
            "allclose": all(r["allclose"] for r in rs),
            "strict_allclose": all(r["strict_allclose"] for r in rs),
        }
        for g, rs in raw.items()
    }
    result.update({g: summarise_matches(ms) for g, ms in matches.items()})
    if nonms:
        result["model_nonms"] = {
            "counts_torch": [m["num_torch"] for m in nonms], "counts_onnx": [m["num_onnx"] for m in nonms],
            "matched": [m["num_matched"] for m in nonms],
            "max_score_diff": max(m["max_score_diff"] for m in nonms),
            "max_box_diff": max(m["max_box_diff"] for m in nonms),
            "passed": all(m["passed"] for m in nonms),
        }
    result["num_images"] = int(images.shape[0])
    result["runtime"], result["precision"] = runtime, precision
    result["passed"] = (all(result[g]["allclose"] for g in raw) and all(result[g]["passed"] for g in matches)
                        and result.get("model_nonms", {}).get("passed", True))
    return result
