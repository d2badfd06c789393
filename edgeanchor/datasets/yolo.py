"""YOLO-format data sets (YOLOv5's ``data.yaml``, ``images/``, ``labels/*.txt``), read as COCO.

``data.yaml``::

    path: ../datasets/shapes      # optional root; relative paths are relative to the yaml's folder
    train: images/train           # a folder of images, a .txt list of images, or a list of those
    val: images/val
    test: images/test             # optional
    nc: 5                         # optional when names are given
    names: [pole, plank, coin, crate, kite]   # or {0: pole, 1: plank, ...}

Labels: the image ``.../images/a/x.jpg`` has the label file ``.../labels/a/x.txt``
(the last ``images`` folder in the path becomes ``labels``, as YOLOv5 does). One
object per line, ``class cx cy w h`` normalised to [0, 1]; a line with more
numbers is a polygon ``class x1 y1 x2 y2 ...`` whose bounding box is used. A
missing or empty label file is an image without objects. A class id outside
0..nc-1, a box with zero or negative width or height, a number that is not a
plain finite decimal (``inf``, ``nan``, ``1_0``) or a malformed line is an
error naming the file and the line, as is a label path that is a folder or a
file that is not UTF-8; values outside [0, 1] are clipped to the image and
counted in one warning (a box left with no area is dropped).

``data.yaml`` is read with YAML aliases (``*name``) and nesting deeper than
:data:`MAX_YAML_DEPTH` refused, and at most :data:`MAX_CLASSES` (100,000)
classes.

:func:`yolo_split` converts one split to a COCO annotation file (categories
1..nc, so SSD models take ``num_classes = nc + 1``), written under the cache
root and rewritten only when its contents change, so every command that
takes ``--data/--ann`` reads YOLO data sets unchanged, candidate caches
included.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..errors import EdgeAnchorError
from ..io import atomic_path, cache_root, warn
from ..limits import MAX_CLASSES  # the most classes a data set may declare (nc, names, classes.txt)
from .text import parse_decimal, read_text

IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DataYaml:
    """A parsed data.yaml: the split sources (absolute paths) and the class names."""

    yaml_path: Path
    root: Path
    splits: dict  # split -> tuple of Paths (folders or .txt lists)
    names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.names)


def is_yolo_yaml(path) -> bool:
    """True if ``path`` names a YOLO data.yaml (by its suffix)."""
    return str(path).lower().endswith((".yaml", ".yml"))


# A data.yaml nests two levels (a mapping of lists or mappings); 50 leaves room and stays far below Python's
# recursion limit, which PyYAML's composer (recursive) would otherwise hit with a traceback.
MAX_YAML_DEPTH = 50


class _Refused(Exception):
    def __init__(self, what: str, line: int):
        super().__init__(what)
        self.what, self.line = what, line


def _yaml_loader():
    import yaml

    class StrictLoader(yaml.SafeLoader):
        """``yaml.SafeLoader`` that refuses aliases (``*name``) and deep nesting: a data.yaml is a handful of keys
        that never needs either, while a few hundred bytes of nested aliases expand to more objects than memory
        holds."""

        depth = 0

        def compose_node(self, parent, index):
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent):
                raise _Refused(f"the YAML alias *{event.anchor} is not allowed in a data.yaml (aliases can expand "
                               "without bound); write the value out", event.start_mark.line + 1)
            if self.depth >= MAX_YAML_DEPTH:
                raise _Refused(f"the YAML nests deeper than {MAX_YAML_DEPTH} levels; a data.yaml needs two",
                               event.start_mark.line + 1)
            self.depth += 1
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    return StrictLoader


def read_data_yaml(path) -> DataYaml:
    """Parse a YOLOv5 data.yaml.

    Raises:
        EdgeAnchorError: missing or unreadable file, not UTF-8, a YAML alias or deep nesting, no class names, more than
            :data:`MAX_CLASSES` classes, or malformed entries.
    """
    import yaml

    path = Path(path)
    if not path.exists():
        raise EdgeAnchorError(f"data file {path} does not exist; check the path")
    text = read_text(path, "data file")
    try:
        doc = yaml.load(text, Loader=_yaml_loader())  # a SafeLoader subclass
    except _Refused as exc:
        raise EdgeAnchorError(f"{path}:{exc.line}: {exc.what}") from None
    except yaml.YAMLError as exc:
        raise EdgeAnchorError(f"cannot read data file {path} ({str(exc).splitlines()[0][:120]}); "
                              "give a YOLO data.yaml") from None
    if not isinstance(doc, dict):
        raise EdgeAnchorError(f"{path} is not a YOLO data.yaml (expected keys train, val, names)")
    base = doc.get("path")
    if base is not None and not isinstance(base, str):
        raise EdgeAnchorError(f"{path}: 'path' is {base!r}; it must be a folder path (or left out)")
    root = Path(base or ".")
    root = root if root.is_absolute() else (path.parent / root)
    splits = {}
    for split in SPLITS:
        value = doc.get(split)
        if value in (None, ""):
            continue
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) for v in items):
            raise EdgeAnchorError(f"{path}: '{split}' must be a path or a list of paths")
        splits[split] = tuple(Path(v) if Path(v).is_absolute() else root / v for v in items)
    return DataYaml(path, root, splits, _names(doc, path))


def _names(doc: dict, path: Path) -> tuple[str, ...]:
    names, nc = doc.get("names"), doc.get("nc")
    if nc is not None and (not isinstance(nc, int) or isinstance(nc, bool) or not 1 <= nc <= MAX_CLASSES):
        raise EdgeAnchorError(f"{path}: nc is {nc!r:.40}; it must be a whole number of classes from 1 to "
                              f"{MAX_CLASSES:,}")
    if isinstance(names, (list, dict)) and len(names) > MAX_CLASSES:
        raise EdgeAnchorError(f"{path}: 'names' lists {len(names)} classes, more than the {MAX_CLASSES:,} edgeanchor "
                              "reads")
    if isinstance(names, dict):
        if not all(isinstance(k, int) for k in names) or sorted(names) != list(range(len(names))):
            raise EdgeAnchorError(f"{path}: 'names' must map 0..nc-1 to names")
        names = [names[k] for k in sorted(names)]
    if names is None and nc is not None:
        names = [str(i) for i in range(nc)]
    if not isinstance(names, list) or not names:
        raise EdgeAnchorError(f"{path} has no class names; add 'names: [...]' (and optionally 'nc')")
    if not all(isinstance(n, (str, int, float)) for n in names):
        bad = next(n for n in names if not isinstance(n, (str, int, float)))
        raise EdgeAnchorError(f"{path}: the class name {str(bad)[:40]} is not a name; 'names' lists one name a class")
    if nc is not None and nc != len(names):
        raise EdgeAnchorError(f"{path}: nc is {nc} but 'names' lists {len(names)} classes; make them agree")
    return tuple(str(n) for n in names)


def list_images(spec: DataYaml, split: str) -> list[Path]:
    """The split's image files, sorted (folders are searched recursively; .txt lists are read)."""
    if split not in spec.splits:
        have = ", ".join(spec.splits) or "none"
        raise EdgeAnchorError(f"{spec.yaml_path} has no '{split}' split (it has: {have}); choose another split")
    files: list[Path] = []
    for source in spec.splits[split]:
        if source.is_dir():
            files += [p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES]
        elif source.suffix == ".txt" and source.is_file():
            for line in read_text(source, "image list").splitlines():
                if line.strip():
                    item = Path(line.strip())
                    files.append(item if item.is_absolute() else (spec.root / item))
        else:
            raise EdgeAnchorError(f"{spec.yaml_path}: the '{split}' source {source} is neither a folder nor a .txt "
                                  "list of images; check the path")
    files = sorted({p.resolve() for p in files})
    if not files:
        raise EdgeAnchorError(f"{spec.yaml_path}: the '{split}' split has no images; check its path")
    missing = [p for p in files if not p.is_file()]
    if missing:
        raise EdgeAnchorError(f"{len(missing)} images listed for '{split}' are missing (first: {missing[0]})")
    return files


