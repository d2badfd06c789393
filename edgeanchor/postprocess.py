"""Post-processing: decode, score threshold, top-k, class-aware NMS.

It is split in two steps so that the anchor search can cache the first:

1. :func:`candidates` turns raw head outputs into every (box index, label,
   score, decoded box) whose score is above the threshold. Removing anchors
   only ever removes candidates, so this list is all a pruned model can see.
2. :func:`select` applies the model's top-k, NMS and max-detections rule to a
   candidate list. Run on the candidates of the kept anchors it gives exactly
   what the pruned model would give.

Both follow torchvision's ``SSD.postprocess_detections`` (softmax scores,
top-k per class) and ``RetinaNet.postprocess_detections`` (sigmoid scores,
top-k per level) step for step, in the same order, and YOLOv5's
``non_max_suppression`` (``score_fn="yolo"``: confidence = objectness x class
probability, multi-label, the best ``topk_candidates`` (max_nms) overall,
NMS with class offsets of ``YOLO_CLASS_OFFSET`` pixels, no clipping).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import boxes as box_ops

# YOLOv5's class offset in NMS (max_wh): boxes of class c are shifted by c * 7680 pixels.
YOLO_CLASS_OFFSET = 7680.0
# YOLOv5's presets (data/hyps and val.py / detect.py defaults): (confidence threshold, IoU threshold).
YOLO_PRESETS = {"val": (0.001, 0.6), "deploy": (0.25, 0.45)}


@dataclass(frozen=True)
class PostprocessRule:
    """How a detector turns head outputs into detections.

    Attributes:
        score_fn: "softmax" (class 0 is background and never reported), "sigmoid", or "yolo" (column 0 of
            the class outputs is objectness; score = sigmoid(obj) * sigmoid(class); YOLOv5 box decoding).
        topk_scope: "class" (top-k per class, SSD), "level" (top-k per level, RetinaNet) or "all" (the best
            top-k candidates of the image, YOLOv5's max_nms).
        score_thresh: candidates need a score strictly above this.
        topk_candidates: top-k size per scope.
        nms_thresh: IoU threshold of the class-aware NMS.
        detections_per_img: detections kept per image after NMS.
        box_weights: (wx, wy, ww, wh) of the box coder.
        clip: clip decoded boxes to the image before NMS (SSD and RetinaNet do; YOLOv5 and RetinaFace do not).
            Rules written before this field existed read as True; "yolo" never clips.
    """

    score_fn: str
    topk_scope: str
    score_thresh: float
    topk_candidates: int
    nms_thresh: float
    detections_per_img: int
    box_weights: tuple[float, float, float, float]
    clip: bool = True
    box_coding: str = "centre_size"

    def to_json(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_torchvision(cls, model, *, score_fn: str, topk_scope: str) -> PostprocessRule:
        """The rule of a torchvision SSD or RetinaNet model (its thresholds and box coder)."""
        wx, wy, ww, wh = (float(w) for w in model.box_coder.weights)
        return cls(
            score_fn=score_fn,
            topk_scope=topk_scope,
            score_thresh=float(model.score_thresh),
            topk_candidates=int(model.topk_candidates),
            nms_thresh=float(model.nms_thresh),
            detections_per_img=int(model.detections_per_img),
            box_weights=(wx, wy, ww, wh),
        )

    @classmethod
    def yolo(cls, preset: str = "val", *, max_det: int = 300, max_nms: int = 30000) -> PostprocessRule:
        """YOLOv5's rule with a preset ("val": 0.001 / 0.6, "deploy": 0.25 / 0.45); see :meth:`with_overrides`."""
        conf, iou = YOLO_PRESETS[preset]
        return cls(score_fn="yolo", topk_scope="all", score_thresh=float(conf), topk_candidates=int(max_nms),
                   nms_thresh=float(iou), detections_per_img=int(max_det), box_weights=(1.0, 1.0, 1.0, 1.0))

    def with_overrides(self, score_thresh: float | None = None, nms_thresh: float | None = None,
                       max_det: int | None = None) -> PostprocessRule:
        """This rule with the given values replaced (None keeps a value).

        Raises:
            EdgeAnchorError: see :func:`check_rule_values`.
        """
        check_rule_values(score_thresh, nms_thresh, max_det)
        values = {"score_thresh": score_thresh, "nms_thresh": nms_thresh, "detections_per_img": max_det}
        return replace(self, **{k: type(getattr(self, k))(v) for k, v in values.items() if v is not None})

    def for_deployment(self, score_thresh: float | None = None, nms_thresh: float | None = None) -> PostprocessRule:
        """The rule the exported graphs use: YOLO's "deploy" preset; other models keep their own rule.

        Search and evaluation use the model's rule (YOLO: "val"); either value can be overridden.
        """
        spec = self
        if self.score_fn == "yolo":
            spec = PostprocessRule.yolo("deploy", max_det=self.detections_per_img, max_nms=self.topk_candidates)
        return spec.with_overrides(score_thresh, nms_thresh)

    @classmethod
    def from_json(cls, obj: dict) -> PostprocessRule:
        return cls(**{**obj, "box_weights": tuple(obj["box_weights"])})


def check_rule_values(score_thresh: float | None = None, nms_thresh: float | None = None,
                      max_det: int | None = None, *, prefix: str = "") -> None:
    """Refuse a score threshold outside [0, 1), an IoU threshold outside (0, 1] or max_det below 1.

    ``prefix`` names the parameters in the message (e.g. "deploy_" for the exported graphs' rule).

    Raises:
        EdgeAnchorError: naming the parameter and the accepted range.
    """
    from .errors import EdgeAnchorError

    if score_thresh is not None and not 0.0 <= score_thresh < 1.0:
        raise EdgeAnchorError(f"`{prefix}score_thresh` must be in [0, 1) (got {score_thresh})")
    if nms_thresh is not None and not 0.0 < nms_thresh <= 1.0:
        raise EdgeAnchorError(f"`{prefix}nms_thresh` must be in (0, 1] (got {nms_thresh})")
    if max_det is not None and max_det < 1:
        raise EdgeAnchorError(f"`{prefix}max_det` must be at least 1 (got {max_det})")


@dataclass
class Candidates:
    """Candidates of one image, in the model's processing order.

    Attributes:
        box_index: int64 (M,), index into the model's flattened boxes.
        labels: int64 (M,).
        scores: float32 (M,).
        boxes_xyxy: float32 (M, 4), decoded and clipped, input pixels.
    """

    box_index: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor
    boxes_xyxy: torch.Tensor

    def __len__(self) -> int:
        return int(self.box_index.numel())

    def take(self, mask: torch.Tensor) -> Candidates:
        return Candidates(self.box_index[mask], self.labels[mask], self.scores[mask], self.boxes_xyxy[mask])


def flatten_level(x: torch.Tensor, num_columns: int) -> torch.Tensor:
    """Head output of one level to per-box rows.

    Args:
        x: (N, A*C, H, W) with anchor-major channels (channel = a*C + c).
        num_columns: C.

    Returns:
        (N, H*W*A, C), box order (row, column, anchor).
    """
    n, _, h, w = x.shape
    x = x.view(n, -1, num_columns, h, w)  # (N, A*C, H, W) -> (N, A, C, H, W)
    return x.permute(0, 3, 4, 1, 2).reshape(n, -1, num_columns)  # -> (N, H*W*A, C)


def candidates(
    cls_logits: torch.Tensor,
    box_deltas: torch.Tensor,
    priors: torch.Tensor,
    image_size: tuple[int, int],
    spec: PostprocessRule,
) -> Candidates:
    """Every above-threshold candidate of one image.

    Args:
        cls_logits: (B, K) logits for the B boxes of one image (for "yolo", K = 1 + nc: objectness first).
        box_deltas: (B, 4) box regression.
        priors: the boxes' priors: anchors_xyxy (B, 4) in input pixels, or for "yolo" the
            :func:`yolo_grid` rows (B, 6).
        image_size: (H, W) to clip to (YOLOv5 does not clip before NMS, so "yolo" does not).
        spec: post-processing rule.

    Returns:
        Candidates ordered as the model processes them: by (label, box) for
        ``softmax``, by (box, label) otherwise.
    """
    label_offset = 0
    if spec.score_fn == "softmax":
        scores = torch.softmax(cls_logits, dim=-1)[:, 1:]  # background column dropped
        label_offset = 1
    elif spec.score_fn == "yolo":
        scores = yolo_scores(cls_logits)
    else:
        scores = exact_sigmoid(cls_logits)
    keep = scores > spec.score_thresh
    if spec.score_fn == "softmax":
        label_idx, box_idx = torch.nonzero(keep.T, as_tuple=True)  # (label, box) order
    else:
        box_idx, label_idx = torch.nonzero(keep, as_tuple=True)  # (box, label) order
    boxes = decode(box_deltas[box_idx], priors[box_idx], spec)
    if spec.score_fn != "yolo" and spec.clip:
        boxes = box_ops.clip_boxes_to_image(boxes, image_size)
    return Candidates(box_idx, label_idx + label_offset, scores[box_idx, label_idx], boxes)


# ATen's CPU loops compute an element-wise op with SIMD code and the last (numel mod 2 x vector width)
# elements with scalar code, which can differ in the last bit; tensors above the parallel grain size
# (32768) are split across threads, each split with its own tail. So torch.sigmoid(x)[i] depends on
# where x[i] sits in the tensor, and slicing anchors away moves it. exact_sigmoid feeds ATen blocks that
# are a multiple of 64 elements (every CPU vector width x 2 unrolling divides it) and at most one grain:
# every element takes the SIMD path, so its value depends on the element alone.
_EXACT_ALIGN = 64
_EXACT_BLOCK = 32768


def exact_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """``torch.sigmoid`` whose value for each element does not depend on its position or the tensor's size.

    This is what keeps a pruned model's scores bit-identical to the unpruned model's scores of the kept
    anchors (the candidate cache's exactness). On GPUs and while tracing for export it is torch.sigmoid.
    """
    if x.device.type != "cpu" or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return torch.sigmoid(x)
    flat = x.reshape(-1)
    n = flat.numel()
    pad = (-n) % _EXACT_ALIGN
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    out = torch.cat([torch.sigmoid(block) for block in flat.split(_EXACT_BLOCK)]) if n else flat
    return out[:n].view(x.shape)


def yolo_scores(cls_logits: torch.Tensor) -> torch.Tensor:
    """YOLOv5 confidences (B, nc) = sigmoid(objectness) * sigmoid(class) from (B, 1 + nc) logits.

    A confidence above a threshold implies the objectness is above it too (class probabilities are
    at most 1), so this one test is YOLOv5's two (objectness, then confidence).
    """
    probs = exact_sigmoid(cls_logits)
    return probs[:, 1:] * probs[:, :1]


def decode(deltas: torch.Tensor, priors: torch.Tensor, spec: PostprocessRule) -> torch.Tensor:
    """Decode (M, 4) box outputs against their (M, 4) anchors (torchvision's BoxCoder, or
    :func:`linear_size_decode` for ``box_coding`` "linear_size") or YOLO grid rows."""
    if spec.score_fn == "yolo":
        return yolo_decode(deltas, priors)
    if spec.box_coding == "linear_size":
        return linear_size_decode(deltas, priors, spec.box_weights)
    return BoxCoder(weights=tuple(spec.box_weights)).decode_single(deltas, priors)


def linear_size_decode(deltas: torch.Tensor, anchors_xyxy: torch.Tensor,
                       weights: tuple[float, float, float, float]) -> torch.Tensor:
    """MediaPipe's decode: centre ``a_ctr + d_xy / (wx, wy) * a_wh``, size ``d_wh / (ww, wh) * a_wh`` (no exp).

    Args:
        deltas: (M, 4) float, (dx, dy, dw, dh).
        anchors_xyxy: (M, 4) anchors in input pixels.
        weights: (wx, wy, ww, wh); MediaPipe's (x_scale, y_scale, w_scale, h_scale).

    Returns:
        (M, 4) boxes xyxy in input pixels. The anchors' centres and sizes are computed as torchvision's
        BoxCoder computes them, so "centre_size" and "linear_size" share every step but the size.
    """
    wh = anchors_xyxy[:, 2:] - anchors_xyxy[:, :2]  # (M, 2)
    ctr = anchors_xyxy[:, :2] + 0.5 * wh  # (M, 2)
    w = deltas.new_tensor(weights)  # (4,)
    pred_ctr = deltas[:, :2] / w[:2] * wh + ctr
    half = 0.5 * (deltas[:, 2:] / w[2:] * wh)
    return torch.cat([pred_ctr - half, pred_ctr + half], dim=1)


def yolo_grid(anchor_set, levels) -> torch.Tensor:
    """Per box of the given levels, YOLOv5's decoding constants (B, 6) float32.

    Columns: (col - 0.5, row - 0.5, stride_x, stride_y, anchor_w, anchor_h), anchors in input pixels,
    boxes in (row, column, anchor) order as the head's flattened outputs.
    """
    rows = []
    for i in levels:
        level = anchor_set.levels[i]
        fh, fw = level.feature_size
        sy, sx = level.stride
        row, col = torch.meshgrid(torch.arange(fh, dtype=torch.float32), torch.arange(fw, dtype=torch.float32),
                                  indexing="ij")
        cells = torch.stack([col.reshape(-1) - 0.5, row.reshape(-1) - 0.5], dim=1)  # (fh*fw, 2)
        wh = torch.tensor([[a.w, a.h] for a in level.anchors], dtype=torch.float32).reshape(-1, 2)  # (A, 2)
        a = wh.shape[0]
        table = torch.cat([cells[:, None].expand(-1, a, 2), torch.tensor([sx, sy], dtype=torch.float32).expand(
            fh * fw, a, 2), wh[None].expand(fh * fw, a, 2)], dim=2)  # (fh*fw, A, 6)
        rows.append(table.reshape(-1, 6))
    return torch.cat(rows) if rows else torch.zeros(0, 6)


def yolo_decode(raw: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """YOLOv5's decode of raw (M, 4) outputs: xy = (2s + cell - 0.5) * stride, wh = (2s)^2 * anchor; xyxy.

    The arithmetic is YOLOv5 Detect's, in the same order, so the boxes equal its boxes.
    """
    s = exact_sigmoid(raw)
    xy = (s[:, :2] * 2 + grid[:, :2]) * grid[:, 2:4]
    wh = (s[:, 2:] * 2) ** 2 * grid[:, 4:6]
    return torch.cat([xy - wh / 2, xy + wh / 2], dim=1)


def topk_indices(cands: Candidates, spec: PostprocessRule, level_starts: torch.Tensor) -> torch.Tensor:
    """Rows of ``cands`` that survive the per-class or per-level top-k, in model order.

    Equal to calling ``scores[group].topk(min(k, n))`` on each group in turn,
    as torchvision does, but vectorised: one stable sort by (group, -score)
    and a rank within each group (in NumPy: a few hundred candidates per
    image make per-call overhead, not arithmetic, the cost). ``torch.topk``
    orders exactly tied scores in an unspecified (introsort) order, and that
    order decides which of two tied boxes NMS visits first; a group with a
    tie inside its top k (or a NaN score) is therefore redone with ``topk``
    itself, so the rows and their order always equal the per-group loop's.

    Args:
        cands: candidates in model order (see :func:`candidates`).
        spec: post-processing rule.
        level_starts: int64 (L+1,), the first box index of each level and the
            total; used by ``topk_scope="level"``.

    Returns:
        int64 (T,) row indices into ``cands``: groups ascending, each by score.
    """
    if spec.topk_scope == "class":
        groups = cands.labels  # labels ascend as in torchvision
    elif spec.topk_scope == "all":
        groups = torch.zeros_like(cands.labels)
    else:
        groups = torch.bucketize(cands.box_index, level_starts[1:], right=True)
    scores, k, num = cands.scores, spec.topk_candidates, len(cands)
    if num == 0:
        return torch.zeros(0, dtype=torch.int64, device=scores.device)
    g, s = groups.detach().cpu().numpy(), scores.detach().to("cpu", torch.float64).numpy()  # exact for any float
    order = np.lexsort((-s, g))  # (M,) by group, then score descending; stable
    g_sorted, s_sorted = g[order], s[order]
    first = np.empty(num, dtype=bool)  # (M,) first row of its group
    first[0] = True
    np.not_equal(g_sorted[1:], g_sorted[:-1], out=first[1:])
    pos = np.arange(num)
    rank = pos - np.maximum.accumulate(np.where(first, pos, 0))  # (M,) rank within the group
    keep = rank < k
    kept = torch.from_numpy(order[keep]).to(scores.device)
    # Ambiguous groups: two equal scores side by side with the first inside the top k, or a NaN.
    tied = ~first[1:] & (s_sorted[1:] == s_sorted[:-1]) & keep[:-1]
    nan = np.isnan(s_sorted)
    if tied.any() or nan.any():
        kept_groups = g_sorted[keep]
        for group in np.unique(np.concatenate([g_sorted[:-1][tied], g_sorted[nan]])).tolist():
            idx = torch.nonzero(groups == group).flatten()
            _, top = scores[idx].topk(min(k, idx.numel()))
            kept[torch.from_numpy(kept_groups == group).to(kept.device)] = idx[top]  # same length: in place
    return kept


def select_indices(cands: Candidates, spec: PostprocessRule,
                   level_starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows :func:`select` keeps: ``kept_idx`` (T,) rows of ``cands`` that entered NMS (see
    :func:`topk_indices`), and ``keep`` (D,) positions in ``kept_idx`` of the detections, in output order."""
    kept_idx = topk_indices(cands, spec, level_starts)
    boxes, scores, labels = cands.boxes_xyxy[kept_idx], cands.scores[kept_idx], cands.labels[kept_idx]
    if spec.score_fn == "yolo":  # YOLOv5: one NMS over boxes shifted by class
        keep = box_ops.nms(boxes + labels[:, None].to(boxes.dtype) * YOLO_CLASS_OFFSET, scores, spec.nms_thresh)
    else:
        keep = box_ops.batched_nms(boxes, scores, labels, spec.nms_thresh)
    return kept_idx, keep[: spec.detections_per_img]


def select(cands: Candidates, spec: PostprocessRule, level_starts: torch.Tensor) -> dict[str, torch.Tensor]:
    """Top-k, class-aware NMS and max-detections on one image's candidates.

    Args:
        cands: candidates in model order (see :func:`candidates`).
        spec: post-processing rule.
        level_starts: see :func:`topk_indices`.

    Returns:
        Dict with ``boxes`` (D, 4) xyxy, ``scores`` (D,), ``labels`` (D,) int64,
        ``box_index`` (D,) of the detections, and ``topk_box_index`` (T,), the
        boxes that entered NMS.
    """
    kept_idx, keep = select_indices(cands, spec, level_starts)
    boxes, scores, labels = cands.boxes_xyxy[kept_idx], cands.scores[kept_idx], cands.labels[kept_idx]
    box_index = cands.box_index[kept_idx]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep], "box_index": box_index[keep],
            "topk_box_index": box_index}
