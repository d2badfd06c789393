import json
import math

import pytest
import torch
import torchvision.models.detection as tvdet
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList

from edgeanchor.anchors import (
    AnchorBox,
    AnchorLevel,
    AnchorSet,
    from_anchor_generator,
    from_default_box_generator,
    from_reference,
    grid_anchors,
    overanchorized,
    parse_anchor_file,
    parse_overanchorized,
    to_reference,
)
from edgeanchor.errors import EdgeAnchorError


def tiny_set():
    return AnchorSet(
        image_size=(32, 32),
        centre_offset=0.5,
        levels=(
            AnchorLevel((2, 2), None, (AnchorBox(0, 8.0, 16.0), AnchorBox(1, 10.0, 10.0))),
            AnchorLevel((1, 1), None, (AnchorBox(2, 30.0, 15.0),)),
        ),
    )


def test_json_round_trip_and_ids():
    s = tiny_set()
    again = AnchorSet.from_json(json.loads(json.dumps(s.to_json())))
    assert again == s
    assert s.ids == [0, 1, 2]
    assert s.num_boxes == 2 * 2 * 2 + 1
    assert s.to_json()["ratio"] == "h/w"
    assert s.to_json()["levels"][0]["anchors"][0]["ratio_hw"] == 2.0  # h/w = 16/8


def test_grid_hand_worked():
    # Level 0: 2x2 cells of 16 px; centres at 8 and 24. Anchor 0 is 8 wide, 16 high:
    # cell (0, 0) -> (8-4, 8-8, 8+4, 8+8) = (4, 0, 12, 16); order is (row, col, anchor).
    level0, level1 = grid_anchors(tiny_set())
    assert level0.shape == (8, 4)
    assert level0[0].tolist() == [4.0, 0.0, 12.0, 16.0]
    assert level0[1].tolist() == [3.0, 3.0, 13.0, 13.0]  # anchor 1 at cell (0, 0)
    assert level0[2].tolist() == [20.0, 0.0, 28.0, 16.0]  # anchor 0 at cell (0, 1): centre x 24
    assert level0[4].tolist() == [4.0, 16.0, 12.0, 32.0]  # anchor 0 at cell (1, 0): centre y 24
    # Level 1: one cell, centre 16; 30x15 -> (1, 8.5, 31, 23.5).
    assert level1.tolist() == [[1.0, 8.5, 31.0, 23.5]]


def test_grid_corner_convention_hand_worked():
    s = AnchorSet((16, 16), 0.0, (AnchorLevel((2, 2), (8.0, 8.0), (AnchorBox(0, 4.0, 2.0),)),))
    # centres at 0 and 8 (cell corners), half sizes 2 and 1
    assert grid_anchors(s)[0].tolist() == [[-2, -1, 2, 1], [6, -1, 10, 1], [-2, 7, 2, 9], [6, 7, 10, 9]]


def test_subset_intersection_and_empty_levels():
    s = tiny_set()
    assert s.subset({0, 2}).subset({2, 1}) == s.subset({2})
    dropped = s.subset({2})
    assert dropped.active_levels == [1] and dropped.levels[0].anchors == ()
    with pytest.raises(EdgeAnchorError, match="removes every anchor"):
        s.subset({7})


def test_reference_form_hand_worked():
    template = tiny_set()
    # w = 300 * 0.1 / sqrt(4) = 15, h = 300 * 0.1 * sqrt(4) = 60
    s = from_reference({"base_size": 300, "scale_ratios": [[[0.1, 4.0], [0.2, 1.0]], []]}, template)
    a, b = s.levels[0].anchors
    assert (a.w, a.h, a.ratio) == (15.0, 60.0, 4.0)
    assert (b.w, b.h) == pytest.approx((60.0, 60.0))
    assert s.levels[1].anchors == () and s.active_levels == [0]
    back = from_reference(to_reference(s), template)
    assert [v for x in back.levels[0].anchors for v in (x.w, x.h)] == pytest.approx([15.0, 60.0, 60.0, 60.0])


