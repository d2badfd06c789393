"""The incremental, sharded COCO scorer against an independent reference: the model's own ``select`` per
image, written as COCO results, evaluated by pycocotools."""

import json

import numpy as np
import pytest
import torch

from edgeanchor.datasets.coco import CocoDetection, to_original
from edgeanchor.evaluation.cache import CACHE_FORMAT, CandidateCache, build_cache
from edgeanchor.evaluation.decomposed import pycocotools_map
from edgeanchor.evaluation.incremental import ShardScorer, merge_map, shard_images
from edgeanchor.models import build_detector
from edgeanchor.postprocess import Candidates, PostprocessRule, select
from tests.helpers import shared_synth_split

pytest.importorskip("pycocotools")


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    return shared_synth_split(tmp_path_factory, "incr", num_images=60, seed=5, splits=(0.5, 0.25, 0.25))


def demo_cache(name, split):
    images, anns = split
    det = build_detector(name)
    data = CocoDetection.for_detector(det, images, anns["train"])
    return det, build_cache(det, data, progress=False), json.loads(open(anns["train"]).read())


@pytest.fixture(scope="module")
def demo(split):
    return demo_cache("demo", split)


def reference_results(cache: CandidateCache, removed) -> list[dict]:
    """COCO results of ``removed`` from the model's select(), image by image (no shared code path)."""
    spec = PostprocessRule.from_json(cache.meta["postprocess_spec"])
    level_starts = torch.tensor(cache.meta["level_starts"], dtype=torch.int64)
    cat_of = {int(v): int(k) for k, v in cache.meta["label_map"].items()}
    out = []
    for i in range(cache.num_images):
        lo, hi = int(cache.offsets[i]), int(cache.offsets[i + 1])
        keep = ~np.isin(cache.anchor_id[lo:hi], list(removed))
        if not keep.any():
            continue
        sl = np.arange(lo, hi)[keep]
        c = Candidates(torch.from_numpy(cache.box_index[sl].astype(np.int64)),
                       torch.from_numpy(cache.labels[sl].astype(np.int64)), torch.from_numpy(cache.scores[sl]),
                       torch.from_numpy(cache.boxes_xyxy[sl]))
        res = select(c, spec, level_starts)
        h, w = (int(v) for v in cache.orig_sizes[i])
        sx, sy, px, py = to_original((h, w), tuple(cache.meta["image_size"]), cache.meta.get("resize", "stretch"))
        for b, s, lab in zip(res["boxes"].numpy().astype(np.float64), res["scores"].numpy(), res["labels"].tolist()):
            if lab not in cat_of:
                continue
            x1, x2 = (np.clip((b[[0, 2]] - px) * sx, 0, w)).tolist()
            y1, y2 = (np.clip((b[[1, 3]] - py) * sy, 0, h)).tolist()
            out.append({"image_id": int(cache.image_ids[i]), "category_id": cat_of[lab],
                        "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(s)})
    return out


def random_subsets(det, n, seed):
    """Random removed sets of 1..A-1 anchors, and every whole level removed alone and two at once."""
    rng = np.random.default_rng(seed)
    ids = list(det.anchor_set.ids)
    levels = [tuple(a.id for a in lv.anchors) for lv in det.anchor_set.levels]
    out = [(), *levels, levels[0] + levels[-1]]
    while len(out) < n:
        k = int(rng.integers(1, len(ids)))
        out.append(tuple(sorted(rng.choice(ids, k, replace=False).tolist())))
    return out


def test_equals_pycocotools_on_random_demo_subsets(demo):
    det, cache, gt = demo
    scorer = ShardScorer(cache, gt)
    subsets = random_subsets(det, 24, seed=0)
    maps = []
    for removed in subsets:
        ours = scorer.map(removed)
        ref = pycocotools_map(gt, reference_results(cache, removed))
        assert abs(ours - ref) <= 1e-9, (removed, ours, ref)
        maps.append(ours)
    assert len(set(np.round(maps, 6))) > 10  # the subsets really differ
    assert scorer.fallback_images > 0  # saturated scores (ties) go through select(), and stay exact


def test_incremental_children_equal_scratch_and_reuse_pairs(demo):
    det, cache, gt = demo
    ids = list(det.anchor_set.ids)
    inc = ShardScorer(cache, gt)
    parent = ()
    rng = np.random.default_rng(1)
    for _ in range(6):  # a greedy-like chain: pin, score all children, go down one
        inc.pin(parent)
        children = [tuple(sorted(parent + (a,))) for a in ids if a not in parent]
        for child in children:
            before = inc.pairs_recomputed
            ours = inc.map(child, parent)
            assert ours == ShardScorer(cache, gt, memo_size=0).map(child)  # bit for bit
            assert inc.pairs_recomputed - before <= inc.num_pairs(child)
        parent = children[int(rng.integers(len(children)))]
    # a child whose removed anchor never entered NMS changes nothing
    assert inc.map(parent + (10_000,), parent) == inc.map(parent)


def test_shards_merge_exactly(demo):
    det, cache, gt = demo
    order = np.concatenate([shard_images(cache.image_ids, (i, 3)) for i in range(3)])
    assert sorted(order.tolist()) == list(range(cache.num_images))
    assert np.all(np.diff(cache.image_ids[order]) > 0)  # contiguous, ascending ids
    for removed in random_subsets(det, 6, seed=2):
        whole = ShardScorer(cache, gt).map(removed)
        shards = [ShardScorer(cache, gt, shard=(i, 3)) for i in range(3)]
        assert merge_map([s.partials(removed) for s in shards]) == whole
        cut = [ShardScorer(cache.take_images(shard_images(cache.image_ids, (i, 3))), gt) for i in range(3)]
        assert merge_map([s.partials(removed) for s in cut]) == whole  # what a remote worker holds
    part = cache.take_images(shard_images(cache.image_ids, (1, 3)))
    assert part.num_candidates < cache.num_candidates and part.scores.base is None  # a copy of the shard only
    with pytest.raises(ValueError, match="shard"):
        shard_images(cache.image_ids, (3, 3))


def test_yolo_letterbox_equals_pycocotools(split):
    det, cache, gt = demo_cache("demo-yolo", split)
    scorer = ShardScorer(cache, gt)
    for removed in random_subsets(det, 8, seed=3):
        ref = pycocotools_map(gt, reference_results(cache, removed))
        assert abs(scorer.map(removed) - ref) <= 1e-9, removed


# ---- a RetinaNet-like cache: sigmoid scores, top-k per level, > 1000 boxes into NMS, COCO's corner cases
def retina_like(seed=0, num_images=14):
    """Candidates in (box, label) order; level_starts for 3 levels x 3 anchors; a few images with > 1000 kept
    boxes (batched_nms' per-class path), one with > 100 detections of one class (pycocotools' per-pair cut),
    tied scores (select() fallback), crowd and id-0 ground truth, a huge (ignored) ground-truth area."""
    rng = np.random.default_rng(seed)
    size = 256
    level_starts = [0, 3000, 3900, 4200]
    box_anchor = np.concatenate([np.arange(3000) % 3, 3 + np.arange(900) % 3, 6 + np.arange(300) % 3])
    cats = [2, 5, 7, 11]
    images, anns, parts = [], [], []
    ann_id = 0
    for i in range(num_images):
        image_id = 50 - 3 * i  # descending in data order: shards and ties must follow ascending ids
        h, w = (size, size) if i % 2 else (300, 200)
        images.append({"id": image_id, "width": w, "height": h, "file_name": f"{i}.jpg"})
        gt = []
        for _ in range(int(rng.integers(3, 9))):
            x, y = rng.uniform(0, size - 60, 2)
            bw, bh = rng.uniform(10, 60, 2)
            gt.append((x, y, bw, bh, int(rng.integers(len(cats)))))
        for j, (x, y, bw, bh, k) in enumerate(gt):
            crowd = int(j == 1 and i % 3 == 0)
            sx, sy = w / size, h / size
            anns.append({"id": 0 if (i == 2 and j == 0) else ann_id + 1, "image_id": image_id,
                         "category_id": cats[k], "bbox": [x * sx, y * sy, bw * sx, bh * sy],
                         "area": 2e10 if (i == 4 and j == 2) else bw * bh * sx * sy, "iscrowd": crowd})
            ann_id += 1
        n = 1500 if i in (0, 5) else int(rng.integers(150, 400))
        box_index = np.sort(rng.choice(4200, n, replace=False))
        labels = rng.integers(0, len(cats), n)
        centre = np.array([gt[t][:4] for t in rng.integers(len(gt), size=n)])
        boxes = np.stack([centre[:, 0], centre[:, 1], centre[:, 0] + centre[:, 2], centre[:, 1] + centre[:, 3]], 1)
        boxes = np.clip(boxes + rng.normal(0, 4, (n, 4)), 0, size).astype(np.float32)
        if i == 7:  # > 100 well-separated boxes of one class
            labels[:140] = 1
            gx, gy = np.meshgrid(np.arange(14) * 18.0, np.arange(10) * 25.0)
            boxes[:140] = np.stack([gx.ravel(), gy.ravel(), gx.ravel() + 12, gy.ravel() + 20], 1)
        scores = rng.uniform(0.06, 1.0, n).astype(np.float32)
        if i in (3, 9):
            scores[5:40] = scores[4]  # ties
        parts.append((box_index, labels, scores, boxes))
    ann = {"images": images, "annotations": anns, "categories": [{"id": c, "name": str(c)} for c in cats]}
    spec = {"score_fn": "sigmoid", "topk_scope": "level", "score_thresh": 0.05, "topk_candidates": 1000,
            "nms_thresh": 0.5, "detections_per_img": 300, "box_weights": [1.0, 1.0, 1.0, 1.0]}
    box_index = np.concatenate([p[0] for p in parts])
    cache = CandidateCache(
        key="test", image_ids=np.array([im["id"] for im in images], dtype=np.int64),
        orig_sizes=np.array([[im["height"], im["width"]] for im in images], dtype=np.int64),
        offsets=np.concatenate([[0], np.cumsum([len(p[0]) for p in parts])]).astype(np.int64),
        box_index=box_index.astype(np.int32), anchor_id=box_anchor[box_index].astype(np.int32),
        labels=np.concatenate([p[1] for p in parts]).astype(np.int32),
        scores=np.concatenate([p[2] for p in parts]), boxes_xyxy=np.concatenate([p[3] for p in parts]),
        meta={"format": CACHE_FORMAT, "image_size": [size, size], "postprocess_spec": spec,
              "level_starts": level_starts, "label_map": {str(c): k for k, c in enumerate(cats)}, "resize": "stretch"})
    return cache, ann


def test_retina_like_cache_equals_pycocotools():
    cache, ann = retina_like()
    scorer = ShardScorer(cache, ann)
    subsets = [(), (0,), (4,), (0, 1, 2), (3, 4, 5), (6, 7, 8), (1, 5, 7), (0, 3, 6), (2,), (8,)]
    for removed in subsets:
        ref = pycocotools_map(ann, reference_results(cache, removed))
        assert abs(scorer.map(removed) - ref) <= 1e-9, removed
        assert ShardScorer(cache, ann).map(removed, ()) == scorer.map(removed)
    assert scorer.fallback_images > 0
    shards = [ShardScorer(cache, ann, shard=(i, 4)) for i in range(4)]
    for removed in subsets[:4]:
        assert merge_map([s.partials(removed) for s in shards]) == scorer.map(removed)
    inc = ShardScorer(cache, ann)
    inc.pin((0,))
    for child in [(0, a) for a in range(1, 9)]:
        assert inc.map(child, (0,)) == ShardScorer(cache, ann, memo_size=0).map(child), child


def test_detection_rows_equal_select(demo):
    det, cache, gt = demo
    scorer = ShardScorer(cache, gt)
    for removed in [(), (0, 3), tuple(a.id for a in det.anchor_set.levels[1].anchors)]:
        rows = scorer.rows(removed)
        ref = reference_results(cache, removed)
        ref_rows = np.array([[d["image_id"], *d["bbox"], d["score"], d["category_id"]] for d in ref])
        key = lambda r: r[np.lexsort(r.T[::-1])]  # noqa: E731
        assert rows.shape == ref_rows.shape
        assert np.array_equal(key(rows), key(ref_rows))
