"""Deterministic synthetic COCO-format detection data set where anchor shapes matter.

Five classes, each with its own aspect-ratio (h/w) and size distribution,
sizes given at image size 320 and scaled with the image size:

=====  ==================  =======================  =================================
class  ratio h/w           size at 320 px           look
=====  ==================  =======================  =================================
pole   3 .. 5              h 60 .. 170              striped bar, red/orange
plank  0.2 .. 0.33         w 60 .. 170              wood grain, brown
coin   0.8 .. 1.25         side 10 .. 24            filled ellipse with rim, gold
crate  0.7 .. 1.4          side 110 .. 220          bordered box with an X brace, blue
kite   1.3 .. 2.0          h 40 .. 90               diamond with spars, purple
=====  ==================  =======================  =================================

"side" is sqrt(w * h). Image ``i`` is drawn from its own RNG seeded with
``(seed, i)``, so the output does not depend on the number of workers. Each
object's box is the tight extent of its drawn pixels; later objects may
occlude earlier ones, but never more than half of any earlier object, and the
occluded object keeps its full-extent box. This module never imports torch,
so worker processes start fast.
"""

from __future__ import annotations

import colorsys
import multiprocessing
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..errors import EdgeAnchorError
from ..io import write_json

SPLITS = ("train", "val", "test")
REFERENCE_SIZE = 320  # class sizes below are in pixels at this image size
JPEG_QUALITY = 90
MAX_HIDDEN = 0.5  # reject a placement that hides more than this fraction of an earlier object
PLACEMENT_TRIES = 10  # positions tried per rendered object
CLASS_TRIES = 3  # objects rendered per slot before the slot is given up


@dataclass(frozen=True)
class ShapeClass:
    """One synthetic class: ratio = h/w range, size range (px at 320) and what the size measures."""

    category_id: int
    name: str
    ratio_range: tuple[float, float]  # h/w
    size_range: tuple[float, float]  # px at REFERENCE_SIZE
    size_of: str  # "h", "w" or "side" (= sqrt(w * h))
    hue_range: tuple[float, float]  # HSV hue in [0, 1]


CLASSES = (
    ShapeClass(1, "pole", (3.0, 5.0), (60.0, 170.0), "h", (0.97, 1.05)),
    ShapeClass(2, "plank", (0.2, 0.33), (60.0, 170.0), "w", (0.06, 0.10)),
    ShapeClass(3, "coin", (0.8, 1.25), (10.0, 24.0), "side", (0.12, 0.16)),
    ShapeClass(4, "crate", (0.7, 1.4), (110.0, 220.0), "side", (0.56, 0.64)),
    ShapeClass(5, "kite", (1.3, 2.0), (40.0, 90.0), "h", (0.78, 0.88)),
)


def sample_size(shape_class: ShapeClass, rng: np.random.Generator, image_size: int) -> tuple[int, int]:
    """Draw an object's (w, h) in pixels for an image ``image_size`` pixels square."""
    ratio = rng.uniform(*shape_class.ratio_range)  # h/w
    size = rng.uniform(*shape_class.size_range) * image_size / REFERENCE_SIZE
    if shape_class.size_of == "h":
        w, h = size / ratio, size
    elif shape_class.size_of == "w":
        w, h = size, size * ratio
    else:
        w, h = size / np.sqrt(ratio), size * np.sqrt(ratio)
    shrink = min(1.0, (image_size - 2) / max(w, h))  # keep the ratio if it would not fit
    return max(3, round(w * shrink)), max(3, round(h * shrink))


def instance_colour(shape_class: ShapeClass, rng: np.random.Generator) -> np.ndarray:
    """A colour from the class's hue family with per-instance saturation and brightness; float (3,) 0..255."""
    hue = rng.uniform(*shape_class.hue_range) % 1.0
    rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.55, 0.9), rng.uniform(0.55, 1.0))
    return np.array(rgb, dtype=np.float32) * 255.0


