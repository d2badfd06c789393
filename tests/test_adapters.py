"""Wrapped detectors against torchvision, and exact head slicing, on random weights."""

import pytest
import torch

from edgeanchor.errors import EdgeAnchorError
from edgeanchor.models.registry import ARCHS, load_checkpoint, save_checkpoint, wrap
from edgeanchor.postprocess import select
from edgeanchor.pruning import prune
from tests.helpers import randomize_head_biases

# name -> (input size, num_classes, keep ids: partial levels + a dropped level)
CASES = {
    "torchvision:ssd300_vgg16": ((300, 300), 5),
    "torchvision:ssdlite320_mobilenet_v3_large": ((320, 320), 5),
    "torchvision:retinanet_resnet50_fpn": ((192, 192), 5),
    "torchvision:retinanet_resnet50_fpn_v2": ((160, 160), 5),
    "edgeanchor:demo_ssd": ((320, 320), 6),
}


def build_pair(name):
    size, k = CASES[name]
    torch.manual_seed(0)
    tv_model = ARCHS[name].builder(k, size).eval()
    randomize_head_biases(tv_model)
    return tv_model, wrap(name, tv_model, image_size=size).eval()


# the ResNet-50 RetinaNets and the VGG-16 SSD300 take long: slow; the other architectures run in the fast tier
@pytest.fixture(scope="module", params=[pytest.param(n, marks=pytest.mark.slow) if "retinanet" in n or "ssd300" in n
                                        else n for n in CASES])
def pair(request):
    return (request.param, *build_pair(request.param))


def images_for(size, n=2, seed=3):
    return torch.rand(n, 3, *size, generator=torch.Generator().manual_seed(seed))


def keep_sets(det):
    """A keep set with partial levels, and one that also drops the last level."""
    s = det.anchor_set
    if det.shared_head:  # same anchor positions on every level; drop P7
        positions = [0, 2, 4, 7]
        partial = {lv.anchors[p].id for lv in s.levels for p in positions}
        dropped = {lv.anchors[p].id for lv in s.levels[:-1] for p in positions}
    else:
        partial = {a.id for lv in s.levels for p, a in enumerate(lv.anchors) if p % 2 == 0}
        dropped = partial - {a.id for a in s.levels[-1].anchors} - {a.id for a in s.levels[0].anchors[1:]}
    return [partial, dropped]


@torch.no_grad()
def test_wrapped_detections_equal_torchvision(pair):
    name, tv_model, det = pair
    images = images_for(det.image_size)
    expected = tv_model(list(images))
    got = det(images)
    total = 0
    for e, g in zip(expected, got):
        assert torch.equal(e["labels"], g["labels"])
        assert torch.equal(e["boxes"], g["boxes"])
        assert torch.equal(e["scores"], g["scores"])
        total += len(g["labels"])
    assert total > 0, "the comparison needs detections"


@torch.no_grad()
def test_pruned_head_equals_unpruned_at_kept_anchors(pair):
    name, _, det = pair
    images = images_for(det.image_size, seed=5)
    ref_cls, ref_box = det.flatten_head(det.head(det.backbone(images)))
    ids = det.box_anchor_ids()
    for keep in keep_sets(det):
        pruned = prune(det, keep)
        cls, box = pruned.flatten_head(pruned.head(pruned.backbone(images)))
        mask = torch.isin(ids, torch.tensor(sorted(keep)))
        assert cls.shape[1] == int(mask.sum()) == pruned.anchor_set.num_boxes
        assert (cls - ref_cls[:, mask]).abs().max() <= 1e-6
        assert (box - ref_box[:, mask]).abs().max() <= 1e-6
        assert torch.equal(pruned.anchors_xyxy, det.anchors_xyxy[mask])


@torch.no_grad()
def test_pruned_detections_equal_masked_candidates(pair):
    name, _, det = pair
    images = images_for(det.image_size, seed=7)
    head = det.head(det.backbone(images))
    all_cands = det.image_candidates(head)
    ids = det.box_anchor_ids()
    for keep in keep_sets(det):
        pruned = prune(det, keep)
        keep_t = torch.tensor(sorted(keep))
        got = pruned(images)
        for cands, g in zip(all_cands, got):
            masked = cands.take(torch.isin(ids[cands.box_index], keep_t))
            expected = select(masked, det.postprocess_spec, det.level_starts)
            assert len(g["labels"]) > 0
            assert torch.equal(expected["labels"], g["labels"])
            assert torch.equal(expected["scores"], g["scores"])
            assert torch.equal(expected["boxes"], g["boxes"])


@torch.no_grad()
def test_slicing_twice_equals_intersection(pair):
    name, _, det = pair
    first, second = keep_sets(det)
    images = images_for(det.image_size, n=1, seed=9)
    twice = prune(prune(det, first), second | {999999})
    once = prune(det, first & second)
    assert twice.anchor_set == once.anchor_set
    for (a_cls, a_box), (b_cls, b_box) in zip(twice.head(twice.backbone(images)), once.head(once.backbone(images))):
        assert torch.equal(a_cls, b_cls) and torch.equal(a_box, b_box)


def test_dropped_level_runs_no_head(pair):
    name, _, det = pair
    _, dropped = keep_sets(det)
    pruned = prune(det, dropped)
    last = det.anchor_set.num_levels - 1
    assert last not in pruned.active_levels
    feats = pruned.backbone(images_for(det.image_size, n=1))
    assert len(feats) == len(pruned.active_levels) == len(pruned.head(feats))
    if not det.shared_head:
        assert len(pruned.cls_heads) == len(pruned.active_levels)
        assert pruned.cls_heads[0].weight.shape[0] if isinstance(pruned.cls_heads[0], torch.nn.Conv2d) else True


def test_keep_nothing_is_an_error(pair):
    name, _, det = pair
    with pytest.raises(EdgeAnchorError, match="removes every anchor"):
        prune(det, [])


def test_shared_head_rejects_per_level_keep_sets():
    _, det = build_pair("torchvision:retinanet_resnet50_fpn")
    levels = det.anchor_set.levels
    keep = {levels[0].anchors[0].id, levels[1].anchors[1].id}
    with pytest.raises(EdgeAnchorError, match="shared across levels"):
        prune(det, keep)


def test_retinanet_dropping_p3_skips_its_fpn_convs():
    _, det = build_pair("torchvision:retinanet_resnet50_fpn")
    keep = {a.id for lv in det.anchor_set.levels[1:] for a in lv.anchors}
    pruned = prune(det, keep)
    called = []
    hooks = [m.register_forward_hook(lambda *a, n=n: called.append(n)) for n, m in pruned.fpn.named_modules()
             if isinstance(m, torch.nn.Conv2d)]
    pruned.backbone(images_for(det.image_size, n=1))
    for h in hooks:
        h.remove()
    assert not any(n.startswith(("inner_blocks.0", "layer_blocks.0")) for n in called)
    assert any(n.startswith("layer_blocks.1") for n in called)


@torch.no_grad()
def test_checkpoint_round_trip(tmp_path):
    _, det = build_pair("edgeanchor:demo_ssd")
    _, keep = keep_sets(det)
    pruned = prune(det, keep)
    save_checkpoint(pruned, tmp_path / "p.pt")
    again = load_checkpoint(tmp_path / "p.pt")
    assert again.anchor_set == pruned.anchor_set
    images = images_for(det.image_size, n=1)
    for a, b in zip(again(images), pruned(images)):
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["labels"], b["labels"])
