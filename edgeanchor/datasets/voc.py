"""Pascal VOC data (a VOCdevkit year folder, or images with LabelImg-style XML beside them), read as COCO.

Two layouts are read:

- a VOCdevkit year folder (``VOCdevkit/VOC2007``): ``Annotations/<id>.xml``,
  ``JPEGImages/<id>.jpg`` and ``ImageSets/Main/<split>.txt`` (one id a line;
  the splits are train, val, trainval and test);
- a plain folder of images with an XML file of the same stem beside each
  (what LabelImg and most labelling tools write), searched recursively; the
  folder is one split, and an image without XML is an image without objects.

The files are untrusted. XML is parsed with defusedxml: a DTD or entity
declaration is refused at once (entities can expand without bound), text is
gathered in linear time, and a file may hold at most :data:`MAX_XML_BYTES`.
Coordinates must be plain finite decimals (not ``inf``, ``1e309`` or ``1_0``).
A split id must be a plain file name, and every file an id or a
``<filename>`` names must lie inside the data folder once symlinks are
resolved (a devkit's ``Annotations/`` and ``JPEGImages/`` may themselves be
symlinks). Text files must be UTF-8 (:mod:`.text`).

Class list (the category ids 1..K, in this order): a ``classes.txt`` in the
folder (one name a line) if there is one; else, for a VOCdevkit, VOC's 20
classes (:data:`VOC_CLASSES`); else, for a plain folder, the names found in its
XML files, sorted. An object whose class is not in the list is an error naming
the file and line.

Coordinates follow the VOC devkit: ``xmin..xmax`` are 1-based, inclusive pixel
indices, so the COCO box is ``[xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]``
(as detectron2 reads VOC). IoU of such boxes in continuous coordinates equals
the devkit's ``+1`` IoU on the integer indices. Boxes are clipped to the image
(its header's size) and counted in one warning; a box left with no area is
dropped.

``difficult`` objects: the COCO file marks them ``"difficult": 1`` and
``"iscrowd": 1``. The VOC metrics (:mod:`edgeanchor.evaluation.voc_map`) ignore
them as the devkit does (a detection whose best match is difficult is neither
TP nor FP; they do not count as positives). The COCO metric, which has no
"difficult", treats them as crowd regions: never positives, and a detection
covering one (intersection over the detection's area >= the threshold) is
ignored. Training leaves them out of the targets (as crowd boxes).

:func:`voc_splits` writes each split's COCO file under the cache root, named
by a hash of its contents (a file is never rewritten under a reader), so every
command that takes ``--data/--ann`` reads VOC data unchanged, candidate caches
included.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from xml.parsers import expat

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser, ParseError

from ..errors import EdgeAnchorError
from ..io import atomic_path, cache_root, warn
from ..limits import MAX_CLASSES
from .text import parse_decimal, read_text
from .yolo import IMAGE_SUFFIXES, image_size

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
VOC_SPLITS = ("train", "val", "trainval", "test")
CLASSES_FILE = "classes.txt"


@dataclass(frozen=True)
class VocObject:
    """One ``<object>``: class name, devkit box (1-based inclusive), difficult flag, and its line in the file."""

    name: str
    box: tuple[float, float, float, float]  # xmin, ymin, xmax, ymax
    difficult: bool
    line: int


@dataclass(frozen=True)
class VocRecord:
    """One annotation file: the image file name it names (may be empty) and its objects."""

    path: Path
    filename: str
    objects: tuple[VocObject, ...]
    filename_line: int = 1


# ---- XML ----------------------------------------------------------------------------
# The most an annotation file may hold. A VOC annotation is 0.5-5 KB (about 250 bytes an object in LabelImg's
# layout), so 1 MiB holds some 4,000 objects: far more than any image of VOC, COCO or dense-scene sets carries.
# A file past it is refused after reading 1 MiB + 1 byte, before parsing.
MAX_XML_BYTES = 1 << 20


class _Node:
    __slots__ = ("tag", "line", "children", "text", "parts")

    def __init__(self, tag: str, line: int):
        self.tag, self.line, self.text = tag, line, ""
        self.children: list[_Node] = []
        self.parts: list[str] = []  # the text as expat hands it over, joined once at the end tag

    def find(self, tag: str):
        return next((c for c in self.children if c.tag == tag), None)

    def value(self, tag: str, default: str = "") -> str:
        child = self.find(tag)
        return child.text.strip() if child is not None else default


class _Target:
    """An ElementTree parser target that builds :class:`_Node` trees knowing their lines (the stdlib tree keeps
    none). Text is gathered in a list per node and joined once, so a text that expat splits into many chunks
    costs linear time."""

    def __init__(self) -> None:
        self.parser: DefusedXMLParser | None = None
        self.stack = [_Node("", 0)]

    def start(self, tag: str, attrs: dict) -> None:
        assert self.parser is not None  # set before parsing starts
        node = _Node(tag, self.parser.parser.CurrentLineNumber)
        self.stack[-1].children.append(node)
        self.stack.append(node)

    def end(self, tag: str) -> None:
        node = self.stack.pop()
        node.text, node.parts = "".join(node.parts), []

    def data(self, text: str) -> None:
        self.stack[-1].parts.append(text)

    def close(self) -> _Node:
        return self.stack[0]


def _read_capped(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_XML_BYTES + 1)
    except OSError as exc:
        raise EdgeAnchorError(f"cannot read {path} ({exc.strerror}); check the file") from None
    if len(raw) > MAX_XML_BYTES:
        raise EdgeAnchorError(f"{path} is larger than {MAX_XML_BYTES // 2**20} MiB, the most an annotation file may "
                              "be (a VOC annotation is a few KB); check that it is one")
    return raw


def _parse_tree(path: Path) -> _Node:
    """The XML file as a tree of nodes that know their line (defusedxml: no DTD, no entities, no external
    references)."""
    raw = _read_capped(path)
    target = _Target()
    parser = DefusedXMLParser(target=target, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    target.parser = parser
    try:
        parser.feed(raw)
        root = parser.close()
    except ParseError as exc:
        line, column = exc.position
        raise EdgeAnchorError(f"{path}:{line}: malformed XML ({expat.ErrorString(exc.code)}, column "
                              f"{column + 1}); fix or remove the file") from None
    except DefusedXmlException:
        raise EdgeAnchorError(f"{path}:{parser.parser.CurrentLineNumber}: the XML declares a DTD or entities, which "
                              "edgeanchor does not read (they can expand without bound; VOC annotations have none); "
                              "remove the <!DOCTYPE ...> and any entity declarations") from None
    if not root.children or root.children[0].tag != "annotation":
        raise EdgeAnchorError(f"{path}:1: not a Pascal VOC annotation (no <annotation> root); fix or remove the file")
    return root.children[0]


def _coordinates(path: Path, box: _Node) -> tuple[float, float, float, float]:
    values = []
    for key in ("xmin", "ymin", "xmax", "ymax"):
        node = box.find(key)
        text = node.text.strip() if node is not None else ""
        try:
            values.append(parse_decimal(text))
        except ValueError as exc:
            where = node.line if node is not None else box.line
            shown = f"<{key}> is {text[:40]!r}" if node is not None else f"<{key}> is missing"
            detail = f" ({exc})" if text else ""
            raise EdgeAnchorError(f"{path}:{where}: {shown}{detail}; <bndbox> needs finite decimal numbers xmin, "
                                  "ymin, xmax, ymax (such as 48 or 48.5); fix the file") from None
    xmin, ymin, xmax, ymax = values
    return xmin, ymin, xmax, ymax


def parse_voc_xml(path) -> VocRecord:
    """Read one VOC / LabelImg annotation file (at most :data:`MAX_XML_BYTES`).

    Raises:
        EdgeAnchorError: malformed XML, a DTD or entity declaration, a file over the size cap, or an object
            without a name or a numeric box, naming the file and line.
    """
    path = Path(path)
    ann = _parse_tree(path)
    objects = []
    for node in ann.children:
        if node.tag != "object":
            continue
        where = f"{path}:{node.line}"
        name, box = node.value("name"), node.find("bndbox")
        if not name or box is None:
            raise EdgeAnchorError(f"{where}: an <object> needs <name> and <bndbox>; fix the file")
        coords = _coordinates(path, box)
        if coords[2] < coords[0] or coords[3] < coords[1]:
            raise EdgeAnchorError(f"{path}:{box.line}: box {list(coords)} has xmax < xmin or ymax < ymin; "
                                  "fix the file")
        difficult = node.value("difficult", "0")
        if difficult not in ("0", "1"):
            raise EdgeAnchorError(f"{where}: <difficult> is {difficult!r}; it must be 0 or 1")
        objects.append(VocObject(name, coords, difficult == "1", node.line))
    filename = ann.find("filename")
    return VocRecord(path, filename.text.strip() if filename is not None else "", tuple(objects),
                     filename.line if filename is not None else 1)


# ---- layouts ---------------------------------------------------------------------------
def is_devkit(path) -> bool:
    """True for a VOCdevkit year folder (``Annotations/`` and ``JPEGImages/``)."""
    path = Path(path)
    return (path / "Annotations").is_dir() and (path / "JPEGImages").is_dir()


def _xml_files(root: Path):
    """The XML files under ``root`` (recursively; suffix in any case), in no particular order."""
    return (p for p in root.rglob("*") if p.suffix.lower() == ".xml" and p.is_file())


def is_voc_data(path) -> bool:
    """True if ``path`` is a VOCdevkit year folder or a folder with XML annotation files in it (or below it)."""
    path = Path(path)
    if not path.is_dir():
        return False
    return is_devkit(path) or next(_xml_files(path), None) is not None


def _inside(path: Path, folder: Path, named: str) -> Path:
    """``path``, if it lies inside ``folder`` once symlinks are resolved; else one line, ``named`` saying who
    named the file."""
    resolved = path.resolve()
    if not resolved.is_relative_to(folder.resolve()):
        raise EdgeAnchorError(f"{named}{path} resolves to {resolved}, outside {folder}; a data folder may only name "
                              "files inside it (symlinks included): fix the name, or copy the file in")
    return path


def split_ids(root: Path, split: str) -> list[str]:
    """The image ids of ``ImageSets/Main/<split>.txt`` (first word of each line, in file order).

    Raises:
        EdgeAnchorError: no such split file, an empty one, not UTF-8, or an id that is not a plain file name
            (``../x``, ``a/b``: a split file names files of Annotations/ and JPEGImages/ only).
    """
    path = root / "ImageSets" / "Main" / f"{split}.txt"
    if not path.exists():
        have = sorted(p.stem for p in (root / "ImageSets" / "Main").glob("*.txt") if "_" not in p.stem)
        raise EdgeAnchorError(f"{path} does not exist (splits here: {', '.join(have) or 'none'}); choose another "
                              "split")
    ids = []
    for n, line in enumerate(read_text(path, "split file").splitlines(), start=1):
        if not line.strip():
            continue
        image_id = line.split()[0]
        if "/" in image_id or "\\" in image_id or image_id in (".", ".."):
            raise EdgeAnchorError(f"{path}:{n}: image id {image_id[:80]!r} is not a plain file name; a split file "
                                  "lists ids such as 000005 (the stems of Annotations/*.xml): fix the line")
        ids.append(image_id)
    if not ids:
        raise EdgeAnchorError(f"the split file {path} lists no images; list one image id a line")
    return ids


def _devkit_image(root: Path, image_id: str, record: VocRecord) -> Path:
    folder = root / "JPEGImages"  # the devkit's rule: the image is named by its id (<filename> is not trusted)
    candidates = [folder / f"{image_id}.jpg", *[folder / f"{image_id}{s}" for s in IMAGE_SUFFIXES]]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise EdgeAnchorError(f"the image of {record.path} is missing (looked for {candidates[0]}); add it or "
                              "remove the id from the split file")
    return _inside(found, folder, f"image id {image_id}: ")


def devkit_records(root: Path, split: str) -> list[tuple[Path, VocRecord | None]]:
    """(image, record) of each id of a VOCdevkit split, in the split file's order.

    Annotations/ and JPEGImages/ may themselves be symlinks (a common way to share the images); each file an id
    names must lie inside its folder once symlinks are resolved.
    """
    out: list[tuple[Path, VocRecord | None]] = []
    for image_id in split_ids(root, split):
        xml = root / "Annotations" / f"{image_id}.xml"
        if not xml.is_file():
            raise EdgeAnchorError(f"{xml} is missing (image id {image_id} of split {split}); add it or remove the "
                                  "id from the split file")
        record = parse_voc_xml(_inside(xml, root / "Annotations", f"image id {image_id}: "))
        out.append((_devkit_image(root, image_id, record), record))
    return out


def folder_records(root: Path) -> list[tuple[Path, VocRecord | None]]:
    """(image, record or None) of every image in a plain folder (recursively), sorted by path.

    An XML file's image is the image of the same stem beside it, else the file its ``<filename>`` names
    (relative to the XML's folder). Every file read, symlinks resolved, lies inside ``root``.

    Raises:
        EdgeAnchorError: an XML file whose image is missing or outside ``root``, or a folder without images.
    """
    devkits = sorted(p.name for p in root.iterdir() if p.is_dir() and is_devkit(p))
    if devkits:
        raise EdgeAnchorError(f"{root} holds the VOCdevkit year folder(s) {', '.join(devkits)}; give `data` as "
                              f"{root / devkits[0]}")
    images = sorted(_inside(p, root, "") for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                    and p.is_file())
    by_stem = {p.with_suffix(""): p for p in images}
    records: dict[Path, VocRecord] = {}
    for xml in sorted(_xml_files(root)):
        record = parse_voc_xml(_inside(xml, root, ""))
        image = by_stem.get(xml.with_suffix(""))
        if image is None and record.filename:
            named = _inside(xml.parent / record.filename, root, f"{xml}:{record.filename_line}: <filename> ")
            image = named if named.is_file() else None
        if image is None:
            raise EdgeAnchorError(f"the image of {xml} is missing (no {xml.stem}.jpg or other image beside it); "
                                  "add it or remove the XML file")
        records[image] = record
    images = sorted(set(images) | set(records))
    if not images:
        raise EdgeAnchorError(f"{root} holds no images; give a folder of images with XML beside them")
    return [(p, records.get(p)) for p in images]


def read_classes(root: Path, records, devkit: bool) -> tuple[str, ...]:
    """The class list: ``classes.txt``, else VOC's 20 for a devkit, else the names found, sorted."""
    path = root / CLASSES_FILE
    if path.exists() or path.is_symlink():
        names = [line.strip() for line in read_text(path, "class list").splitlines() if line.strip()]
        if not names or len(set(names)) != len(names):
            raise EdgeAnchorError(f"{path} must list each class once, one a line")
        if len(names) > MAX_CLASSES:
            raise EdgeAnchorError(f"{path} lists {len(names)} classes, more than the {MAX_CLASSES:,} edgeanchor "
                                  "reads; check the file")
        return tuple(names)
    if devkit:
        return VOC_CLASSES
    return tuple(sorted({o.name for _, r in records if r is not None for o in r.objects}))


# ---- conversion ------------------------------------------------------------------------
def _coco_box(obj: VocObject, width: int, height: int) -> tuple[list[float] | None, bool]:
    """(COCO [x, y, w, h] clipped to the image or None if nothing is left, whether it was clipped)."""
    xmin, ymin, xmax, ymax = obj.box
    x1, y1, x2, y2 = xmin - 1, ymin - 1, xmax, ymax  # devkit indices -> continuous pixel edges
    cx1, cx2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
    cy1, cy2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
    clipped = (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2)
    if cx2 <= cx1 or cy2 <= cy1:
        return None, True
    return [round(cx1, 4), round(cy1, 4), round(cx2 - cx1, 4), round(cy2 - cy1, 4)], clipped


def to_coco(records, root: Path, names: tuple[str, ...], description: str,
            source: str | None = None) -> tuple[dict, int]:
    """(COCO dict of (image, record) pairs, boxes clipped or dropped). Image ids 1..N in the given order.

    ``source`` (default ``description``) is what messages about the converted file call the data.

    Raises:
        EdgeAnchorError: an object whose class is not in ``names`` (naming the file and line).
    """
    category = {name: i + 1 for i, name in enumerate(names)}
    images: list[dict] = []
    annotations: list[dict] = []
    clipped = 0
    for image_id, (path, record) in enumerate(records, start=1):
        width, height = image_size(path)
        images.append({"id": image_id, "file_name": path.relative_to(root).as_posix(), "width": width,
                       "height": height})
        for obj in record.objects if record is not None else ():
            if obj.name not in category:
                shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
                raise EdgeAnchorError(f"{record.path}:{obj.line}: class {obj.name!r} is not in the class list "
                                      f"({shown}); add it to {CLASSES_FILE} in the data folder, or fix the name")
            bbox, was_clipped = _coco_box(obj, width, height)
            clipped += was_clipped
            if bbox is None:
                continue
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category[obj.name],
                                "bbox": bbox, "area": round(bbox[2] * bbox[3], 4), "iscrowd": int(obj.difficult),
                                "difficult": int(obj.difficult)})
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(names)]
    info = {"description": description, "generator": "edgeanchor.data.voc", "source": source or description}
    return {"info": info, "images": images, "annotations": annotations, "categories": categories}, clipped


