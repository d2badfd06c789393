"""Tests for the COCO-format reader, edgeanchor.datasets.coco."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from edgeanchor.datasets.coco import (
    SKIP_CROWD,
    SKIP_DEGENERATE,
    CocoDetection,
    detection_collate,
    hflip_boxes,
    invert_label_map,
    jitter_colour,
    make_label_map,
    scale_boxes,
    xywh_to_xyxy,
)
from edgeanchor.errors import EdgeAnchorError

# COCO 2017's 80 category ids: 1..90 with 10 gaps.
COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


# ---------------------------------------------------------------- label maps


def test_label_map_contiguous_sorts_ids():
    # 3 categories, 4 classes -> ids sorted (1, 3, 7) get labels 1, 2, 3.
    assert make_label_map([7, 1, 3], 4) == {1: 1, 3: 2, 7: 3}


def test_label_map_coco_identity_and_contiguous():
    assert len(COCO_IDS) == 80
    identity = make_label_map(COCO_IDS, 91)
    assert identity[1] == 1 and identity[90] == 90 and 12 not in identity
    contiguous = make_label_map(COCO_IDS, 81)
    # 90 is the last of 80 ids -> label 80; 13 comes after the gap at 12 -> label 12.
    assert contiguous[90] == 80 and contiguous[13] == 12 and contiguous[11] == 11


def test_label_map_round_trip():
    label_map = make_label_map(COCO_IDS, 81)
    inverse = invert_label_map(label_map)
    assert sorted(inverse) == list(range(1, 81))
    assert all(inverse[label_map[c]] == c for c in COCO_IDS)


def test_label_map_mismatch_says_fix():
    with pytest.raises(EdgeAnchorError, match=r"3 categories .* 3 classes.*`num_classes` 4"):
        make_label_map([1, 2, 3], 3)


def test_label_map_identity_rejects_category_zero():
    # id 0 would collide with background label 0, so only contiguous works.
    with pytest.raises(EdgeAnchorError, match="`num_classes` 3"):
        make_label_map([0, 1], 10)
    assert make_label_map([0, 1], 3) == {0: 1, 1: 2}


# ---------------------------------------------------------------- box helpers


def test_xywh_to_xyxy():
    # [10, 20, 30, 40] -> x2 = 10 + 30 = 40, y2 = 20 + 40 = 60.
    boxes = xywh_to_xyxy(np.array([[10, 20, 30, 40], [0, 0, 1, 1]], dtype=np.float32))
    np.testing.assert_array_equal(boxes, [[10, 20, 40, 60], [0, 0, 1, 1]])


def test_scale_and_flip_boxes():
    boxes = torch.tensor([[10.0, 20.0, 40.0, 60.0]])
    # (H, W) 80x100 -> 40x200: x * 2, y * 0.5.
    torch.testing.assert_close(scale_boxes(boxes, (80, 100), (40, 200)), torch.tensor([[20.0, 10.0, 80.0, 30.0]]))
    # W = 100: x1' = 100 - 40 = 60, x2' = 100 - 10 = 90.
    torch.testing.assert_close(hflip_boxes(boxes, 100), torch.tensor([[60.0, 20.0, 90.0, 60.0]]))
    torch.testing.assert_close(hflip_boxes(hflip_boxes(boxes, 100), 100), boxes)


def test_jitter_identity_and_range():
    image = torch.rand(3, 8, 8)
    torch.testing.assert_close(jitter_colour(image, 1.0, 1.0, 1.0), image)
    out = jitter_colour(image, 1.15, 1.15, 1.15)
    assert out.min() >= 0 and out.max() <= 1


# ---------------------------------------------------------------- data set


def _save(path, mode, size, colour, fmt):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path, format=fmt)


def _coco(images, annotations, cat_ids=(1, 18, 90)):
    return {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c, "name": f"c{c}"} for c in cat_ids],
    }


@pytest.fixture
def tiny(tmp_path):
    """Four images (RGB JPEG in a sub-folder, grayscale PNG, RGBA PNG, empty) with ids 42, 7, 1000, 3."""
    img_dir = tmp_path / "images"
    _save(img_dir / "sub" / "a.jpg", "RGB", (100, 80), (0, 0, 0), "JPEG")
    _save(img_dir / "gray.png", "L", (64, 48), 128, "PNG")
    _save(img_dir / "rgba.png", "RGBA", (50, 60), (255, 0, 0, 128), "PNG")
    _save(img_dir / "empty.jpg", "RGB", (40, 30), (10, 200, 30), "JPEG")
    images = [
        {"id": 42, "file_name": "sub/a.jpg", "width": 100, "height": 80},
        {"id": 7, "file_name": "gray.png", "width": 64, "height": 48},
        {"id": 1000, "file_name": "rgba.png"},
        {"id": 3, "file_name": "empty.jpg", "width": 40, "height": 30},
    ]
    annotations = [
        {"id": 1, "image_id": 42, "category_id": 18, "bbox": [10, 20, 30, 40], "iscrowd": 0},
        {"id": 2, "image_id": 42, "category_id": 90, "bbox": [0.5, 1.5, 2.0, 3.0]},
        {"id": 3, "image_id": 42, "category_id": 1, "bbox": [5, 5, 50, 50], "iscrowd": 1},
        {"id": 4, "image_id": 7, "category_id": 1, "bbox": [1, 2, 0, 10]},
        {"id": 5, "image_id": 7, "category_id": 1, "bbox": [1, 2, 10, -1]},
        {"id": 6, "image_id": 7, "category_id": 90, "bbox": [4, 6, 8, 10]},
        {"id": 7, "image_id": 1000, "category_id": 1, "bbox": [0, 0, 50, 60]},
    ]
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps(_coco(images, annotations)))
    return img_dir, ann_file


def test_index_and_labels(tiny):
    ds = CocoDetection(*tiny)
    assert len(ds) == 4
    assert ds.image_ids == [42, 7, 1000, 3]  # file order, not sorted
    assert ds.category_ids == [1, 18, 90]
    assert ds.label_map == {1: 1, 18: 2, 90: 3}  # contiguous: num_classes None -> 3 + 1
    assert ds.num_classes == 4
    assert ds.skipped == {SKIP_CROWD: 1, SKIP_DEGENERATE: 2}
    assert ds.summary().endswith(f"skipped: 1 {SKIP_CROWD}, 2 {SKIP_DEGENERATE}")
    assert "4 images (1 without objects), 4 objects, 3 categories -> 4 classes" in ds.summary()


def test_getitem_boxes_and_images(tiny):
    ds = CocoDetection(*tiny, num_classes=91)  # identity labels
    image, target = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 80, 100)
    assert target["image_id"] == 42 and target["orig_size"] == (80, 100)
    # [10, 20, 30, 40] -> [10, 20, 40, 60]; [0.5, 1.5, 2, 3] -> [0.5, 1.5, 2.5, 4.5]; crowd left out.
    torch.testing.assert_close(target["boxes"], torch.tensor([[10, 20, 40, 60], [0.5, 1.5, 2.5, 4.5]]))
    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [18, 90]

    gray, target = ds[1]
    assert gray.shape == (3, 48, 64)
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert abs(gray[0, 0, 0].item() - 128 / 255) < 1e-6
    assert target["boxes"].tolist() == [[4, 6, 12, 16]] and target["labels"].tolist() == [90]

    rgba, target = ds[2]
    assert rgba.shape == (3, 60, 50)  # alpha dropped
    assert rgba[:, 0, 0].tolist() == [1.0, 0.0, 0.0]
    assert target["orig_size"] == (60, 50)


def test_empty_image_kept(tiny):
    image, target = CocoDetection(*tiny)[3]
    assert image.shape == (3, 30, 40)
    assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64


def test_resize_scales_boxes(tiny):
    ds = CocoDetection(*tiny, image_size=(40, 200))
    image, target = ds[0]
    assert image.shape == (3, 40, 200)
    assert target["orig_size"] == (80, 100)
    # 100x80 (WxH) -> 200x40: x * 2, y * 0.5. [10, 20, 40, 60] -> [20, 10, 80, 30].
    torch.testing.assert_close(target["boxes"][0], torch.tensor([20.0, 10.0, 80.0, 30.0]))
    _, empty = ds[3]
    assert empty["boxes"].shape == (0, 4)


def test_train_flip_moves_pixels_with_boxes(tmp_path):
    # A white rectangle exactly under its box on a black image.
    pixels = np.zeros((40, 60, 3), dtype=np.uint8)
    pixels[10:30, 5:20] = 255  # box xywh [5, 10, 15, 20]
    (tmp_path / "img").mkdir()
    Image.fromarray(pixels).save(tmp_path / "img" / "a.png")
    box = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 10, 15, 20]}
    ann = _coco([{"id": 1, "file_name": "a.png"}], [box], (1,))
    (tmp_path / "a.json").write_text(json.dumps(ann))
    ds = CocoDetection(tmp_path / "img", tmp_path / "a.json", train=True)
    torch.manual_seed(0)
    seen = set()
    for _ in range(16):
        image, target = ds[0]
        box = tuple(target["boxes"][0].tolist())
        seen.add(box)
        ys, xs = torch.nonzero(image.mean(0) > 0.5, as_tuple=True)
        assert (xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1) == box
    # unflipped [5, 10, 20, 30]; flipped with W = 60: [60 - 20, 10, 60 - 5, 30] = [40, 10, 55, 30].
    assert seen == {(5.0, 10.0, 20.0, 30.0), (40.0, 10.0, 55.0, 30.0)}


def test_collate(tiny):
    ds = CocoDetection(*tiny, image_size=(32, 48))
    images, targets = detection_collate([ds[0], ds[3]])
    assert images.shape == (2, 3, 32, 48)
    assert [t["image_id"] for t in targets] == [42, 3]
    with pytest.raises(EdgeAnchorError, match="image_size"):
        detection_collate([CocoDetection(*tiny)[0], CocoDetection(*tiny)[3]])


def test_dataloader(tiny):
    ds = CocoDetection(*tiny, image_size=(32, 32))
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=detection_collate)
    images, targets = next(iter(loader))
    assert images.shape == (4, 3, 32, 32) and len(targets) == 4


# ---------------------------------------------------------------- errors


def _write(tmp_path, obj, name="bad.json"):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def test_missing_and_malformed_annotation_file(tmp_path):
    with pytest.raises(EdgeAnchorError, match=r"nope\.json does not exist"):
        CocoDetection(tmp_path, tmp_path / "nope.json")
    with pytest.raises(EdgeAnchorError, match="is not valid JSON"):
        CocoDetection(tmp_path, _write(tmp_path, "{not json"))
    with pytest.raises(EdgeAnchorError, match="no 'categories' list"):
        CocoDetection(tmp_path, _write(tmp_path, {"images": [], "annotations": []}))
    with pytest.raises(EdgeAnchorError, match="lists no images"):
        CocoDetection(tmp_path, _write(tmp_path, _coco([], [])))


def test_missing_image_files(tiny):
    img_dir, ann_file = tiny
    (img_dir / "gray.png").unlink()
    (img_dir / "sub" / "a.jpg").unlink()
    with pytest.raises(EdgeAnchorError, match=r"2 of 4 image files are missing .*\(first: sub/a\.jpg\)"):
        CocoDetection(img_dir, ann_file)
    with pytest.raises(EdgeAnchorError, match="image folder .* does not exist"):
        CocoDetection(img_dir / "nowhere", ann_file)


def test_unknown_image_and_category_ids(tiny):
    img_dir, ann_file = tiny
    data = json.loads(ann_file.read_text())
    data["annotations"].append({"id": 99, "image_id": 5, "category_id": 1, "bbox": [0, 0, 1, 1]})
    expected = r"1 annotation refers to a image_id not listed in 'images' \(first: annotation 99 -> image_id 5\)"
    with pytest.raises(EdgeAnchorError, match=expected):
        CocoDetection(img_dir, _write(img_dir.parent, data))
    data["annotations"][-1] = {"id": 98, "image_id": 42, "category_id": 2, "bbox": [0, 0, 1, 1]}
    with pytest.raises(EdgeAnchorError, match=r"annotation 98 -> category_id 2"):
        CocoDetection(img_dir, _write(img_dir.parent, data))
    data["annotations"][-1] = {"id": 97, "image_id": 42, "category_id": 1, "bbox": [0, 0, 1]}
    with pytest.raises(EdgeAnchorError, match=r"annotations\[7\] \(id 97\) needs .*'bbox' of 4"):
        CocoDetection(img_dir, _write(img_dir.parent, data))


def test_num_classes_mismatch(tiny):
    with pytest.raises(EdgeAnchorError, match="`num_classes` 4"):
        CocoDetection(*tiny, num_classes=50)


def test_declared_size_mismatch(tiny):
    img_dir, ann_file = tiny
    data = json.loads(ann_file.read_text())
    data["images"][0]["width"] = 90
    ds = CocoDetection(img_dir, _write(img_dir.parent, data))
    with pytest.raises(EdgeAnchorError, match=r"a\.jpg is 100x80 \(WxH\) but the annotation file says 90x80"):
        ds[0]
