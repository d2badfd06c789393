import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from edgeanchor.anchors import AnchorBox, AnchorLevel, AnchorSet
from edgeanchor.errors import EdgeAnchorError
from edgeanchor.train.yolo_loss import build_targets, yolov5_loss

# YOLOv5's P3-P5 anchors halved, for a 64x64 input (strides 8/16/32, grids 8x8/4x4/2x2).
ANCHORS = (((5, 6.5), (8, 15), (16.5, 11.5)),
           ((15, 30.5), (31, 22.5), (29.5, 59.5)),
           ((58, 45), (78, 99), (186.5, 163)))
# Objectness gain at 64 px with 3 levels: 1.0 * (64 / 640)**2 * 3 / 3.
OBJ_GAIN = 0.01


def anchor_set(anchors=ANCHORS) -> AnchorSet:
    ids = iter(range(100))
    levels = tuple(
        AnchorLevel(feature_size=(64 // s, 64 // s), stride=(float(s), float(s)),
                  anchors=tuple(AnchorBox(next(ids), float(w), float(h)) for w, h in level))
        for s, level in zip((8, 16, 32), anchors)
    )
    return AnchorSet(image_size=(64, 64), centre_offset=0.5, levels=levels)


def fake_det(num_classes=3, anchors=ANCHORS):
    aset = anchor_set(anchors)
    return SimpleNamespace(anchor_set=aset, active_levels=aset.active_levels, num_classes=num_classes,
                           image_size=(64, 64))


def head_outputs(det, batch=1, fill=None, seed=0, requires_grad=True):
    gen = torch.Generator().manual_seed(seed)
    outs = []
    for i in det.active_levels:
        level = det.anchor_set.levels[i]
        h, w = level.feature_size
        a = level.num_anchors
        shapes = [(batch, a * (1 + det.num_classes), h, w), (batch, a * 4, h, w)]
        pair = [torch.full(s, float(fill)) if fill is not None else torch.randn(s, generator=gen) for s in shapes]
        outs.append(tuple(t.requires_grad_(requires_grad) for t in pair))
    return outs


def target(*boxes, labels=None):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    labels = torch.zeros(len(boxes), dtype=torch.int64) if labels is None else torch.tensor(labels)
    return {"boxes": boxes, "labels": labels}


def cells(t):
    """(anchor, row, col) of every assignment, in order."""
    return list(zip(t.anchor.tolist(), t.row.tolist(), t.col.tolist()))


# ---- assignment -----------------------------------------------------------
def test_centre_right_and_lower_neighbours():
    # A 10x12 px box centred at (13, 21): on stride 8, gxy = (1.625, 2.625) -> cell (row 2, col 1).
    # x: frac .625 >= .5 -> no left; (8 - 1.625) = 6.375, frac .375 < .5 -> right (col 2).
    # y: frac .625 -> no up; (8 - 2.625) = 5.375, frac .375 -> lower (row 3).
    # gwh = (1.25, 1.5) vs anchors (.625, .8125), (1, 1.875), (2.0625, 1.4375): worst ratios 2, 1.25, 1.65 < 4.
    aset = anchor_set()
    t = build_targets(aset, [0, 1, 2], [target((8, 15, 18, 27))])
    centre = [(a, 2, 1) for a in range(3)]
    right = [(a, 2, 2) for a in range(3)]
    lower = [(a, 3, 1) for a in range(3)]
    assert cells(t[0]) == centre + right + lower
    # Box xy from each cell's corner: centre (.625, .625), right (-.375, .625), lower (.625, -.375).
    torch.testing.assert_close(t[0].box_xywh[0], torch.tensor([0.625, 0.625, 1.25, 1.5]))
    torch.testing.assert_close(t[0].box_xywh[3], torch.tensor([-0.375, 0.625, 1.25, 1.5]))
    torch.testing.assert_close(t[0].box_xywh[6], torch.tensor([0.625, -0.375, 1.25, 1.5]))
    torch.testing.assert_close(t[0].anchor_wh[1], torch.tensor([1.0, 1.875]))
    # Stride 16: gwh (.625, .75); anchor 2 (1.84375, 3.71875) has h ratio 4.96 >= 4, so only anchors 0, 1.
    # gxy = (.8125, 1.3125): x frac .8125, 4 - .8125 = 3.1875 -> right; y frac .3125, gy > 1 -> up.
    assert cells(t[1]) == [(0, 1, 0), (1, 1, 0), (0, 0, 0), (1, 0, 0), (0, 1, 1), (1, 1, 1)]
    # Stride 32: gwh (.3125, .375) vs the smallest anchor (1.8125, 1.40625): ratio 5.8.
    assert len(t[2].image) == 0


def test_left_and_upper_neighbours():
    # Centre (11, 19): gxy (1.375, 2.375) -> cell (2, 1); fracs .375 < .5 and both > 1 -> left (2, 0), up (1, 1).
    t = build_targets(anchor_set(), [0], [target((6, 13, 16, 25))])[0]
    assert cells(t) == [(a, 2, 1) for a in range(3)] + [(a, 2, 0) for a in range(3)] + [(a, 1, 1) for a in range(3)]


def test_first_column_gets_no_left_neighbour():
    # Centre (3, 21): gx .375 has frac < .5 but gx <= 1 -> no left; 8 - .375 = 7.625, frac .625 -> no right.
    # gy 2.625 -> lower only. 6x12 px: gwh (.75, 1.5), all three anchors within 4.
    t = build_targets(anchor_set(), [0], [target((0, 15, 6, 27))])[0]
    assert cells(t) == [(a, 2, 0) for a in range(3)] + [(a, 3, 0) for a in range(3)]


def test_ratio_of_four_or_more_is_not_assigned():
    # 40x8 px on stride 8: gwh (5, 1); anchor 0 w ratio 8, anchor 1 w ratio 5, anchor 2 (2.0625, 1.4375) 2.42.
    t = build_targets(anchor_set(), [0], [target((12, 16, 52, 24))])[0]
    assert set(t.anchor.tolist()) == {2}
    # 20x26 px is exactly 4x anchor 0 (5x6.5): the bound is strict.
    t = build_targets(anchor_set(), [0], [target((20, 20, 40, 46))])[0]
    assert 0 not in t.anchor.tolist() and 1 in t.anchor.tolist()


def test_centre_on_a_cell_edge_duplicates_its_own_cell():
    # Centre (16, 21): gx = 2.0 exactly. Left: frac 0 < .5 and gx > 1 -> col 1. Right: (8 - 2) mod 1 = 0 < .5,
    # cell floor(2 + .5) = 2, the centre cell again (YOLOv5's rule), so still 3 distinct cells.
    t = build_targets(anchor_set((((5, 6.5),), (), ())), [0], [target((11, 15, 21, 27))])[0]
    assert cells(t) == [(0, 2, 2), (0, 2, 1), (0, 2, 2), (0, 3, 2)]


def test_images_and_labels_are_carried():
    t = build_targets(anchor_set(), [0], [target(), target((6, 13, 16, 25), labels=[2])])[0]
    assert t.image.tolist() == [1] * 9 and t.labels.tolist() == [2] * 9


# ---- the loss --------------------------------------------------------------
def test_exact_prediction_gives_zero_box_loss_and_iou_objectness():
    det = fake_det()
    outs = head_outputs(det, fill=0.0)
    tgt = [target((6, 13, 16, 25), labels=[1])]
    for (_cls, box), t in zip(outs, build_targets(det.anchor_set, det.active_levels, tgt)):
        raw = box.detach().view(1, -1, 4, *box.shape[-2:])  # a view: writes reach ``box``
        # Invert the decode: xy = 2 s - .5 -> s = (xy + .5) / 2; wh = (2 s)^2 anchor -> s = sqrt(wh / anchor) / 2.
        s_xy = (t.box_xywh[:, :2] + 0.5) / 2
        s_wh = (t.box_xywh[:, 2:] / t.anchor_wh).sqrt() / 2
        raw[t.image, t.anchor, :, t.row, t.col] = torch.logit(torch.cat([s_xy, s_wh], 1))
    loss = yolov5_loss(det, outs, tgt)
    assert loss["box"].item() == pytest.approx(0.0, abs=1e-5)
    # With every logit 0, d BCE / d logit = (0.5 - tobj) / numel, times level weight and gain:
    # so the gradient recovers tobj, which must be the CIoU (1) at assigned cells and 0 elsewhere.
    loss["obj"].backward()
    assigned = build_targets(det.anchor_set, det.active_levels, tgt)
    for (cls, _), t, weight in zip(outs, assigned, (4.0, 1.0, 0.4)):
        grad = cls.grad.view(1, 3, 4, *cls.shape[-2:])[:, :, 0]  # (N, A, H, W) objectness
        tobj = 0.5 - grad * grad.numel() / (weight * OBJ_GAIN)
        expected = torch.zeros_like(tobj)
        expected[t.image, t.anchor, t.row, t.col] = 1.0
        torch.testing.assert_close(tobj, expected, atol=1e-5, rtol=0)


def test_objectness_target_is_the_iou_and_the_last_write_wins():
    # One level, one anchor; two boxes centred at the same point (11, 19), 10x12 and 12x12 px, share all
    # three cells. The second target's entries come later, so its CIoU is the objectness target there.
    det = fake_det(num_classes=1, anchors=(((10, 12),), (), ()))
    outs = head_outputs(det, fill=0.0)  # every prediction decodes to the anchor at the cell's centre
    tgt = [target((6, 13, 16, 25), (5, 13, 17, 25))]
    yolov5_loss(det, outs, tgt)["obj"].backward()
    t = build_targets(det.anchor_set, [0], tgt)[0]
    assert cells(t) == [(0, 2, 1), (0, 2, 1), (0, 2, 0), (0, 2, 0), (0, 1, 1), (0, 1, 1)]
    raw = outs[0][1].detach().view(1, 1, 4, 8, 8)
    last, first = torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)
    for k in range(len(t.image)):
        b, a, r, c = t.image[k], t.anchor[k], t.row[k], t.col[k]
        value = max(ciou(decode(raw[b, a, :, r, c], t.anchor_wh[k]), t.box_xywh[k]), 0.0)
        last[b, a, r, c] = value
        first[b, a, r, c] = value if k % 2 == 0 else first[b, a, r, c]
    assert not torch.allclose(last, first)
    # See the test above: the gradient of the objectness logits recovers tobj.
    grad = outs[0][0].grad.view(1, 1, 2, 8, 8)[:, :, 0]
    tobj = 0.5 - grad * grad.numel() / (4.0 * OBJ_GAIN)
    torch.testing.assert_close(tobj, last, atol=1e-5, rtol=0)


