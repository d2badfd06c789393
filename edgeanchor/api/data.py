"""Data sets for the Python API: one split as COCO annotations over an image folder.

Everything downstream (evaluation, the candidate cache, the search, training) reads COCO; a YOLO
``data.yaml`` or Pascal VOC data (a VOCdevkit year folder, or images with XML beside them) is converted
once per split into a COCO file under the cache root, and the demo's synthetic data set is generated
on first use (``$EDGEANCHOR_CACHE``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import EdgeAnchorError
from ..settings import typechecked

DEMO = "demo"
UNLABELLED = ("unlabelled", "video")
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
        source: "coco", "yolo", "voc", "demo"; "unlabelled" (an image folder without annotations: ``ann`` lists
            its images only) or "video" (its frames, decoded into a folder under the cache root); "pseudo"
            (such a split with the unpruned model's detections as its annotations).
        origin: the YOLO ``data.yaml``, the VOC folder, the image folder or the video the split came from.
    """

    images: str
    ann: str
    split: str | None = None
    source: str = "coco"
    origin: str | None = None

    @property
    def labelled(self) -> bool:
        """False for an image folder or video without annotations (searched against pseudo-labels)."""
        return self.source not in UNLABELLED


class Data:
    """One split of a detection data set, resolved on first use.

    Nothing is read, converted or generated until a step needs the split (or :attr:`images` / :attr:`ann`
    is read), so the steps check their settings first; a mistake in the data is raised then. An unlabelled
    folder or a video is the exception: :func:`data` lists it (decodes it) at once, which needs no model.
    """

    @typechecked
    def __init__(self, images: Any = None, ann: str | os.PathLike | None = None, *, split: str | None = None,
                 resolved: Split | None = None, resolver: Callable[[], Split] | None = None,
                 frame_step: int | None = None, max_frames: int | None = None):
        self._args = (images, ann, split, frame_step, max_frames)
        self._split = resolved
        self._resolver = resolver
        self._datasets: dict = {}
        self._references: dict = {}  # (model digest, threshold) -> the pseudo-labelled split
        if resolved is None and resolver is None and (
                _unlabelled_or_video(images, ann) or frame_step is not None or max_frames is not None):
            self.resolve()  # listed (a video decoded) now: an empty folder or a bad video fails before model work

    def resolve(self) -> Split:
        """The split's paths (converting or generating the data set now if needed).

        Raises:
            EdgeAnchorError: a folder without ``ann``, ``ann`` without a folder or with a data.yaml, a split
                the data set does not have, or a missing or malformed file.
        """
        if self._split is None:
            self._split = self._resolver() if self._resolver is not None else _resolve(*self._args)
        return self._split

    def dataset(self, det: Any, *, train: bool = False) -> Any:
        """The split as a :class:`~edgeanchor.datasets.coco.CocoDetection` for ``det``'s input, built once.

        Every step of one run that reads this split for the same input size, resize mode and label start
        shares the object, so its annotation file is parsed once.
        """
        from ..datasets.coco import CocoDetection

        if not self.labelled:
            raise EdgeAnchorError(f"{self.resolve().origin} has no labels: fine-tuning and training need them (give "
                                  "`ann`); search, evaluate and export score it against pseudo-labels")
        key = (tuple(det.image_size), det.resize_mode, det.num_classes, det.first_label, train)
        if key not in self._datasets:
            self._datasets[key] = CocoDetection.for_detector(det, self.images, self.ann, train=train)
        return self._datasets[key]

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

    @property
    def name(self) -> str:
        """What reports call the split: its name (val, test) where the data set has splits, else the VOC
        folder's or the COCO annotation file's name (without ``.json``)."""
        from pathlib import Path

        me = self.resolve()
        return me.split or Path(me.origin or me.ann).stem

    @property
    def labelled(self) -> bool:
        """False for an unlabelled image folder or a video (see :meth:`with_reference`).

        Those are resolved when made, so a split not resolved yet is labelled (and is not read here).
        """
        return self._split is None or self._split.labelled

    def with_reference(self, det: Any, pseudo_thresh: float | None = None, *, progress: bool = True,
                       log: Callable[[str], None] | None = None) -> Data:
        """The split with a reference to score against: itself if labelled, else ``det``'s pseudo-labels.

        An unlabelled split's reference is ``det``'s detections with score >= ``pseudo_thresh`` (default:
        the model's deploy threshold, YOLO 0.25, else 0.5), written once under the cache root; the figures
        scored against it are fidelity (agreement with ``det``), not accuracy. Made once per model and
        threshold, and said once (``log``, on stderr).
        """
        if self.labelled:
            return self
        from ..evaluation.pseudo import default_pseudo_thresh, model_digest, pseudo_labels
        from ..io import log as default_log

        thresh = default_pseudo_thresh(det) if pseudo_thresh is None else float(pseudo_thresh)
        key = (model_digest(det), thresh)
        if key not in self._references:
            me = self.resolve()
            ann, info = pseudo_labels(det, me.images, me.ann, thresh, progress=progress)
            (log or default_log)(
                f"label-free: {me.origin} has no annotations; the reference is the unpruned model's own "
                f"detections with score >= {thresh:g} ({info['num_boxes']} boxes on {info['num_images']} images): "
                "mAP is fidelity, agreement with the unpruned model, not accuracy")
            self._references[key] = Data(resolved=Split(me.images, ann, me.split, "pseudo", me.origin))
        return self._references[key]

    def other_split(self, split: str) -> Data:
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

    def with_ann(self, ann: str | os.PathLike) -> Data:
        """Another COCO annotation file over the same image folder (resolved when first used)."""
        return Data(resolver=lambda: Split(self.images, str(ann)))

    def __repr__(self) -> str:
        if self._split is None:
            return f"Data(images={self._args[0]!r}, ann={self._args[1]!r}, split={self._args[2]!r}; not resolved yet)"
        return f"Data({self._split})"


