#!/usr/bin/env bash
# Convert MediaPipe's BlazeFace short-range face detector to ONNX with tf2onnx, and check it.
#
# The model: mediapipe/modules/face_detection/face_detection_short_range.tflite in the `mediapipe` 0.10.21
# wheel (PyPI, Apache-2.0, the wheel's LICENSE). tf2onnx converts the TFLite graph from its input to the raw
# head outputs; MediaPipe's own preprocessing (letterbox to 128 x 128, pixel * 2/255 - 1) and
# postprocessing (SsdAnchorsCalculator, TensorsToDetectionsCalculator, weighted NMS) are not in the
# .tflite, and edgeanchor's head spec describes them (tests/fixtures/mediapipe/head-spec.yaml).
#
# TensorFlow and mediapipe go into throw-away venvs outside the repository ($TFVENV, $MPVENV); nothing
# here touches the project's venv. Writes (not committed: build/ is ignored)
#   build/mediapipe/face_detection_short_range.onnx   input `input` [1,128,128,3] float NHWC in [-1, 1];
#                                                      outputs `regressors` [1,896,16], `classificators` [1,896,1]
#   build/mediapipe/face_detection_short_range.parity.json   ONNX Runtime vs TFLite, max abs diff per output
# and, with FIXTURE=1, refreshes tests/fixtures/mediapipe/reference.json (MediaPipe's own detections).
#
# Usage: benchmarks/convert_mediapipe.sh   (TFVENV=DIR, MPVENV=DIR to reuse venvs; FIXTURE=1)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/edgeanchor"
TFVENV="${TFVENV:-$CACHE/tfvenv}"
MPVENV="${MPVENV:-$CACHE/mpvenv}"
OUT="$ROOT/build/mediapipe"

for venv in "$TFVENV" "$MPVENV"; do
    if [ ! -x "$venv/bin/python" ]; then
        python3.11 -m venv "$venv" 2>/dev/null || python3 -m venv "$venv"
    fi
done
# The versions this recipe was run with (Python 3.11, CPU); see convert_tf_ssdlite.sh for why these.
"$TFVENV/bin/python" -m pip install -q \
    tensorflow-cpu==2.15.1 numpy==1.26.4 tf2onnx==1.17.0 onnx==1.16.2 onnxruntime==1.18.1 pillow==13.0.0
# scikit-image only for its sample photos (read as files from the wheel, never imported).
"$TFVENV/bin/python" -m pip install -q --no-deps scikit-image==0.26.0
# mediapipe 0.10.21 still has the legacy solutions API (FaceDetection) and ships the .tflite models.
"$MPVENV/bin/python" -m pip install -q mediapipe==0.10.21 pillow==13.0.0

TFLITE="$("$MPVENV/bin/python" -c 'import importlib.util as u; print(u.find_spec("mediapipe").submodule_search_locations[0])')/modules/face_detection/face_detection_short_range.tflite"
PHOTOS="$("$TFVENV/bin/python" -c 'import importlib.util as u; print(u.find_spec("skimage").submodule_search_locations[0])')/data"
mkdir -p "$OUT"

# The TFLite model's weights are float16 with Dequantize ops; tf2onnx folds them into float32 initializers,
# so every head conv has constant weights (edgeanchor slices them).
NAME=face_detection_short_range
"$TFVENV/bin/python" -m tf2onnx.convert --tflite "$TFLITE" --opset 13 --output "$OUT/$NAME.onnx.tmp"
mv "$OUT/$NAME.onnx.tmp" "$OUT/$NAME.onnx"

"$TFVENV/bin/python" "$ROOT/benchmarks/mediapipe_parity.py" \
    --tflite "$TFLITE" --onnx "$OUT/$NAME.onnx" --photos "$PHOTOS" --out "$OUT/$NAME.parity.json"

if [ "${FIXTURE:-0}" = 1 ]; then
    "$MPVENV/bin/python" "$ROOT/benchmarks/mediapipe_reference.py" \
        --photos "$PHOTOS" --out "$ROOT/tests/fixtures/mediapipe/reference.json"
fi
