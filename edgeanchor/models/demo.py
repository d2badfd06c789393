"""The demo detector: a small SSD on a compact convolutional backbone.

It is a plain torchvision ``SSD`` with a small feature extractor, so the SSD
adapter, the pruner and the exporter treat it exactly like SSD300. It is
sized to train from scratch on two CPU cores in minutes.
"""

from __future__ import annotations

from torch import nn
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.ssd import SSD, SSDHead

DEFAULT_IMAGE_SIZE = (320, 320)
# Feature strides 8, 16, 32, 64, 128 at 320 px: 40, 20, 10, 5, 3 cells.
DEFAULT_WIDTHS = (16, 32, 48, 64, 96, 96, 96)
# Anchor scales (fraction of the image) per level, plus the closing one.
DEFAULT_SCALES = (0.05, 0.12, 0.25, 0.45, 0.7, 0.95)
# torchvision's DefaultBoxGenerator aspect ratios are w/h; each gives ar and 1/ar.
DEFAULT_ASPECT_RATIOS = ((2, 3),) * 5


def _conv_bn(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class DemoExtractor(nn.Module):
    """Stem (stride 4) then five stride-2 stages, one feature level each."""

    def __init__(self, widths=DEFAULT_WIDTHS):
        super().__init__()
        w = list(widths)
        self.stem = nn.Sequential(_conv_bn(3, w[0], 2), _conv_bn(w[0], w[1], 2))
        stages = []
        c_in = w[1]
        for i, c_out in enumerate(w[2:]):
            layers = [_conv_bn(c_in, c_out, 2)]
            if i < 3:  # the three finest levels get a second conv for context
                layers.append(_conv_bn(c_out, c_out, 1))
            stages.append(nn.Sequential(*layers))
            c_in = c_out
        self.stages = nn.ModuleList(stages)
        self.out_channels = list(w[2:])

    def forward_levels(self, x, num_levels: int):
        """Features of the first ``num_levels`` levels (deeper stages do not run)."""
        x = self.stem(x)
        out = []
        for stage in self.stages[:num_levels]:
            x = stage(x)
            out.append(x)
        return out

    def forward(self, x):
        return {str(i): f for i, f in enumerate(self.forward_levels(x, len(self.stages)))}


def build_demo_ssd(
    num_classes: int,
    *,
    image_size=DEFAULT_IMAGE_SIZE,
    widths=DEFAULT_WIDTHS,
    scales=DEFAULT_SCALES,
    aspect_ratios=DEFAULT_ASPECT_RATIOS,
) -> SSD:
    """The demo architecture as a torchvision ``SSD`` with random weights."""
    extractor = DemoExtractor(widths)
    generator = DefaultBoxGenerator([list(r) for r in aspect_ratios], scales=list(scales), steps=None)
    head = SSDHead(extractor.out_channels, generator.num_anchors_per_location(), num_classes)
    return SSD(
        extractor,
        generator,
        tuple(image_size),
        num_classes,
        head=head,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.25, 0.25, 0.25],
        score_thresh=0.01,
        nms_thresh=0.45,
        detections_per_img=100,
        topk_candidates=200,
    )
