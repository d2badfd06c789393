"""The exported graphs as ``nn.Module``s: backbone, head, postprocess, end to end.

Each module wraps a :class:`~edgeanchor.models.base.Detector` for batch 1 at
its fixed input size, with flat tensor inputs and outputs so that every ONNX
input and output gets a name. :class:`ExportPostprocess` re-implements
``Detector.postprocess`` (:func:`edgeanchor.postprocess.candidates` then
:func:`~edgeanchor.postprocess.select`) with static-shape tensor ops and one
ONNX ``NonMaxSuppression``:

- every box is decoded (torchvision ``BoxCoder``, anchors as constants, then
  clipped to the image; YOLO: YOLOv5's decode, unclipped, grid as constants);
- a (C, B) score matrix holds, per class c and box b, the score of every
  candidate that survives the score threshold and the model's top-k (per class
  for SSD, per level for RetinaNet, over the whole image for YOLO's max_nms),
  and ``SENTINEL`` everywhere else;
- NonMaxSuppression runs per class on the class axis, which is torchvision's
  class-aware ``batched_nms`` (and YOLOv5's class-offset NMS) without the
  coordinate-offset trick;
- the best ``detections_per_img`` survivors are kept, padded with zeros.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import boxes as box_ops

from ..models.base import Detector
from ..postprocess import decode, flatten_level, yolo_scores
from .fused_head import FUSED_HEAD, FusedHead, can_fuse

# Score of a (class, box) pair that is not a candidate, and the NMS score threshold. A candidate's score is
# above the rule's threshold (>= 0), so it is > 0 = NMS_SCORE_FLOOR > SENTINEL: the result does not depend on
# whether NMS compares scores with > or >= (ONNX Runtime keeps score > score_threshold; checked in the
# tests), and the threshold is >= 0, which runtimes such as OpenCV require (its NMSBoxes asserts it).
SENTINEL = -1.0
NMS_SCORE_FLOOR = 0.0


def level_names(detector: Detector) -> dict[str, list[str]]:
    """ONNX tensor names per active level, keyed by model level index."""
    levels = detector.active_levels
    return {
        "features": [f"features_{i}" for i in levels],
        "cls": [f"cls_{i}" for i in levels],
        "box": [f"box_{i}" for i in levels],
        "head": [n for i in levels for n in (f"cls_{i}", f"box_{i}")],
    }


class NonMaxSuppression(torch.autograd.Function):
    """Per-class NMS that exports as one ONNX ``NonMaxSuppression`` node.

    torchvision's own ``nms`` symbolic has no score threshold and no class
    axis; this one has both. The eager forward (used while tracing) computes
    the same selection with ``torchvision.ops.nms``.
    """

    @staticmethod
    def forward(ctx, boxes, scores, max_per_class: int, iou_thresh: float, score_floor: float):
        # boxes (1, B, 4) xyxy, scores (1, C, B) -> selected (S, 3) int64 rows (batch, class, box)
        rows = []
        for c in range(scores.shape[1]):
            idx = torch.nonzero(scores[0, c] > score_floor).flatten()
            keep = box_ops.nms(boxes[0, idx], scores[0, c, idx], iou_thresh)[:max_per_class]
            sel = idx[keep]
            rows.append(torch.stack([torch.zeros_like(sel), torch.full_like(sel, c), sel], dim=1))
        return torch.cat(rows) if rows else torch.zeros((0, 3), dtype=torch.int64)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class, iou_thresh, score_floor):
        return g.op(
            "NonMaxSuppression",
            boxes,
            scores,
            g.op("Constant", value_t=torch.tensor([max_per_class], dtype=torch.int64)),
            g.op("Constant", value_t=torch.tensor([iou_thresh], dtype=torch.float32)),
            g.op("Constant", value_t=torch.tensor([score_floor], dtype=torch.float32)),
            center_point_box_i=0,
        )


class KeepSelected(torch.autograd.Function):
    """``scores`` (1, C, B) where NMS selected (batch, class, box) rows, SENTINEL elsewhere.

    Exports as ``ScatterND(SENTINEL, selected, GatherND(scores, selected))``: the selected rows index
    the score tensor as they are.
    """

    @staticmethod
    def forward(ctx, scores, selected):
        kept = torch.full_like(scores, SENTINEL)
        b, c, i = selected[:, 0], selected[:, 1], selected[:, 2]
        kept[b, c, i] = scores[b, c, i]
        return kept

    @staticmethod
    def symbolic(g, scores, selected):
        fill = g.op("Expand", g.op("Constant", value_t=torch.tensor(SENTINEL, dtype=torch.float32)),
                    g.op("Shape", scores))
        return g.op("ScatterND", fill, selected, g.op("GatherND", scores, selected))


class DecodeBoxes(nn.Module):
    """Head outputs -> decoded boxes and per-class probabilities (all boxes)."""

    priors: torch.Tensor  # buffer: the detector's decode_priors

    def __init__(self, detector: Detector):
        super().__init__()
        self.cls_columns = detector.cls_columns
        self.postprocess_spec = detector.postprocess_spec
        self.image_size = tuple(detector.image_size)
        self.register_buffer("priors", detector.decode_priors.detach().clone())

    def forward(self, head_flat: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns boxes_xyxy (B, 4) in input px (clipped, except YOLO) and probs (B, K).

        ``probs`` keeps SSD's background column; for YOLO it is the confidence obj * cls (B, nc).
        """
        cls = torch.cat([flatten_level(c, self.cls_columns)[0] for c in head_flat[0::2]])  # -> (B, columns)
        box = torch.cat([flatten_level(b, 4)[0] for b in head_flat[1::2]])  # -> (B, 4)
        boxes = decode(box, self.priors, self.postprocess_spec)
        score_fn = self.postprocess_spec.score_fn
        if score_fn == "yolo":
            return boxes, yolo_scores(cls)
        if self.postprocess_spec.clip:
            boxes = box_ops.clip_boxes_to_image(boxes, self.image_size)
        probs = torch.softmax(cls, dim=-1) if score_fn == "softmax" else torch.sigmoid(cls)
        return boxes, probs


