"""MediaPipe's own face detections on scikit-image's photos: the reference for the ``mediapipe`` preset.

Run in a throw-away venv with the ``mediapipe`` wheel (benchmarks/convert_mediapipe.sh does), never in the
project's: it imports mediapipe, Pillow and numpy only. Each photo is cropped to a square and resized to
128 x 128 with Pillow (bilinear), so MediaPipe's own letterbox and resize (ImageToTensorCalculator,
keep_aspect_ratio) are the identity and edgeanchor can be fed the very same pixels. MediaPipe's legacy
``solutions.face_detection`` (model_selection 0: face_detection_short_range.tflite) runs on each, and its
detections (relative box, score, 6 relative keypoints, after its WEIGHTED non-max suppression) are written
as JSON with the crops and a hash of each input, so a test can rebuild the inputs and compare.

Usage: python benchmarks/mediapipe_reference.py --photos SKIMAGE_DATA_DIR --out reference.json
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 128  # face_detection_short_range's input
# name -> (scikit-image file, square crop (x0, y0, x1, y1) in the photo's pixels; None: the centred square)
PHOTOS: dict[str, tuple[str, tuple[int, int, int, int] | None]] = {
    "astronaut": ("astronaut.png", (0, 0, 512, 512)),
    "astronaut_mid": ("astronaut.png", (64, 0, 384, 320)),
    "camera": ("camera.png", (0, 0, 512, 512)),
    "camera_face": ("camera.png", (110, 40, 330, 260)),
    "motorcycle": ("motorcycle_left.png", None),
    "coffee": ("coffee.png", None),
    "chelsea": ("chelsea.png", None),
    "rocket": ("rocket.jpg", None),
    "coins": ("coins.png", None),
    "hubble": ("hubble_deep_field.jpg", None),
}


def centred_square(size: tuple[int, int]) -> tuple[int, int, int, int]:
    w, h = size
    s = min(w, h)
    x0, y0 = (w - s) // 2, (h - s) // 2
    return x0, y0, x0 + s, y0 + s


def model_input(folder: Path, file: str, crop: tuple[int, int, int, int] | None) -> tuple[np.ndarray, list[int]]:
    """The photo's square crop at 128 x 128, RGB uint8 (H, W, 3), and the crop used."""
    image = Image.open(folder / file).convert("RGB")
    box = crop or centred_square(image.size)
    return np.asarray(image.crop(box).resize((SIZE, SIZE), Image.BILINEAR), dtype=np.uint8), list(box)


def detections(result) -> list[dict]:
    out = []
    for d in result.detections or []:
        loc = d.location_data
        box = loc.relative_bounding_box
        out.append({"score": float(d.score[0]),
                    "box_xywh": [float(box.xmin), float(box.ymin), float(box.width), float(box.height)],
                    "keypoints": [[float(k.x), float(k.y)] for k in loc.relative_keypoints]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, required=True, help="scikit-image's data folder")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import mediapipe as mp

    model = Path(mp.__file__).parent / "modules" / "face_detection" / "face_detection_short_range.tflite"
    images = []
    with mp.solutions.face_detection.FaceDetection(model_selection=0, min_detection_confidence=0.5) as detector:
        for name, (file, crop) in PHOTOS.items():
            pixels, box = model_input(args.photos, file, crop)
            images.append({"name": name, "file": file, "crop_xyxy": box, "size": [SIZE, SIZE],
                           "input_sha256": hashlib.sha256(pixels.tobytes()).hexdigest(),
                           "detections": detections(detector.process(pixels))})
    report = {
        "about": "MediaPipe FaceDetection (legacy solutions API, model_selection 0) on 128 x 128 crops of "
                 "scikit-image photos; boxes (xmin, ymin, width, height) and keypoints relative to the crop",
        "versions": {p: importlib.metadata.version(p) for p in ("mediapipe", "numpy", "pillow", "scikit-image")
                     if _installed(p)},
        "model": {"file": "mediapipe/modules/face_detection/face_detection_short_range.tflite",
                  "sha256": hashlib.sha256(model.read_bytes()).hexdigest()},
        "min_detection_confidence": 0.5,
        "resize": "PIL.Image.crop(crop_xyxy).resize((128, 128), Image.BILINEAR), RGB uint8",
        "images": images,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"{args.out}: {sum(len(i['detections']) for i in images)} detections on {len(images)} images")


def _installed(name: str) -> bool:
    try:
        importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


if __name__ == "__main__":
    main()