def label_path(image: Path) -> Path:
    """YOLOv5's rule: the last ``images`` folder of the path becomes ``labels``; the suffix becomes .txt."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def parse_label_line(line: str, num_classes: int) -> tuple[int, tuple[float, float, float, float], int] | None:
    """One label line as (class, normalised xyxy box before clipping, how many values lie outside [0, 1]).

    ``class cx cy w h``, or a polygon ``class x1 y1 x2 y2 ...`` (three points or more) whose bounding box is
    used. A blank line is None.

    Raises:
        ValueError: the line is malformed (the message says how, without the file).
    """
    fields = line.split()
    if not fields:
        return None
    values = []
    for i, field in enumerate(fields):
        try:
            values.append(parse_decimal(field))
        except ValueError:
            raise ValueError(f"{'the class id' if i == 0 else f'value {i + 1}'} {field[:40]!r} is not a finite "
                             "decimal number; a label line is 'class cx cy w h' (normalised)") from None
    if len(values) < 5 or (len(values) > 5 and len(values) % 2 == 0):
        raise ValueError(f"{len(values)} numbers; a label line is 'class cx cy w h' or a polygon "
                         "'class x1 y1 x2 y2 ...'")
    cls = values[0]
    if cls != int(cls):
        raise ValueError(f"class id {fields[0][:40]} is not a whole number (classes are 0..{num_classes - 1})")
    if not 0 <= cls < num_classes:
        raise ValueError(f"class id {fields[0][:40]} is outside 0..{num_classes - 1} (nc {num_classes})")
    coords = values[1:]
    outside = sum(1 for v in coords if not 0.0 <= v <= 1.0)
    if len(coords) == 4:
        cx, cy, w, h = coords
        if w <= 0 or h <= 0:
            raise ValueError(f"the box has width {fields[3]} and height {fields[4]}; both must be positive")
        return int(cls), (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), outside
    xs, ys = coords[0::2], coords[1::2]  # polygon: its bounding box
    if max(xs) <= min(xs) or max(ys) <= min(ys):
        raise ValueError("the polygon's points span no width or no height; a polygon must enclose an area")
    return int(cls), (min(xs), min(ys), max(xs), max(ys)), outside


def parse_label_file(path: Path, num_classes: int, width: int, height: int) -> tuple[list[tuple], int]:
    """Objects of one label file as (class, [x, y, w, h] in pixels), and how many values were clipped.

    A missing label file is an image without objects. Boxes are clipped to the image; one left with no area
    (wholly outside it) is dropped.

    Raises:
        EdgeAnchorError: a malformed line, a class id out of range or a box without area, naming the file and
            line; a label path that is a folder, or not UTF-8.
    """
    if not path.exists() and not path.is_symlink():
        return [], 0
    objects, clipped = [], 0
    for n, line in enumerate(read_text(path, "label file").splitlines(), start=1):
        try:
            parsed = parse_label_line(line, num_classes)
        except ValueError as exc:
            raise EdgeAnchorError(f"{path}:{n}: {exc}") from None
        if parsed is None:
            continue
        cls, (x1, y1, x2, y2), outside = parsed
        clipped += outside
        x1, x2 = (min(max(v, 0.0), 1.0) * width for v in (x1, x2))
        y1, y2 = (min(max(v, 0.0), 1.0) * height for v in (y1, y2))
        if x2 > x1 and y2 > y1:  # a box wholly outside the image has no area left: dropped, as VOC's are
            objects.append((cls, [x1, y1, x2 - x1, y2 - y1]))
    return objects, clipped


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header."""
    try:
        with Image.open(path) as img:
            return img.size
    # DecompressionBombError: a header past Pillow's MAX_IMAGE_PIXELS (a 100-byte PNG may declare 10**10 pixels)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise EdgeAnchorError(f"cannot read image {path} ({exc}); replace or remove the file") from None