@typechecked
def data(images: Any = None, ann: str | os.PathLike | None = None, *, split: str | None = None,
         frame_step: int | None = None, max_frames: int | None = None) -> Data:
    """One split of a data set, from paths or an already-open object.

    Args:
        images: an image folder (with ``ann``, a COCO annotation file; without, an unlabelled split, searched
            label-free against the unpruned model's detections); a video file (unlabelled: its frames); a
            YOLO ``data.yaml`` (with ``split``); Pascal VOC: a VOCdevkit year folder (with ``split``) or a
            folder of images with their XML files beside them (no ``ann``, no split); ``"demo"`` or None for
            the demo's synthetic data set (generated on first use); or an already-open :class:`Data` or
            :class:`~edgeanchor.datasets.coco.CocoDetection`.
        ann: the COCO annotation file of the split (image folder only).
        split: train, val or test of a YOLO data set, a VOCdevkit or the demo (default: val).
        frame_step: a video's frames kept: every ``frame_step``-th (default: about one a second).
        max_frames: a video's frames kept: at most this many (default: all).

    Returns:
        The split, resolved when first used (see :class:`Data`).
    """
    if isinstance(images, Data):
        return images if split is None else images.other_split(split)
    if hasattr(images, "ann_file") and hasattr(images, "image_dir"):  # a CocoDetection
        return Data(resolved=Split(str(images.image_dir), str(images.ann_file)))
    return Data(images, ann, split=split, frame_step=frame_step, max_frames=max_frames)


def _unlabelled_or_video(images: Any, ann: Any) -> bool:
    from ..datasets.unlabelled import is_video
    from ..datasets.voc import is_voc_data

    if images is None or str(images) == DEMO or not isinstance(images, (str, os.PathLike)):
        return False
    return is_video(images) or ann is None and os.path.isdir(images) and not is_voc_data(images)


def _resolve(images, ann, split, frame_step=None, max_frames=None) -> Split:
    from ..datasets.unlabelled import is_video

    if (frame_step is not None or max_frames is not None) and not (images is not None and is_video(images)):
        raise EdgeAnchorError("`frame_step` and `max_frames` apply to a video; drop them, or give `data` as a video "
                              "file")
    if images is None or str(images) == DEMO:
        if ann is not None:
            raise EdgeAnchorError(BOTH)
        return demo_data(split or "val")
    from ..datasets.voc import is_voc_data
    from ..datasets.yolo import is_yolo_yaml

    if ann is None and not Path(images).exists():  # not a parameter's fault: a path that is not there
        raise EdgeAnchorError(f"the data {str(images)!r} does not exist; give an image folder with its COCO "
                              "annotation file, a YOLO data.yaml, a Pascal VOC folder, or demo")
    if is_video(images):
        if ann is not None or split is not None:
            raise EdgeAnchorError("a video has no annotations or splits: drop `ann` and `split` (it is searched "
                                  "label-free), or give its frames as an image folder with `ann`")
        return video_data(images, frame_step, max_frames)
    if ann is None and is_voc_data(images):
        return voc_data(images, split)
    if is_yolo_yaml(images):
        if ann is not None:
            raise EdgeAnchorError("`ann` is not used with a YOLO data.yaml (its splits are in the file); "
                                  "choose one with `split`")
        return yolo_data(images, split or "val")
    if ann is None:
        if split is not None:
            raise EdgeAnchorError(f"split {split!r} needs a YOLO data.yaml, a VOCdevkit or the demo; an image folder "
                                  "without `ann` is one unlabelled split")
        return unlabelled_data(images)
    if split is not None:
        raise EdgeAnchorError(f"split {split!r} needs a YOLO data.yaml, a VOCdevkit or the demo; a COCO split is its "
                              "annotation file")
    return Split(str(images), str(ann))