def test_one_class_has_zero_class_loss():
    det = fake_det(num_classes=1)
    loss = yolov5_loss(det, head_outputs(det), [target((6, 13, 16, 25))])
    assert loss["cls"].item() == 0.0 and loss["cls"].requires_grad
    assert loss["box"].item() > 0


def test_empty_targets_give_log2_objectness():
    det = fake_det()
    loss = yolov5_loss(det, head_outputs(det, batch=2, fill=0.0), [target(), target()])
    assert loss["box"].item() == 0.0 and loss["cls"].item() == 0.0
    assert loss["box"].requires_grad and loss["cls"].requires_grad
    # BCE(0, 0) = log 2 per element; weights 4 + 1 + 0.4; gain .01 -> 0.054 log 2 = 0.037430...
    assert loss["obj"].item() == pytest.approx(math.log(2) * 5.4 * OBJ_GAIN, rel=1e-6)
    sum(loss.values()).backward()


def test_pruned_level_keeps_the_level_weights():
    det = fake_det()
    aset = det.anchor_set
    det.anchor_set = replace(aset, levels=(aset.levels[0], replace(aset.levels[1], anchors=()), aset.levels[2]))
    det.active_levels = det.anchor_set.active_levels
    assert det.active_levels == [0, 2]
    loss = yolov5_loss(det, head_outputs(det, fill=0.0), [target()])
    # Levels 0 and 2 keep weights 4 and 0.4; nl stays 3, so the gain is unchanged.
    assert loss["obj"].item() == pytest.approx(math.log(2) * 4.4 * OBJ_GAIN, rel=1e-6)


