"""The decomposed COCO evaluation (edgeanchor.evaluation.decomposed) equals pycocotools exactly."""

import contextlib
import copy
import io

import numpy as np
import pytest

from edgeanchor.evaluation.decomposed import (
    REC_THRS,
    accumulate_class,
    decomposed_map,
    decomposed_parts,
    match_image_class,
    pycocotools_map,
)

pytest.importorskip("pycocotools")

TOL = 1e-9


def synthetic_case(seed: int):
    """A random gt dict and detections with crowds, odd areas, tied scores, empty images, > 100 dets."""
    rng = np.random.default_rng(seed)
    n_img = int(rng.integers(30, 61))
    n_cat = int(rng.integers(3, 6))
    img_ids = [int(i) for i in rng.permutation(np.arange(1, 200))[:n_img]]  # unsorted, non-contiguous
    cat_ids = [int(c) for c in rng.permutation(np.arange(1, 30))[:n_cat]]
    no_gt_cat = cat_ids[-1]
    images = [{"id": i, "width": 640, "height": 480} for i in img_ids]
    anns, dets = [], []
    aid = 1
    for k, img in enumerate(img_ids):
        has_gt = k % 7 != 3
        has_dt = k % 9 != 5
        gt_boxes = []
        for c in cat_ids:
            if has_gt and c != no_gt_cat:
                for _ in range(int(rng.integers(0, 6))):
                    w, h = rng.uniform(1, 200, 2)
                    if rng.random() < 0.15:
                        w, h = rng.uniform(0.5, 6, 2)  # tiny
                    x, y = rng.uniform(0, 440, 2)
                    if rng.random() < 0.5:
                        x, y, w, h = np.round([x, y, w, h])
                        w, h = max(w, 1.0), max(h, 1.0)
                    area = float(w * h)
                    r = rng.random()
                    if r < 0.1:
                        area = float(rng.uniform(0, 2) * area)  # the area field need not be w * h
                    elif r < 0.15:
                        area = 2e10  # outside "all"
                    crowd = int(rng.random() < 0.12)
                    anns.append({"id": aid, "image_id": img, "category_id": c, "bbox": [float(x), float(y), float(w), float(h)],
                                 "area": area, "iscrowd": crowd})
                    gt_boxes.append((c, [float(x), float(y), float(w), float(h)]))
                    aid += 1
            if not has_dt:
                continue
            n_dt = int(rng.integers(0, 10))
            if rng.random() < 0.08:
                n_dt = int(rng.integers(101, 160))  # more than maxDets
            own = [b for cc, b in gt_boxes if cc == c]
            for _ in range(n_dt):
                if own and rng.random() < 0.6:
                    x, y, w, h = own[int(rng.integers(len(own)))]
                    j = rng.normal(0, 0.12, 4) * np.array([w, h, w, h])
                    if rng.random() < 0.2:
                        j[:] = 0  # exact copy: IoU 1
                    box = [x + j[0], y + j[1], max(w + j[2], 0.5), max(h + j[3], 0.5)]
                else:
                    x, y = rng.uniform(0, 500, 2)
                    w, h = rng.uniform(1, 250, 2)
                    box = [x, y, w, h]
                    if rng.random() < 0.02:
                        box = [0.0, 0.0, 2e5, 2e5]  # detection area outside "all"
                score = float(np.round(rng.random(), 1)) if rng.random() < 0.6 else float(rng.random())
                dets.append({"image_id": img, "category_id": c, "bbox": [float(v) for v in box], "score": score})
    categories = [{"id": c, "name": f"c{c}"} for c in cat_ids]
    gt = {"images": images, "annotations": anns, "categories": categories}
    order = rng.permutation(len(dets))  # detections arrive in no particular order
    return gt, [dets[i] for i in order]


def _cocoeval(gt, dets):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(dets)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


SEEDS = list(range(8))