def unlabelled_data(folder) -> Split:
    """An image folder without annotations: its images listed in a COCO file (no annotations) under the cache root."""
    from ..datasets.unlabelled import unlabelled_split

    return Split(str(folder), unlabelled_split(folder), None, "unlabelled", str(folder))


def video_data(video, frame_step: int | None, max_frames: int | None) -> Split:
    """A video's frames (every ``frame_step``-th, at most ``max_frames``), decoded once under the cache root."""
    from ..datasets.unlabelled import unlabelled_split, video_frames

    frames = video_frames(video, frame_step, max_frames)
    return Split(frames, unlabelled_split(frames), None, "video", str(video))


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


@dataclass(frozen=True)
class Roles:
    """The splits one run reads, each by its role; resolved (converted, generated) only when first used.

    Attributes:
        search: the split anchor subsets are searched (and int8 calibrated) on.
        report: the split results are reported on (bench, regress and evaluate --export measure it).
        train: the split fine-tuning (or training) runs on, where the data set has one.
        val: the split training is validated on after each epoch (training only).
    """

    search: Data
    report: Data
    train: Data | None = None
    val: Data | None = None

    @property
    def calibration(self) -> Data:
        """The split int8 graphs are calibrated on: the search split (never the report split)."""
        return self.search


def roles(data: Any = None, ann: str | os.PathLike | None = None, *, split: str | None = None,
          report_ann: str | os.PathLike | None = None, train_ann: str | os.PathLike | None = None,
          frame_step: int | None = None, max_frames: int | None = None) -> Roles:
    """prune-and-export's splits: searched on ``split`` (val), reported on test, fine-tuned on train.

    The one resolver of COCO, YOLO, VOC and demo data by role. A YOLO data set or a VOCdevkit gives its
    test split for the report (else the searched split) and its train split for fine-tuning (if it has one);
    a plain VOC folder is searched and reported on whole; COCO data takes ``report_ann`` (default ``ann``)
    and ``train_ann``; the demo's synthetic data its test and train splits. Nothing is read until used.

    Raises:
        EdgeAnchorError: annotation files given with a YOLO data.yaml or VOC data (their splits are in the
            data set), or a folder without ``ann``.
    """
    if not data and not ann:
        search = data_or_demo(split or "val")
        report = search.with_ann(report_ann) if report_ann else data_or_demo("test")
        train = search.with_ann(train_ann) if train_ann else data_or_demo("train")
        return Roles(search, report, train)
    from ..datasets.voc import is_voc_data
    from ..datasets.yolo import is_yolo_yaml

    if data and is_yolo_yaml(data):
        if ann or report_ann or train_ann:
            raise EdgeAnchorError("`ann`, `report_ann` and `train_ann` are not used with a YOLO data.yaml (its "
                                  "splits are in the file); choose the search split with `split`")
        return _dataset_roles("yolo", data, split)
    if data and not ann and is_voc_data(data):
        if report_ann or train_ann:
            raise EdgeAnchorError("`report_ann` and `train_ann` are not used with Pascal VOC data (its splits are "
                                  "in ImageSets/Main); choose the search split with `split`")
        return _dataset_roles("voc", data, split)
    search = as_split(data, ann, split, frame_step=frame_step, max_frames=max_frames)
    fine_tune = search.with_ann(train_ann) if train_ann else None
    return Roles(search, search.with_ann(report_ann) if report_ann else search, fine_tune)


def data_or_demo(split: str) -> Data:
    """The demo's ``split``, generated on first use."""
    return Data(DEMO, split=split)