def test_gradients_are_finite_and_non_zero():
    det = fake_det()
    outs = head_outputs(det, batch=2)
    tgt = [target((6, 13, 16, 25), (30, 2, 60, 40), labels=[0, 2]), target((20, 20, 40, 46), labels=[1])]
    loss = yolov5_loss(det, outs, tgt)
    sum(loss.values()).backward()
    for cls, box in outs:
        for t in (cls, box):
            assert torch.isfinite(t.grad).all()
    assert all(cls.grad.abs().sum() > 0 for cls, _ in outs)
    assert any(box.grad.abs().sum() > 0 for _, box in outs)
    assert all(v.item() > 0 for v in loss.values())


def test_unknown_hyp_key_is_an_error():
    det = fake_det()
    with pytest.raises(EdgeAnchorError, match="unknown yolov5_loss hyp"):
        yolov5_loss(det, head_outputs(det), [target()], hyp={"boxx": 1.0})


def test_hyp_scales_the_terms():
    det = fake_det()
    outs = head_outputs(det)
    tgt = [target((6, 13, 16, 25), labels=[1])]
    base = yolov5_loss(det, outs, tgt)
    doubled = yolov5_loss(det, outs, tgt, hyp={"box": 0.1, "obj": 2.0, "cls": 1.0})
    for key in base:
        assert doubled[key].item() == pytest.approx(2 * base[key].item(), rel=1e-6)


