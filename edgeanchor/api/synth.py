"""The Python API's data maker: :func:`synth`, the deterministic synthetic detection data set."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from ..errors import EdgeAnchorError
from ..io import atomic_dir, clean_stale_builds, first_foreign, output_lock, read_manifest
from ..settings import typechecked


@typechecked
def synth(out: str | os.PathLike, *, num_images: int, seed: int, image_size: int = 320, workers: int | None = None,
          format: str = "coco", overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Write the synthetic data set: 5 shape classes whose aspect ratios (h/w) and sizes differ.

    The same ``seed`` and ``num_images`` give the same files, whatever ``workers`` is. Splits are 80/10/10
    (train/val/test). The folder is built beside ``out`` and renamed into place when complete.

    Args:
        out: the folder to write (new, empty, or with ``overwrite`` one this function wrote).
        num_images: images over all splits, >= 1.
        seed: >= 0.
        image_size: side of the square images in pixels, >= 64.
        workers: processes (default: the CPU count).
        format: ``"coco"`` (``images/{split}/*.jpg`` and ``annotations/{split}.json``; boxes xywh in pixels)
            or ``"voc"`` (a VOCdevkit-style folder: ``JPEGImages/``, ``Annotations/*.xml``,
            ``ImageSets/Main/{split}.txt``, ``classes.txt``).
        overwrite: replace a synthetic data set already at ``out``.
        progress: show a progress bar (stderr).

    The settings are :class:`~edgeanchor.api.settings.SynthSettings`' fields (``edgeanchor data synth``'s flags).

    Returns:
        ``num_images`` and ``num_objects`` per split, ``annotations`` (per split: the COCO file, or the VOC
        split file), ``image_dir``, ``out_dir``, ``format`` (for VOC) and ``seconds``.

    Raises:
        EdgeAnchorError: a bad setting, or an ``out`` that is a file, not empty, or not ours to replace.
    """
    from ..datasets import synth as generator
    from .settings import SynthSettings

    workers = (os.cpu_count() or 1) if workers is None else workers
    SynthSettings(out=str(out), num_images=num_images, seed=seed, image_size=image_size, workers=workers,
                  format=format, overwrite=overwrite, progress=progress).validate()  # once, before anything is written
    out = Path(out)
    with output_lock(out):  # as ExportFolder.build: one run per folder, a killed swap put back, then decide
        clean_stale_builds(out)
        _check_out(out, overwrite)
        start = time.perf_counter()
        with atomic_dir(out, replace=out.exists(), manifest=True) as tmp, _bar(num_images, progress) as bar:
            result = generator.generate(tmp, num_images=num_images, seed=seed, image_size=image_size,
                                        workers=workers, progress=bar.update)
            if format == "voc":
                result = _as_voc(tmp, result)
    result = _relocate(result, tmp, out)
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result


def _bar(total: int, progress: bool):
    import sys

    from tqdm import tqdm

    return tqdm(total=total, desc="synth", unit="img", file=sys.stderr, leave=False, disable=not progress)


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse an output folder we would clobber by mistake."""
    if out.exists() and not out.is_dir():
        raise EdgeAnchorError(f"`out` {out} is a file; choose a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise EdgeAnchorError(f"`out` {out} exists and is not empty; pass `overwrite` or choose another "
                              "synth folder")
    # overwrite deletes the old folder, so only do it for something this function made.
    if not is_synth_output(out):
        raise EdgeAnchorError(
            f"`out` {out} does not look like a synthetic data set (no annotations/train.json from "
            "edgeanchor); refusing to delete it, remove it yourself or choose another folder")
    no_manifest = read_manifest(out) is None
    foreign = first_foreign(out, lambda rel: no_manifest and _SYNTH_LAYOUT.fullmatch(rel) is not None)
    if foreign is not None:
        raise EdgeAnchorError(f"`out` {out} holds {foreign}, which edgeanchor did not write; refusing to replace "
                              "the folder: move that file out, or choose another synth folder")


# Every path data synth writes (COCO or VOC), for a folder written before manifests.
_SYNTH_LAYOUT = re.compile(r"images/|images/(train|val|test)/|images/(train|val|test)/\d+\.jpg|annotations/"
                           r"|annotations/(train|val|test)\.json|JPEGImages/|JPEGImages/\d+\.jpg|Annotations/"
                           r"|Annotations/\d+\.xml|ImageSets/|ImageSets/Main/|ImageSets/Main/(train|val|test)\.txt"
                           r"|classes\.txt")


def is_synth_output(out: Path) -> bool:
    """True if ``out`` holds a synthetic data set this function wrote (COCO or VOC)."""
    from ..datasets.voc_writer import is_synth_voc

    if is_synth_voc(out):
        return True
    try:
        info = json.loads((out / "annotations" / "train.json").read_text()).get("info", {})
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(info, dict) and info.get("generator") == "edgeanchor.data.synth"


def _as_voc(tmp: Path, result: dict) -> dict:
    """Turn the COCO synthetic set just written in ``tmp`` into a VOC folder in its place."""
    from ..datasets.voc_writer import write_voc

    splits = {split: json.loads(Path(path).read_text()) for split, path in result["annotations"].items()}
    voc = write_voc(splits, result["image_dir"], tmp, move=True)
    shutil.rmtree(tmp / "images")
    shutil.rmtree(tmp / "annotations")
    split_files = {split: str(tmp / "ImageSets" / "Main" / f"{split}.txt") for split in splits}
    return {**result, **voc, "annotations": split_files, "format": "voc"}


def _relocate(result: dict, tmp: Path, out: Path) -> dict:
    """Point the paths in ``result`` at ``out`` instead of the temporary folder."""
    def move(path: str) -> str:
        return str(out / Path(path).relative_to(tmp))

    result = dict(result)
    result["annotations"] = {split: move(p) for split, p in result["annotations"].items()}
    result["image_dir"] = move(result["image_dir"])
    result["out_dir"] = str(out)
    return result
