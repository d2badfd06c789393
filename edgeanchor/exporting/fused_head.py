"""A fused SSD head for export: one convolution per level computes both the class and the box outputs.

In an SSD head (SSD300-VGG16, the demo) each level's classification and
regression outputs are two convolutions of the *same* feature map with the
same geometry (kernel, stride, padding). Concatenating their weights and
biases along the output channels gives one convolution with A*(K+4) outputs
whose first A*K channels are ``cls_L`` and last A*4 are ``box_L``: one kernel
launch and one pass over the input instead of two. The outputs are split with
two channel slices (static ONNX ``Slice`` ops), not ``torch.split``.

Numerics: each output channel is its own dot product over the same input
window, so fusing changes only how many channels one call computes. On the
machines we checked (PyTorch's oneDNN and ONNX Runtime's MLAS on x86 CPUs) the
fused outputs equal the two convolutions' bit for bit (see
tests/test_fused_head.py); a backend could in principle choose a different
algorithm for a different channel count, so parity is checked as usual.

Not fusable, and exported with the plain head: SSDLite (its cls and box
branches each start with their own depthwise convolution, so the final 1x1
convolutions see different inputs), RetinaNet (separate cls and box towers)
and YOLO (Detect is already one convolution per level).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from ..models.base import Detector
from ..models.ssd import SSDDetector, conv_padding, pair

# Whether the exported graphs fuse the head where the architecture allows (HeadGraph, export_onnx).
FUSED_HEAD = True


def same_geometry(a: nn.Conv2d, b: nn.Conv2d) -> bool:
    """True if ``a`` and ``b`` read the same input the same way (so their outputs can be one convolution)."""
    return (a.in_channels == b.in_channels and a.kernel_size == b.kernel_size and a.stride == b.stride
            and a.padding == b.padding and a.dilation == b.dilation and a.groups == b.groups
            and a.padding_mode == b.padding_mode and (a.bias is None) == (b.bias is None)
            and a.weight.dtype == b.weight.dtype and a.weight.device == b.weight.device)


def can_fuse(detector: Detector) -> bool:
    """True if every active level's cls and box outputs are two convolutions of the same feature map.

    That is an :class:`~edgeanchor.models.ssd.SSDDetector` whose per-level head modules are plain
    ``nn.Conv2d`` (SSD300-VGG16, the demo) of the same geometry; not SSDLite (a depthwise block
    before each final convolution), RetinaNet or YOLO.
    """
    if not isinstance(detector, SSDDetector) or not len(detector.cls_heads):
        return False
    return all(type(c) is nn.Conv2d and type(b) is nn.Conv2d and same_geometry(c, b)
               for c, b in zip(detector.cls_heads, detector.box_heads))


def fuse_convs(first: nn.Conv2d, second: nn.Conv2d) -> nn.Conv2d:
    """One convolution whose output channels are ``first``'s, then ``second``'s (weights copied).

    Args:
        first, second: convolutions with the same geometry (see :func:`same_geometry`).

    Returns:
        A convolution with ``first.out_channels + second.out_channels`` outputs, in eval mode.
    """
    assert same_geometry(first, second), "fuse_convs needs two convolutions of the same geometry"
    fused = nn.Conv2d(first.in_channels, first.out_channels + second.out_channels, pair(first.kernel_size),
                      stride=pair(first.stride), padding=conv_padding(first), dilation=pair(first.dilation),
                      groups=first.groups, bias=first.bias is not None, padding_mode=first.padding_mode,
                      device=first.weight.device, dtype=first.weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(torch.cat([first.weight, second.weight]))  # (C1+C2, Cin/groups, kh, kw)
        if first.bias is not None:
            # same_geometry: second has a bias too, and fused was built with one
            assert second.bias is not None and fused.bias is not None
            fused.bias.copy_(torch.cat([first.bias, second.bias]))  # (C1+C2,)
    return fused.eval()


class FusedHead(nn.Module):
    """The head of a fusable detector (:func:`can_fuse`) as one convolution per active level.

    ``forward(features)`` returns what ``detector.head(features)`` returns: per active level
    ``(cls (N, A*K, H, W), box (N, A*4, H, W))``. The convolutions hold copies of the detector's
    weights, taken at construction.
    """

    def __init__(self, detector: Detector):
        super().__init__()
        if not isinstance(detector, SSDDetector) or not can_fuse(detector):
            raise ValueError(f"the head of {detector.arch} cannot be fused (see edgeanchor.exporting.fused_head)")
        # can_fuse: every head module is an nn.Conv2d
        pairs = [(cast(nn.Conv2d, c), cast(nn.Conv2d, b)) for c, b in zip(detector.cls_heads, detector.box_heads)]
        self.convs = nn.ModuleList(fuse_convs(c, b) for c, b in pairs)
        # Channel counts are Python ints fixed here, so the slices export with constant bounds.
        self.cls_channels = [int(c.out_channels) for c, _ in pairs]

    def forward(self, features: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out = []
        for conv, k, feature in zip(self.convs, self.cls_channels, features):
            y = conv(feature)  # (N, A*(K+4), H, W)
            out.append((y[:, :k], y[:, k:]))  # (N, A*K, H, W), (N, A*4, H, W): two static Slice ops
        return out
