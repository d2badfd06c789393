"""The YOLOv5 (v7.0) training loss, written for our detector stages.

Implements YOLOv5's ``ComputeLoss`` from its published description: targets
are matched to every anchor whose width and height ratios are within
``anchor_t``, and each match trains the cell holding the box centre plus the
nearest horizontal and vertical neighbour cells; the box loss is 1 - CIoU of
the decoded prediction, the objectness target is the (detached) CIoU at
assigned cells (IoU-aware objectness, ``gr = 1``), and classes use
independent sigmoids. Gains follow ``hyp.scratch-low.yaml`` and are scaled by
the number of levels, classes and the image size as YOLOv5 does.

Where it differs from YOLOv5:

- The sum is **not** multiplied by the batch size. Our optimiser is AdamW,
  for which a constant scale on the loss only changes the effective learning
  rate, so the terms are kept as per-element means.
- No ``autobalance`` of the level weights, no label smoothing (targets are
  1.0 / 0.0), no focal loss (``fl_gamma = 0``), and no ``sort_obj_iou``.
- When one (image, anchor, row, col) position is assigned several times, the
  objectness target is the value of the **last** assignment in the order
  centre cells, then left, up, right and down neighbours; within each,
  anchor-major then target order. YOLOv5 leaves duplicates to the scatter
  order of the device; here the rule is explicit and the same on CPU and CUDA.

Level weights (4.0, 1.0, 0.4 for three levels) follow the model's level
index, so a pruned model keeps the weights of the levels it keeps, and the
gains use the number of model levels, pruned ones included.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torchvision.ops import complete_box_iou_loss

from ..anchors import AnchorLevel, AnchorSet
from ..errors import EdgeAnchorError

DEFAULT_HYP = {"box": 0.05, "obj": 1.0, "cls": 0.5, "anchor_t": 4.0}
# Objectness weight per model level (YOLOv5's ``balance``).
BALANCE_3 = (4.0, 1.0, 0.4)
BALANCE_MANY = (4.0, 1.0, 0.25, 0.06, 0.02)
# A centre this close (in cells) to a cell edge also trains the neighbour across it.
NEIGHBOUR_MARGIN = 0.5


class LevelTargets(NamedTuple):
    """The assignments of one level, all tensors with n rows.

    Attributes:
        image: (n,) int64 image index in the batch.
        anchor: (n,) int64 anchor index within the level.
        row: (n,) int64 cell row.
        col: (n,) int64 cell column.
        box_xywh: (n, 4) float32 target (x, y, w, h) in grid units, with x, y
            measured from the assigned cell's top-left corner.
        anchor_wh: (n, 2) float32 anchor (w, h) in grid units.
        labels: (n,) int64 class index.
    """

    image: torch.Tensor
    anchor: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor
    box_xywh: torch.Tensor
    anchor_wh: torch.Tensor
    labels: torch.Tensor


def level_stride(anchor_set: AnchorSet, level: AnchorLevel) -> tuple[float, float]:
    """(sy, sx) of a level; a level without a stride tiles the image."""
    if level.stride is not None:
        return level.stride
    return (anchor_set.image_size[0] / level.feature_size[0], anchor_set.image_size[1] / level.feature_size[1])


def build_targets(
    anchor_set: AnchorSet,
    levels: Sequence[int],
    targets: list[dict],
    grid_sizes: Sequence[tuple[int, int]] | None = None,
    *,
    anchor_t: float = 4.0,
    device: torch.device | str | None = None,
) -> list[LevelTargets]:
    """YOLOv5's assignment of target boxes to (image, anchor, cell), per level.

    A target goes to anchor a when max(r, 1/r) < ``anchor_t`` for both width
    and height, r = target size / anchor size. Each match trains the cell
    holding the centre (gx, gy) in grid units, the left cell when
    gx mod 1 < 0.5 and gx > 1, the upper when gy mod 1 < 0.5 and gy > 1, the
    right when (W - gx) mod 1 < 0.5 and W - gx > 1, and the lower likewise.
    A neighbour's cell is floor(centre -+ 0.5), clamped into the grid; as in
    YOLOv5, a centre exactly on a cell edge then gets a "right" / "lower"
    assignment to its own cell (a duplicate), never a fourth cell.

    Args:
        anchor_set: the model's anchor set (sizes in input pixels).
        levels: model level indices to build targets for.
        targets: one dict per image: ``boxes`` (n, 4) xyxy in input pixels,
            ``labels`` (n,) int64.
        grid_sizes: (H_i, W_i) per entry of ``levels``; default the levels'
            ``feature_size``.
        anchor_t: the largest allowed size ratio between target and anchor.
        device: where the returned tensors live; default the boxes' device.

    Returns:
        One :class:`LevelTargets` per entry of ``levels``, rows ordered centre
        cells first, then left, up, right and down neighbours; within each,
        anchor-major, then targets in image order.
    """
    if device is None:
        device = targets[0]["boxes"].device if targets else "cpu"
    boxes = torch.cat([t["boxes"].reshape(-1, 4) for t in targets]).to(device=device, dtype=torch.float32)
    labels = torch.cat([t["labels"].reshape(-1) for t in targets]).to(device=device, dtype=torch.int64)
    counts = torch.tensor([t["boxes"].reshape(-1, 4).shape[0] for t in targets], device=device)
    image = torch.repeat_interleave(torch.arange(len(targets), device=device), counts)
    centre_px = (boxes[:, :2] + boxes[:, 2:]) / 2  # (T, 2) x, y
    size_px = boxes[:, 2:] - boxes[:, :2]  # (T, 2) w, h
    out = []
    for j, i in enumerate(levels):
        level = anchor_set.levels[i]
        sy, sx = level_stride(anchor_set, level)
        grid_h, grid_w = grid_sizes[j] if grid_sizes is not None else level.feature_size
        scale = torch.tensor([sx, sy], device=device)
        anchors = torch.tensor([[a.w, a.h] for a in level.anchors], device=device).reshape(-1, 2) / scale
        out.append(_assign_level(centre_px / scale, size_px / scale, anchors, image, labels,
                                 (grid_h, grid_w), anchor_t))
    return out


def _assign_level(gxy: torch.Tensor, gwh: torch.Tensor, anchors: torch.Tensor, image: torch.Tensor,
                  labels: torch.Tensor, grid: tuple[int, int], anchor_t: float) -> LevelTargets:
    """Assignments on one level; gxy, gwh (T, 2) and anchors (A, 2) in grid units."""
    grid_h, grid_w = grid
    ratio = gwh[None] / anchors[:, None]  # (A, T, 2)
    match = torch.maximum(ratio, 1 / ratio).amax(2) < anchor_t  # (A, T)
    anchor_idx, target_idx = match.nonzero(as_tuple=True)  # anchor-major
    centre = gxy[target_idx]  # (M, 2)
    inverse = torch.tensor([grid_w, grid_h], device=gxy.device) - centre  # (M, 2) distance to the far edges
    g = NEIGHBOUR_MARGIN
    near_low = (centre % 1 < g) & (centre > 1)  # (M, 2): left, up
    near_high = (inverse % 1 < g) & (inverse > 1)  # (M, 2): right, down
    chosen = torch.stack([torch.ones_like(near_low[:, 0]), near_low[:, 0], near_low[:, 1],
                          near_high[:, 0], near_high[:, 1]])  # (5, M): centre, left, up, right, down
    shifts = torch.tensor([[0.0, 0.0], [g, 0.0], [0.0, g], [-g, 0.0], [0.0, -g]], device=gxy.device)
    which, m = chosen.nonzero(as_tuple=True)  # offset-major
    t = target_idx[m]
    cell = (centre[m] - shifts[which]).floor().long()  # (n, 2) col, row
    cell[:, 0].clamp_(0, grid_w - 1)
    cell[:, 1].clamp_(0, grid_h - 1)
    box = torch.cat([gxy[t] - cell, gwh[t]], 1)  # (n, 4) xywh, xy from the cell's corner
    return LevelTargets(image[t], anchor_idx[m], cell[:, 1], cell[:, 0], box, anchors[anchor_idx[m]], labels[t])


def yolov5_loss(det, head_outputs: list[tuple[torch.Tensor, torch.Tensor]], targets: list[dict],
                hyp: dict | None = None) -> dict[str, torch.Tensor]:
    """YOLOv5's box, objectness and class losses (see the module docstring).

    Not multiplied by the batch size, unlike YOLOv5: with AdamW that scale
    only changes the effective learning rate.

    Args:
        det: the detector; uses ``anchor_set``, ``active_levels``,
            ``num_classes`` (nc, no background) and ``image_size`` (H, W).
        head_outputs: per active level, ``cls`` (N, A*(1+nc), H, W) with
            channel a*(1+nc) the objectness logit and a*(1+nc)+1+c class c's,
            and ``box`` (N, A*4, H, W) raw (tx, ty, tw, th) per anchor.
        targets: one dict per image: ``boxes`` (n, 4) float32 xyxy in input
            pixels, ``labels`` (n,) int64 in 0..nc-1.
        hyp: overrides of ``box``, ``obj``, ``cls`` and ``anchor_t``
            (defaults: YOLOv5's hyp.scratch-low).

    Returns:
        {"box", "obj", "cls"}: scalar tensors on the outputs' device, each
        connected to the graph (0 when nothing is assigned); the caller sums them.

    Raises:
        EdgeAnchorError: on an unknown ``hyp`` key or more than 5 model levels.
    """
    hyp = _resolve_hyp(hyp)
    anchor_set: AnchorSet = det.anchor_set
    num_levels = anchor_set.num_levels
    if num_levels > len(BALANCE_MANY):
        raise EdgeAnchorError(f"yolov5_loss supports at most {len(BALANCE_MANY)} levels, the model has {num_levels}")
    balance = BALANCE_3 if num_levels == 3 else BALANCE_MANY
    levels = list(det.active_levels)
    assert len(head_outputs) == len(levels), "one (cls, box) pair per active level"
    device = head_outputs[0][0].device
    grids = [(cls.shape[-2], cls.shape[-1]) for cls, _ in head_outputs]
    assigned = build_targets(anchor_set, levels, targets, grids, anchor_t=hyp["anchor_t"], device=device)
    num_classes = det.num_classes
    box_terms, obj_terms, cls_terms = [], [], []
    for (cls_out, box_out), level, t in zip(head_outputs, levels, assigned):
        box_loss, obj_loss, cls_loss = _level_loss(cls_out, box_out, t, num_classes)
        box_terms.append(box_loss)
        obj_terms.append(obj_loss * balance[level])
        cls_terms.append(cls_loss)
    per_level = 3 / num_levels
    height, width = det.image_size
    return {
        "box": torch.stack(box_terms).sum() * (hyp["box"] * per_level),
        "obj": torch.stack(obj_terms).sum() * (hyp["obj"] * (max(height, width) / 640) ** 2 * per_level),
        "cls": torch.stack(cls_terms).sum() * (hyp["cls"] * num_classes / 80 * per_level),
    }


def _resolve_hyp(hyp: dict | None) -> dict:
    unknown = sorted(set(hyp or {}) - set(DEFAULT_HYP))
    if unknown:
        raise EdgeAnchorError(f"unknown yolov5_loss hyp keys {unknown}; use {sorted(DEFAULT_HYP)}")
    return {**DEFAULT_HYP, **(hyp or {})}


def _level_loss(cls_out: torch.Tensor, box_out: torch.Tensor, t: LevelTargets,
                num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(box, obj, cls) losses of one level, before gains and level weight."""
    batch, _, grid_h, grid_w = cls_out.shape
    per_anchor = 1 + num_classes
    num_anchors = cls_out.shape[1] // per_anchor
    assert cls_out.shape[1] == num_anchors * per_anchor and box_out.shape[1] == num_anchors * 4
    logits = cls_out.reshape(batch, num_anchors, per_anchor, grid_h, grid_w)  # (N, A*K, H, W) -> (N, A, K, H, W)
    raw = box_out.reshape(batch, num_anchors, 4, grid_h, grid_w)  # (N, A*4, H, W) -> (N, A, 4, H, W)
    # Advanced indices around a slice put the index dimension first: (n, 4) and (n, K).
    pred = raw[t.image, t.anchor, :, t.row, t.col].float()
    picked = logits[t.image, t.anchor, :, t.row, t.col].float()
    pxy = 2 * pred[:, :2].sigmoid() - 0.5
    pwh = (2 * pred[:, 2:].sigmoid()) ** 2 * t.anchor_wh
    one_minus_ciou = complete_box_iou_loss(_xyxy(pxy, pwh), _xyxy(t.box_xywh[:, :2], t.box_xywh[:, 2:]))
    num = max(len(t.image), 1)
    # Sums over n = 0 rows are zeros that still belong to the graph.
    box_loss = one_minus_ciou.sum() / num
    tobj = torch.zeros((batch, num_anchors, grid_h, grid_w), device=cls_out.device)
    last = _last_writes(t, (batch, num_anchors, grid_h, grid_w))
    tobj[t.image[last], t.anchor[last], t.row[last], t.col[last]] = (1 - one_minus_ciou[last]).detach().clamp(0)
    obj_loss = F.binary_cross_entropy_with_logits(logits[:, :, 0].float(), tobj)
    if num_classes > 1:
        onehot = F.one_hot(t.labels, num_classes).to(picked.dtype)  # (n, nc)
        cls_loss = F.binary_cross_entropy_with_logits(picked[:, 1:], onehot, reduction="sum") / (num * num_classes)
    else:
        cls_loss = picked[:, :0].sum()  # one class: nothing to learn, YOLOv5 skips it
    return box_loss, obj_loss, cls_loss


def _xyxy(xy: torch.Tensor, wh: torch.Tensor) -> torch.Tensor:
    """(n, 2) centres and (n, 2) sizes -> (n, 4) xyxy."""
    return torch.cat([xy - wh / 2, xy + wh / 2], 1)


def _last_writes(t: LevelTargets, shape: tuple[int, int, int, int]) -> torch.Tensor:
    """(n,) bool: True for the last assignment to each (image, anchor, row, col)."""
    _, num_anchors, grid_h, grid_w = shape
    key = ((t.image * num_anchors + t.anchor) * grid_h + t.row) * grid_w + t.col  # (n,)
    order = torch.arange(len(key), device=key.device)
    latest = torch.full((shape[0] * num_anchors * grid_h * grid_w,), -1, dtype=torch.long, device=key.device)
    latest.scatter_reduce_(0, key, order, reduce="amax")
    return latest[key] == order
