"""The converted BlazeFace ONNX against the TFLite model it came from: raw outputs on the same inputs.

Run in the TensorFlow venv of benchmarks/convert_mediapipe.sh (TensorFlow's TFLite interpreter and ONNX
Runtime side by side). The inputs are the reference's 128 x 128 crops of scikit-image's photos
(benchmarks/mediapipe_reference.py), preprocessed as MediaPipe does: pixel * 2 / 255 - 1, NHWC float32.
Writes the max abs diff per output as JSON.

Usage: python benchmarks/mediapipe_parity.py --tflite M.tflite --onnx M.onnx --photos SKIMAGE_DATA --out p.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tflite", type=Path, required=True)
    parser.add_argument("--onnx", type=Path, required=True)
    parser.add_argument("--photos", type=Path, required=True, help="scikit-image's data folder")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import onnxruntime as ort
    import tensorflow as tf

    sys.path.insert(0, str(Path(__file__).parent))
    from mediapipe_reference import PHOTOS, model_input

    interpreter = tf.lite.Interpreter(model_path=str(args.tflite))
    interpreter.allocate_tensors()
    tfl_in = interpreter.get_input_details()[0]["index"]
    tfl_out = {d["name"]: d["index"] for d in interpreter.get_output_details()}
    session = ort.InferenceSession(str(args.onnx), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    worst = dict.fromkeys(names, 0.0)
    for file, crop in PHOTOS.values():
        pixels, _ = model_input(args.photos, file, crop)
        x = (pixels.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0))[None]  # (1, 128, 128, 3)
        interpreter.set_tensor(tfl_in, x)
        interpreter.invoke()
        got = dict(zip(names, session.run(names, {session.get_inputs()[0].name: x})))
        for name in names:
            want = interpreter.get_tensor(tfl_out[name])
            worst[name] = max(worst[name], float(np.abs(got[name] - want).max()))
    report = {"images": len(PHOTOS), "max_abs_diff": worst, "tensorflow": tf.__version__,
              "onnxruntime": ort.__version__}
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