class ExportPostprocess(nn.Module):
    """``Detector.postprocess`` for batch 1 as exportable ops.

    Inputs are the head outputs ``cls_L, box_L`` of every active level, in
    level order. Outputs are ``detections`` float32 (1, max_det, 6) rows
    (x1, y1, x2, y2, score, label) in input pixels, best first, zero rows
    after the last detection, and ``num_detections`` int64 (1,).
    """

    def __init__(self, detector: Detector):
        super().__init__()
        self.decoder = DecodeBoxes(detector)
        self.postprocess_spec = detector.postprocess_spec
        starts = detector.level_starts.tolist()
        self.level_sizes = [b - a for a, b in zip(starts[:-1], starts[1:])]
        self.num_boxes = starts[-1]
        self.num_classes = detector.num_classes
        self.max_det = int(detector.postprocess_spec.detections_per_img)
        self.label_offset = 1 if self.postprocess_spec.score_fn == "softmax" else 0

    def candidate_scores(self, probs: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(B, K) probabilities -> (C, B) candidate scores (SENTINEL elsewhere), and max per class."""
        # Sizes come from the anchor set, never from tensor shapes: under the
        # tracer those are traced values and would not stay Python constants.
        pp = self.postprocess_spec
        if pp.topk_scope == "class":
            scores = probs[:, self.label_offset:].t()  # (B, K) -> (C, B), background dropped
            k = min(pp.topk_candidates, self.num_boxes)
            top, idx = scores.topk(k, dim=1)  # per-class top-k, (C, k)
            top = torch.where(top > pp.score_thresh, top, torch.full_like(top, SENTINEL))
            return torch.full_like(scores, SENTINEL).scatter(1, idx, top), k
        if pp.topk_scope == "all":  # YOLOv5's max_nms: the best candidates of the image, (box, class) pairs
            flat = probs.reshape(-1)  # (B*C,)
            k = min(pp.topk_candidates, self.num_boxes * self.num_classes)
            top, idx = flat.topk(k)
            top = torch.where(top > pp.score_thresh, top, torch.full_like(top, SENTINEL))
            return torch.full_like(flat, SENTINEL).scatter(0, idx, top).view_as(probs).t(), k
        per_level, total = [], 0
        for size, level_probs in zip(self.level_sizes, probs.split(self.level_sizes)):  # (n_L, K) per level
            flat = level_probs.reshape(-1)  # (n_L, K) -> (n_L*K,), (box, class) order
            k = min(pp.topk_candidates, size * self.num_classes)
            top, idx = flat.topk(k)  # per-level top-k over (box, class) pairs
            top = torch.where(top > pp.score_thresh, top, torch.full_like(top, SENTINEL))
            per_level.append(torch.full_like(flat, SENTINEL).scatter(0, idx, top).view_as(level_probs))
            total += k
        return torch.cat(per_level).t(), total  # (B, K) -> (C, B)

    def forward(self, *head_flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows, count, _ = self.select(*head_flat)
        return rows, count

    def select(self, *head_flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`forward`'s rows and count, and each row's box index (max_det,) (padding rows: any box)."""
        boxes, probs = self.decoder(list(head_flat))
        scores, max_per_class = self.candidate_scores(probs)
        selected = NonMaxSuppression.apply(
            boxes.unsqueeze(0), scores.unsqueeze(0), max_per_class, float(self.postprocess_spec.nms_thresh),
            NMS_SCORE_FLOOR,
        )  # (S, 3): (batch, class, box)
        # The survivors' scores in a static (1, C, B) tensor, SENTINEL elsewhere, indexed by NMS's own
        # (batch, class, box) rows: no arithmetic on the data-dependent (S, 3) tensor, and every op after
        # this one has a fixed shape whatever S is (OpenCV 5 keeps the shapes of an op's first run).
        kept = KeepSelected.apply(scores.unsqueeze(0), selected).reshape(-1)  # (C*B,)
        return self.keep_best(boxes, kept)

    def keep_best(self, boxes: torch.Tensor, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Best max_det survivors of ``kept`` (C*B,), best first, zero-padded rows (x1, y1, x2, y2, score, label),
        their count, and each row's box index."""
        n = self.max_det
        pairs = (self.num_classes - self.label_offset) * self.num_boxes  # C*B, from the anchor set (see above)
        if pairs < n:  # fewer (class, box) pairs than max_det: pad to a static n
            kept = torch.cat([kept, kept.new_full((n - pairs,), SENTINEL)])
        top, order = kept.topk(n)  # (n,)
        cls_idx = torch.div(order, self.num_boxes, rounding_mode="floor")
        box_idx = order - cls_idx * self.num_boxes  # in [0, B) for padding rows too
        valid = top > NMS_SCORE_FLOOR  # (n,)
        labels = (cls_idx + self.label_offset).to(boxes.dtype)
        rows = torch.cat([boxes[box_idx], top[:, None], labels[:, None]], dim=1)  # (n, 6)
        rows = rows * valid[:, None].to(rows.dtype)
        return rows.unsqueeze(0), valid.sum().reshape(1).to(torch.int64), box_idx  # (1, n, 6), (1,), (n,)


class BackboneGraph(nn.Module):
    """``images`` (1, 3, H, W) -> ``features_L`` per active level."""

    def __init__(self, detector: Detector):
        super().__init__()
        self.detector = detector

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.detector.backbone(images))


class HeadGraph(nn.Module):
    """``features_L`` -> ``cls_L, box_L`` per active level (raw head convolutions).

    With ``fused`` (default :data:`~edgeanchor.exporting.fused_head.FUSED_HEAD`) and a head that allows
    it (:func:`~edgeanchor.exporting.fused_head.can_fuse`: SSD300, the demo), each level's cls and box
    convolutions run as one convolution whose output is sliced into ``cls_L`` and ``box_L``; other
    heads run as they are. ``is_fused`` says which; the outputs are the same either way.
    """

    def __init__(self, detector: Detector, fused: bool = FUSED_HEAD):
        super().__init__()
        self.detector = detector
        self.fused_head = FusedHead(detector) if fused and can_fuse(detector) else None

    @property
    def is_fused(self) -> bool:
        return self.fused_head is not None

    def forward(self, *features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        head = self.fused_head if self.fused_head is not None else self.detector.head
        return tuple(t for pair in head(list(features)) for t in pair)


class EndToEndGraph(nn.Module):
    """``images`` -> ``detections``, ``num_detections``."""

    def __init__(self, detector: Detector):
        super().__init__()
        self.backbone = BackboneGraph(detector)
        self.head = HeadGraph(detector)
        self.postprocess = ExportPostprocess(detector)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.postprocess(*self.head(*self.backbone(images)))


class DecodedGraph(nn.Module):
    """``images`` -> ``boxes_xyxy`` (1, B, 4) and ``scores`` (1, B, K): the input of TensorRT's NMS plugin.

    ``scores`` keeps SSD's background column (class 0), so the plugin's class
    index equals the model's label.
    """

    def __init__(self, detector: Detector):
        super().__init__()
        self.backbone = BackboneGraph(detector)
        self.head = HeadGraph(detector)
        self.decoder = DecodeBoxes(detector)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        boxes, probs = self.decoder(list(self.head(*self.backbone(images))))
        return boxes.unsqueeze(0), probs.unsqueeze(0)


class NoNmsGraph(nn.Module):
    """``images`` -> the best K candidates before NMS, in fixed shapes, for runtimes without NMS.

    Outputs ``boxes`` (1, K, 4) xyxy in input pixels, ``scores`` (1, K) and ``labels`` (1, K) int64:
    the K best (box, class) pairs by score after decoding and the score threshold, best first; rows
    past the last candidate have score 0 (their boxes and labels mean nothing). K is
    min(``topk``, boxes x classes). The model's own top-k and NMS are left to the application (for
    example OpenCV's ``NMSBoxesBatched`` at the model's IoU threshold); :meth:`metadata` gives that
    rule, which the export writes into the file's metadata_props.

    Only ops that OpenCV DNN 4.x and 5.x run with ONNX Runtime's results: decode, Where, TopK,
    GreaterOrEqual, ReduceSum, Gather, Reshape; static shapes; no NonMaxSuppression. Two plainer-looking
    forms fail in OpenCV 4.x: a floor division of the TopK index (exported as integer Div, Mod and a
    boolean constant, which OpenCV 4.x cannot parse; and it computes integer Div in float32, so the
    quotient is not an integer) and 1-D tensors (OpenCV 4.x returned zero scores for them). So pairs are
    ranked class-major in one (1, C*B) row, and a pair's class is the number of class start offsets at
    or below its index: comparisons, sums and products of integers, exact in float32 too while
    C*B < 2**24.
    """

    class_starts: torch.Tensor  # buffer int64 (C-1,): where each class's pairs start in the (1, C*B) row

    def __init__(self, detector: Detector, topk: int = 1000):
        super().__init__()
        self.backbone = BackboneGraph(detector)
        self.head = HeadGraph(detector)
        self.decoder = DecodeBoxes(detector)
        spec = detector.postprocess_spec
        self.postprocess_spec = spec
        self.resize_mode = detector.resize_mode
        self.first_label = int(detector.first_label)
        self.image_size = tuple(int(v) for v in detector.image_size)
        self.score_thresh = float(spec.score_thresh)
        self.label_offset = 1 if spec.score_fn == "softmax" else 0
        self.num_classes = detector.num_classes - self.label_offset  # score columns kept
        self.num_boxes = int(detector.level_starts[-1])
        self.k = min(int(topk), self.num_boxes * self.num_classes)
        # Index of pair (class c, box 0) in forward()'s class-major order, for c = 1 .. C-1.
        self.register_buffer("class_starts", torch.arange(1, self.num_classes) * self.num_boxes, persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        boxes, probs = self.decoder(list(self.head(*self.backbone(images))))  # (B, 4), (B, K)
        scores = probs[:, self.label_offset:].t().reshape(1, -1)  # (B, C) -> (C, B) -> (1, C*B): pair c*B + b
        scores = torch.where(scores > self.score_thresh, scores, torch.zeros_like(scores))
        top, pair = scores.topk(self.k, dim=1)  # (1, K) each
        if self.num_classes > 1:
            at_or_above = pair.unsqueeze(-1) >= self.class_starts  # (1, K, 1) vs (C-1,) -> (1, K, C-1)
            one, zero = torch.ones_like(pair).unsqueeze(-1), torch.zeros_like(pair).unsqueeze(-1)  # (1, K, 1)
            cls = torch.where(at_or_above, one, zero).sum(-1)  # (1, K)
        else:
            cls = torch.zeros_like(pair)
        box_idx = pair - cls * self.num_boxes  # (1, K)
        picked = boxes[box_idx.reshape(-1)].reshape(1, self.k, 4)  # (K,) rows of (B, 4) -> (1, K, 4)
        return picked, top, cls + self.label_offset

    def metadata(self) -> dict[str, str]:
        """The rule an application needs to finish the job, as ONNX metadata_props (all strings).

        Keys: ``nms_iou_threshold`` and ``detections_per_img`` (class-aware NMS, then the best that many,
        as ``model.onnx`` does), ``score_threshold`` (already applied in the graph), ``topk`` (K),
        ``topk_scope`` and ``topk_candidates`` (the model's own candidate top-k, which the graph's one
        global top-K stands in for), ``first_label`` (label of the first category: 1 when 0 is the
        background, SSD), ``input_size`` ("height,width" in pixels), ``resize`` ("stretch", or
        "letterbox": YOLOv5's, aspect kept, padded with grey ``letterbox_fill``) and ``boxes``.
        """
        spec = self.postprocess_spec
        meta = {
            "nms_iou_threshold": repr(float(spec.nms_thresh)),
            "detections_per_img": str(int(spec.detections_per_img)),
            "score_threshold": repr(self.score_thresh),
            "topk": str(self.k),
            "topk_scope": str(spec.topk_scope),
            "topk_candidates": str(int(spec.topk_candidates)),
            "first_label": str(self.first_label),
            "input_size": f"{self.image_size[0]},{self.image_size[1]}",
            "resize": self.resize_mode,
            "boxes": "xyxy in input pixels",
        }
        if self.resize_mode == "letterbox":
            meta["letterbox_fill"] = "114"  # YOLOv5's grey, edgeanchor.datasets.coco.LETTERBOX_FILL
        return meta
