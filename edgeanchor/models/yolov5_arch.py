"""The YOLOv5 (v7.0) detection architecture, written from its published structure.

Our own implementation (no code from the GPL/AGPL yolov5 repositories): the
building blocks Conv (Conv2d + BatchNorm + SiLU), Bottleneck, C3, SPPF, Concat
and Detect, assembled from a model definition in the yolov5 YAML format
(``backbone`` and ``head`` lists of ``[from, number, module, args]``, with
``depth_multiple`` and ``width_multiple``). Module and parameter names follow
yolov5's (``model.0.conv.weight``, ``model.24.m.0.bias``, the ``anchors``
buffer of Detect in stride units), so state dicts of real checkpoints load
unchanged.

This module is the architecture only; the three-stage detector adapter,
post-processing, pruning and export of the YOLO family build on it.
"""

from __future__ import annotations

import math
from copy import deepcopy
from pathlib import Path
from typing import cast

import torch
from torch import nn

from ..errors import EdgeAnchorError, first_line

# n/s/m/l/x: (depth_multiple, width_multiple) of the v7.0 release.
SIZES = {"n": (0.33, 0.25), "s": (0.33, 0.50), "m": (0.67, 0.75), "l": (1.0, 1.0), "x": (1.33, 1.25)}
DEFAULT_ANCHORS = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]  # px, P3-P5

