"""YOLO-format data sets (data.yaml + labels/*.txt) read as COCO, everywhere --data/--ann is accepted."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeanchor.cli import main
from edgeanchor.datasets.coco import CocoDetection
from edgeanchor.datasets.synth import generate
from edgeanchor.datasets.yolo import label_path, read_data_yaml, to_coco, yolo_split
from edgeanchor.errors import EdgeAnchorError

NAMES = ["pole", "plank", "coin", "crate", "kite"]


def coco_to_yolo(coco: dict, image_dir: Path, root: Path, split: str) -> None:
    """Write a COCO split as YOLO images/ and labels/ (6-decimal normalised boxes)."""
    cats = {c["id"]: i for i, c in enumerate(sorted(coco["categories"], key=lambda c: c["id"]))}
    by_image = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for im in coco["images"]:
        src = image_dir / im["file_name"]
        dst = root / "images" / split / Path(im["file_name"]).name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
        w, h = im["width"], im["height"]
        lines = []
        for a in by_image.get(im["id"], []):
            x, y, bw, bh = a["bbox"]
            lines.append(f"{cats[a['category_id']]} {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} {bw / w:.6f} "
                         f"{bh / h:.6f}")
        label = label_path(dst)
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("\n".join(lines) + ("\n" if lines else ""))


@pytest.fixture(scope="module")
def yolo_set(tmp_path_factory):
    src = tmp_path_factory.mktemp("yolo_src")
    info = generate(src, num_images=20, seed=13, image_size=320, splits=(0.5, 0.25, 0.25), workers=1)
    root = tmp_path_factory.mktemp("yolo") / "shapes"
    for split in ("train", "val"):
        coco = json.loads(Path(info["annotations"][split]).read_text())
        coco_to_yolo(coco, Path(info["image_dir"]), root, split)
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnc: 5\nnames: "
                                    + json.dumps(NAMES) + "\n")
    return root, info


def test_labels_round_trip_to_the_coco_boxes(yolo_set):
    root, info = yolo_set
    coco, image_root, clipped = to_coco(read_data_yaml(root / "data.yaml"), "val")
    original = json.loads(Path(info["annotations"]["val"]).read_text())
    assert clipped == 0 and image_root == (root / "images").resolve()
    assert [c["name"] for c in coco["categories"]] == NAMES and [c["id"] for c in coco["categories"]] == [1, 2, 3, 4, 5]
    name_of = {im["id"]: Path(im["file_name"]).name for im in original["images"]}
    ours = {Path(im["file_name"]).name: im["id"] for im in coco["images"]}
    want = sorted((name_of[a["image_id"]], a["category_id"], *a["bbox"]) for a in original["annotations"])
    got = sorted((Path(next(i["file_name"] for i in coco["images"] if i["id"] == a["image_id"])).name,
                  a["category_id"], *a["bbox"]) for a in coco["annotations"])
    assert len(got) == len(want) and set(ours) == set(name_of.values())
    for g, w in zip(got, want):
        assert g[:2] == w[:2] and np.allclose(g[2:], w[2:], atol=2e-3)  # 6 decimals of 320 px


def test_evaluate_on_the_yolo_set_equals_evaluate_on_coco(yolo_set, capsys):
    root, info = yolo_set
    assert main(["evaluate", "--model", "demo", "--data", str(root / "data.yaml"), "--split", "val", "--json"]) == 0
    yolo = json.loads(capsys.readouterr().out)
    assert main(["evaluate", "--model", "demo", "--data", info["image_dir"], "--ann", info["annotations"]["val"],
                 "--json"]) == 0
    coco = json.loads(capsys.readouterr().out)
    assert yolo["num_images"] == coco["num_images"] and yolo["num_detections"] == coco["num_detections"]
    assert yolo["mAP"] == pytest.approx(coco["mAP"], abs=2e-3) and yolo["mAP50"] == pytest.approx(coco["mAP50"], abs=2e-3)


def test_search_runs_on_a_yolo_set(yolo_set, tmp_path, capsys):
    root, _ = yolo_set
    assert main(["search", "--model", "demo", "--data", str(root / "data.yaml"), "--out", str(tmp_path / "s"),
                 "--max-evals", "8", "--workers", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_evals"] >= 1


def make_set(tmp_path, labels: dict, yaml_text=None) -> Path:
    """A two-image YOLO set with the given label file contents (None: no label file)."""
    from PIL import Image

    root = tmp_path / "set"
    for name, text in labels.items():
        img = root / "images" / "val" / f"{name}.png"
        img.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (100, 50)).save(img)
        if text is not None:
            label = label_path(img)
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text(text)
    (root / "data.yaml").write_text(yaml_text or "val: images/val\nnames: [a, b]\n")
    return root / "data.yaml"


def test_empty_and_missing_label_files_are_images_without_objects(tmp_path):
    yaml = make_set(tmp_path, {"a": "", "b": None, "c": "1 0.5 0.5 0.2 0.4\n"})
    coco, _, _ = to_coco(read_data_yaml(yaml), "val")
    assert len(coco["images"]) == 3 and len(coco["annotations"]) == 1
    ann = coco["annotations"][0]
    assert ann["category_id"] == 2 and ann["bbox"] == [40.0, 15.0, 20.0, 20.0]  # 100x50: cx 50, w 20; cy 25, h 20


def test_polygon_lines_give_their_bounding_box(tmp_path):
    yaml = make_set(tmp_path, {"a": "0 0.1 0.2 0.5 0.2 0.3 0.8\n"})
    bbox = to_coco(read_data_yaml(yaml), "val")[0]["annotations"][0]["bbox"]
    assert bbox == [10.0, 10.0, 40.0, 30.0]  # x 0.1..0.5 of 100, y 0.2..0.8 of 50


def test_values_outside_the_image_are_clipped_and_counted(tmp_path, caplog):
    yaml = make_set(tmp_path, {"a": "0 0.95 0.5 0.2 0.2\n1 -0.1 0.5 0.2 0.2\n"})
    coco, _, clipped = to_coco(read_data_yaml(yaml), "val")
    assert clipped == 1  # cx -0.1
    assert coco["annotations"][0]["bbox"] == pytest.approx([85.0, 20.0, 15.0, 10.0])  # x2 1.05 -> 1.0
    # x -0.2..0.0 lies wholly left of the image: no area left once clipped, so dropped (a zero-width ground
    # truth could never be matched and would cost recall)
    assert len(coco["annotations"]) == 1
    with caplog.at_level("WARNING", logger="edgeanchor"):
        yolo_split(yaml, "val")
    assert "1 label values outside [0, 1]" in caplog.text and "boxes left with no area dropped" in caplog.text


@pytest.mark.parametrize("text, message", [
    ("7 0.5 0.5 0.1 0.1\n", "a.txt:1: class id 7 is outside 0..1"),
    ("0 0.5 0.5 0.1 0.1\n-1 0.5 0.5 0.1 0.1\n", "a.txt:2: class id -1 is outside"),
    ("0.5 0.5 0.5 0.1 0.1\n", "class id 0.5 is not a whole number"),
    ("0 0.5 zero 0.1 0.1\n", "a.txt:1: value 3 'zero' is not a finite decimal number"),
    ("0 0.5 0.5\n", "a.txt:1: 3 numbers"),
    ("0 0.1 0.2 0.3 0.4 0.5\n", "a.txt:1: 6 numbers"),  # a polygon needs whole (x, y) points
])
def test_bad_label_lines_name_the_file_and_line(tmp_path, text, message):
    yaml = make_set(tmp_path, {"a": text})
    with pytest.raises(EdgeAnchorError, match=message.replace("(", r"\(").replace(".", r"\.")):
        to_coco(read_data_yaml(yaml), "val")


@pytest.mark.parametrize("yaml_text, message", [
    ("val: images/val\n", "has no class names"),
    ("val: images/val\nnc: 3\nnames: [a, b]\n", "nc is 3 but 'names' lists 2"),
    ("val: images/nope\nnames: [a]\n", "neither a folder nor a .txt"),
    ("train: images/val\nnames: [a]\n", "has no 'val' split"),
    ("- just\n- a list\n", "not a YOLO data.yaml"),
    ("val: [images/val\n", "cannot read data file"),
])
def test_bad_data_yaml(tmp_path, yaml_text, message):
    yaml = make_set(tmp_path, {"a": ""}, yaml_text)
    with pytest.raises(EdgeAnchorError, match=message):
        to_coco(read_data_yaml(yaml), "val")


def test_names_as_a_mapping_and_a_txt_list_of_images(tmp_path):
    yaml = make_set(tmp_path, {"a": "1 0.5 0.5 0.2 0.2\n", "b": ""}, "val: val.txt\nnames: {0: x, 1: y}\n")
    (yaml.parent / "val.txt").write_text("images/val/a.png\n")
    coco, _, _ = to_coco(read_data_yaml(yaml), "val")
    assert [c["name"] for c in coco["categories"]] == ["x", "y"] and len(coco["images"]) == 1


def test_ann_with_a_yaml_is_a_usage_error(yolo_set, capsys):
    root, info = yolo_set
    assert main(["evaluate", "--model", "demo", "--data", str(root / "data.yaml"), "--ann",
                 info["annotations"]["val"]]) == 2
    assert "--ann is not used with a YOLO data.yaml" in capsys.readouterr().err


def test_converted_file_is_rewritten_only_when_it_changes(yolo_set):
    root, _ = yolo_set
    _, ann = yolo_split(root / "data.yaml", "val")
    before = Path(ann).stat().st_mtime_ns
    _, again = yolo_split(root / "data.yaml", "val")
    assert again == ann and Path(ann).stat().st_mtime_ns == before
    data = CocoDetection(yolo_split(root / "data.yaml", "train")[0], ann)
    assert len(data) == 5 and data.num_objects > 0


@pytest.mark.slow
def test_prune_and_export_and_train_on_a_yolo_set(yolo_set, tmp_path, capsys):
    root, _ = yolo_set
    data = str(root / "data.yaml")
    assert main(["prune-and-export", "--model", "demo", "--data", data, "--max-evals", "10", "--workers", "1",
                 "--parity-images", "1", "--matrix-iters", "0", "--out", str(tmp_path / "e"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["export"]["pruned"]["parity"]["passed"] and report["report_ann"] == report["search_ann"]  # no test
    assert main(["train", "--model", "edgeanchor:demo_ssd", "--data", data, "--epochs", "1", "--batch-size", "4",
                 "--no-progress", "--out", str(tmp_path / "t.pt"), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)["record"]
    assert "val" in record["epochs"][0]  # the data set's val split was evaluated after the epoch
