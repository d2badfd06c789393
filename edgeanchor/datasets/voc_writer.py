"""Write COCO-format splits as a Pascal VOC folder (``data synth --format voc``).

The layout is a VOCdevkit year folder: ``Annotations/<id>.xml``,
``JPEGImages/<id>.jpg``, ``ImageSets/Main/<split>.txt`` (ids in ascending COCO
image id order) and ``classes.txt`` (the categories in id order, so reading the
folder back with :mod:`edgeanchor.datasets.voc` gives the same category ids).
Boxes are written in the devkit's 1-based inclusive convention
(``xmin = x + 1``, ``xmax = x + w``), which :mod:`.voc` reads back exactly for
integer boxes. Crowd annotations are written as ``difficult``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from ..errors import EdgeAnchorError
from .voc import CLASSES_FILE

SYNTH_DATABASE = "edgeanchor.data.synth"


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def voc_xml(image: dict, objects: list[dict], names: dict[int, str], database: str) -> str:
    """The VOC XML of one COCO image and its annotations."""
    lines = ["<annotation>", "\t<folder>JPEGImages</folder>", f"\t<filename>{escape(Path(image['file_name']).name)}"
             "</filename>", f"\t<source><database>{escape(database)}</database></source>",
             f"\t<size><width>{image['width']}</width><height>{image['height']}</height><depth>3</depth></size>",
             "\t<segmented>0</segmented>"]
    for obj in objects:
        x, y, w, h = obj["bbox"]
        lines += ["\t<object>", f"\t\t<name>{escape(names[obj['category_id']])}</name>", "\t\t<pose>Unspecified</pose>",
                  "\t\t<truncated>0</truncated>", f"\t\t<difficult>{int(bool(obj.get('iscrowd', 0)))}</difficult>",
                  f"\t\t<bndbox><xmin>{_number(x + 1)}</xmin><ymin>{_number(y + 1)}</ymin><xmax>{_number(x + w)}</xmax>"
                  f"<ymax>{_number(y + h)}</ymax></bndbox>", "\t</object>"]
    return "\n".join([*lines, "</annotation>"]) + "\n"


def write_voc(splits: dict[str, dict], image_dir, out, *, database: str = SYNTH_DATABASE, move: bool = False) -> dict:
    """Write COCO splits (split -> COCO dict, file names relative to ``image_dir``) as a VOC folder at ``out``.

    Args:
        splits: split name -> COCO dict; every split must have the same categories.
        image_dir: the folder the COCO file names are relative to.
        out: the VOC year folder to write into (created).
        database: written as each XML's ``<source><database>``.
        move: move the images instead of copying them.

    Returns:
        ``{"image_dir", "num_images", "num_objects"}`` (counts per split).
    """
    out, image_dir = Path(out), Path(image_dir)
    cats = {tuple((c["id"], c["name"]) for c in sorted(coco["categories"], key=lambda c: c["id"]))
            for coco in splits.values()}
    if len(cats) != 1:
        raise EdgeAnchorError("the splits have different categories; a VOC folder has one class list")
    (cat_list,) = cats
    names = dict(cat_list)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    (out / CLASSES_FILE).write_text("".join(f"{name}\n" for _, name in cat_list), encoding="utf-8")
    result: dict[str, Any] = {"image_dir": str(out / "JPEGImages"), "num_images": {}, "num_objects": {}}
    for split, coco in splits.items():
        by_image: dict[int, list] = {}
        for ann in coco["annotations"]:
            by_image.setdefault(ann["image_id"], []).append(ann)
        ids = []
        for image in sorted(coco["images"], key=lambda im: im["id"]):
            stem = Path(image["file_name"]).stem
            (out / "Annotations" / f"{stem}.xml").write_text(voc_xml(image, by_image.get(image["id"], []), names,
                                                                     database), encoding="utf-8")
            target = out / "JPEGImages" / f"{stem}{Path(image['file_name']).suffix}"
            (shutil.move if move else shutil.copyfile)(str(image_dir / image["file_name"]), str(target))
            ids.append(stem)
        (out / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
        result["num_images"][split] = len(ids)
        result["num_objects"][split] = len(coco["annotations"])
    return result


def is_synth_voc(out) -> bool:
    """True if ``out`` is a VOC folder written by ``data synth --format voc``."""
    first = next(iter(sorted((Path(out) / "Annotations").glob("*.xml"))), None)
    try:
        return first is not None and f"<database>{SYNTH_DATABASE}</database>" in first.read_text(encoding="utf-8")
    except OSError:
        return False