@pytest.mark.parametrize(
    "obj, message",
    [
        ({"base_size": 300}, "malformed reference"),
        ({"base_size": 300, "scale_ratios": [[[0.1, 1.0]]]}, "1 levels but the model has 2"),
        ({"format": "nope"}, "malformed anchor set"),
        ({"format": "edgeanchor.anchors/1", "image_size": [32, 32]}, "missing key 'levels'"),
    ],
)
def test_malformed_anchor_files(obj, message):
    with pytest.raises(EdgeAnchorError, match=message):
        parse_anchor_file(obj, tiny_set())


def test_overanchorized():
    s = overanchorized(tiny_set(), num_scales=3, ratios=(0.25, 1.0, 4.0))
    assert s.anchors_per_level() == [9, 9]
    assert s.ids == list(range(18))
    first = s.levels[0].anchors
    base = tiny_set().levels[0].anchors[0].size
    assert first[0].size == pytest.approx(base) and first[0].ratio == pytest.approx(0.25)
    assert first[3].size == pytest.approx(base * 2 ** (1 / 3))
    assert parse_overanchorized("overanchorized:2x5", tiny_set()).anchors_per_level() == [10, 10]
    assert [round(a.ratio, 3) for a in parse_overanchorized("overanchorized:1x5", tiny_set()).levels[0].anchors] == [
        0.25, 0.5, 1.0, 2.0, 4.0]
    with pytest.raises(EdgeAnchorError, match="overanchorized:SCALESxRATIOS"):
        parse_overanchorized("overanchorized:3by5", tiny_set())


def _tv_anchors(generator, image, feats):
    return generator(ImageList(image, [tuple(image.shape[-2:])]), feats)[0]


@pytest.mark.parametrize(
    "aspect_ratios, steps, size",
    [([[2], [2, 3], [2, 3]], [8, 16, 32], (300, 300)), ([[2, 3]] * 3, None, (320, 256))],
)
def test_default_box_generator_bit_identical(aspect_ratios, steps, size):
    gen = DefaultBoxGenerator(aspect_ratios, min_ratio=0.2, max_ratio=0.95, steps=steps)
    feats = [torch.zeros(1, 1, math.ceil(size[0] / s), math.ceil(size[1] / s)) for s in (8, 16, 32)]
    image = torch.zeros(1, 3, *size)
    s = from_default_box_generator(gen, size, [f.shape[-2:] for f in feats])
    assert torch.equal(torch.cat(grid_anchors(s)), _tv_anchors(gen, image, feats))
    assert s.centre_offset == 0.5


def test_anchor_generator_bit_identical():
    gen = AnchorGenerator(((32, 40, 50), (64, 80, 101)), ((0.5, 1.0, 2.0),) * 2)
    size = (96, 128)
    feats = [torch.zeros(1, 1, 12, 16), torch.zeros(1, 1, 6, 8)]
    s = from_anchor_generator(gen, size, [f.shape[-2:] for f in feats])
    assert torch.equal(torch.cat(grid_anchors(s)), _tv_anchors(gen, torch.zeros(1, 3, *size), feats))
    # torchvision rounds half-extents: ratio 0.5 of 32 -> w = 2*round(22.6) = 46, h = 2*round(11.3) = 22
    assert (s.levels[0].anchors[0].w, s.levels[0].anchors[0].h) == (46.0, 22.0)
    assert s.levels[0].anchors[0].ratio == pytest.approx(22 / 46)  # h/w


def test_torchvision_model_anchors_identical():
    model = tvdet.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3).eval()
    from edgeanchor.models.registry import wrap

    det = wrap("torchvision:ssdlite320_mobilenet_v3_large", model, image_size=(320, 320))
    image = torch.zeros(1, 3, 320, 320)
    feats = list(model.backbone(image).values())
    assert torch.equal(det.anchors_xyxy, _tv_anchors(model.anchor_generator, image, feats))
