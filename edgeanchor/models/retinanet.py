"""Adapter for torchvision RetinaNet (ResNet50-FPN, v1 and v2).

RetinaNet's head is shared across levels: the same convolutions run on every
FPN level, so anchor a is the same output channel group on every level.
A keep set can therefore only remove the same anchor positions on every level
it keeps, or drop whole levels. Dropped levels run no head, and the FPN skips
the convolutions that only fed them.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.retinanet import RetinaNet

from ..anchors import AnchorSet, from_anchor_generator
from ..errors import EdgeAnchorError
from ..postprocess import PostprocessRule
from .base import Detector
from .ssd import anchor_channels, fresh_conv, slice_conv

if TYPE_CHECKING:
    from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork


def run_fpn(fpn: FeaturePyramidNetwork, feats: list[torch.Tensor], needed: set[int]) -> dict[int, torch.Tensor]:
    """torchvision's FPN forward, computing only the output levels in ``needed``.

    Args:
        fpn: a ``FeaturePyramidNetwork`` whose extra block is ``LastLevelP6P7``.
        feats: backbone maps C3..C5.
        needed: FPN output level indices (0 = P3 ... 4 = P7).

    Returns:
        Map level index -> feature map, for the needed levels.
    """
    n = len(feats)
    out: dict[int, torch.Tensor] = {}
    need_p5 = (n - 1) in needed or (needed & {n, n + 1} and fpn.extra_blocks.use_P5)
    last_inner = fpn.inner_blocks[-1](feats[-1])
    p5 = fpn.layer_blocks[-1](last_inner) if need_p5 else None
    if (n - 1) in needed:
        assert p5 is not None  # need_p5 holds
        out[n - 1] = p5
    lowest = min((i for i in needed if i < n), default=n - 1)
    for idx in range(n - 2, lowest - 1, -1):  # top-down pathway, only as deep as needed
        inner_lateral = fpn.inner_blocks[idx](feats[idx])
        top_down = F.interpolate(last_inner, size=inner_lateral.shape[-2:], mode="nearest")
        last_inner = inner_lateral + top_down
        if idx in needed:
            out[idx] = fpn.layer_blocks[idx](last_inner)
    if needed & {n, n + 1}:
        extra = fpn.extra_blocks
        p6 = extra.p6(p5 if extra.use_P5 else feats[-1])
        if n in needed:
            out[n] = p6
        if n + 1 in needed:
            out[n + 1] = extra.p7(F.relu(p6))
    return out


class RetinaNetDetector(Detector):
    """Three-stage wrapper of a torchvision RetinaNet with a shared head."""

    shared_head = True

    def __init__(self, *, body, fpn, cls_tower, cls_logits, box_tower, box_reg, **kwargs):
        super().__init__(**kwargs)
        self.body = body
        self.fpn = fpn
        self.cls_tower = cls_tower
        self.cls_logits = cls_logits
        self.box_tower = box_tower
        self.box_reg = box_reg

    def backbone(self, images: torch.Tensor) -> list[torch.Tensor]:
        feats = list(self.body(self.normalize(images)).values())
        active = self.active_levels
        out = run_fpn(self.fpn, feats, set(active))
        return [out[i] for i in active]

    def head_at(self, j: int, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cls_logits(self.cls_tower(feature)), self.box_reg(self.box_tower(feature))

    def final_convs(self, j: int) -> tuple[nn.Conv2d, nn.Conv2d]:
        return self.cls_logits, self.box_reg

    def _sliced(self, anchor_set: AnchorSet, keep_per_level: dict[int, list[int]]) -> RetinaNetDetector:
        kept = {tuple(p) for p in keep_per_level.values() if p}
        if len(kept) != 1:
            raise EdgeAnchorError(
                "RetinaNet's head is shared across levels, so a keep set must keep the same anchors on every "
                f"level it does not drop entirely (got per-level anchor positions {sorted(kept)}); "
                "use the search's 'shared' mode or keep whole levels"
            )
        positions = list(kept.pop())
        return RetinaNetDetector(
            body=self.body,
            fpn=self.fpn,
            cls_tower=self.cls_tower,
            cls_logits=slice_conv(self.cls_logits, anchor_channels(positions, self.num_classes)),
            box_tower=self.box_tower,
            box_reg=slice_conv(self.box_reg, anchor_channels(positions, 4)),
            **self.common_kwargs(anchor_set),
        ).to(self.mean.device)


def retinanet_spec(model: RetinaNet) -> PostprocessRule:
    return PostprocessRule.from_torchvision(model, score_fn="sigmoid", topk_scope="level")


def wrap_retinanet(
    model: RetinaNet,
    *,
    arch: str,
    image_size: tuple[int, int],
    anchor_set: AnchorSet | None = None,
    config: dict | None = None,
) -> RetinaNetDetector:
    """Wrap a torchvision ``RetinaNet`` as a :class:`RetinaNetDetector`.

    With ``anchor_set``, every active level must have the same number of
    anchors (the head is shared); the final convolutions are rebuilt when that
    number differs from the model's own.
    """
    model = model.eval()
    with torch.no_grad():
        feats = list(model.backbone(torch.zeros(1, 3, *image_size)).values())
    feature_sizes = [tuple(f.shape[-2:]) for f in feats]
    default = from_anchor_generator(model.anchor_generator, image_size, feature_sizes)
    anchor_set = anchor_set or default
    counts = {anchor_set.levels[i].num_anchors for i in anchor_set.active_levels}
    if len(counts) != 1:
        raise EdgeAnchorError(
            f"RetinaNet shares its head across levels, so every level needs the same number of anchors "
            f"(got {anchor_set.anchors_per_level()}); use the same count on each level, or 0 to drop one"
        )
    cls_head, box_head = model.head.classification_head, model.head.regression_head
    cls_logits, box_reg = cls_head.cls_logits, box_head.bbox_reg
    a = counts.pop()
    if a != default.levels[0].num_anchors:
        cls_logits = fresh_conv(cls_logits, a * cls_head.num_classes, "normal",
                                bias=-math.log((1 - 0.01) / 0.01))  # RetinaNet's prior
        box_reg = fresh_conv(box_reg, a * 4, "normal")
    cfg = {"image_size": list(image_size), "image_mean": list(model.transform.image_mean),
           "image_std": list(model.transform.image_std)}
    cfg.update(config or {})
    return RetinaNetDetector(
        body=model.backbone.body,
        fpn=model.backbone.fpn,
        cls_tower=cls_head.conv,
        cls_logits=cls_logits,
        box_tower=box_head.conv,
        box_reg=box_reg,
        arch=arch,
        num_classes=cls_head.num_classes,
        anchor_set=anchor_set,
        postprocess_spec=retinanet_spec(model),
        config=cfg,
    ).eval()