@pytest.mark.parametrize("seed", SEEDS)
def test_map_equals_pycocotools(seed):
    gt, dets = synthetic_case(seed)
    ev = _cocoeval(gt, dets)
    assert abs(decomposed_map(gt, dets) - ev.stats[0]) <= TOL
    assert ev.stats[0] > 0


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_every_area_range_and_max_det_equals_pycocotools(seed):
    """Per (image, category) matching and per-category precision for all 4 area ranges and maxDets 1/10/100."""
    gt, dets = synthetic_case(100 + seed)
    ev = _cocoeval(gt, dets)
    p = ev.params
    I, A = len(p.imgIds), len(p.areaRng)
    for m, max_det in enumerate(p.maxDets):
        for a, rng_ in enumerate(p.areaRng):
            parts = decomposed_parts(gt, dets, area_rng=tuple(rng_), max_det=max_det)
            for k, cat in enumerate(p.catIds):
                if max_det == p.maxDets[-1]:  # evalImgs hold the largest maxDet
                    ours = iter(parts[cat])
                    for i in range(I):
                        e = ev.evalImgs[k * A * I + a * I + i]
                        if e is None:
                            continue
                        part = next(ours)
                        assert np.array_equal(part["scores"], np.array(e["dtScores"]))
                        assert np.array_equal(part["matched"], e["dtMatches"] != 0)
                        assert np.array_equal(part["ignored"], e["dtIgnore"].astype(bool))
                        assert part["npig"] == int(np.count_nonzero(e["gtIgnore"] == 0))
                    assert next(ours, None) is None
                prec = accumulate_class(parts[cat], max_det=max_det)
                assert np.array_equal(prec, ev.eval["precision"][:, :, k, a, m]), (cat, rng_, max_det)


def test_match_image_class_crowd_and_ties():
    """A hand case: a crowd gt absorbs several detections, tied scores keep their input order."""
    gt = np.array([[0, 0, 10, 10], [20, 20, 10, 10], [0, 0, 100, 100]], dtype=float)
    crowd = np.array([0, 0, 1])
    area = gt[:, 2] * gt[:, 3]
    dets = np.array([[50, 50, 5, 5], [0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 10, 10], [60, 60, 5, 5]], dtype=float)
    scores = np.array([0.5, 0.9, 0.9, 0.5, 0.1])
    out = match_image_class(dets, scores, gt, crowd, area)
    assert out["scores"].tolist() == [0.9, 0.9, 0.5, 0.5, 0.1]
    assert out["npig"] == 2
    # sorted: det1 -> gt0, det2 -> crowd (ignored), det0 -> crowd (ignored), det3 -> gt1, det4 -> crowd
    assert out["matched"][0].tolist() == [True, True, True, True, True]
    assert out["ignored"][0].tolist() == [False, True, True, False, True]
    assert len(REC_THRS) == 101


def test_no_detections_of_a_class_and_empty():
    gt, dets = synthetic_case(3)
    cat = gt["categories"][0]["id"]
    fewer = [d for d in dets if d["category_id"] != cat]
    assert abs(decomposed_map(gt, fewer) - pycocotools_map(gt, fewer)) <= TOL


@pytest.fixture(scope="module")
def demo_outputs(tmp_path_factory):
    from edgeanchor.datasets.coco import CocoDetection
    from edgeanchor.evaluation.predict import predict
    from edgeanchor.models import build_detector
    from tests.helpers import shared_synth_split

    images, anns = shared_synth_split(tmp_path_factory, "decomposed", num_images=36, seed=5, splits=(0.34, 0.33, 0.33))
    det = build_detector("demo")
    data = CocoDetection(images, anns["val"], num_classes=det.num_classes, image_size=det.image_size)
    return anns["val"], predict(det, data, progress=False)


def test_demo_outputs_equal_coco_map_and_pycocotools(demo_outputs):
    from edgeanchor.evaluation.coco_map import coco_map

    ann, dets = demo_outputs
    assert len(dets) > 0
    ours = decomposed_map(ann, dets)
    assert ours > 0.05
    assert abs(ours - pycocotools_map(ann, dets)) <= TOL
    assert abs(ours - coco_map(ann, dets)["mAP"]) <= TOL
    assert abs(ours - coco_map(ann, dets, backend="pycocotools")["mAP"]) <= TOL
    # a subset of the detections (one class dropped, every other image's detections removed)
    cats = sorted({d["category_id"] for d in dets})
    imgs = sorted({d["image_id"] for d in dets})
    sub = [d for d in dets if d["category_id"] != cats[0] and d["image_id"] not in imgs[::2]]
    if sub:
        assert abs(decomposed_map(ann, sub) - pycocotools_map(ann, sub)) <= TOL


def test_gt_id_zero_quirk():
    """pycocotools stores the matched gt's id, so a match with annotation id 0 counts as unmatched."""
    gt, dets = synthetic_case(21)
    for a in gt["annotations"]:
        a["id"] -= 1
    assert gt["annotations"][0]["id"] == 0
    assert abs(decomposed_map(gt, dets) - pycocotools_map(gt, dets)) <= TOL
