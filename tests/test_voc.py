"""Pascal VOC: the metric (hand-worked, against an independent implementation, incremental == reference),
the reader (VOCdevkit and LabelImg folders, classes, difficult, clipping), the writer, and the CLI."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from edgeanchor.cli import main
from edgeanchor.datasets.synth import generate
from edgeanchor.datasets.voc import VOC_CLASSES, voc_splits
from edgeanchor.datasets.voc_writer import write_voc
from edgeanchor.evaluation.incremental import ShardScorer, merge_map, shard_images
from edgeanchor.evaluation.subset import SubsetScorer
from edgeanchor.evaluation.voc_map import voc_map
from tests.test_incremental_eval import demo_cache, random_subsets, reference_results


def gt_dict(boxes) -> dict:
    """COCO ground truth from (image_id, category_id, [x, y, w, h], difficult) tuples; categories 1..4."""
    anns = [{"id": i + 1, "image_id": im, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": d,
             "difficult": d} for i, (im, c, b, d) in enumerate(boxes)]
    return {"images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
            "annotations": anns, "categories": [{"id": k, "name": f"c{k}"} for k in (1, 2, 3, 4)]}


def det(im, c, b, s) -> dict:
    return {"image_id": im, "category_id": c, "bbox": b, "score": s}


# ---- the metric by hand ------------------------------------------------------------------
HAND_GT = gt_dict([
    (1, 1, [0, 0, 10, 10], 0),   # a1
    (1, 1, [20, 0, 10, 10], 0),  # a2
    (1, 1, [40, 0, 10, 10], 1),  # a3, difficult
    (2, 1, [0, 0, 10, 10], 0),   # b1
    (2, 2, [60, 60, 10, 10], 1),  # class 2 has only a difficult box: no positive, AP undefined
    (2, 3, [0, 0, 10, 20], 0),   # class 3: one box, never detected
])
HAND_DETS = [
    det(1, 1, [0, 0, 10, 10], 0.9),   # a1, IoU 1: TP
    det(1, 1, [1, 0, 10, 10], 0.8),   # best box a1 (IoU 90/110 = .818), already matched: FP (duplicate)
    det(1, 1, [40, 0, 10, 10], 0.7),  # a3 is difficult: ignored (neither TP nor FP)
    det(2, 1, [5, 0, 10, 10], 0.6),   # b1 at IoU 50/150 = .333 <= .5: FP
    det(1, 1, [20, 0, 10, 10], 0.5),  # a2: TP
    det(2, 1, [0, 0, 10, 10], 0.4),   # b1: TP
    det(2, 2, [60, 60, 10, 10], 0.3),  # class 2's difficult box: ignored
]


def test_hand_worked_example_both_interpolations():
    # Class 1: positives a1, a2, b1 = 3 (a3 is difficult). In score order, without the ignored d3:
    #   TP FP FP TP TP  -> cumulative TP 1 1 1 2 3, FP 0 1 2 2 2
    #   recall    1/3 1/3 1/3 2/3 1
    #   precision 1   1/2 1/3 2/4 3/5
    # all-point: envelope 1, .6, .6, .6, .6; recall steps of 1/3 at precisions 1, .6, .6
    #   AP = (1 + .6 + .6) / 3 = 2.2 / 3 = 0.7333...
    # 11-point: t = 0, .1, .2, .3 -> max precision at recall >= t = 1 (recall 1/3 >= .3);
    #   t = .4 .. 1.0 (7 points) -> max(.5, .6) = .6;  AP = (4 * 1 + 7 * .6) / 11 = 8.2 / 11
    # Class 2: no positive -> left out. Class 3: one positive, no detection -> AP 0. Class 4: no boxes.
    voc = voc_map(HAND_GT, HAND_DETS, "voc")
    voc07 = voc_map(HAND_GT, HAND_DETS, "voc07")
    assert voc["AP"][1] == pytest.approx(2.2 / 3, abs=1e-12)
    assert voc07["AP"][1] == pytest.approx(8.2 / 11, abs=1e-12)
    assert voc["AP"][2] is None and voc["AP"][4] is None and voc["AP"][3] == 0.0
    assert voc["mAP"] == pytest.approx((2.2 / 3 + 0) / 2, abs=1e-12)
    assert voc07["mAP"] == pytest.approx((8.2 / 11 + 0) / 2, abs=1e-12)


def test_best_box_taken_is_a_duplicate_and_iou_must_exceed_half():
    gt = gt_dict([(1, 1, [0, 0, 10, 10], 0), (1, 1, [2, 0, 10, 10], 0), (2, 1, [0, 0, 20, 10], 0)])
    dets = [
        det(1, 1, [0, 0, 10, 10], 0.9),    # first box, IoU 1: TP
        # IoU 95/105 = .905 with the first box (taken) and 85/115 = .739 with the second: VOC compares only
        # with the best box, so this is a FP (COCO would match the second box)
        det(1, 1, [0.5, 0, 10, 10], 0.8),
        det(2, 1, [0, 0, 10, 10], 0.7),    # IoU exactly 100/200 = .5, not > .5: FP
    ]
    # 3 positives; TP FP FP -> recall 1/3 1/3 1/3, precision 1 1/2 1/3
    # all-point: 1/3 * 1; 11-point: t = 0, .1, .2, .3 -> 1, the 7 others 0 -> 4/11
    assert voc_map(gt, dets, "voc")["AP"][1] == pytest.approx(1 / 3, abs=1e-12)
    assert voc_map(gt, dets, "voc07")["AP"][1] == pytest.approx(4 / 11, abs=1e-12)


def test_against_mean_average_precision_package():
    """bes-dev's ``mean_average_precision`` (MIT, PyPI) implements VOC's rules: greedy matching to the box of
    highest IoU, IoU > threshold, difficult boxes ignored, duplicates FP, and both interpolations (11 recall
    points, or every point). Its conventions differ in four places, which this comparison sets aside: it adds
    the devkit's +1 to widths (so boxes are given as [x1 + 1, y1 + 1, x2, y2], the devkit's form, on which its
    IoU equals ours), it counts difficult boxes as positives (so no box here is difficult), it averages over
    every class (so every class has boxes), and its score sort is not stable (so scores are distinct)."""
    mapkg = pytest.importorskip("mean_average_precision")
    rng = np.random.default_rng(0)
    num_classes, num_images = 3, 12
    gts, dets = [], []
    for im in range(1, num_images + 1):
        for _ in range(rng.integers(1, 5)):
            x, y, w, h = (float(v) for v in rng.integers(0, 60, 2).tolist() + rng.integers(5, 40, 2).tolist())
            gts.append((im, int(rng.integers(1, num_classes + 1)), [x, y, w, h], 0))
    for c in range(1, num_classes + 1):  # every class has a box
        gts.append((1, c, [70.0, 70.0, 10.0 + c, 12.0], 0))
    scores = rng.permutation(400) / 400 + 0.001  # distinct
    for n, (im, c, b, _) in enumerate(gts * 3):  # jittered copies: TPs, duplicates, misses
        j = rng.normal(0, 4, 4) if n >= len(gts) else rng.normal(0, 1, 4)
        dets.append(det(im, c if rng.random() > 0.1 else int(rng.integers(1, num_classes + 1)),
                        [b[0] + j[0], b[1] + j[1], max(1.0, b[2] + j[2]), max(1.0, b[3] + j[3])], float(scores[n])))
    gt = gt_dict(gts)
    gt["categories"] = gt["categories"][:num_classes]
    gt["images"] = [{"id": i, "width": 100, "height": 100} for i in range(1, num_images + 1)]
    for metric, thresholds in (("voc", None), ("voc07", np.arange(0.0, 1.1, 0.1))):
        ev = mapkg.MeanAveragePrecision2d(num_classes=num_classes)
        for im in range(1, num_images + 1):
            p = [[d["bbox"][0] + 1, d["bbox"][1] + 1, d["bbox"][0] + d["bbox"][2], d["bbox"][1] + d["bbox"][3],
                  d["category_id"] - 1, d["score"]] for d in dets if d["image_id"] == im]
            g = [[b[0] + 1, b[1] + 1, b[0] + b[2], b[1] + b[3], c - 1, 0, 0] for i, c, b, _ in gts if i == im]
            ev.add(np.array(p, dtype=np.float64).reshape(-1, 6), np.array(g, dtype=np.float64).reshape(-1, 7))
        theirs = ev.value(iou_thresholds=0.5, recall_thresholds=thresholds, mpolicy="greedy")
        ours = voc_map(gt, dets, metric)
        for c in range(1, num_classes + 1):
            assert ours["AP"][c] == pytest.approx(float(theirs[0.5][c - 1]["ap"]), abs=1e-6), (metric, c)
        assert ours["mAP"] == pytest.approx(float(theirs["mAP"]), abs=1e-6)
        assert 0.2 < ours["mAP"] < 0.95  # a comparison that means something: neither trivial nor perfect


# ---- the incremental scorer against the reference ---------------------------------------
@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from tests.helpers import shared_synth_split

    return demo_cache("demo", shared_synth_split(tmp_path_factory, "voc-incr", num_images=40, seed=5,
                                                 splits=(0.5, 0.25, 0.25)))


def with_difficult(gt: dict, every: int = 4) -> dict:
    """The ground truth with every ``every``-th box marked difficult (as the VOC reader writes it)."""
    anns = [{**a, "iscrowd": int(i % every == 0), "difficult": int(i % every == 0)}
            for i, a in enumerate(gt["annotations"])]
    return {**gt, "annotations": anns}


@pytest.mark.parametrize("metric", ["voc07", "voc"])
def test_incremental_voc_equals_reference(demo, metric):
    det, cache, gt = demo
    plain = ShardScorer(cache, gt, metric=metric).map(())
    gt = with_difficult(gt)
    scorer = ShardScorer(cache, gt, metric=metric)
    subsets = random_subsets(det, 10, seed=1)
    assert 0.3 < scorer.map(()) < 1 and scorer.map(()) != plain  # difficult boxes change the score
    full = SubsetScorer(cache, gt, metric=metric)  # what the search and prune-and-export hold
    for removed in subsets:
        expected = voc_map(gt, reference_results(cache, removed), metric)["mAP"]
        assert scorer.map(removed) == expected, removed
        assert full.score(removed) == full.score(removed, full=False) == {"mAP": expected}
    parent = subsets[5]  # children scored incrementally from a pinned parent
    scorer.pin(parent)
    for extra in det.anchor_set.ids[:6]:
        child = tuple(sorted(set(parent) | {extra}))
        assert scorer.map(child, parent) == voc_map(gt, reference_results(cache, child), metric)["mAP"]
    # three shards merged == one
    shards = [ShardScorer(cache.take_images(shard_images(cache.image_ids, (i, 3))), gt, metric=metric)
              for i in range(3)]
    removed = subsets[3]
    assert merge_map([s.partials(removed) for s in shards]) == scorer.map(removed)


# ---- reader and writer -----------------------------------------------------------------
def xml(objects, filename="", size=(100, 80)) -> str:
    objs = "".join(f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}"
                   f"</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>\n" for n, b, d in objects)
    return (f"<annotation>\n<filename>{filename}</filename>\n<size><width>{size[0]}</width><height>{size[1]}"
            f"</height></size>\n{objs}</annotation>\n")


def image(path: Path, size=(100, 80)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 120, 150)).save(path)


def devkit(root: Path) -> Path:
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    image(root / "JPEGImages" / "a.jpg")
    image(root / "JPEGImages" / "b.jpg")
    (root / "Annotations" / "a.xml").write_text(xml([("dog", (1, 1, 10, 20), 0), ("person", (50, 5, 60, 30), 1)]))
    (root / "Annotations" / "b.xml").write_text(xml([("cat", (-5, 70, 120, 90), 0), ("cat", (200, 1, 210, 9), 0)]))
    (root / "ImageSets" / "Main" / "test.txt").write_text("b\na\n")
    return root


def test_devkit_reads_as_coco(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("EDGEANCHOR_CACHE", str(tmp_path / "cache"))
    root = devkit(tmp_path / "VOC2007")
    with caplog.at_level(logging.WARNING, logger="edgeanchor"):
        image_root, (ann,) = voc_splits(root, ["test"])
    coco = json.loads(Path(ann).read_text())
    assert image_root == str(root / "JPEGImages")
    assert [(i["id"], i["file_name"], i["width"], i["height"]) for i in coco["images"]] == [
        (1, "b.jpg", 100, 80), (2, "a.jpg", 100, 80)]  # the split file's order
    assert [c["name"] for c in coco["categories"]] == list(VOC_CLASSES)
    cat = {n: i + 1 for i, n in enumerate(VOC_CLASSES)}
    # devkit 1-based inclusive -> [xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]
    # b: (-5, 70, 120, 90) -> x1 -6 clipped to 0, x2 120 clipped to 100, y 69..80 (clipped from 90): [0, 69, 100, 11]
    #    (200, 1, 210, 9) lies right of the 100-pixel image: dropped
    # a: dog (1, 1, 10, 20) -> [0, 0, 10, 20]; person difficult (50, 5, 60, 30) -> [49, 4, 11, 26]
    got = [(a["image_id"], a["category_id"], a["bbox"], a["iscrowd"], a["difficult"]) for a in coco["annotations"]]
    assert got == [(1, cat["cat"], [0, 69, 100, 11], 0, 0), (2, cat["dog"], [0, 0, 10, 20], 0, 0),
                   (2, cat["person"], [49, 4, 11, 26], 1, 1)]
    assert "2 boxes outside the image" in caplog.text
    again_root, (again,) = voc_splits(root, ["test"])  # same contents, same file, not rewritten
    assert again == ann


def test_labelimg_folder_and_classes_file(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEANCHOR_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "shots"
    image(root / "x.jpg")
    image(root / "sub" / "y.png")
    image(root / "z.jpg")  # no XML: an image without objects
    (root / "x.xml").write_text(xml([("zebra", (1, 1, 5, 5), 0), ("ant", (2, 2, 9, 9), 0)], "x.jpg"))
    (root / "sub" / "y.xml").write_text(xml([("ant", (3, 3, 4, 4), 0)], "y.png"))
    _, (ann,) = voc_splits(root, [None])
    coco = json.loads(Path(ann).read_text())
    assert [c["name"] for c in coco["categories"]] == ["ant", "zebra"]  # the names found, sorted
    assert [i["file_name"] for i in coco["images"]] == ["sub/y.png", "x.jpg", "z.jpg"]
    (root / "classes.txt").write_text("zebra\nant\nbee\n")  # given: its order is the category order
    _, (ann2,) = voc_splits(root, [None])
    coco2 = json.loads(Path(ann2).read_text())
    assert ann2 != ann and [c["name"] for c in coco2["categories"]] == ["zebra", "ant", "bee"]
    assert [a["category_id"] for a in coco2["annotations"]] == [2, 1, 2]


def test_writer_round_trip(tmp_path, monkeypatch):
    """data synth --format voc: the VOC folder reads back as the COCO set (same boxes, classes, image order)."""
    monkeypatch.setenv("EDGEANCHOR_CACHE", str(tmp_path / "cache"))
    info = generate(tmp_path / "coco", num_images=10, seed=2, splits=(0.6, 0.2, 0.2), workers=1)
    splits = {s: json.loads(Path(p).read_text()) for s, p in info["annotations"].items()}
    write_voc(splits, info["image_dir"], tmp_path / "voc")
    for split, coco in splits.items():
        _, (ann,) = voc_splits(tmp_path / "voc", [split])
        back = json.loads(Path(ann).read_text())
        names = {i["id"]: Path(i["file_name"]).name for i in coco["images"]}
        assert [Path(i["file_name"]).name for i in back["images"]] == [names[k] for k in sorted(names)]
        back_names = {i["id"]: i["file_name"] for i in back["images"]}
        assert sorted((back_names[a["image_id"]], a["category_id"], a["bbox"]) for a in back["annotations"]) == \
            sorted((names[a["image_id"]], a["category_id"], a["bbox"]) for a in coco["annotations"])
        assert [(c["id"], c["name"]) for c in back["categories"]] == [(c["id"], c["name"]) for c in coco["categories"]]


# ---- the CLI: the same data as COCO and as VOC ---------------------------------------------
@pytest.fixture(scope="module")
def synth_pair(tmp_path_factory):
    """The same synthetic set written as COCO and as VOC (``data synth --format voc``)."""
    root = tmp_path_factory.mktemp("voc-synth")
    for fmt in ("coco", "voc"):
        assert main(["data", "synth", "--out", str(root / fmt), "--num-images", "80", "--seed", "4", "--format", fmt,
                     "--workers", "1"]) == 0
    return root


def coco_args(root: Path, split: str) -> list[str]:
    return ["--data", str(root / "coco" / "images"), "--ann", str(root / "coco" / "annotations" / f"{split}.json")]


def voc_args(root: Path, split: str) -> list[str]:
    return ["--data", str(root / "voc"), "--split", split]


def test_synth_voc_layout(synth_pair):
    voc = synth_pair / "voc"
    assert sorted(p.name for p in voc.iterdir()) == [".edgeanchor-manifest.json", "Annotations", "ImageSets",
                                                     "JPEGImages", "classes.txt"]
    assert (voc / "classes.txt").read_text().split() == ["pole", "plank", "coin", "crate", "kite"]
    ids = {s: (voc / "ImageSets" / "Main" / f"{s}.txt").read_text().split() for s in ("train", "val", "test")}
    assert [len(v) for v in ids.values()] == [64, 8, 8] and ids["val"][0] == "000065"
    assert len(list((voc / "JPEGImages").glob("*.jpg"))) == len(list((voc / "Annotations").glob("*.xml"))) == 80


@pytest.mark.parametrize("metric", ["coco", "voc07", "voc"])
def test_evaluate_gives_the_same_on_voc_and_coco(synth_pair, metric, capsys):
    results = []
    for data in (coco_args(synth_pair, "test"), voc_args(synth_pair, "test")):
        assert main(["evaluate", "--model", "demo", *data, "--metric", metric, "--json"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    coco, voc = results
    assert coco["mAP"] == voc["mAP"] and 0.2 < coco["mAP"] <= 1.0
    if metric != "coco":
        assert coco["AP_per_class"] == voc["AP_per_class"] and set(voc["AP_per_class"]) == {
            "pole", "plank", "coin", "crate", "kite"}


def front_of(out: Path) -> tuple:
    result = json.loads((out / "search.json").read_text())
    key = ("removed", "mAP", "head_macs", "boxes", "cost")
    return (result["baseline"]["mAP"], [tuple(json.dumps(n[k]) for k in key) for n in result["front"]],
            sorted(tuple(json.dumps(n[k]) for k in key) for n in result["nodes"]))


@pytest.mark.slow  # two searches of 60 evaluations, one with two worker processes
@pytest.mark.parametrize("metric", ["coco", "voc07"])
def test_demo_search_same_front_on_voc_and_coco(synth_pair, tmp_path, metric):
    """Same images, same boxes: with the same metric, the search on the VOC copy finds the same front."""
    fronts = []
    # the VOC copy is scored by two worker processes, which must score the same metric
    for name, data, workers in (("coco", coco_args(synth_pair, "val"), "1"), ("voc", voc_args(synth_pair, "val"), "2")):
        out = tmp_path / name
        assert main(["search", "--model", "demo", *data, "--metric", metric, "--out", str(out), "--max-evals", "60",
                     "--workers", workers, "--json"]) == 0
        fronts.append(front_of(out))
        settings = json.loads((out / "search.json").read_text())["settings"]
        assert settings.get("metric", "coco") == metric
    assert fronts[0] == fronts[1]
    assert len(fronts[0][2]) > 30 and fronts[0][1]  # a real search: every node (and its mAP) the same both ways
    # the metric is part of the resume key: the same folder with another metric is refused
    other = "voc" if metric == "voc07" else "voc07"
    assert main(["search", "--model", "demo", *voc_args(synth_pair, "val"), "--metric", other, "--out",
                 str(tmp_path / "voc"), "--max-evals", "40", "--workers", "1"]) == 2


def test_box_outside_the_image_is_clipped_with_one_warning(tmp_path, capsys):
    root = devkit(tmp_path / "VOC2007")
    (root / "classes.txt").write_text("cat\ndog\nperson\nbee\nant\n")  # 5 classes, as the demo model's
    assert main(["evaluate", "--model", "demo", "--data", str(root), "--split", "test",
                 "--metric", "voc07", "--json"]) == 0
    captured = capsys.readouterr()
    warnings = [ln for ln in captured.err.splitlines() if "outside the image" in ln]
    assert len(warnings) == 1 and "2 boxes outside the image" in warnings[0]
    assert json.loads(captured.out)["num_images"] == 2


def test_which_splits_prune_and_export_and_train_use(synth_pair, tmp_path, monkeypatch):
    """A VOCdevkit: prune-and-export searches val (or --split), reports on test, fine-tunes on train; train trains
    on train and evaluates val; a plain folder is all of one split."""
    import argparse

    from edgeanchor.api.data import roles
    from edgeanchor.cli.train import resolve_train_data

    voc = synth_pair / "voc"
    _, (train, val, test) = voc_splits(voc, ["train", "val", "test"])
    searched = roles(str(voc))  # the one resolver prune-and-export runs on --data/--split
    assert (searched.search.ann, searched.report.ann, searched.train.ann) == (val, test, train)
    assert searched.search.images == str(voc / "JPEGImages")
    assert roles(str(voc), split="train").search.ann == train
    args = argparse.Namespace(data=str(voc), ann=None, val_ann=None, split=None)
    resolve_train_data(args)
    assert (args.data, args.ann, args.val_ann) == (str(voc / "JPEGImages"), train, val)
    # a plain folder of images with XML beside them: searched and reported on whole, no training split
    plain = tmp_path / "plain"
    plain.mkdir()
    for xml_file in sorted((voc / "Annotations").glob("*.xml"))[:5]:
        (plain / xml_file.name).write_text(xml_file.read_text())
        (plain / f"{xml_file.stem}.jpg").write_bytes((voc / "JPEGImages" / f"{xml_file.stem}.jpg").read_bytes())
    (plain / "classes.txt").write_text((voc / "classes.txt").read_text())
    whole = roles(str(plain))
    assert whole.search.ann == whole.report.ann and whole.train is None and whole.search.images == str(plain)
    assert len(json.loads(Path(whole.search.ann).read_text())["images"]) == 5
