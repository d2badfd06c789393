"""Cost of a detector: head MACs, total MACs and number of boxes.

MACs are counted the way torchprofile and fvcore count convolutions: one
multiply-accumulate per output element per input channel (per group) per
kernel tap, biases not counted. Linear layers count in x out per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .models.base import Detector


@dataclass(frozen=True)
class Cost:
    """Counts at the detector's input size, batch 1.

    Attributes:
        head_macs: MACs of the head convolutions, all levels.
        head_macs_per_level: per model level (0 for a dropped level).
        backbone_macs: MACs of backbone and neck.
        total_macs: backbone + head.
        num_boxes: boxes (anchors x grid positions) entering post-processing.
        boxes_per_level: per model level.
    """

    head_macs: int
    head_macs_per_level: list[int]
    backbone_macs: int
    total_macs: int
    num_boxes: int
    boxes_per_level: list[int]


def layer_macs(module: nn.Module, output: torch.Tensor) -> int:
    """MACs of one Conv2d or Linear call that produced ``output`` (batch 1)."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return output.numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return 0


class _MacCounter:
    def __init__(self, model: nn.Module):
        self.total = 0
        self.handles = [
            m.register_forward_hook(self._hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
        ]

    def _hook(self, module, _inputs, output):
        self.total += layer_macs(module, output)

    def take(self) -> int:
        value, self.total = self.total, 0
        return value

    def close(self) -> None:
        for h in self.handles:
            h.remove()


@torch.no_grad()
def measure_cost(detector: Detector) -> Cost:
    """Count MACs and boxes by running the stages once on a blank image."""
    was_training = detector.training
    detector.eval()
    counter = _MacCounter(detector)
    try:
        device = detector.mean.device
        features = detector.backbone(torch.zeros(1, 3, *detector.image_size, device=device))
        backbone = counter.take() + detector.untraced_macs()  # an ONNX source's backbone runs outside torch
        per_level = [0] * detector.anchor_set.num_levels
        for j, (level, feature) in enumerate(zip(detector.active_levels, features)):
            detector.head_at(j, feature)
            detector.extras_at(j, feature)  # landmarks / keypoints: head convolutions pruned with their anchor
            per_level[level] = counter.take()
    finally:
        counter.close()
        detector.train(was_training)
    boxes = [lv.num_boxes for lv in detector.anchor_set.levels]
    head = sum(per_level)
    return Cost(head, per_level, backbone, backbone + head, sum(boxes), boxes)
