"""Data sets for the Python API: one split as COCO annotations over an image folder.

Everything downstream (evaluation, the candidate cache, the search, training) reads COCO; a YOLO
``data.yaml`` or Pascal VOC data (a VOCdevkit year folder, or images with XML beside them) is converted
once per split into a COCO file under the cache root, and the demo's synthetic data set is generated
on first use (``$EDGEANCHOR_CACHE``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ..errors import EdgeAnchorError

DEMO = "demo"
BOTH = ("give both `data` and `ann` (or `data` as a YOLO data.yaml, or `data` as a Pascal VOC folder: a VOCdevkit "
        "folder or images with XML beside them), or neither to use the demo's synthetic data")


@dataclass(frozen=True)
class Split:
    """A resolved split: where its images are and its COCO annotation file.

    Attributes:
        images: the folder the annotation file's ``file_name`` entries are relative to.
        ann: the split's COCO annotation file (boxes ``[x, y, w, h]`` in image pixels, as COCO has them).
        split: the split's name (train, val, test, trainval) for a YOLO data set, a VOCdevkit or the demo;
            None for a COCO file or a plain VOC folder.
        source: "coco", "yolo", "voc" or "demo".
        origin: the YOLO ``data.yaml`` or the VOC folder the split came from (None otherwise).
    """

    images: str
    ann: str
    split: str | None = None
    source: str = "coco"
    origin: str | None = None


class Data:
    """One split of a detection data set, resolved on first use.

    Nothing is read, converted or generated until a step needs the split (or :attr:`images` / :attr:`ann`
    is read), so the steps check their settings first; a mistake in the data is raised then.
    """

    def __init__(self, images: Any = None, ann: str | os.PathLike | None = None, *, split: str | None = None,
                 resolved: Split | None = None):
        self._args = (images, ann, split)
        self._split = resolved

    def resolve(self) -> Split:
        """The split's paths (converting or generating the data set now if needed).

        Raises:
            EdgeAnchorError: a folder without ``ann``, ``ann`` without a folder or with a data.yaml, a split
                the data set does not have, or a missing or malformed file.
        """
        if self._split is None:
            self._split = _resolve(*self._args)
        return self._split

    @property
    def images(self) -> str:
        """The image folder (see :class:`Split`)."""
        return self.resolve().images

    @property
    def ann(self) -> str:
        """The split's COCO annotation file."""
        return self.resolve().ann

    @property
    def split(self) -> str | None:
        return self.resolve().split

    @property
    def source(self) -> str:
        return self.resolve().source

    def other_split(self, split: str) -> "Data":
        """The same data set's ``split`` (a YOLO data set, a VOCdevkit or the demo).

        Raises:
            EdgeAnchorError: a plain COCO split (give its annotation file instead), or a split the data set lacks.
        """
        me = self.resolve()
        if me.source in ("yolo", "voc"):
            return data(me.origin, split=split)
        if me.source == DEMO:
            return data(DEMO, split=split)
        raise EdgeAnchorError(f"{me.ann} is a single COCO annotation file; give the {split} split's own "
                              "annotation file")

    def with_ann(self, ann: str | os.PathLike) -> "Data":
        """Another COCO annotation file over the same image folder."""
        return Data(resolved=Split(self.images, str(ann)))

    def __repr__(self) -> str:
        if self._split is None:
            return f"Data(images={self._args[0]!r}, ann={self._args[1]!r}, split={self._args[2]!r}; not resolved yet)"
        return f"Data({self._split})"


def data(images: Any = None, ann: str | os.PathLike | None = None, *, split: str | None = None) -> Data:
    """One split of a data set, from paths or an already-open object.

    Args:
        images: an image folder (with ``ann``, a COCO annotation file); a YOLO ``data.yaml`` (with
            ``split``); Pascal VOC: a VOCdevkit year folder (with ``split``) or a folder of images with
            their XML files beside them (no ``ann``, no split); ``"demo"`` or None for the demo's synthetic
            data set (generated on first use); or an already-open :class:`Data` or
            :class:`~edgeanchor.datasets.coco.CocoDetection`.
        ann: the COCO annotation file of the split (image folder only).
        split: train, val or test of a YOLO data set, a VOCdevkit or the demo (default: val).

    Returns:
        The split, resolved when first used (see :class:`Data`).
    """
    if isinstance(images, Data):
        return images if split is None else images.other_split(split)
    if hasattr(images, "ann_file") and hasattr(images, "image_dir"):  # a CocoDetection
        return Data(resolved=Split(str(images.image_dir), str(images.ann_file)))
    return Data(images, ann, split=split)


def _resolve(images, ann, split) -> Split:
    if images is None or str(images) == DEMO:
        if ann is not None:
            raise EdgeAnchorError(BOTH)
        return demo_data(split or "val")
    from ..datasets.voc import is_voc_data
    from ..datasets.yolo import is_yolo_yaml

    if ann is None and is_voc_data(images):
        return voc_data(images, split)
    if is_yolo_yaml(images):
        if ann is not None:
            raise EdgeAnchorError("`ann` is not used with a YOLO data.yaml (its splits are in the file); "
                                  "choose one with `split`")
        return yolo_data(images, split or "val")
    if ann is None:
        raise EdgeAnchorError(BOTH)
    if split is not None:
        raise EdgeAnchorError(f"split {split!r} needs a YOLO data.yaml, a VOCdevkit or the demo; a COCO split is its "
                              "annotation file")
    return Split(str(images), str(ann))


def demo_data(split: str) -> Split:
    """A split of the demo's synthetic data set, generated into the cache root if it is not there yet."""
    from ..datasets.demo_data import demo_split

    if split not in ("train", "val", "test"):
        raise EdgeAnchorError(f"the demo data set has no split {split!r}; choose train, val or test")
    images, ann = demo_split(split)
    return Split(images, ann, split, DEMO)


def yolo_data(data_yaml, split: str) -> Split:
    """A split of a YOLO data set (converted to COCO under the cache root)."""
    from ..datasets.yolo import yolo_split

    images, ann = yolo_split(data_yaml, split)
    return Split(images, ann, split, "yolo", str(data_yaml))


def voc_data(folder, split: str | None) -> Split:
    """A split of Pascal VOC data (converted to COCO under the cache root): a VOCdevkit's ``split``
    (default val), or a plain folder of images with XML beside them (which has no splits)."""
    from ..datasets.voc import is_devkit, voc_splits

    if is_devkit(folder):
        split = split or "val"
    images, (ann,) = voc_splits(folder, [split])
    return Split(images, ann, split, "voc", str(folder))
