"""The ``mediapipe`` preset on MediaPipe's real BlazeFace short-range model, against MediaPipe's own detections.

The model is generated, not committed: benchmarks/convert_mediapipe.sh converts the .tflite of the
``mediapipe`` wheel to build/mediapipe/face_detection_short_range.onnx (or set EDGEANCHOR_MEDIAPIPE_ONNX);
without it these tests skip. The reference, tests/fixtures/mediapipe/reference.json, is MediaPipe 0.10.21's
FaceDetection on 128 x 128 crops of scikit-image's photos (see the README beside it); neither TensorFlow nor
mediapipe is needed here.

MediaPipe's NMS is WEIGHTED: each kept face is the score-weighted mean of the boxes and keypoints of every
candidate that overlaps the best one (IoU > 0.3), where edgeanchor's NMS keeps the best box itself. So
(1) edgeanchor's candidates above MediaPipe's 0.5, blended by :func:`weighted_nms` (NonMaxSuppressionCalculator's
WEIGHTED algorithm, written out here), must give MediaPipe's detections: same count, scores, boxes and
keypoints within 1e-4 of the image side; (2) edgeanchor's own plain NMS must keep the same faces, each the
best box of its MediaPipe group (which differs from MediaPipe's blend by up to 1.7 px at 128 here, IoU 0.886).

Tolerance: 1e-4 of 128 px is 0.013 px. It covers float32 differences between ONNX Runtime and TFLite's
kernels (the converted graph's raw outputs differ from TensorFlow's TFLite interpreter by up to 2.6e-4 px
in the regressors and 7e-4 in the logits, benchmarks/mediapipe_parity.py) and MediaPipe's sums in another
order; measured against MediaPipe itself: 1.8e-7 (boxes), 1.5e-7 (keypoints), 2.4e-7 (scores).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures" / "mediapipe"
ONNX = Path(os.environ.get("EDGEANCHOR_MEDIAPIPE_ONNX",
                           Path(__file__).parents[1] / "build" / "mediapipe" / "face_detection_short_range.onnx"))
TOL = 1e-4  # of the image side; see the module docstring


@pytest.fixture(scope="module")
def detector():
    if not ONNX.is_file():
        pytest.skip(f"{ONNX} is missing: make it with benchmarks/convert_mediapipe.sh")
    import edgeanchor as ea

    return ea.load(f"onnx:{ONNX}", head=str(FIXTURES / "head-spec.yaml"))


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads((FIXTURES / "reference.json").read_text())


def photo(entry: dict) -> torch.Tensor:
    """The reference's 128 x 128 crop, rebuilt from scikit-image's photo: (1, 3, 128, 128) RGB in [0, 1]."""
    from PIL import Image

    found = importlib.util.find_spec("skimage")
    folder = Path(next(iter(found.submodule_search_locations or []), "")) / "data" if found else None
    if folder is None or not (folder / entry["file"]).is_file():
        pytest.skip("scikit-image's photos are not installed: pip install --no-deps scikit-image")
    image = Image.open(folder / entry["file"]).convert("RGB").crop(tuple(entry["crop_xyxy"]))
    pixels = np.array(image.resize((128, 128), Image.BILINEAR), dtype=np.uint8)
    assert hashlib.sha256(pixels.tobytes()).hexdigest() == entry["input_sha256"], (
        f"{entry['name']}: Pillow resized the crop to other pixels than the reference's")
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255.0


def iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def weighted_nms(boxes: np.ndarray, scores: np.ndarray, points: np.ndarray, thresh: float = 0.3) -> list[dict]:
    """MediaPipe's WEIGHTED non-max suppression: per group (the best remaining box and every remaining box whose
    IoU with it is above ``thresh``), the best score and the score-weighted mean box and keypoints."""
    order = [int(i) for i in np.argsort(-scores, kind="stable")]
    out = []
    while order:
        top = order[0]
        group = [i for i in order if iou(boxes[i], boxes[top]) > thresh]
        order = [i for i in order if i not in group]
        w = scores[group][:, None]
        out.append({"score": float(scores[top]), "top": top, "box": (boxes[group] * w).sum(0) / w.sum(),
                    "points": (points[group] * w).sum(0) / w.sum()})
    return out


def mediapipe_rows(entry: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MediaPipe's detections of one image: scores (D,), boxes xyxy (D, 4) and keypoints (D, 12), relative."""
    dets = entry["detections"]
    scores = np.array([d["score"] for d in dets], dtype=np.float64)
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (d["box_xywh"] for d in dets)]).reshape(-1, 4)
    points = np.array([np.ravel(d["keypoints"]) for d in dets]).reshape(-1, 12)
    return scores, boxes, points


def test_reference_covers_faces_and_negatives(reference):
    counts = {e["name"]: len(e["detections"]) for e in reference["images"]}
    assert counts == {"astronaut": 1, "astronaut_mid": 1, "camera": 1, "camera_face": 1, "motorcycle": 2,
                      "coffee": 0, "chelsea": 0, "rocket": 0, "coins": 0, "hubble": 0}


def test_candidates_blended_as_mediapipe_blends_equal_its_detections(detector, reference):
    from edgeanchor.onnx_source.export import decode_points
    from edgeanchor.postprocess import candidates, select

    rule = detector.deploy_rule()
    assert (rule.score_thresh, rule.nms_thresh, rule.box_coding) == (0.5, 0.3, "linear_size")
    for entry in reference["images"]:
        with torch.no_grad():
            features = detector.backbone(photo(entry))
            cls, box = detector.flatten_head(detector.head(features))
            cands = candidates(cls[0], box[0], detector.decode_priors, detector.image_size, rule)
            points = (decode_points(detector, features, cands.box_index) / 128.0).double().numpy()
            plain = select(cands, rule, detector.level_starts)
        boxes, scores = (cands.boxes_xyxy / 128.0).double().numpy(), cands.scores.double().numpy()
        want_scores, want_boxes, want_points = mediapipe_rows(entry)
        blended = weighted_nms(boxes, scores, points)
        name = entry["name"]
        assert len(blended) == len(want_scores) == len(plain["scores"]), name
        for got, ws, wb, wp, kept in zip(blended, want_scores, want_boxes, want_points, plain["box_index"]):
            assert abs(got["score"] - ws) < TOL, name
            np.testing.assert_allclose(got["box"], wb, rtol=0, atol=TOL, err_msg=name)
            np.testing.assert_allclose(got["points"], wp, rtol=0, atol=TOL, err_msg=name)
            # edgeanchor's plain NMS keeps the best box of the same group, not the blend (IoU 0.886 at least here)
            assert int(kept) == int(cands.box_index[got["top"]]), name
            assert iou(boxes[got["top"]], wb) > 0.85, name
