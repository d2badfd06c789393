"""Cost of a keep set without building the pruned model.

Head MACs are linear in the anchors kept on each level: every anchor owns
K + 4 output channels of its level's final convolutions, and a level with no
anchors also loses the rest of its head (SSDLite's depthwise convolutions,
RetinaNet's towers). The model is calibrated from the unpruned detector once
and equals ``measure_cost(prune(det, keep)).head_macs`` exactly (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..cost import measure_cost
from ..models.base import Detector


@dataclass(frozen=True)
class CostModel:
    """Per-anchor and per-level costs.

    Attributes:
        anchor_macs: anchor id -> MACs of its output channels.
        anchor_boxes: anchor id -> boxes it adds (its level's H*W).
        level_of: anchor id -> level index.
        level_base_macs: per level, head MACs that remain while any anchor is kept.
    """

    anchor_macs: dict[int, int]
    anchor_boxes: dict[int, int]
    level_of: dict[int, int]
    level_base_macs: list[int]

    def head_macs(self, removed=()) -> int:
        removed = set(removed)
        kept = [a for a in self.anchor_macs if a not in removed]
        active = {self.level_of[a] for a in kept}
        return sum(self.anchor_macs[a] for a in kept) + sum(self.level_base_macs[lv] for lv in active)

    def boxes(self, removed=()) -> int:
        removed = set(removed)
        return sum(b for a, b in self.anchor_boxes.items() if a not in removed)

    def to_json(self) -> dict:
        return {"anchor_macs": {str(k): v for k, v in self.anchor_macs.items()},
                "anchor_boxes": {str(k): v for k, v in self.anchor_boxes.items()},
                "level_of": {str(k): v for k, v in self.level_of.items()},
                "level_base_macs": self.level_base_macs}


def build_cost_model(det: Detector) -> CostModel:
    """Calibrate the cost model of ``det`` (one MAC count of the unpruned model)."""
    cost = measure_cost(det)
    anchor_macs, anchor_boxes, level_of = {}, {}, {}
    base = [0] * det.anchor_set.num_levels
    for j, level in enumerate(det.active_levels):
        anchors_here = det.anchor_set.levels[level]
        h, w = anchors_here.feature_size
        cls_conv, box_conv = det.final_convs(j)
        per_anchor = h * w * (det.cls_columns * _macs_per_output(cls_conv) + 4 * _macs_per_output(box_conv))
        for a in anchors_here.anchors:
            anchor_macs[a.id] = per_anchor
            anchor_boxes[a.id] = h * w
            level_of[a.id] = level
        base[level] = cost.head_macs_per_level[level] - per_anchor * anchors_here.num_anchors
    return CostModel(anchor_macs, anchor_boxes, level_of, base)


def _macs_per_output(conv) -> int:
    """MACs per output pixel per output channel of a convolution."""
    kh, kw = conv.kernel_size
    return (conv.in_channels // conv.groups) * kh * kw
