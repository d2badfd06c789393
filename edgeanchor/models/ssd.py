"""Adapter for torchvision SSD-family models (SSD300-VGG16, SSDLite, the demo).

The SSD head has one classification and one regression module per level.
Each ends in a convolution whose output channels are anchor-major, so pruning
an anchor removes K (classes) or 4 (boxes) output channels of that level's
last convolution, and a level with no anchors left loses its modules.
"""

from __future__ import annotations

import copy
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.ssd import SSD, SSDFeatureExtractorVGG
from torchvision.models.detection.ssdlite import SSDLiteFeatureExtractorMobileNet

from ..anchors import AnchorSet, from_default_box_generator
from ..postprocess import PostprocessRule
from .base import Detector


def final_conv(module: nn.Module) -> nn.Conv2d:
    """The convolution that produces a head module's output."""
    if isinstance(module, nn.Conv2d):
        return module
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1]


def replace_final_conv(module: nn.Module, conv: nn.Conv2d) -> nn.Module:
    """A copy of ``module`` whose final convolution is ``conv``."""
    if isinstance(module, nn.Conv2d):
        return conv
    module = copy.deepcopy(module)
    old = final_conv(module)
    for parent in module.modules():
        for name, child in parent.named_children():
            if child is old:
                setattr(parent, name, conv)
                return module
    raise AssertionError("final convolution not found")  # pragma: no cover


def pair(value: tuple[int, ...]) -> tuple[int, int]:
    """An nn.Conv2d setting (kernel_size, stride, padding, dilation) as the (H, W) pair it is.

    torch types these ``tuple[int, ...]`` for every dimension; a Conv2d's have two items.
    """
    h, w = value
    return h, w


def conv_padding(conv: nn.Conv2d) -> str | tuple[int, int]:
    """``conv.padding``: "same", "valid" or (H, W)."""
    return conv.padding if isinstance(conv.padding, str) else pair(conv.padding)