# ---- a slow, loop-based reference ------------------------------------------
def decode(raw, anchor_wh):
    s = raw.double().sigmoid()
    return torch.cat([2 * s[:2] - 0.5, (2 * s[2:]) ** 2 * anchor_wh.double()])


def ciou(p, t, eps=1e-7):
    """CIoU of two xywh boxes, written out (same eps placement as torchvision)."""
    p, t = p.double().tolist(), t.double().tolist()
    (px1, py1, px2, py2), (tx1, ty1, tx2, ty2) = [(x - w / 2, y - h / 2, x + w / 2, y + h / 2) for x, y, w, h in (p, t)]
    inter = max(0.0, min(px2, tx2) - max(px1, tx1)) * max(0.0, min(py2, ty2) - max(py1, ty1))
    union = p[2] * p[3] + t[2] * t[3] - inter
    iou = inter / (union + eps)
    diag = (max(px2, tx2) - min(px1, tx1)) ** 2 + (max(py2, ty2) - min(py1, ty1)) ** 2 + eps
    rho = (p[0] - t[0]) ** 2 + (p[1] - t[1]) ** 2
    v = 4 / math.pi**2 * (math.atan(t[2] / t[3]) - math.atan(p[2] / p[3])) ** 2
    alpha = v / (1 - iou + v + eps)
    return iou - rho / diag - alpha * v


def bce(x, y):
    return max(x, 0.0) - x * y + math.log1p(math.exp(-abs(x)))