def _records(data: Path, split: str | None):
    if is_devkit(data):
        return devkit_records(data, split or "val"), data / "JPEGImages", f"{data} split {split or 'val'}"
    if split is not None:
        raise EdgeAnchorError(f"{data} is a folder of images with XML beside them, which has no splits; leave the "
                              "split out, or use a VOCdevkit folder (ImageSets/Main/<split>.txt)")
    return folder_records(data), data, str(data)


def voc_splits(data, splits) -> tuple[str, list[str]]:
    """(image root, a COCO annotation file per split) of VOC data; each split is converted once.

    ``splits``: split names for a VOCdevkit, or ``[None]`` for a plain folder. The files live under the
    cache root, named by a hash of their contents (written once, never rewritten).
    """
    data = Path(data)
    if not data.is_dir():
        raise EdgeAnchorError(f"the data folder {data} does not exist; check the path")
    converted: dict = {}
    root = data
    for split in dict.fromkeys(splits):
        records, root, description = _records(data, split)
        names = read_classes(data, records, is_devkit(data))
        if not names:
            raise EdgeAnchorError(f"{data} holds no labelled objects, so no class list; add {CLASSES_FILE} "
                                  "(one class a line)")
        coco, clipped = to_coco(records, root, names, f"{description}, converted from Pascal VOC XML by edgeanchor",
                                f"the VOC data {description}")
        if clipped:
            warn(f"{clipped} boxes outside the image in {description} were clipped to it (those left with no "
                 "area dropped)")
        text = json.dumps(coco, indent=1) + "\n"
        digest = hashlib.sha256(text.encode()).hexdigest()[:20]
        ann = cache_root() / "voc" / f"{split or 'all'}-{digest}.json"
        if not ann.is_file():
            with atomic_path(ann) as tmp:
                tmp.write_text(text, encoding="utf-8")
        converted[split] = str(ann)
    return str(root), [converted[split] for split in splits]


def available_splits(data) -> tuple[str, ...]:
    """The VOC splits with a split file in a VOCdevkit folder (a plain folder: none)."""
    main = Path(data) / "ImageSets" / "Main"
    return tuple(s for s in VOC_SPLITS if (main / f"{s}.txt").is_file()) if is_devkit(data) else ()
