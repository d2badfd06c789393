"""Unlabelled splits: a folder of images, or a video decoded into one, as a COCO file without annotations.

A split without annotations is searched label-free (see :mod:`edgeanchor.evaluation.pseudo`): the
unpruned model's own detections become its reference. Here it is only listed: every image under the
folder (sorted, sub-folders included) becomes a COCO ``images`` entry, written once under the cache root
and named by a hash of the listing, with no annotations and no categories (the model's classes are added
when its detections are). A video is decoded with OpenCV's ``VideoCapture`` (the ``[opencv]`` extra), every
``frame_step``-th frame, into lossless PNG frames under the cache root, keyed by the SHA-256 of the file's
contents and the frame settings, so it is decoded once.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import EdgeAnchorError
from ..io import atomic_dir, cache_root, file_sha256, write_json
from .yolo import IMAGE_SUFFIXES

# what OpenCV's FFmpeg backend reads; anything else is not taken for a video
VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv", ".ts")
LISTING_FORMAT = "edgeanchor.unlabelled/1"
FRAMES_FORMAT = "edgeanchor.frames/1"


def is_video(path) -> bool:
    """True if ``path`` names a video file (by its suffix)."""
    return str(path).lower().endswith(VIDEO_SUFFIXES)


def list_images(folder) -> list[str]:
    """The image files under ``folder`` (sub-folders included), as sorted POSIX paths relative to it.

    Raises:
        EdgeAnchorError: no such folder, or no image in it.
    """
    root = Path(folder)
    if not root.is_dir():
        raise EdgeAnchorError(f"{root} is not a folder; give `data` as an image folder (with `ann` for COCO "
                              "labels, or alone to search label-free) or a video file")
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                   if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith("."))
    if not names:
        raise EdgeAnchorError(f"{root} holds no images ({', '.join(IMAGE_SUFFIXES)}); give a folder of images "
                              "or a video file")
    return names


def unlabelled_split(folder) -> str:
    """A COCO file listing every image under ``folder``, with no annotations (written once under the cache root).

    Image ids are 1..N in sorted file-name order, so the same folder always gives the same file.

    Returns:
        The COCO file's path.
    """
    names = list_images(folder)
    listing = {"info": {"format": LISTING_FORMAT, "images": str(Path(folder).resolve()), "labelled": False},
               "images": [{"id": i, "file_name": name} for i, name in enumerate(names, start=1)],
               "annotations": [], "categories": []}
    digest = hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()
    path = cache_root() / "unlabelled" / f"{digest[:24]}.json"
    if not path.is_file():
        write_json(path, listing)
    return str(path)


def video_frames(video, frame_step: int | None = None, max_frames: int | None = None) -> str:
    """Decode every ``frame_step``-th frame of ``video`` (at most ``max_frames``) into PNG files, once.

    Args:
        video: the video file.
        frame_step: keep frames 0, step, 2·step, ... (default: the container's frame rate rounded, about
            one frame a second; 1 where the file states no rate).
        max_frames: stop after this many frames (default: all).

    Returns:
        The folder of frames (``frame_NNNNNN.png``, NNNNNN the frame's index in the video), under the cache
        root, named by the video's SHA-256 and the settings.

    Raises:
        EdgeAnchorError: no such file, OpenCV missing, a file OpenCV cannot open, or no frame decoded.
    """
    path = Path(video)
    if not path.is_file():
        raise EdgeAnchorError(f"video {path} does not exist; check the `data` path")
    try:
        import cv2
    except ImportError:
        raise EdgeAnchorError("reading a video needs OpenCV: pip install 'edgeanchor[opencv]'") from None
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise EdgeAnchorError(f"OpenCV cannot open the video {path} (corrupt, or a codec it lacks); give "
                                  "a readable video or a folder of its frames")
        step = frame_step or max(1, round(capture.get(cv2.CAP_PROP_FPS) or 1))
        key = hashlib.sha256(f"{FRAMES_FORMAT}:{file_sha256(path)}:{step}:{max_frames}".encode()).hexdigest()
        out = cache_root() / "frames" / key[:24]
        if (out / "frames.json").is_file():
            return str(out)
        with atomic_dir(out, replace=True) as tmp:
            written = _decode(cv2, capture, tmp, step, max_frames)
            if not written:
                raise EdgeAnchorError(f"no frame could be decoded from the video {path} (empty, corrupt, or a "
                                      "codec OpenCV lacks); give a readable video or a folder of its frames")
            write_json(tmp / "frames.json", {"format": FRAMES_FORMAT, "video": str(path.resolve()),
                                             "frame_step": step, "max_frames": max_frames, "frames": written})
    finally:
        capture.release()
    return str(out)


def _decode(cv2, capture, out: Path, step: int, max_frames: int | None) -> list[int]:
    """Grab every frame, decode (``retrieve``) and write every ``step``-th; the indices written."""
    written: list[int] = []
    index = 0
    while max_frames is None or len(written) < max_frames:
        if not capture.grab():
            break
        if index % step == 0:
            ok, frame = capture.retrieve()  # (H, W, 3) uint8 BGR, as PNG files store it through imwrite
            if not ok or frame is None:
                break
            if not cv2.imwrite(str(out / f"frame_{index:06d}.png"), frame):
                raise EdgeAnchorError(f"cannot write a frame under {out}; check the cache folder is writable")
            written.append(index)
        index += 1
    return written