# The v7.0 P5 model definition (yolov5s.yaml and its siblings differ only in the multiples).
V7_LAYOUT = {
    "anchors": DEFAULT_ANCHORS,
    "backbone": [
        [-1, 1, "Conv", [64, 6, 2, 2]],  # 0-P1/2
        [-1, 1, "Conv", [128, 3, 2]],  # 1-P2/4
        [-1, 3, "C3", [128]],
        [-1, 1, "Conv", [256, 3, 2]],  # 3-P3/8
        [-1, 6, "C3", [256]],
        [-1, 1, "Conv", [512, 3, 2]],  # 5-P4/16
        [-1, 9, "C3", [512]],
        [-1, 1, "Conv", [1024, 3, 2]],  # 7-P5/32
        [-1, 3, "C3", [1024]],
        [-1, 1, "SPPF", [1024, 5]],  # 9
    ],
    "head": [
        [-1, 1, "Conv", [512, 1, 1]],
        [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
        [[-1, 6], 1, "Concat", [1]],  # cat backbone P4
        [-1, 3, "C3", [512, False]],  # 13
        [-1, 1, "Conv", [256, 1, 1]],
        [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
        [[-1, 4], 1, "Concat", [1]],  # cat backbone P3
        [-1, 3, "C3", [256, False]],  # 17 (P3/8)
        [-1, 1, "Conv", [256, 3, 2]],
        [[-1, 14], 1, "Concat", [1]],  # cat head P4
        [-1, 3, "C3", [512, False]],  # 20 (P4/16)
        [-1, 1, "Conv", [512, 3, 2]],
        [[-1, 10], 1, "Concat", [1]],  # cat head P5
        [-1, 3, "C3", [1024, False]],  # 23 (P5/32)
        [[17, 20, 23], 1, "Detect", ["nc", "anchors"]],  # Detect(P3, P4, P5)
    ],
}


def autopad(k: int, p: int | None = None) -> int:
    """'Same' padding for odd kernels."""
    return k // 2 if p is None else p


class Conv(nn.Module):
    """Conv2d (no bias) + BatchNorm2d + SiLU."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, g: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p), groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03)  # yolov5's BatchNorm settings
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """1x1 then 3x3 Conv, with a residual connection when the shapes allow."""

    def __init__(self, c1: int, c2: int, shortcut: bool = True, e: float = 0.5):
        super().__init__()
        hidden = int(c2 * e)
        self.cv1 = Conv(c1, hidden, 1, 1)
        self.cv2 = Conv(hidden, c2, 3, 1)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP bottleneck with three convolutions: cv3(cat(m(cv1(x)), cv2(x)))."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, e: float = 0.5):
        super().__init__()
        hidden = int(c2 * e)
        self.cv1 = Conv(c1, hidden, 1, 1)
        self.cv2 = Conv(c1, hidden, 1, 1)
        self.cv3 = Conv(2 * hidden, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(hidden, hidden, shortcut, e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained max-pools, concatenated."""

    def __init__(self, c1: int, c2: int, k: int = 5):
        super().__init__()
        hidden = c1 // 2
        self.cv1 = Conv(c1, hidden, 1, 1)
        self.cv2 = Conv(hidden * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class Concat(nn.Module):
    def __init__(self, dimension: int = 1):
        super().__init__()
        self.d = dimension

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs, self.d)


class Detect(nn.Module):
    """The per-level 1x1 output convolutions, na*(5+nc) channels each, anchor-major (channel = a*(5+nc) + k).

    ``anchors`` is a buffer (levels, anchors, 2) in stride units, as in yolov5 checkpoints; ``stride``
    holds the level strides in pixels. Decoding lives in the post-processing, not here.
    """

    anchors: torch.Tensor  # buffer (levels, anchors, 2)
    stride: torch.Tensor  # buffer (levels,)
    m: nn.ModuleList  # of nn.Conv2d, one per level
    f: list[int]  # the layers it reads (set by build_layers)
    i: int  # its layer index (set by build_layers)

    def __init__(self, nc: int, anchors: list, ch: list[int]):
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32).view(self.nl, -1, 2))
        self.register_buffer("stride", torch.zeros(self.nl), persistent=False)
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Raw per-level outputs (N, na*(5+nc), H, W)."""
        return [conv(x) for conv, x in zip(self.m, xs)]


MODULES = {"Conv": Conv, "C3": C3, "SPPF": SPPF, "Concat": Concat, "Detect": Detect, "nn.Upsample": nn.Upsample,
           "Bottleneck": Bottleneck}


def make_divisible(x: float, divisor: int = 8) -> int:
    """The smallest multiple of ``divisor`` that is >= x (yolov5's channel rounding)."""
    return int(math.ceil(x / divisor) * divisor)


def build_layers(layout: dict, nc: int, depth_multiple: float, width_multiple: float) -> tuple[list, list[int]]:
    """Modules of a yolov5 model definition, each tagged with ``f`` (inputs) and ``i`` (index); the saved indices.

    ``channels[j]`` is the output width of layer j (the image's 3 before layer 0); ``from`` indices are
    absolute, or -1 for the previous layer.
    """
    anchors = layout["anchors"]
    layers: list[nn.Module] = []
    saved: list[int] = []
    channels: list[int] = []
    for i, (source, number, name, args) in enumerate(layout["backbone"] + layout["head"]):
        if name not in MODULES:
            raise EdgeAnchorError(f"layer {i}: module {name!r} is not one of the yolov5 P5 modules "
                                  f"({', '.join(MODULES)})")
        args = [nc if a == "nc" else anchors if a == "anchors" else a for a in args]
        n = max(round(number * depth_multiple), 1) if number > 1 else number
        sources = [source] if isinstance(source, int) else list(source)
        widths = [(channels[s] if channels else 3) if s == -1 else channels[s] for s in sources]
        if name in ("Conv", "C3", "SPPF", "Bottleneck"):
            out = make_divisible(args[0] * width_multiple)
            args = [widths[0], out, *args[1:]]
            if name == "C3":
                args.insert(2, n)  # C3 repeats its bottlenecks itself
                n = 1
        elif name == "Concat":
            out = sum(widths)
        elif name == "Detect":
            if isinstance(args[1], int):  # a number of anchors per level: yolov5 spreads them evenly
                args[1] = [list(range(args[1] * 2))] * len(sources)
            args.append(widths)
            out = 0
        else:  # nn.Upsample
            out = widths[0]
        module = nn.Sequential(*(MODULES[name](*args) for _ in range(n))) if n > 1 else MODULES[name](*args)
        module.f, module.i = source, i
        saved.extend(s % i for s in sources if s != -1)
        layers.append(module)
        channels.append(out)
    return layers, sorted(set(saved))


def layer_from(layer: nn.Module) -> int | list[int]:
    """The ``f`` tag :func:`build_layers` gives a layer: the layer(s) it reads, -1 for the one before it."""
    return cast("int | list[int]", layer.f)


def layer_index(layer: nn.Module) -> int:
    """The ``i`` tag :func:`build_layers` gives a layer: its index in the model."""
    return cast(int, layer.i)


class YoloV5(nn.Module):
    """A yolov5 detection model: ``model`` (a Sequential with yolov5's layer indices) and its Detect layer.

    Args:
        layout: a model definition in the yolov5 YAML format (dict).
        nc: number of classes (yolov5 has no background class).
        depth_multiple, width_multiple: size multiples (a YAML's own values when it has them).
    """

    def __init__(self, layout: dict, nc: int, depth_multiple: float, width_multiple: float):
        super().__init__()
        layers, self.save = build_layers(layout, nc, depth_multiple, width_multiple)
        # kept so that a model object can be wrapped and checkpointed without its YAML (edgeanchor.wrap)
        self.layout, self.depth_multiple, self.width_multiple = deepcopy(layout), depth_multiple, width_multiple
        self.model = nn.Sequential(*layers)
        self.nc = nc
        detect = self.detect
        # strides from a forward pass at 256x256, as yolov5 does; anchors are given in pixels, stored in strides
        with torch.no_grad():
            feats = self.features(torch.zeros(1, 3, 256, 256))
        detect.stride.copy_(torch.tensor([256.0 / f.shape[-2] for f in feats]))
        detect.anchors /= detect.stride.view(-1, 1, 1)
        self._init_weights()

    @property
    def detect(self) -> Detect:
        return cast(Detect, self.model[-1])  # a yolov5 model definition ends with its Detect layer

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The Detect inputs (P3, P4, P5 for the P5 models), in order."""
        outputs: list = []
        for layer in self.model[:-1]:
            f = layer_from(layer)
            inputs: torch.Tensor | list[torch.Tensor] = x
            if f != -1:
                inputs = outputs[f] if isinstance(f, int) else [x if j == -1 else outputs[j] for j in f]
            x = layer(inputs)
            outputs.append(x if layer_index(layer) in self.save else None)
        detect = self.detect
        return [x if j == -1 else outputs[j] for j in detect.f]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.detect(self.features(x))

    def _init_weights(self) -> None:
        # yolov5's Detect bias prior: objectness for ~8 objects per 640 image, classes ~0.6 / (nc - 0.99)
        detect = self.detect
        for conv, s in zip(detect.m, detect.stride.tolist()):
            assert isinstance(conv, nn.Conv2d) and conv.bias is not None
            b = conv.bias.detach().view(detect.na, -1).clone()
            b[:, 4] += math.log(8 / (640 / s) ** 2)
            b[:, 5:] += math.log(0.6 / (detect.nc - 0.99)) if detect.nc > 1 else 0.0
            conv.bias.data.copy_(b.view(-1))


def normalise_layout(doc: dict) -> dict:
    """A model definition with yolov5's YAML spelling of None (the string 'None', which yolov5 evaluates) as None."""
    doc = deepcopy(doc)
    for key in ("backbone", "head"):  # entries of another shape stay as they are, for check_layout to name
        if isinstance(doc[key], list):
            doc[key] = [[*e[:3], [None if a == "None" else a for a in e[3]]]
                        if isinstance(e, list) and len(e) == 4 and isinstance(e[3], list) else e for e in doc[key]]
    return doc


def layout_for(size_or_yaml: str) -> tuple[dict, float, float]:
    """(model definition, depth multiple, width multiple) for ``n``..``x`` or a yolov5 YAML file."""
    if size_or_yaml in SIZES:
        return deepcopy(V7_LAYOUT), *SIZES[size_or_yaml]
    path = Path(size_or_yaml)
    if not path.is_file():
        raise EdgeAnchorError(f"yolov5 size {size_or_yaml!r} is not one of {', '.join(SIZES)} or a model YAML file")
    import yaml

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise EdgeAnchorError(f"cannot read model definition {path} ({first_line(exc, 100)})") from None
    if not isinstance(doc, dict) or not {"backbone", "head", "anchors"} <= set(doc):
        raise EdgeAnchorError(f"{path} is not a yolov5 model definition (needs anchors, backbone and head)")
    from .model_size import check_layout

    gd, gw = doc.get("depth_multiple", 1.0), doc.get("width_multiple", 1.0)
    doc = normalise_layout(doc)
    check_layout(doc, path, depth_multiple=gd, width_multiple=gw)  # before anything is allocated
    return doc, float(gd), float(gw)


def build_yolov5(size_or_yaml: str = "s", nc: int = 80) -> YoloV5:
    """A yolov5 model with random weights: size ``n``..``x`` of the v7.0 release, or a model YAML."""
    layout, gd, gw = layout_for(size_or_yaml)
    return YoloV5(layout, nc, gd, gw)