def slice_conv(conv: nn.Conv2d, channels: list[int]) -> nn.Conv2d:
    """A convolution that computes only the given output channels of ``conv``."""
    new = nn.Conv2d(
        conv.in_channels,
        len(channels),
        pair(conv.kernel_size),
        stride=pair(conv.stride),
        padding=conv_padding(conv),
        dilation=pair(conv.dilation),
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    idx = torch.tensor(channels, dtype=torch.int64)
    with torch.no_grad():
        new.weight.copy_(conv.weight[idx])
        if conv.bias is not None:
            assert new.bias is not None  # built with a bias when conv has one
            new.bias.copy_(conv.bias[idx])
    return new.to(conv.weight.device)


def fresh_conv(conv: nn.Conv2d, out_channels: int, init: str, bias: float = 0.0) -> nn.Conv2d:
    """A new convolution like ``conv`` with ``out_channels`` outputs, its bias filled with ``bias``."""
    new = nn.Conv2d(conv.in_channels, out_channels, pair(conv.kernel_size), padding=conv_padding(conv), bias=True)
    if init == "xavier":
        nn.init.xavier_uniform_(new.weight)
    else:
        nn.init.normal_(new.weight, mean=0.0, std=0.03)
    assert new.bias is not None  # bias=True
    nn.init.constant_(new.bias, bias)
    return new


def anchor_channels(positions: list[int], columns: int) -> list[int]:
    """Output channels of anchors at ``positions`` (channel = a*columns + c)."""
    return [a * columns + c for a in positions for c in range(columns)]


@runtime_checkable
class LevelExtractor(Protocol):
    """A feature extractor that can stop after its first ``num_levels`` levels (the demo's)."""

    def forward_levels(self, x: torch.Tensor, num_levels: int) -> list[torch.Tensor]: ...


def run_extractor(extractor: nn.Module, x: torch.Tensor, num_levels: int) -> list[torch.Tensor]:
    """Run an SSD feature extractor only as far as the deepest needed level."""
    if isinstance(extractor, LevelExtractor):  # i.e. hasattr(extractor, "forward_levels")
        return extractor.forward_levels(x, num_levels)
    if isinstance(extractor, SSDFeatureExtractorVGG):
        x = extractor.features(x)
        out = [extractor.scale_weight.view(1, -1, 1, 1) * F.normalize(x)]
        for block in list(extractor.extra)[: num_levels - 1]:
            x = block(x)
            out.append(x)
        return out
    if isinstance(extractor, SSDLiteFeatureExtractorMobileNet):
        out = []
        for block in list(extractor.features) + list(extractor.extra):
            if len(out) == num_levels:
                break
            x = block(x)
            out.append(x)
        return out
    return list(extractor(x).values())[:num_levels]


class SSDDetector(Detector):
    """Three-stage wrapper of an SSD-style model; heads exist for active levels only."""

    def __init__(self, *, extractor: nn.Module, cls_heads: nn.ModuleList, box_heads: nn.ModuleList, **kwargs):
        super().__init__(**kwargs)
        self.extractor = extractor
        self.cls_heads = cls_heads
        self.box_heads = box_heads

    def backbone(self, images: torch.Tensor) -> list[torch.Tensor]:
        active = self.active_levels
        feats = run_extractor(self.extractor, self.normalize(images), max(active) + 1)
        return [feats[i] for i in active]

    def head_at(self, j: int, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cls_heads[j](feature), self.box_heads[j](feature)

    def final_convs(self, j: int) -> tuple[nn.Conv2d, nn.Conv2d]:
        return final_conv(self.cls_heads[j]), final_conv(self.box_heads[j])

    def _sliced(self, anchor_set: AnchorSet, keep_per_level: dict[int, list[int]]) -> SSDDetector:
        cls_heads, box_heads = nn.ModuleList(), nn.ModuleList()
        for j, level in enumerate(self.active_levels):
            positions = keep_per_level.get(level, [])
            if not positions:
                continue  # the level is dropped: no head at all
            cls_m, box_m = self.cls_heads[j], self.box_heads[j]
            cls_channels = anchor_channels(positions, self.num_classes)
            cls_heads.append(replace_final_conv(cls_m, slice_conv(final_conv(cls_m), cls_channels)))
            box_heads.append(replace_final_conv(box_m, slice_conv(final_conv(box_m), anchor_channels(positions, 4))))
        return SSDDetector(
            extractor=self.extractor,
            cls_heads=cls_heads,
            box_heads=box_heads,
            **self.common_kwargs(anchor_set),
        ).to(self.mean.device)


def ssd_spec(model: SSD) -> PostprocessRule:
    return PostprocessRule.from_torchvision(model, score_fn="softmax", topk_scope="class")


def wrap_ssd(
    model: SSD,
    *,
    arch: str,
    image_size: tuple[int, int],
    anchor_set: AnchorSet | None = None,
    config: dict | None = None,
    head_init: str = "xavier",
) -> SSDDetector:
    """Wrap a torchvision ``SSD`` as an :class:`SSDDetector`.

    Args:
        model: the torchvision model (its backbone and head modules are reused).
        arch: architecture name recorded in checkpoints.
        image_size: (H, W) fixed model input size.
        anchor_set: anchors to use instead of the model's own; head modules of
            levels whose anchor count differs get fresh final convolutions.
        config: extra plain values recorded for rebuilding.
        head_init: "xavier" (SSD) or "normal" (SSDLite) for fresh convolutions.
    """
    model = model.eval()
    with torch.no_grad():
        dummy = torch.zeros(1, 3, *image_size)
        feats = list(model.backbone(dummy).values())
    feature_sizes = [tuple(f.shape[-2:]) for f in feats]
    default = from_default_box_generator(model.anchor_generator, image_size, feature_sizes)
    if anchor_set is None:
        anchor_set = default
    num_classes = model.head.classification_head.num_columns
    cls_heads, box_heads = nn.ModuleList(), nn.ModuleList()
    for i in anchor_set.active_levels:
        cls_m = model.head.classification_head.module_list[i]
        box_m = model.head.regression_head.module_list[i]
        a = anchor_set.levels[i].num_anchors
        if a != default.levels[i].num_anchors:
            cls_m = replace_final_conv(cls_m, fresh_conv(final_conv(cls_m), a * num_classes, head_init))
            box_m = replace_final_conv(box_m, fresh_conv(final_conv(box_m), a * 4, head_init))
        cls_heads.append(cls_m)
        box_heads.append(box_m)
    transform = model.transform
    cfg = {"image_size": list(image_size), "image_mean": list(transform.image_mean),
           "image_std": list(transform.image_std)}
    cfg.update(config or {})
    return SSDDetector(
        extractor=model.backbone,
        cls_heads=cls_heads,
        box_heads=box_heads,
        arch=arch,
        num_classes=num_classes,
        anchor_set=anchor_set,
        postprocess_spec=ssd_spec(model),
        config=cfg,
    ).eval()

