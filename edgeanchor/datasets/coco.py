"""COCO-format detection reader: annotation file -> (image tensor, target dict).

The annotation file is read with the ``json`` module, validated once and
indexed per image; pycocotools is only used for evaluation. Boxes in targets
are ``xyxy`` in the pixels of the returned image (after any resize or flip).
``iscrowd=1`` annotations are left out of targets because COCOeval reads them
from the annotation file itself; boxes with zero or negative width/height are
skipped and counted in :attr:`CocoDetection.skipped`, never silently changed.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ..errors import EdgeAnchorError
from ..io import plural, read_json
from .imaging import (
    LETTERBOX_FILL,  # noqa: F401 - re-exported
    RESIZE_MODES,
    letterbox_params,  # noqa: F401 - re-exported
    load_image_array,
    to_input,
    to_original,  # noqa: F401 - re-exported
)
from .imaging import to_rgb8 as _to_rgb8  # noqa: F401 - re-exported
from .labels import invert_label_map, make_label_map  # noqa: F401 - re-exported

SKIP_CROWD = "crowd"
SKIP_DEGENERATE = "degenerate box (w or h <= 0)"

# Colour jitter range for train=True: factors in [1 - J, 1 + J]. Kept mild so
# that the colour families of the synthetic classes stay recognisable.
JITTER = 0.15


def xywh_to_xyxy(boxes_xywh: np.ndarray) -> np.ndarray:
    """Convert COCO ``[x, y, w, h]`` boxes to ``[x1, y1, x2, y2]``.

    Args:
        boxes_xywh: float array (N, 4).

    Returns:
        float array (N, 4), same dtype.
    """
    boxes_xyxy = boxes_xywh.copy()
    boxes_xyxy[:, 2:] += boxes_xywh[:, :2]
    return boxes_xyxy


def scale_boxes(boxes_xyxy: torch.Tensor, orig_size: tuple[int, int], new_size: tuple[int, int]) -> torch.Tensor:
    """Rescale xyxy boxes from an image of ``orig_size`` (H, W) to ``new_size`` (H, W).

    Args:
        boxes_xyxy: float tensor (N, 4) in pixels of the original image.
        orig_size: (H, W) of the original image.
        new_size: (H, W) of the resized image.

    Returns:
        float tensor (N, 4) in pixels of the resized image.
    """
    sx, sy, _, _ = to_input(orig_size, new_size, "stretch")
    factors = torch.tensor([sx, sy, sx, sy], dtype=boxes_xyxy.dtype)
    return boxes_xyxy * factors


def hflip_boxes(boxes_xyxy: torch.Tensor, width: int) -> torch.Tensor:
    """Mirror xyxy boxes left-right in an image ``width`` pixels wide.

    Args:
        boxes_xyxy: float tensor (N, 4).
        width: image width in pixels.

    Returns:
        float tensor (N, 4); x1' = W - x2, x2' = W - x1.
    """
    flipped = boxes_xyxy.clone()
    flipped[:, 0] = width - boxes_xyxy[:, 2]
    flipped[:, 2] = width - boxes_xyxy[:, 0]
    return flipped


def jitter_colour(image: torch.Tensor, brightness: float, contrast: float, saturation: float) -> torch.Tensor:
    """Scale brightness, contrast and saturation of an RGB image in [0, 1].

    Args:
        image: float tensor (3, H, W), RGB in [0, 1].
        brightness: multiplier for all pixels (1 = unchanged).
        contrast: blend factor towards the mean grey level (1 = unchanged).
        saturation: blend factor towards the per-pixel grey image (1 = unchanged).

    Returns:
        float tensor (3, H, W) clamped to [0, 1].
    """
    out = image * brightness
    grey = (0.299 * out[0] + 0.587 * out[1] + 0.114 * out[2]).unsqueeze(0)  # (1, H, W)
    out = (out - grey) * saturation + grey
    # torch's mean is a threaded reduction whose float32 result depends on the thread count (loader
    # workers run one thread); NumPy's float64 pairwise sum does not, so augmentation is the same
    # in any process.
    mean = float(grey.numpy().mean(dtype=np.float64))
    out = (out - mean) * contrast + mean
    return out.clamp_(0.0, 1.0)


def load_image(path: Path, image_size: tuple[int, int] | None,
               resize: str = "stretch") -> tuple[torch.Tensor, tuple[int, int]]:
    """:func:`edgeanchor.datasets.imaging.load_image_array` as a tensor.

    Returns:
        (float32 (3, H, W) in [0, 1], (H, W) of the file).
    """
    array, orig_size = load_image_array(path, image_size, resize)
    return torch.from_numpy(array), orig_size


def _require_list(data: dict, key: str, ann_file: Path) -> list:
    value = data.get(key)
    if not isinstance(value, list):
        raise EdgeAnchorError(
            f"annotation file {ann_file} has no '{key}' list; a COCO file needs 'images', 'annotations' "
            "and 'categories'"
        )
    return value


def _index_images(images: list, ann_file: Path) -> tuple[list[int], dict[int, dict]]:
    ids, by_id = [], {}
    for n, img in enumerate(images):
        if not isinstance(img, dict) or not _is_int(img.get("id")) or not isinstance(img.get("file_name"), str):
            raise EdgeAnchorError(f"{ann_file}: images[{n}] needs an integer 'id' and a 'file_name'; fix the entry")
        image_id = int(img["id"])
        if image_id in by_id:
            raise EdgeAnchorError(f"{ann_file}: image id {image_id} appears twice in 'images'; make ids unique")
        for key in ("height", "width"):
            if key in img and img[key] is not None and not (_is_int(img[key]) and img[key] > 0):
                raise EdgeAnchorError(
                    f"{ann_file}: images[{n}] (id {image_id}) has {key} {img[key]!r}; it must be a positive integer "
                    "(or left out)"
                )
        ids.append(image_id)
        by_id[image_id] = img
    return ids, by_id


def _category_ids(categories: list, ann_file: Path) -> list[int]:
    for n, cat in enumerate(categories):
        if not isinstance(cat, dict) or "id" not in cat:
            raise EdgeAnchorError(f"{ann_file}: categories[{n}] has no 'id'; fix the entry")
        if not _is_int(cat["id"]):
            raise EdgeAnchorError(f"{ann_file}: categories[{n}] has id {cat['id']!r}; category ids must be integers")
    return sorted(int(c["id"]) for c in categories)


def _check_references(annotations: list, image_ids: set, category_ids: set, ann_file: Path) -> None:
    """Raise on annotations whose image id or category id is not declared."""
    for key, known, where in (("image_id", image_ids, "images"), ("category_id", category_ids, "categories")):
        bad = [a for a in annotations if int(a[key]) not in known]
        if bad:
            first = bad[0]
            raise EdgeAnchorError(
                f"{ann_file}: {plural(len(bad), 'annotation')} {'refers' if len(bad) == 1 else 'refer'} to a {key} "
                f"not listed in '{where}' "
                f"(first: annotation {first.get('id', '?')} -> {key} {first[key]}); fix or remove them"
            )


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_annotation_fields(annotations: list, ann_file: Path) -> None:
    seen: dict[int, int] = {}
    for n, ann in enumerate(annotations):
        if isinstance(ann, dict) and _is_int(ann.get("id")):
            if ann["id"] in seen:
                raise EdgeAnchorError(
                    f"{ann_file}: annotation id {ann['id']} appears twice (annotations[{seen[ann['id']]}] and [{n}]); "
                    "COCO evaluation needs unique annotation ids: renumber them"
                )
            seen[ann["id"]] = n
        elif isinstance(ann, dict):
            raise EdgeAnchorError(
                f"{ann_file}: annotations[{n}] has no integer 'id'; COCO evaluation needs one per annotation"
            )
        ok = isinstance(ann, dict) and _is_int(ann.get("image_id")) and _is_int(ann.get("category_id"))
        bbox = ann.get("bbox") if ok else None
        ok = ok and isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(
            isinstance(v, (int, float)) and math.isfinite(v) for v in bbox
        )
        if not ok:
            ann_id = ann.get("id", "?") if isinstance(ann, dict) else "?"
            raise EdgeAnchorError(
                f"{ann_file}: annotations[{n}] (id {ann_id}) needs integer 'image_id' and 'category_id' and a 'bbox' "
                "of 4 finite numbers [x, y, w, h]; fix the entry"
            )


def _check_files_exist(image_dir: Path, images: list[dict]) -> None:
    if not image_dir.is_dir():
        raise EdgeAnchorError(f"image folder {image_dir} does not exist; check the image directory path")
    missing = [img["file_name"] for img in images if not (image_dir / img["file_name"]).is_file()]
    if missing:
        raise EdgeAnchorError(
            f"{len(missing)} of {len(images)} image files are missing under {image_dir} "
            f"(first: {missing[0]}); check the image folder matches the annotation file"
        )


def _group_annotations(
    annotations: list, label_map: dict[int, int], image_ids: list[int]
) -> tuple[dict[int, tuple[np.ndarray, np.ndarray]], Counter]:
    """Per image id: (boxes_xyxy float32 (N, 4), labels int64 (N,)), plus skip counts."""
    skipped: Counter = Counter()
    boxes: dict[int, list] = {i: [] for i in image_ids}
    labels: dict[int, list] = {i: [] for i in image_ids}
    for ann in annotations:
        if ann.get("iscrowd", 0):
            skipped[SKIP_CROWD] += 1
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        if w <= 0 or h <= 0:
            skipped[SKIP_DEGENERATE] += 1
            continue
        image_id = int(ann["image_id"])
        boxes[image_id].append((x, y, w, h))
        labels[image_id].append(label_map[int(ann["category_id"])])
    grouped = {}
    for i in image_ids:
        xywh = np.asarray(boxes[i], dtype=np.float32).reshape(-1, 4)  # (N, 4), N may be 0
        grouped[i] = (xywh_to_xyxy(xywh), np.asarray(labels[i], dtype=np.int64))
    return grouped, skipped


class CocoDetection(torch.utils.data.Dataset):
    """A COCO-format detection data set.

    ``dataset[i]`` returns ``(image, target)``: image is a float32 tensor
    (3, H, W), RGB in [0, 1]; target has ``boxes`` float32 (N, 4) xyxy in the
    returned image's pixels, ``labels`` int64 (N,), ``image_id`` int and
    ``orig_size`` (H, W) of the file.
    """

    def __init__(
        self,
        image_dir: str | os.PathLike,
        ann_file: str | os.PathLike,
        *,
        num_classes: int | None = None,
        image_size: tuple[int, int] | None = None,
        train: bool = False,
        first_label: int = 1,
        resize: str = "stretch",
    ):
        """Load, validate and index an annotation file.

        Args:
            image_dir: folder that ``file_name`` entries are relative to.
            ann_file: COCO-format JSON file.
            num_classes: model classes incl. background; None means K + 1 (contiguous labels).
            image_size: (H, W) to resize every image to, or None to keep file sizes.
            train: apply random horizontal flip and mild colour jitter.
            first_label: model label of the first category (0 for YOLO: no background class).
            resize: "stretch" or "letterbox" (YOLO), see :func:`load_image`.
        """
        self.image_dir = Path(image_dir)
        self.ann_file = Path(ann_file)
        self.image_size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
        self.train = train
        if resize not in RESIZE_MODES:
            raise EdgeAnchorError(f"resize must be one of {', '.join(RESIZE_MODES)} (got {resize!r})")
        self.resize = resize
        data = read_json(self.ann_file, "annotation file")
        if not isinstance(data, dict):
            raise EdgeAnchorError(f"annotation file {self.ann_file} is not a COCO JSON object; check the path")
        self.coco_json = data  # the parsed file, shared read-only by the steps that score this split
        images = _require_list(data, "images", self.ann_file)
        annotations = _require_list(data, "annotations", self.ann_file)
        categories = _require_list(data, "categories", self.ann_file)
        if not images:
            raise EdgeAnchorError(f"annotation file {self.ann_file} lists no images; check it is the right file")
        self.image_ids, self._images = _index_images(images, self.ann_file)
        self.category_ids = _category_ids(categories, self.ann_file)
        self.num_classes = len(self.category_ids) + first_label if num_classes is None else int(num_classes)
        self.label_map = make_label_map(self.category_ids, self.num_classes, first_label)
        _check_annotation_fields(annotations, self.ann_file)
        _check_references(annotations, set(self.image_ids), set(self.category_ids), self.ann_file)
        _check_files_exist(self.image_dir, images)
        self._targets, skipped = _group_annotations(annotations, self.label_map, self.image_ids)
        self.skipped = dict(skipped)

    def __len__(self) -> int:
        return len(self.image_ids)

    def set_augment_seed(self, seed: int | None) -> None:
        """Draw each sample's augmentation from (seed, sample index) alone.

        The training loop sets one seed per epoch, so the augmentation of an
        image does not depend on which loader worker reads it, how many there
        are, or what ran before: runs and resumed runs are identical with any
        number of workers. With None, torch's global generator is used.
        """
        self.augment_seed = seed

    def _augment_generator(self, index: int) -> torch.Generator | None:
        seed = getattr(self, "augment_seed", None)
        if seed is None:
            return None
        return torch.Generator().manual_seed((seed * 1_000_003 + index) % 2**63)

    def image_paths(self) -> list[Path]:
        """Paths of the image files, in data set order."""
        return [self.image_dir / self._images[i]["file_name"] for i in self.image_ids]

    @property
    def num_objects(self) -> int:
        """Usable (non-crowd, non-degenerate) object annotations."""
        return sum(len(labels) for _, labels in self._targets.values())

    def require_objects(self, purpose: str = "evaluate on") -> None:
        """Raise if no annotation is usable: there would be nothing to ``purpose``.

        Raises:
            EdgeAnchorError: naming the file and what was skipped.
        """
        if self.num_objects == 0:
            skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items())) or "no annotations"
            raise EdgeAnchorError(
                f"{self.ann_file} has no usable object annotations ({skipped}); nothing to {purpose}: "
                "give an annotation file with objects"
            )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        image_id = self.image_ids[index]
        info = self._images[image_id]
        path = self.image_dir / info["file_name"]
        image, orig_size = load_image(path, self.image_size, self.resize)
        _check_declared_size(info, orig_size, path)
        boxes_xyxy = torch.from_numpy(self._targets[image_id][0].copy())  # (N, 4)
        labels = torch.from_numpy(self._targets[image_id][1].copy())  # (N,)
        size = (image.shape[1], image.shape[2])
        if size != orig_size:
            sx, sy, px, py = to_input(orig_size, size, self.resize)
            boxes_xyxy = boxes_xyxy * torch.tensor([sx, sy, sx, sy], dtype=boxes_xyxy.dtype) + torch.tensor(
                [px, py, px, py], dtype=boxes_xyxy.dtype)
        if self.train:
            image, boxes_xyxy = _augment(image, boxes_xyxy, self._augment_generator(index))
        target = {"boxes": boxes_xyxy, "labels": labels, "image_id": image_id, "orig_size": orig_size}
        return image, target

    @classmethod
    def for_detector(cls, detector, image_dir, ann_file, *, train: bool = False) -> CocoDetection:
        """The data set as ``detector`` sees it: its classes, label start, input size and resize mode."""
        return cls(image_dir, ann_file, num_classes=detector.num_classes, first_label=detector.first_label,
                   image_size=detector.image_size, train=train, resize=detector.resize_mode)

    def box_sizes(self) -> np.ndarray:
        """(n, 2) widths and heights of every object box at the returned image size (for anchor fitting).

        Image sizes come from the annotation file's width/height, or from the image file's header.
        """
        from PIL import Image

        sizes = []
        for image_id in self.image_ids:
            xyxy = self._targets[image_id][0]
            if not len(xyxy):
                continue
            info = self._images[image_id]
            if info.get("width") and info.get("height"):
                w, h = info["width"], info["height"]
            else:
                with Image.open(self.image_dir / info["file_name"]) as im:
                    w, h = im.size
            wh = xyxy[:, 2:] - xyxy[:, :2]  # (N, 2) in file pixels
            if self.image_size is not None:
                sx, sy, _, _ = to_input((h, w), self.image_size, self.resize)
                wh = wh * np.array([sx, sy], dtype=np.float64)
            sizes.append(wh)
        return np.concatenate(sizes).astype(np.float64) if sizes else np.zeros((0, 2))

    def summary(self) -> str:
        """One line: images, objects, categories, label mapping and skip counts."""
        num_objects = self.num_objects
        num_empty = sum(1 for _, labels in self._targets.values() if len(labels) == 0)
        mode = "contiguous" if self.num_classes == len(self.category_ids) + 1 else "identity"
        skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items())) or "none"
        return (
            f"{self.ann_file}: {len(self)} images ({num_empty} without objects), {num_objects} objects, "
            f"{len(self.category_ids)} categories -> {self.num_classes} classes ({mode} labels); "
            f"skipped: {skipped}"
        )


def _check_declared_size(info: dict, orig_size: tuple[int, int], path: Path) -> None:
    height, width = info.get("height"), info.get("width")
    if height is not None and width is not None and (int(height), int(width)) != orig_size:
        raise EdgeAnchorError(
            f"image {path} is {orig_size[1]}x{orig_size[0]} (WxH) but the annotation file says "
            f"{width}x{height}; boxes would be misplaced, fix 'width'/'height' or the image"
        )


def _augment(image: torch.Tensor, boxes_xyxy: torch.Tensor,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random horizontal flip (p = 0.5) and mild colour jitter, drawn from ``generator`` (torch's if None)."""
    if torch.rand((), generator=generator) < 0.5:
        image = image.flip(-1)  # (3, H, W), W reversed
        boxes_xyxy = hflip_boxes(boxes_xyxy, image.shape[-1])
    factors = 1.0 + JITTER * (2.0 * torch.rand(3, generator=generator) - 1.0)
    image = jitter_colour(image, *(float(f) for f in factors))
    return image, boxes_xyxy


def detection_collate(batch: list[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, list[dict]]:
    """Collate ``(image, target)`` pairs for a DataLoader.

    Args:
        batch: B pairs; images float32 (3, H, W), all the same size.

    Returns:
        (images float32 (B, 3, H, W), list of B target dicts).
    """
    sizes = {tuple(image.shape) for image, _ in batch}
    if len(sizes) > 1:
        raise EdgeAnchorError(
            f"images in a batch have different sizes {sorted(sizes)}; set `image_size`=(H, W) on the data set"
        )
    images = torch.stack([image for image, _ in batch])  # B x (3, H, W) -> (B, 3, H, W)
    return images, [target for _, target in batch]
