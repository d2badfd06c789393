"""Run a detector over a data set and collect COCO results-format detections."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..datasets.coco import CocoDetection, detection_collate, invert_label_map, to_original


def to_coco_results(det_out: dict, image_id: int, orig_size, input_size, label_to_cat: dict,
                    resize: str = "stretch") -> list[dict]:
    """Detections of one image (input pixels, model labels) as COCO results.

    Boxes are scaled from the model input size back to the original image
    size, clipped to it (YOLO boxes leave NMS unclipped, as YOLOv5's val.py
    clips them only here) and written as [x, y, w, h]; labels become category ids.
    """
    oh, ow = orig_size
    boxes = det_out["boxes"].detach().cpu().double()
    sx, sy, px, py = to_original(tuple(orig_size), tuple(input_size), resize)
    scale = torch.tensor([sx, sy, sx, sy], dtype=torch.float64)
    pad = torch.tensor([px, py, px, py], dtype=torch.float64)
    boxes = clip_original((boxes - pad) * scale, oh, ow)  # (D, 4) xyxy, original pixels
    results = []
    for box, score, label in zip(boxes.tolist(), det_out["scores"].tolist(), det_out["labels"].tolist()):
        cat = label_to_cat.get(int(label))
        if cat is None:  # a label with no category (e.g. unused COCO ids): cannot be scored
            continue
        x1, y1, x2, y2 = box
        results.append({"image_id": int(image_id), "category_id": int(cat),
                        "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    return results


def clip_original(boxes, height, width):
    """Clip (D, 4) xyxy boxes (a float64 torch tensor or NumPy array) to an image of the given size.

    ``height`` and ``width`` are numbers, or (D, 1) NumPy arrays with one size per box.
    """
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    return boxes


def make_loader(dataset: CocoDetection, batch_size: int, *, shuffle: bool = False, workers: int = 0,
                sampler=None, generator=None, persistent_workers: bool | None = None) -> DataLoader:
    """A DataLoader of (images, targets) batches; ``generator`` fixes shuffling and the workers' seeds."""
    persistent = workers > 0 if persistent_workers is None else (persistent_workers and workers > 0)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      num_workers=workers, collate_fn=detection_collate, drop_last=False, generator=generator,
                      persistent_workers=persistent)


@torch.no_grad()
def predict(detector, dataset: CocoDetection, *, batch_size: int = 16, device: str = "cpu",
            progress: bool = True, workers: int = 0, desc: str = "predict") -> list[dict]:
    """COCO results-format detections of ``detector`` on every image of ``dataset``."""
    detector.eval().to(device)
    label_to_cat = invert_label_map(dataset.label_map)
    results: list[dict] = []
    loader = make_loader(dataset, batch_size, workers=workers)
    for images, targets in tqdm(loader, desc=desc, disable=not progress, leave=False):
        outputs = detector(images.to(device))
        for out, target in zip(outputs, targets):
            results.extend(to_coco_results(out, target["image_id"], target["orig_size"], detector.image_size,
                                           label_to_cat, dataset.resize))
    return results


def is_detections_file(path) -> bool:
    """True if ``path`` holds COCO results-format detections (a list of image_id/category_id/bbox/score dicts)."""
    from ..io import peek_json

    obj, keys = peek_json(path), {"image_id", "category_id", "bbox", "score"}
    return isinstance(obj, list) and all(isinstance(d, dict) and keys <= set(d) for d in obj)
