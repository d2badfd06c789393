"""Adapter for the YOLOv5 family (v6.x / v7.0 P5 models): three stages over our own architecture.

- backbone: the yolov5 layers before Detect (backbone + PANet neck), run only as far as the active
  levels need: a layer runs when an active Detect input depends on it, so a dropped P5 skips the
  last neck stages while a dropped P3 still computes P3 for the bottom-up path to P4 and P5;
- head: Detect's 1x1 convolution of each active level, na*(5+nc) channels, returned as the two views
  every adapter returns: ``cls`` (N, A*(1+nc), H, W), objectness then classes per anchor, and ``box``
  (N, A*4, H, W), the raw xywh outputs;
- postprocess: YOLOv5's decode and NMS rule (``PostprocessRule.yolo``, see :mod:`edgeanchor.postprocess`).

Anchors live in the anchor set (input pixels; YOLOv5 keeps them in stride units): ``centre_offset``
0.5 and per level the stride, so a pruned level keeps any subset of its anchors. State-dict names
are yolov5's (``model.0.conv.weight`` ... ``model.24.m.0.weight``), without Detect's ``anchors``
buffer; ``model.24.m`` holds the active levels' convolutions only.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn

from ..anchors import AnchorBox, AnchorLevel, AnchorSet
from ..errors import EdgeAnchorError
from ..postprocess import PostprocessRule, yolo_grid
from .base import Detector
from .ssd import slice_conv
from .yolov5_arch import YoloV5, layer_from


class SlimDetect(nn.Module):
    """Detect's convolutions of the active levels (``m``), with Detect's ``f`` (input layer indices)."""

    def __init__(self, convs: nn.ModuleList, sources: list[int], index: int):
        super().__init__()
        self.m = convs
        self.f, self.i = list(sources), index

    def conv(self, j: int) -> nn.Conv2d:
        """The convolution of the j-th active level."""
        return cast(nn.Conv2d, self.m[j])  # m holds Detect's nn.Conv2d layers only


def needed_layers(layers, targets: list[int]) -> list[int]:
    """Indices of the layers that the outputs of ``targets`` depend on, ascending."""
    need, stack = set(), list(targets)
    while stack:
        i = stack.pop()
        if i in need:
            continue
        need.add(i)
        f = layers[i].f
        stack.extend(i - 1 if s == -1 else s for s in ([f] if isinstance(f, int) else f) if not (s == -1 and i == 0))
    return sorted(need)


def yolo_anchor_set(image_size: tuple[int, int], strides: list[float], anchors_px) -> AnchorSet:
    """The anchor set of a YOLO model: per level its stride and anchors (w, h) in pixels, ids level-major."""
    h, w = image_size
    levels, next_id = [], 0
    for s, level in zip(strides, anchors_px):
        specs = []
        for aw, ah in level:
            specs.append(AnchorBox(next_id, float(aw), float(ah)))
            next_id += 1
        levels.append(AnchorLevel((h // int(s), w // int(s)), (float(s), float(s)), tuple(specs)))
    return AnchorSet((int(h), int(w)), 0.5, tuple(levels))


class YoloDetector(Detector):
    """Three-stage wrapper of a YOLOv5 model; ``model`` keeps yolov5's layer indices."""

    first_label = 0
    yolo_grid: torch.Tensor  # buffer: what decode reads per box (see postprocess.yolo_grid)

    def __init__(self, *, layers: list[nn.Module], save: list[int], detect: SlimDetect, **kwargs):
        super().__init__(**kwargs)
        self.model = nn.Sequential(*layers, detect)
        self.save = list(save)
        self._refresh_yolo_grid()

    def _refresh_yolo_grid(self) -> None:
        self.register_buffer("yolo_grid", yolo_grid(self.anchor_set, self.active_levels), persistent=False)

    @property
    def detect(self) -> SlimDetect:
        return cast(SlimDetect, self.model[-1])  # __init__ puts it last

    @property
    def cls_columns(self) -> int:
        return self.num_classes + 1

    @property
    def decode_priors(self) -> torch.Tensor:
        return self.yolo_grid

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return images  # YOLOv5 takes RGB in [0, 1]

    def backbone(self, images: torch.Tensor) -> list[torch.Tensor]:
        sources = [self.detect.f[i] for i in self.active_levels]
        outputs: dict[int, torch.Tensor] = {}
        for i in needed_layers(self.model, sources):
            layer = self.model[i]
            f = layer_from(layer)
            x: torch.Tensor | list[torch.Tensor]
            if isinstance(f, int):
                x = images if i == 0 else outputs[i - 1 if f == -1 else f]
            else:
                x = [outputs[i - 1 if s == -1 else s] for s in f]
            outputs[i] = layer(x)
        return [outputs[s] for s in sources]

    def head_at(self, j: int, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.detect.m[j](feature)  # (N, A*(5+nc), H, W)
        n, _, h, w = out.shape
        per_anchor = out.view(n, -1, self.num_classes + 5, h, w)  # (N, A, 5+nc, H, W)
        box = per_anchor[:, :, :4].reshape(n, -1, h, w)  # (N, A*4, H, W): x, y, w, h
        cls = per_anchor[:, :, 4:].reshape(n, -1, h, w)  # (N, A*(1+nc), H, W): obj, classes
        return cls, box

    def final_convs(self, j: int) -> tuple[nn.Conv2d, nn.Conv2d]:
        conv = self.detect.conv(j)
        return conv, conv  # one convolution: (1+nc) class and 4 box channels per anchor

    def _sliced(self, anchor_set: AnchorSet, keep_per_level: dict[int, list[int]]) -> YoloDetector:
        no = self.num_classes + 5
        convs = nn.ModuleList()
        for j, level in enumerate(self.active_levels):
            positions = keep_per_level.get(level, [])
            if positions:
                convs.append(slice_conv(self.detect.conv(j), [a * no + c for a in positions for c in range(no)]))
        detect = SlimDetect(convs, self.detect.f, self.detect.i)
        return YoloDetector(layers=list(self.model[:-1]), save=self.save, detect=detect,
                            **self.common_kwargs(anchor_set)).to(self.mean.device)


def wrap_yolov5(net: YoloV5, *, arch: str, image_size: tuple[int, int], postprocess_spec: PostprocessRule | None = None,
                anchor_set: AnchorSet | None = None, config: dict | None = None) -> YoloDetector:
    """Wrap our YOLOv5 model as a :class:`YoloDetector`.

    Args:
        net: the architecture with its weights (its Detect anchors are the default anchor set).
        arch: architecture name recorded in checkpoints (``yolov5:s``, ``yolov5:PATH.yaml``).
        image_size: (H, W), each a multiple of the largest stride.
        postprocess_spec: the rule; YOLOv5's "val" preset by default.
        anchor_set: anchors to use instead of the model's own; levels whose anchor count differs get
            fresh Detect convolutions (YOLOv5's bias prior).
        config: extra plain values recorded for rebuilding.
    """
    detect = net.detect
    strides = [float(s) for s in detect.stride.tolist()]
    biggest = int(max(strides))
    if any(v % biggest for v in image_size):
        raise EdgeAnchorError(f"`image_size` {list(image_size)} is not a multiple of the largest stride {biggest}; "
                              f"choose e.g. {[max(biggest, round(v / biggest) * biggest) for v in image_size]}")
    anchors_px = (detect.anchors * detect.stride.view(-1, 1, 1)).tolist()
    default = yolo_anchor_set(image_size, strides, anchors_px)
    anchor_set = default if anchor_set is None else anchor_set
    convs = nn.ModuleList()
    for i in anchor_set.active_levels:
        conv = cast(nn.Conv2d, detect.m[i])  # Detect's m holds nn.Conv2d layers only
        a = anchor_set.levels[i].num_anchors
        if a != default.levels[i].num_anchors:
            conv = fresh_detect_conv(conv.in_channels, a, detect.nc, strides[i])
        convs.append(conv)
    cfg = {"image_size": list(image_size), "image_mean": [0.0, 0.0, 0.0], "image_std": [1.0, 1.0, 1.0],
           "resize": "letterbox"}
    cfg.update(config or {})
    return YoloDetector(
        layers=list(net.model[:-1]), save=net.save, detect=SlimDetect(convs, detect.f, detect.i), arch=arch,
        num_classes=detect.nc, anchor_set=anchor_set, postprocess_spec=postprocess_spec or PostprocessRule.yolo("val"),
        config=cfg,
    ).eval()


def fresh_detect_conv(in_channels: int, num_anchors: int, nc: int, stride: float) -> nn.Conv2d:
    """A new Detect convolution for ``num_anchors`` anchors with YOLOv5's bias prior."""
    conv = nn.Conv2d(in_channels, num_anchors * (nc + 5), 1)
    assert conv.bias is not None  # nn.Conv2d has a bias unless told bias=False
    with torch.no_grad():
        b = conv.bias.view(num_anchors, -1)
        b[:, 4] += math.log(8 / (640 / stride) ** 2)
        b[:, 5:] += math.log(0.6 / (nc - 0.99)) if nc > 1 else 0.0
    return conv