def _draw_pole(w: int, h: int, colour: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # Horizontal stripes alternating with near-white, shaded like a cylinder.
    half_period = max(2.0, h / rng.integers(8, 17))
    band = (np.arange(h) / half_period).astype(np.int64) % 2 == 1  # (h,)
    light = np.full(3, rng.uniform(200, 250), dtype=np.float32)
    rows = np.where(band[:, None], light, colour)  # (h, 3)
    shade = 0.65 + 0.35 * np.sin(np.pi * (np.arange(w) + 0.5) / w)  # (w,)
    rgb = rows[:, None, :] * shade[None, :, None]  # (h, 1, 3) * (1, w, 1) -> (h, w, 3)
    return rgb, np.ones((h, w), dtype=bool)


def _draw_plank(w: int, h: int, colour: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # Wood grain: wavy dark lines running along the plank's length, plus a dark outline.
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    wave = rng.uniform(1.0, 3.0) * np.sin(2 * np.pi * x / rng.uniform(30, 80) + rng.uniform(0, 6.3))
    grain = np.sin(2 * np.pi * (y + wave) / rng.uniform(3.0, 6.0))  # (h, w)
    rgb = colour[None, None, :] * (0.8 + 0.2 * grain)[:, :, None]  # (h, w, 3)
    rgb[[0, -1], :] *= 0.6
    rgb[:, [0, -1]] *= 0.6
    return rgb, np.ones((h, w), dtype=bool)


def _draw_coin(w: int, h: int, colour: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # Filled ellipse with a darker rim and a small highlight.
    rim = max(1, round(0.15 * min(w, h)))
    mask_img = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask_img).ellipse([0, 0, w - 1, h - 1], fill=255)
    inner_img = Image.new("L", (w, h), 0)
    ImageDraw.Draw(inner_img).ellipse([rim, rim, w - 1 - rim, h - 1 - rim], fill=255)
    mask, inner = np.asarray(mask_img) > 0, np.asarray(inner_img) > 0
    rgb = np.empty((h, w, 3), dtype=np.float32)
    rgb[:] = colour * rng.uniform(0.45, 0.65)
    rgb[inner] = colour
    y, x = np.mgrid[0:h, 0:w]
    glint = ((x - 0.35 * w) ** 2 / (0.2 * w) ** 2 + (y - 0.35 * h) ** 2 / (0.2 * h) ** 2) < 1
    rgb[inner & glint] = 0.5 * colour + 127.0
    return rgb, mask


def _draw_crate(w: int, h: int, colour: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # A square-ish panel with a dark border and a diagonal X brace.
    border = max(2, round(rng.uniform(0.06, 0.11) * min(w, h)))
    dark = tuple(int(v) for v in colour * rng.uniform(0.35, 0.55))
    img = Image.new("RGB", (w, h), tuple(int(v) for v in colour))
    draw = ImageDraw.Draw(img)
    draw.line([(0, 0), (w - 1, h - 1)], fill=dark, width=border)
    draw.line([(0, h - 1), (w - 1, 0)], fill=dark, width=border)
    for i in range(border):
        draw.rectangle([i, i, w - 1 - i, h - 1 - i], outline=dark)
    return np.asarray(img, dtype=np.float32), np.ones((h, w), dtype=bool)


def _draw_kite(w: int, h: int, colour: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # A diamond with its crossbar above the middle, two-tone halves and light spars.
    cx, cy = (w - 1) / 2, (h - 1) * rng.uniform(0.3, 0.45)
    top, right, bottom, left = (cx, 0), (w - 1, cy), (cx, h - 1), (0, cy)
    light = tuple(int(v) for v in 0.5 * colour + 120)
    img = Image.new("RGB", (w, h), (0, 0, 0))
    mask_img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)
    draw.polygon([top, right, bottom, left], fill=tuple(int(v) for v in colour))
    draw.polygon([top, right, (cx, cy)], fill=tuple(int(v) for v in colour * 0.75))
    draw.polygon([bottom, left, (cx, cy)], fill=tuple(int(v) for v in colour * 0.75))
    draw.line([top, bottom], fill=light, width=1)
    draw.line([left, right], fill=light, width=1)
    ImageDraw.Draw(mask_img).polygon([top, right, bottom, left], fill=255)
    return np.asarray(img, dtype=np.float32), np.asarray(mask_img) > 0


_DRAW = {"pole": _draw_pole, "plank": _draw_plank, "coin": _draw_coin, "crate": _draw_crate, "kite": _draw_kite}


def render_object(shape_class: ShapeClass, rng: np.random.Generator,
                  image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw one object, cropped to the tight extent of its pixels.

    Returns:
        (rgb float32 (h, w, 3) 0..255, mask bool (h, w)); every edge row and column of mask has a True pixel.
    """
    w, h = sample_size(shape_class, rng, image_size)
    colour = instance_colour(shape_class, rng)
    rgb, mask = _DRAW[shape_class.name](w, h, colour, rng)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    crop = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    return rgb[crop], mask[crop]


def draw_background(rng: np.random.Generator, image_size: int) -> Image.Image:
    """A cluttered background: gradient, low-frequency noise, faint blobs and thin lines (no class shapes)."""
    s = image_size
    c0, c1 = rng.uniform(30, 220, size=(2, 3)).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    coords = np.linspace(0.0, 1.0, s, dtype=np.float32)
    along = np.cos(angle) * coords[None, :] + np.sin(angle) * coords[:, None]  # (s, s)
    t = (along - along.min()) / max(float(along.max() - along.min()), 1e-6)
    canvas = c0 + (c1 - c0) * t[:, :, None]  # (s, s, 1) -> (s, s, 3)
    noise = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    coarse = Image.fromarray(noise).resize((s, s), Image.Resampling.BICUBIC)
    canvas += (np.asarray(coarse, dtype=np.float32) - 128.0) * rng.uniform(0.1, 0.3)
    img = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    _draw_blobs(img, rng, s)
    _draw_lines(img, rng, s)
    return img


def _draw_blobs(img: Image.Image, rng: np.random.Generator, s: int) -> None:
    # Faint, soft-edged irregular polygons: clutter that is not any class.
    layer = img.copy()
    alpha = Image.new("L", img.size, 0)
    draw, draw_alpha = ImageDraw.Draw(layer), ImageDraw.Draw(alpha)
    for _ in range(rng.integers(2, 7)):
        centre = rng.uniform(0, s, size=2)
        n = rng.integers(5, 10)
        angles = np.sort(rng.uniform(0, 2 * np.pi, size=n))
        radii = rng.uniform(0.3, 1.0, size=n) * rng.uniform(0.04, 0.2) * s
        points = [(float(centre[0] + r * np.cos(a)), float(centre[1] + r * np.sin(a))) for a, r in zip(angles, radii)]
        draw.polygon(points, fill=tuple(int(v) for v in rng.integers(0, 256, size=3)))
        draw_alpha.polygon(points, fill=int(rng.integers(40, 100)))
    img.paste(Image.composite(layer, img, alpha.filter(ImageFilter.GaussianBlur(3))))


def _draw_lines(img: Image.Image, rng: np.random.Generator, s: int) -> None:
    # Thin straight and bent lines in random colours.
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(3, 13)):
        points = [tuple(float(v) for v in rng.uniform(-0.1 * s, 1.1 * s, size=2)) for _ in range(rng.integers(2, 4))]
        draw.line(points, fill=tuple(int(v) for v in rng.integers(0, 256, size=3)), width=int(rng.integers(1, 3)))


def _try_place(owner: np.ndarray, mask: np.ndarray, full: list[int], visible: list[int], rng) -> tuple | None:
    """A position (x, y) where ``mask`` hides at most MAX_HIDDEN of every earlier object, or None."""
    s = owner.shape[0]
    h, w = mask.shape
    for _ in range(PLACEMENT_TRIES):
        x, y = int(rng.integers(0, s - w + 1)), int(rng.integers(0, s - h + 1))
        covered = np.bincount(owner[y : y + h, x : x + w][mask], minlength=len(full) + 1)  # index 0 = background
        if all(visible[j] - covered[j + 1] >= (1 - MAX_HIDDEN) * full[j] for j in range(len(full))):
            return x, y
    return None


def place_objects(canvas: np.ndarray, rng: np.random.Generator, image_size: int) -> list[dict]:
    """Draw 2..8 objects onto ``canvas`` (float32 (S, S, 3), in place), later ones on top.

    Returns:
        per object: ``category_id``, ``bbox`` [x, y, w, h] (full extent, ints) and ``visible`` fraction.
    """
    owner = np.zeros((image_size, image_size), dtype=np.int64)  # 0 = background, j + 1 = object j on top
    objects: list[dict] = []
    full: list[int] = []  # per placed object: its pixel count, and how many of those are still visible
    visible: list[int] = []
    num_slots = int(rng.integers(2, 9))
    slot = 0
    while len(objects) < num_slots and slot < num_slots + 4:  # extra slots make up for ones given up
        slot += 1
        for _ in range(CLASS_TRIES):
            # A coin nearly always fits: use it when an extra slot must reach the minimum of 2.
            shape_class = CLASSES[2] if slot > num_slots and len(objects) < 2 else CLASSES[rng.integers(len(CLASSES))]
            rgb, mask = render_object(shape_class, rng, image_size)
            pos = _try_place(owner, mask, full, visible, rng)
            if pos is not None:
                break
        if pos is None:
            continue
        x, y = pos
        h, w = mask.shape
        covered = np.bincount(owner[y : y + h, x : x + w][mask], minlength=len(full) + 1)
        visible = [v - int(c) for v, c in zip(visible, covered[1:])]
        owner[y : y + h, x : x + w][mask] = len(full) + 1
        canvas[y : y + h, x : x + w][mask] = rgb[mask]
        full.append(int(mask.sum()))
        visible.append(full[-1])
        objects.append({"category_id": shape_class.category_id, "bbox": [x, y, w, h]})
    for obj, f, v in zip(objects, full, visible):
        obj["visible"] = v / f
    return objects


def make_image(seed: int, index: int, image_size: int) -> tuple[np.ndarray, list[dict]]:
    """Draw image ``index`` of the data set with ``seed``; depends on nothing else.

    Returns:
        (uint8 (S, S, 3) RGB, objects as from :func:`place_objects`).
    """
    rng = np.random.default_rng([seed, index])
    canvas = np.asarray(draw_background(rng, image_size), dtype=np.float32).copy()  # (S, S, 3)
    objects = place_objects(canvas, rng, image_size)
    contrast, brightness = rng.uniform(0.75, 1.25), rng.uniform(-25, 25)
    canvas = (canvas - canvas.mean()) * contrast + canvas.mean() + brightness
    canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * rng.uniform(2.0, 8.0)
    return np.clip(canvas, 0, 255).astype(np.uint8), objects


def _write_image(task: tuple[int, int, int, str]) -> tuple[int, list[dict]]:
    seed, index, image_size, path = task
    pixels, objects = make_image(seed, index, image_size)
    Image.fromarray(pixels).save(path, quality=JPEG_QUALITY)
    return index, objects


def split_counts(num_images: int, splits: tuple[float, float, float]) -> dict[str, int]:
    """Images per split: val and test are rounded, train takes the rest."""
    if len(splits) != 3 or min(splits) < 0 or abs(sum(splits) - 1.0) > 1e-6:
        raise EdgeAnchorError(
            f"splits {tuple(splits)} must be 3 non-negative fractions summing to 1, e.g. (0.8, 0.1, 0.1)"
        )
    num_val, num_test = round(num_images * splits[1]), round(num_images * splits[2])
    return {"train": num_images - num_val - num_test, "val": num_val, "test": num_test}


def _coco_dict(split: str, records: list[tuple[int, str, list[dict]]], image_size: int, seed: int, ann_id: int):
    """The COCO JSON object of one split; annotation ids continue from ``ann_id``."""
    images, annotations = [], []
    for image_id, file_name, objects in records:
        images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size})
        for obj in objects:
            ann_id += 1
            x, y, w, h = obj["bbox"]
            annotations.append({
                "id": ann_id,
                "image_id": image_id,
                "category_id": obj["category_id"],
                "bbox": [x, y, w, h],
                "area": w * h,
                "iscrowd": 0,
            })
    info = {
        "description": "edgeanchor synthetic shapes (pole, plank, coin, crate, kite)",
        "version": "1",
        "generator": "edgeanchor.data.synth",
        "seed": seed,
        "image_size": image_size,
        "split": split,
    }
    categories = [{"id": c.category_id, "name": c.name, "supercategory": "shape"} for c in CLASSES]
    return {"info": info, "licenses": [], "images": images, "annotations": annotations, "categories": categories}


def _run_tasks(tasks: list, workers: int, progress: Callable[[int], None] | None) -> dict[int, list[dict]]:
    results = {}
    if workers <= 1 or len(tasks) < 2 * workers:
        for task in tasks:
            index, objects = _write_image(task)
            results[index] = objects
            if progress:
                progress(1)
        return results
    # spawn: the parent may have torch (and its threads) loaded; forking that is unsafe.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        for index, objects in pool.imap_unordered(_write_image, tasks, chunksize=8):
            results[index] = objects
            if progress:
                progress(1)
    return results


def generate(
    out_dir: str | os.PathLike,
    *,
    num_images: int,
    seed: int,
    image_size: int = 320,
    splits: tuple[float, float, float] = (0.8, 0.1, 0.1),
    workers: int = 2,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Write a synthetic COCO-format data set into ``out_dir``.

    Writes ``images/{train,val,test}/NNNNNN.jpg`` (NNNNNN = image id, unique
    across splits) and ``annotations/{train,val,test}.json`` with ``file_name``
    relative to ``out_dir/images``. Files are written in place; the CLI makes
    the whole folder appear atomically.

    Args:
        out_dir: output folder (created if needed).
        num_images: total images over all splits, >= 1.
        seed: non-negative seed; image i is drawn from an RNG seeded with (seed, i).
        image_size: side of the square images in pixels, >= 64.
        splits: fractions for train, val, test.
        workers: processes drawing images; does not change the output.
        progress: called with 1 after each image is written.

    Returns:
        dict with ``annotations`` (split -> path), ``image_dir``, ``num_images`` and
        ``num_objects`` (split -> count), ``seed`` and ``image_size``.
    """
    if num_images < 1 or seed < 0 or image_size < 64:
        raise EdgeAnchorError(
            f"`num_images`={num_images}, `seed`={seed}, `image_size`={image_size}: need `num_images` >= 1, "
            "`seed` >= 0 and `image_size` >= 64"
        )
    counts = split_counts(num_images, splits)
    out_dir = Path(out_dir)
    split_of = [split for split in SPLITS for _ in range(counts[split])]  # image index -> split
    for split in SPLITS:
        (out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
    names = [f"{split_of[i]}/{i + 1:06d}.jpg" for i in range(num_images)]
    tasks = [(seed, i, image_size, str(out_dir / "images" / names[i])) for i in range(num_images)]
    objects = _run_tasks(tasks, max(1, workers), progress)
    result: dict[str, Any] = {
        "annotations": {},
        "image_dir": str(out_dir / "images"),
        "num_images": counts,
        "num_objects": {},
        "seed": seed,
        "image_size": image_size,
    }
    ann_id = 0
    for split in SPLITS:
        records = [(i + 1, names[i], objects[i]) for i in range(num_images) if split_of[i] == split]
        coco = _coco_dict(split, records, image_size, seed, ann_id)
        ann_id += len(coco["annotations"])
        path = out_dir / "annotations" / f"{split}.json"
        write_json(path, coco)
        result["annotations"][split] = str(path)
        result["num_objects"][split] = len(coco["annotations"])
    return result
