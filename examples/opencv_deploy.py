"""Detect objects with an edgeanchor model_nonms.onnx, using only OpenCV and NumPy.

    python examples/opencv_deploy.py exports/demo/model_nonms.onnx photo.jpg [--json]

The graph gives its best K (box, class) candidates. The application finishes the job with class-aware
NMS (cv2.dnn.NMSBoxesBatched), using the IoU threshold and detection count stored in the file's
metadata. The metadata also says how to resize the image: "stretch", or YOLOv5's "letterbox".
Labels are the model's own: SSD's start at 1 (0 is the background), YOLO's at 0 (first_label).
"""
import argparse
import json

import cv2
import numpy as np


def read_metadata(path):
    """The ONNX file's metadata_props (ModelProto field 14) as a dict, without the onnx package."""
    def varint(buf, pos):
        value = shift = 0
        while buf[pos] & 0x80:
            value, shift, pos = value | (buf[pos] & 0x7F) << shift, shift + 7, pos + 1
        return value | buf[pos] << shift, pos + 1

    def fields(buf):  # (field number, value) of a protobuf message's top-level fields
        pos = 0
        while pos < len(buf):
            key, pos = varint(buf, pos)
            if key & 7 == 2:  # length-delimited: bytes, strings, sub-messages
                size, pos = varint(buf, pos)
                yield key >> 3, buf[pos:pos + size]
                pos += size
            elif key & 7 == 0:
                pos = varint(buf, pos)[1]
            else:  # fixed 64- or 32-bit
                pos += 8 if key & 7 == 1 else 4

    with open(path, "rb") as f:
        entries = [dict(fields(value)) for number, value in fields(memoryview(f.read())) if number == 14]
    return {bytes(e[1]).decode(): bytes(e.get(2, b"")).decode() for e in entries}


def preprocess(image, size, resize):
    """BGR uint8 image -> float32 (1, 3, H, W) RGB in [0, 1], and (scale, pad) mapping boxes back."""
    (h, w), (ih, iw) = size, image.shape[:2]
    if resize == "letterbox":  # YOLOv5's: one gain for both axes, centred on grey 114
        gain = min(h / ih, w / iw)
        nw, nh = round(iw * gain), round(ih * gain)
        left, top = round((w - nw) / 2 - 0.1), round((h - nh) / 2 - 0.1)
        canvas = np.full((h, w, 3), 114, np.uint8)
        canvas[top:top + nh, left:left + nw] = cv2.resize(image, (nw, nh))  # bilinear
        image, scale, pad = canvas, (1 / gain, 1 / gain), (left, top)
    else:  # both axes to the input size
        image, scale, pad = cv2.resize(image, (w, h)), (iw / w, ih / h), (0, 0)
    rgb = image[:, :, ::-1].astype(np.float32) / 255.0  # (H, W, 3) BGR -> RGB
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)[None]), scale, pad


def detect(net, meta, image):
    """float (N, 6) rows x1, y1, x2, y2 (pixels of ``image``), score, label; best first."""
    size = tuple(int(v) for v in meta["input_size"].split(","))  # height, width
    blob, (sx, sy), (px, py) = preprocess(image, size, meta["resize"])
    net.setInput(blob, "images")
    boxes, scores, labels = net.forward(["boxes", "scores", "labels"])
    boxes, scores = boxes.reshape(-1, 4).astype(np.float64), scores.reshape(-1)
    labels = np.rint(labels.reshape(-1)).astype(np.int32)  # OpenCV 4.x gives int64 outputs as float32
    real = scores > 0  # rows past the last candidate are padding with score 0
    boxes, scores, labels = boxes[real], scores[real], labels[real]
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    keep = cv2.dnn.NMSBoxesBatched(xywh, scores, labels, 0.0, float(meta["nms_iou_threshold"]))
    keep = np.asarray(keep, dtype=np.int64).reshape(-1)
    keep = keep[np.argsort(-scores[keep], kind="stable")][:int(meta["detections_per_img"])]
    boxes = (boxes[keep] - [px, py, px, py]) * [sx, sy, sx, sy]  # input pixels -> image pixels
    boxes = boxes.clip(0, [image.shape[1], image.shape[0]] * 2)
    return np.concatenate([boxes, scores[keep, None], labels[keep, None]], axis=1)


def main():
    parser = argparse.ArgumentParser(description="Detect objects with model_nonms.onnx and OpenCV.")
    parser.add_argument("model", help="model_nonms.onnx written by edgeanchor prune-and-export")
    parser.add_argument("image", help="image file")
    parser.add_argument("--json", action="store_true", help="print the detections as one JSON list")
    args = parser.parse_args()
    meta = read_metadata(args.model)
    if "nms_iou_threshold" not in meta:
        raise SystemExit(f"error: {args.model} has no NMS rule in its metadata; export it again with edgeanchor")
    image = cv2.imread(args.image, cv2.IMREAD_COLOR)
    if image is None:
        raise SystemExit(f"error: cannot read image {args.image}")
    rows = detect(cv2.dnn.readNetFromONNX(args.model), meta, image)
    if args.json:
        print(json.dumps([{"box_xyxy": [round(float(v), 2) for v in r[:4]], "score": round(float(r[4]), 5),
                           "label": int(r[5])} for r in rows]))
    else:
        for x1, y1, x2, y2, score, label in rows:
            print(f"label {int(label):3d}  score {score:.3f}  box {x1:7.1f} {y1:7.1f} {x2:7.1f} {y2:7.1f}")


if __name__ == "__main__":
    main()