def reference_loss(det, outs, targets):
    nc, nl = det.num_classes, det.anchor_set.num_levels
    lbox = lobj = lcls = 0.0
    for (cls, box), i in zip(outs, det.active_levels):
        level = det.anchor_set.levels[i]
        stride = level.stride[0]
        n_img, _, H, W = cls.shape
        A = level.num_anchors
        logits = cls.detach().double().view(n_img, A, 1 + nc, H, W)
        raw = box.detach().double().view(n_img, A, 4, H, W)
        tobj = torch.zeros(n_img, A, H, W, dtype=torch.float64)
        box_terms, cls_terms = [], []
        for offset in ("centre", "left", "up", "right", "down"):
            for a, anc in enumerate(level.anchors):
                aw, ah = anc.w / stride, anc.h / stride
                for b, tg in enumerate(targets):
                    for (x1, y1, x2, y2), label in zip(tg["boxes"].double().tolist(), tg["labels"].tolist()):
                        gx, gy = (x1 + x2) / 2 / stride, (y1 + y2) / 2 / stride
                        gw, gh = (x2 - x1) / stride, (y2 - y1) / stride
                        if max(gw / aw, aw / gw, gh / ah, ah / gh) >= 4.0:
                            continue
                        col, row = math.floor(gx), math.floor(gy)
                        if offset == "left":
                            if not (gx % 1 < 0.5 and gx > 1):
                                continue
                            col = math.floor(gx - 0.5)
                        elif offset == "up":
                            if not (gy % 1 < 0.5 and gy > 1):
                                continue
                            row = math.floor(gy - 0.5)
                        elif offset == "right":
                            if not ((W - gx) % 1 < 0.5 and W - gx > 1):
                                continue
                            col = math.floor(gx + 0.5)
                        elif offset == "down":
                            if not ((H - gy) % 1 < 0.5 and H - gy > 1):
                                continue
                            row = math.floor(gy + 0.5)
                        col, row = min(max(col, 0), W - 1), min(max(row, 0), H - 1)
                        pred = decode(raw[b, a, :, row, col], torch.tensor([aw, ah]))
                        c = ciou(pred, torch.tensor([gx - col, gy - row, gw, gh]))
                        box_terms.append(1 - c)
                        tobj[b, a, row, col] = max(c, 0.0)
                        if nc > 1:
                            cls_terms += [bce(logits[b, a, 1 + k, row, col].item(), float(k == label))
                                          for k in range(nc)]
        weight = (4.0, 1.0, 0.4)[i]
        obj_logits = logits[:, :, 0].flatten().tolist()
        lobj += weight * sum(bce(x, y) for x, y in zip(obj_logits, tobj.flatten().tolist())) / tobj.numel()
        lbox += sum(box_terms) / len(box_terms) if box_terms else 0.0
        lcls += sum(cls_terms) / len(cls_terms) if cls_terms else 0.0
    per_level = 3 / nl
    return {"box": lbox * 0.05 * per_level, "obj": lobj * (64 / 640) ** 2 * per_level,
            "cls": lcls * 0.5 * nc / 80 * per_level}


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_loop_reference(seed):
    gen = torch.Generator().manual_seed(seed)
    det = fake_det(num_classes=3)
    outs = head_outputs(det, batch=3, seed=seed)
    targets = []
    for n in (4, 0, 3):
        xy = torch.rand(n, 2, generator=gen) * 60 + 2
        wh = torch.rand(n, 2, generator=gen) * 40 + 3
        boxes = torch.cat([xy - wh / 2, xy + wh / 2], 1).clamp(0, 64)
        targets.append({"boxes": boxes, "labels": torch.randint(0, 3, (n,), generator=gen)})
    got = yolov5_loss(det, outs, targets)
    want = reference_loss(det, outs, targets)
    assert want["box"] > 0 and want["cls"] > 0
    for key in ("box", "obj", "cls"):
        assert got[key].item() == pytest.approx(want[key], abs=1e-6, rel=1e-6), key


@pytest.mark.gpu
def test_cuda_equals_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    det = fake_det()
    outs = head_outputs(det, batch=2, requires_grad=False)
    tgt = [target((6, 13, 16, 25), labels=[1]), target((20, 20, 40, 46), (1, 1, 9, 9), labels=[0, 2])]
    cpu = yolov5_loss(det, outs, tgt)
    gpu = yolov5_loss(det, [(c.cuda(), b.cuda()) for c, b in outs], tgt)
    for key in cpu:
        assert gpu[key].device.type == "cuda"
        torch.testing.assert_close(gpu[key].cpu(), cpu[key], rtol=1e-5, atol=1e-6)