def as_split(images: Any, ann: Any, split: str | None, *, frame_step: int | None = None,
             max_frames: int | None = None) -> Data:
    """:func:`data` under another name, for :func:`roles`, whose ``data`` parameter shadows the function."""
    return data(images, ann, split=split, frame_step=frame_step, max_frames=max_frames)


def _dataset_roles(kind: str, path: Any, split: str | None) -> Roles:
    """Roles over a YOLO data set or Pascal VOC: every split converted together on first use (listed once)."""
    from ..datasets.voc import available_splits, is_devkit
    from ..datasets.yolo import read_data_yaml

    if kind == "voc" and not is_devkit(path):
        names: list[str | None] = [split, split]  # a plain folder: searched and reported on whole
    else:
        have = read_data_yaml(path).splits if kind == "yolo" else available_splits(path)
        search_split = split or "val"
        names = [search_split, "test" if "test" in have else search_split, *(["train"] if "train" in have else [])]
    converted: dict[str | None, Split] = {}

    def resolver(name: str | None) -> Callable[[], Split]:
        def resolve() -> Split:
            if not converted:
                if kind == "yolo":
                    from ..datasets.yolo import yolo_splits

                    root, anns = yolo_splits(path, names)
                else:
                    from ..datasets.voc import voc_splits

                    root, anns = voc_splits(path, names)
                for n, a in zip(names, anns):
                    converted[n] = Split(root, a, n, kind, str(path))
            return converted[name]
        return resolve

    parts = [Data(path, split=n, resolver=resolver(n)) for n in names]
    return Roles(parts[0], parts[1], parts[2] if len(parts) > 2 else None)


def train_roles(data: Any, ann: str | os.PathLike | None, val_ann: str | os.PathLike | None,
                split: str | None) -> Roles:
    """``edgeanchor train``'s splits: trained on ``split`` (train), validated on val where the data set has it.

    A plain VOC folder is trained on whole; COCO data takes ``ann`` and ``val_ann``.

    Raises:
        EdgeAnchorError: annotation files with a YOLO data.yaml or VOC data, or COCO data without ``ann``.
    """
    from ..datasets.voc import available_splits, is_devkit, is_voc_data
    from ..datasets.yolo import is_yolo_yaml, read_data_yaml

    if data and not ann and is_voc_data(data):
        if val_ann:
            raise EdgeAnchorError("`val_ann` is not used with Pascal VOC data (its splits are in ImageSets/Main); "
                                  "choose the training split with `split`")
        devkit = is_devkit(data)
        train_split = split or "train"
        with_val = devkit and "val" in available_splits(data) and train_split not in ("val", "trainval")
        names: list[str | None] = [train_split, *(["val"] if with_val else [])] if devkit else [split]
        return _train_roles("voc", data, names)
    if not (data and is_yolo_yaml(data)):
        if not ann and _unlabelled_or_video(data, ann):
            raise EdgeAnchorError(f"training needs labels, and {data} has none (an unlabelled folder or a video is "
                                  "only searched label-free): give `ann`, a COCO file of its images")
        if not ann:
            raise EdgeAnchorError("give the training annotations as `ann` (a COCO file of the training images), "
                                  "or data as a DATA.yaml")
        train = data_from_paths(data, ann)
        return Roles(train, train, train, train.with_ann(val_ann) if val_ann else None)
    if ann or val_ann:
        raise EdgeAnchorError("`ann` and `val_ann` are not used with a YOLO data.yaml (its splits are in the file); "
                              "choose the training split with `split`")
    split = split or "train"
    with_val = "val" in read_data_yaml(data).splits and split != "val"
    return _train_roles("yolo", data, [split, *(["val"] if with_val else [])])


def data_from_paths(images: Any, ann: Any) -> Data:
    """A COCO split from its paths as given (no existence check until used)."""
    return Data(resolved=Split(str(images), str(ann)))


def _train_roles(kind: str, path: Any, names: list[str | None]) -> Roles:
    if kind == "yolo":
        from ..datasets.yolo import yolo_splits

        root, anns = yolo_splits(path, names)
    else:
        from ..datasets.voc import voc_splits

        root, anns = voc_splits(path, names)
    parts = [Data(resolved=Split(root, a, n, kind, str(path))) for n, a in zip(names, anns)]
    return Roles(parts[0], parts[0], parts[0], parts[1] if len(parts) > 1 else None)
