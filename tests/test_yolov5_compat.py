"""Compatibility with the real yolov5 v7.0: a train.py checkpoint and its own outputs, read with edgeanchor only.

The fixture (tests/fixtures/yolov5/, made once by make_fixture.py with the real yolov5 package in a
throw-away environment) holds a yolov5n (nc=3) checkpoint pickled with yolov5's classes, saved in half
precision as train.py saves it, and yolov5's raw Detect outputs and ``non_max_suppression`` results
on two images for the "val" and "deploy" presets.
"""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeanchor.models import build_detector
from edgeanchor.models.yolov5_checkpoint import read_yolov5_checkpoint
from edgeanchor.postprocess import PostprocessRule

FIXTURE = Path(__file__).parent / "fixtures" / "yolov5"
CKPT = FIXTURE / "yolov5n_nc3.pt"


@pytest.fixture(scope="module")
def ref():
    return np.load(FIXTURE / "yolov5n_nc3_reference.npz", allow_pickle=False)


@pytest.fixture(scope="module")
def det():
    return build_detector("yolov5:n", weights=CKPT, image_size=(320, 320))


@pytest.fixture(scope="module")
def images(ref):
    return torch.from_numpy(ref["images"]).float() / 255  # yolov5's input: RGB / 255


def test_reading_imports_no_yolov5_code(det):
    assert not any(m == "models" or m.startswith(("models.", "utils.", "yolov5")) for m in sys.modules)
    ck = read_yolov5_checkpoint(CKPT)
    assert ck.num_classes == 3 and ck.names == ["red", "green", "blue"] and ck.strides == [8.0, 16.0, 32.0]


def test_checkpoint_anchors_and_nc_are_used(det, ref):
    assert det.num_classes == 3
    got = [[a.w, a.h] for lv in det.anchor_set.levels for a in lv.anchors]
    assert np.array_equal(np.array(got, dtype=np.float32), ref["anchors_px"].reshape(-1, 2))
    # not the defaults: the fixture's anchors are the defaults x 1.1 (in fp16)
    assert det.anchor_set.levels[0].anchors[0].w != 10.0


def test_raw_detect_outputs_match(det, ref, images):
    with torch.no_grad():
        features = det.backbone(images)
        for j, feature in enumerate(features):
            out = det.detect.m[j](feature)  # (N, na*(5+nc), H, W)
            n, _, h, w = out.shape
            ours = out.view(n, 3, 8, h, w).permute(0, 1, 3, 4, 2).numpy()  # yolov5's (N, na, H, W, 5+nc)
            assert ours.shape == ref[f"raw{j}"].shape
            assert np.abs(ours - ref[f"raw{j}"]).max() < 1e-4


@pytest.mark.parametrize("preset", ["val", "deploy"])
def test_detections_equal_non_max_suppression(det, ref, images, preset):
    det.postprocess_spec = PostprocessRule.yolo(preset)
    with torch.no_grad():
        out = det(images)
    for i, o in enumerate(out):
        expected = ref[f"{preset}_{i}"]  # (n, 6): x1, y1, x2, y2, conf, cls, best first
        assert len(o["boxes"]) == len(expected) == 300
        assert np.abs(o["boxes"].numpy() - expected[:, :4]).max() < 1e-3
        assert np.abs(o["scores"].numpy() - expected[:, 4]).max() < 1e-5
        assert np.array_equal(o["labels"].numpy(), expected[:, 5].astype(np.int64))


def test_the_checkpoint_can_be_the_model_itself(det, images, capsys):
    from edgeanchor.cli import main

    own = build_detector(str(CKPT), image_size=(320, 320))  # its own definition (yaml), weights, anchors, nc
    assert own.arch == "yolov5:n" and own.anchor_set == det.anchor_set and own.num_classes == 3
    with torch.no_grad():
        a, b = own.head(own.backbone(images)), det.head(det.backbone(images))
    assert all(torch.equal(x, y) for pa, pb in zip(a, b) for x, y in zip(pa, pb))
    assert main(["inspect", "--model", str(CKPT), "--weights", str(CKPT)]) == 2
    assert "drop --weights" in capsys.readouterr().err
