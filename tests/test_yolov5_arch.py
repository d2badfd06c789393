"""The YOLOv5 v7.0 architecture: exact parameter counts, yolov5's state-dict names, Detect layout and cost."""

import pytest
import torch

from edgeanchor.errors import EdgeAnchorError
from edgeanchor.models.yolov5_arch import build_yolov5, make_divisible

# Published model summaries of the v7.0 release at nc=80: as built ("YOLOv5s summary: 214 layers, 7235389
# parameters") and after BatchNorm is folded into the convolutions for inference ("157 layers, 7225885").
PUBLISHED = {"n": (1_872_157, 1_867_405), "s": (7_235_389, 7_225_885), "m": (21_190_557, 21_172_173),
             "l": (46_563_709, 46_533_693), "x": (86_749_405, 86_705_005)}


def check_counts(size):
    model = build_yolov5(size, nc=80)
    built = sum(p.numel() for p in model.parameters())
    # folding a BatchNorm of C channels into its bias-free conv drops 2C parameters and adds a C bias
    bn_channels = sum(m.num_features for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert (built, built - bn_channels) == PUBLISHED[size]


@pytest.mark.parametrize("size", ["n", "s", "m"])
def test_parameter_counts_equal_the_published_summaries(size):
    check_counts(size)


@pytest.mark.slow
@pytest.mark.parametrize("size", ["l", "x"])
def test_parameter_counts_of_the_large_sizes(size):
    check_counts(size)


def test_state_dict_names_and_shapes_are_yolov5s():
    sd = build_yolov5("s", nc=80).state_dict()
    assert sd["model.0.conv.weight"].shape == (32, 3, 6, 6)  # Conv(64*0.5, k=6, s=2, p=2)
    assert sd["model.0.bn.running_var"].shape == (32,)
    assert sd["model.2.m.0.cv1.conv.weight"].shape == (32, 32, 1, 1)  # C3(128*0.5) bottleneck
    assert sd["model.9.cv2.conv.weight"].shape == (512, 1024, 1, 1)  # SPPF(512 -> 512), 4 x 256 in
    assert sd["model.24.m.0.weight"].shape == (255, 128, 1, 1)  # Detect P3: 3 * (5 + 80)
    assert sd["model.24.m.2.weight"].shape == (255, 512, 1, 1)  # Detect P5
    # anchors in stride units, as in yolov5 checkpoints: P3 (10,13)/8, P5 (373,326)/32
    assert torch.allclose(sd["model.24.anchors"][0, 0], torch.tensor([10 / 8, 13 / 8]))
    assert torch.allclose(sd["model.24.anchors"][2, 2], torch.tensor([373 / 32, 326 / 32]))
    assert not any(k.endswith("stride") for k in sd)  # stride is derived, not stored
    assert len([k for k in sd if k.endswith("num_batches_tracked")]) == 57  # BatchNorms of the s model


def test_detect_outputs_and_strides_at_640():
    model = build_yolov5("n", nc=80).eval()
    with torch.no_grad():
        outs = model(torch.zeros(1, 3, 640, 640))
    assert [tuple(o.shape) for o in outs] == [(1, 255, 80, 80), (1, 255, 40, 40), (1, 255, 20, 20)]
    assert model.detect.stride.tolist() == [8.0, 16.0, 32.0]
    assert sum(o.shape[-1] * o.shape[-2] * 3 for o in outs) == 25_200  # boxes at 640


@pytest.mark.parametrize("size, expected", [("s", 365_568_000), ("n", 182_784_000)])
def test_detect_head_macs_at_640(size, expected):
    """6400*128*255 + 1600*256*255 + 400*512*255 for s (half the widths for n): 1x1 convs, MACs = HW*Cin*Cout."""
    model = build_yolov5(size, nc=80)
    sizes = [80 * 80, 40 * 40, 20 * 20]
    macs = sum(hw * conv.in_channels * conv.out_channels for hw, conv in zip(sizes, model.detect.m))
    assert macs == expected


def test_custom_yaml_and_errors(tmp_path):
    yaml = tmp_path / "tiny.yaml"
    yaml.write_text("""
depth_multiple: 0.33
width_multiple: 0.25
anchors: [[10,13, 16,30], [30,61, 62,45]]
backbone:
  [[-1, 1, Conv, [64, 3, 2]], [-1, 1, Conv, [128, 3, 2]], [-1, 1, Conv, [128, 3, 2]], [-1, 1, C3, [128]],
   [-1, 1, Conv, [256, 3, 2]], [-1, 1, SPPF, [256, 5]]]
head:
  [[[3, 5], 1, Detect, [nc, anchors]]]
""")
    model = build_yolov5(str(yaml), nc=3)
    assert model.detect.na == 2 and [c.out_channels for c in model.detect.m] == [16, 16]  # 2 * (5 + 3)
    assert model.detect.stride.tolist() == [8.0, 16.0]
    with pytest.raises(EdgeAnchorError, match="is not one of n, s, m, l, x or a model YAML"):
        build_yolov5("q")
    bad = tmp_path / "bad.yaml"
    bad.write_text("backbone: []\n")
    with pytest.raises(EdgeAnchorError, match="not a yolov5 model definition"):
        build_yolov5(str(bad))
    assert make_divisible(64 * 0.25) == 16 and make_divisible(1024 * 0.75) == 768 and make_divisible(20) == 24