def list_all_images(spec: DataYaml) -> dict[str, list[Path]]:
    """Every split's images, listed once for all the conversions of one run."""
    return {split: list_images(spec, split) for split in spec.splits}


def image_root(listing: dict[str, list[Path]]) -> Path:
    """The folder every split's file names are relative to (one image folder serves all splits)."""
    return Path(os.path.commonpath([str(p.parent) for files in listing.values() for p in files]))


def to_coco(spec: DataYaml, split: str, listing: dict[str, list[Path]] | None = None) -> tuple[dict, Path, int]:
    """(COCO dict of the split, the image root its file names are relative to, values clipped).

    ``listing`` is :func:`list_all_images` of ``spec``, listed now if not given.
    """
    listing = list_all_images(spec) if listing is None else listing
    if split not in listing:
        list_images(spec, split)  # raises: the data set has no such split
    files, root = listing[split], image_root(listing)
    images: list[dict] = []
    annotations: list[dict] = []
    clipped = 0
    for image_id, path in enumerate(files, start=1):
        width, height = image_size(path)
        images.append({"id": image_id, "file_name": str(path.relative_to(root)), "width": width, "height": height})
        objects, n_clipped = parse_label_file(label_path(path), spec.num_classes, width, height)
        clipped += n_clipped
        for cls, bbox in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cls + 1,
                                "bbox": [round(v, 4) for v in bbox], "area": round(bbox[2] * bbox[3], 4),
                                "iscrowd": 0})
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(spec.names)]
    info = {"description": f"{spec.yaml_path} split {split}, converted from YOLO labels by edgeanchor",
            "generator": "edgeanchor.data.yolo", "source": f"the '{split}' split of {spec.yaml_path}"}
    return {"info": info, "images": images, "annotations": annotations, "categories": categories}, root, clipped


def yolo_splits(data_yaml, splits) -> tuple[str, list[str]]:
    """(image root, a COCO annotation file per split) of a YOLO data set; its folders are listed once.

    The annotation files live under the cache root, one folder per data.yaml,
    and are rewritten only when the conversion's result changes.
    """
    spec = read_data_yaml(data_yaml)
    listing = list_all_images(spec)
    folder = cache_root() / "yolo" / hashlib.sha256(str(spec.yaml_path.resolve()).encode()).hexdigest()[:16]
    converted: dict[str, str] = {}
    root = None
    for split in dict.fromkeys(splits):  # each split converted once, however often it is asked for
        coco, root, clipped = to_coco(spec, split, listing)
        if clipped:
            warn(f"{clipped} label values outside [0, 1] in the '{split}' split of {data_yaml} were clipped to "
                 "the image (boxes left with no area dropped)")
        text = json.dumps(coco, indent=1) + "\n"
        ann = folder / f"{split}.json"
        if not ann.is_file() or ann.read_text(encoding="utf-8") != text:
            with atomic_path(ann) as tmp:
                tmp.write_text(text, encoding="utf-8")
        converted[split] = str(ann)
    return str(root), [converted[split] for split in splits]


def yolo_split(data_yaml, split: str) -> tuple[str, str]:
    """(image root, COCO annotation file) of one split of a YOLO data set."""
    root, (ann,) = yolo_splits(data_yaml, [split])
    return root, ann
