import pytest
import torch
from torchprofile import profile_macs

from edgeanchor.cost import measure_cost
from edgeanchor.models import build_detector
from edgeanchor.pruning import prune


@pytest.fixture(scope="module")
def ssd300():
    return build_detector("torchvision:ssd300_vgg16", num_classes=81)


def test_ssd300_head_macs_and_boxes_hand_worked(ssd300):
    cost = measure_cost(ssd300)
    # boxes: 38^2*4 + 19^2*6 + 10^2*6 + 5^2*6 + 3^2*4 + 1*4 = 8732
    assert cost.num_boxes == 8732
    # level 0: 3x3 convs on 512 channels at 38x38, 4 anchors x (81 classes + 4 box values):
    # 38*38 * 4*(81+4) * 512*9 = 2,262,343,680
    assert cost.head_macs_per_level[0] == 38 * 38 * 4 * 85 * 512 * 9 == 2_262_343_680
    # level 5: 1x1 map, 256 channels, 4 anchors: 1 * 4*85 * 256*9 = 783,360
    assert cost.head_macs_per_level[5] == 783_360
    assert cost.head_macs == 4_231_319_040  # the paper's 4231M for SSD300 with 81 classes


def test_pruning_removes_exactly_the_sliced_macs(ssd300):
    before = measure_cost(ssd300)
    keep = set(ssd300.anchor_set.ids) - {a.id for a in ssd300.anchor_set.levels[5].anchors} - {0}
    after = measure_cost(prune(ssd300, keep))
    assert after.head_macs_per_level[5] == 0
    # anchor 0 on level 0 takes 85 output channels: 38*38 * 85 * 512*9 = 565,585,920
    assert before.head_macs - after.head_macs == 783_360 + 565_585_920
    assert after.num_boxes == 8732 - 4 - 38 * 38
    assert after.backbone_macs <= before.backbone_macs  # the last extra block no longer runs


@pytest.mark.parametrize("name", ["edgeanchor:demo_ssd", "torchvision:ssdlite320_mobilenet_v3_large",
                                  pytest.param("torchvision:retinanet_resnet50_fpn", marks=pytest.mark.slow)])
def test_head_macs_match_torchprofile(name):
    det = build_detector(name, image_size=(256, 256) if "retinanet" in name else None)
    cost = measure_cost(det)
    feats = det.backbone(torch.zeros(1, 3, *det.image_size))
    expected = []
    for j, f in enumerate(feats):
        calls = _conv_calls(det, lambda: det.head_at(j, f))
        expected.append(sum(profile_macs(conv, x) for conv, x in calls))
    assert [cost.head_macs_per_level[i] for i in det.active_levels] == expected
    calls = _conv_calls(det, lambda: det.head(det.backbone(torch.zeros(1, 3, *det.image_size))))
    assert cost.total_macs == sum(profile_macs(conv, x) for conv, x in calls)


def _conv_calls(det, fn):
    """(conv, input) of every convolution call that ``fn`` makes."""
    calls = []
    hooks = [m.register_forward_hook(lambda m, inp, out: calls.append((m, inp[0])))
             for m in det.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        fn()
    for h in hooks:
        h.remove()
    assert calls
    return calls
