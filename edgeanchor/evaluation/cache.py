"""The candidate cache: one inference pass, kept as only what can ever survive.

For each image it keeps every candidate above the score threshold: (box
index, anchor id, label, score, decoded box). Removing anchors only removes
candidates, so a pruned model's detections are exactly the model's own
top-k / NMS / max-detections rule applied to the kept anchors' candidates.
Memory is proportional to the number of candidates, not anchors x classes.

The cache is a ``.npz`` file with a key: a hash of the weights, the anchor
set, the post-processing rule, the annotation file, the image folder and the
input size. A cache whose key differs is rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..datasets.coco import CocoDetection
from ..errors import EdgeAnchorError
from ..evaluation.predict import make_loader
from ..io import atomic_path, cache_root, check_writable, file_sha256, log, warn

# 2: meta key "postprocess_spec"; 3: an image manifest (name, size, mtime, SHA-256) in the meta
CACHE_FORMAT = "edgeanchor.candidates/3"


@dataclass
class CandidateCache:
    """Every above-threshold candidate of every image, flat, with offsets.

    Attributes:
        key: the cache key (hex digest).
        image_ids: int64 (I,) COCO image ids, data set order.
        orig_sizes: int64 (I, 2) original (H, W) of each image.
        offsets: int64 (I+1,) candidates of image i are rows offsets[i]:offsets[i+1].
        box_index: int32 (M,) index into the model's flattened boxes.
        anchor_id: int32 (M,) global anchor id of each candidate.
        labels: int32 (M,) model labels.
        scores: float32 (M,).
        boxes_xyxy: float32 (M, 4) decoded and clipped, input pixels.
        meta: JSON-ready dict: input size, postprocess_spec, level starts, label map, anchor set.
    """

    key: str
    image_ids: np.ndarray
    orig_sizes: np.ndarray
    offsets: np.ndarray
    box_index: np.ndarray
    anchor_id: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    boxes_xyxy: np.ndarray
    meta: dict

    @property
    def num_images(self) -> int:
        return int(self.image_ids.shape[0])

    @property
    def num_candidates(self) -> int:
        return int(self.box_index.shape[0])

    @property
    def content_key(self) -> str:
        """The key plus the images' SHA-256s: what a result computed from this cache depends on.

        :attr:`key` covers weights, anchors, rule, annotations and the image folder's path; the
        manifest adds the image contents, so a search stored against this key is not resumed on
        other images.
        """
        h = hashlib.sha256(self.key.encode())
        for row in self.meta.get("images", []):
            h.update(str(row[3]).encode())
        return h.hexdigest()

    @property
    def nbytes(self) -> int:
        arrays = (self.image_ids, self.orig_sizes, self.offsets, self.box_index, self.anchor_id, self.labels,
                  self.scores, self.boxes_xyxy)
        return int(sum(a.nbytes for a in arrays))

    def take_images(self, indices) -> CandidateCache:
        """A cache of the images at ``indices`` (in that order) and only their candidates.

        The key and meta stay those of the whole cache (a shard is part of it, not another cache);
        the meta's image manifest is not carried, as it describes the whole.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        lo, hi = self.offsets[idx], self.offsets[idx + 1]
        rows = np.concatenate([np.arange(a, b) for a, b in zip(lo.tolist(), hi.tolist())]) if idx.size else \
            np.zeros(0, dtype=np.int64)
        meta = {k: v for k, v in self.meta.items() if k != "images"}
        return CandidateCache(
            key=self.key, image_ids=self.image_ids[idx], orig_sizes=self.orig_sizes[idx],
            offsets=np.concatenate([[0], np.cumsum(hi - lo)]).astype(self.offsets.dtype),
            box_index=self.box_index[rows], anchor_id=self.anchor_id[rows], labels=self.labels[rows],
            scores=self.scores[rows], boxes_xyxy=self.boxes_xyxy[rows], meta=meta)

    def save(self, path) -> None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, key=np.array(self.key), meta=np.array(json.dumps(self.meta)), image_ids=self.image_ids,
                         orig_sizes=self.orig_sizes, offsets=self.offsets, box_index=self.box_index,
                         anchor_id=self.anchor_id, labels=self.labels, scores=self.scores, boxes_xyxy=self.boxes_xyxy)

    @classmethod
    def load(cls, path) -> CandidateCache:
        with np.load(path) as z:
            return cls(
                key=str(z["key"]), meta=json.loads(str(z["meta"])),
                **{k: z[k] for k in ("image_ids", "orig_sizes", "offsets", "box_index", "anchor_id", "labels",
                                     "scores", "boxes_xyxy")},
            )


def hash_model(h, detector) -> None:
    """Feed ``h`` (a hashlib object) what a model's candidates depend on: its weights, anchors and rule."""
    for name, tensor in sorted(detector.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    h.update(json.dumps(detector.anchor_set.to_json(), sort_keys=True).encode())
    h.update(json.dumps(detector.postprocess_spec.to_json(), sort_keys=True).encode())
    for part in detector.source_identity():  # an ONNX source: its backbone's weights are in the graph
        h.update(part.encode())


def cache_key(detector, dataset: CocoDetection) -> str:
    """Hash of everything a cache depends on: weights, anchors, rule, data, input size."""
    h = hashlib.sha256()
    h.update(CACHE_FORMAT.encode())
    hash_model(h, detector)
    h.update(Path(dataset.ann_file).read_bytes())
    h.update(str(Path(dataset.image_dir).resolve()).encode())
    h.update(json.dumps([list(detector.image_size), detector.arch, detector.num_classes, dataset.resize]).encode())
    return h.hexdigest()


@torch.no_grad()
def build_cache(detector, dataset: CocoDetection, *, batch_size: int = 16, device: str = "cpu",
                progress: bool = True, key: str | None = None) -> CandidateCache:
    """Run ``detector`` once over ``dataset`` and keep every candidate."""
    detector.eval().to(device)
    box_anchor = detector.box_anchor_ids().numpy().astype(np.int32)
    parts: dict[str, list] = {k: [] for k in ("box_index", "labels", "scores", "boxes_xyxy")}
    image_ids, orig_sizes, counts = [], [], []
    for images, targets in tqdm(make_loader(dataset, batch_size), desc="candidates", disable=not progress,
                                leave=False, file=sys.stderr):
        for cands, target in zip(detector.image_candidates(detector.head(detector.backbone(images.to(device)))),
                                 targets):
            parts["box_index"].append(cands.box_index.cpu().numpy().astype(np.int32))
            parts["labels"].append(cands.labels.cpu().numpy().astype(np.int32))
            parts["scores"].append(cands.scores.cpu().numpy().astype(np.float32))
            parts["boxes_xyxy"].append(cands.boxes_xyxy.cpu().numpy().astype(np.float32).reshape(-1, 4))
            image_ids.append(int(target["image_id"]))
            orig_sizes.append(list(target["orig_size"]))
            counts.append(len(cands))
    box_index = np.concatenate(parts["box_index"])
    return CandidateCache(
        key=key or cache_key(detector, dataset),
        image_ids=np.asarray(image_ids, dtype=np.int64),
        orig_sizes=np.asarray(orig_sizes, dtype=np.int64).reshape(-1, 2),
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        box_index=box_index,
        anchor_id=box_anchor[box_index],
        labels=np.concatenate(parts["labels"]),
        scores=np.concatenate(parts["scores"]),
        boxes_xyxy=np.concatenate(parts["boxes_xyxy"]),
        meta={
            "format": CACHE_FORMAT,
            "image_size": list(detector.image_size),
            "resize": dataset.resize,
            "postprocess_spec": detector.postprocess_spec.to_json(),
            "level_starts": detector.level_starts.tolist(),
            "label_map": {str(k): v for k, v in dataset.label_map.items()},
            "anchors": detector.anchor_set.to_json(),
            "ann_file": str(dataset.ann_file),
            "images": image_manifest(dataset),
        },
    )


def image_manifest(dataset: CocoDetection) -> list[list]:
    """Per image, in data set order: [file name, size in bytes, mtime in ns, SHA-256 of the contents]."""
    rows = []
    for path in dataset.image_paths():
        st = path.stat()
        rows.append([str(path.relative_to(dataset.image_dir)), st.st_size, st.st_mtime_ns, file_sha256(path)])
    return rows


# Up to this many image bytes, every image is hashed each time a cache is reused (about a second per
# 256 MiB); above it, an image whose size and mtime are unchanged is taken as unchanged without reading it.
HASH_ALWAYS_MAX_BYTES = 256 * 2**20


def images_unchanged(cache: CandidateCache, dataset: CocoDetection) -> tuple[bool, bool]:
    """(the images are the ones the cache was built from, the manifest's file times need refreshing).

    A split of up to ``HASH_ALWAYS_MAX_BYTES`` is compared by SHA-256, always: an image rewritten with
    its size and mtime put back is seen. Above that, size and mtime are the fast check and only an image
    whose size or mtime changed is hashed (the trade-off the README states). Either way only a
    different SHA-256 makes the cache stale (a touched or copied file with the same contents does not).
    """
    stored = cache.meta.get("images")
    paths = dataset.image_paths()
    if not isinstance(stored, list) or len(stored) != len(paths):
        return False, False
    hash_always = sum(int(row[1]) for row in stored) <= HASH_ALWAYS_MAX_BYTES
    refresh = False
    for row, path in zip(stored, paths):
        name, size, mtime, digest = row
        if name != str(path.relative_to(dataset.image_dir)):
            return False, False
        st = path.stat()
        if not hash_always and (st.st_size, st.st_mtime_ns) == (size, mtime):
            continue
        if st.st_size != size or file_sha256(path) != digest:
            return False, False
        if st.st_mtime_ns != mtime:
            row[2] = st.st_mtime_ns
            refresh = True
    return True, refresh


def _starts_like_ours(head: bytes) -> bool:
    """True if ``head`` begins a cache of ours: a zip whose first member is ``key.npy`` (:meth:`CandidateCache.save`
    writes the key first), as a truncated cache still does."""
    if len(head) < 30 or head[:4] != b"PK\x03\x04":
        return False
    name_len = int.from_bytes(head[26:28], "little")  # the zip local file header is 30 bytes, then the name
    return head[30:30 + name_len] == b"key.npy"


def inspect_cache_file(path: Path, *, ours_by_place: bool = False,
                       load: bool = True) -> tuple[str, CandidateCache | None]:
    """What is at ``path``: ("ours", cache), ("old", None) an older format of ours, ("broken", None) an
    empty or truncated cache of ours, or ("foreign", None) a file edgeanchor did not write.

    A damaged file is ours only if it still starts like a cache of ours, or ``ours_by_place`` (it is in
    edgeanchor's own cache folder): an empty ``notes.txt`` or a half-downloaded zip is foreign. With
    ``load`` False a cache of ours is recognised but not loaded (("ours", None)).
    """
    with open(path, "rb") as fh:
        head = fh.read(64)
    damaged = "broken" if ours_by_place or _starts_like_ours(head) else "foreign"
    if not head:
        return damaged, None
    try:
        z = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, EOFError, ValueError, OSError):
        return damaged, None
    if not isinstance(z, np.lib.npyio.NpzFile):
        return "foreign", None
    with z:
        if not {"key", "meta"} <= set(z.files):
            return "foreign", None
        try:
            fmt = str(json.loads(str(z["meta"])).get("format", ""))
        except (ValueError, AttributeError, zipfile.BadZipFile, EOFError, OSError):
            return damaged, None
    if fmt.startswith("edgeanchor.candidates/") and fmt != CACHE_FORMAT:
        return "old", None
    if fmt != CACHE_FORMAT:
        return "foreign", None
    if not load:
        return "ours", None
    try:
        return "ours", CandidateCache.load(path)
    except (zipfile.BadZipFile, EOFError, ValueError, KeyError, OSError):
        return "broken", None


def check_cache_file(path: str | os.PathLike, *, load: bool = True) -> tuple[str, CandidateCache | None]:
    """Check the cache path before any work: a file of ours (or none yet), in a folder that can be written.

    A file is rebuilt only if it is a cache of ours (by its header, or by being in edgeanchor's cache
    folder); anything else at the path is never replaced.

    Args:
        path: the cache file.
        load: load a cache of ours (False: only recognise it, for a check before the work).

    Returns:
        :func:`inspect_cache_file`'s (status, cache), or ("missing", None).

    Raises:
        EdgeAnchorError: ``path`` is a folder, a file that is not a candidate cache, or cannot be written.
    """
    path = Path(path)
    if path.is_dir():
        raise EdgeAnchorError(f"the candidate cache {path} is a folder; give a file path")
    check_writable(path, "candidate cache")
    if not path.exists():
        return "missing", None
    try:
        in_cache_root = path.resolve().is_relative_to(cache_root().resolve())
        status, cache = inspect_cache_file(path, ours_by_place=in_cache_root, load=load)
    except OSError as exc:
        raise EdgeAnchorError(f"cannot read the candidate cache {path}: {exc.strerror}; check the path") from None
    if status == "foreign":
        raise EdgeAnchorError(
            f"{path} exists and is not a candidate cache written by edgeanchor; refusing to replace it: "
            "choose another cache path or remove the file yourself"
        )
    return status, cache


def load_or_build_cache(detector, dataset: CocoDetection, path, *, batch_size: int = 16, device: str = "cpu",
                        progress: bool = True, log=log) -> CandidateCache:
    """Reuse the cache at ``path`` if it was built from these weights, anchors, rule, annotations and images;
    otherwise rebuild and save it.

    Raises:
        EdgeAnchorError: ``path`` is a folder, or a file that is not a candidate cache (it is never replaced).
    """
    path = Path(path)
    status, cache = check_cache_file(path)
    key = cache_key(detector, dataset)
    if status != "missing":
        if status == "broken":
            warn(f"candidate cache {path} is empty or truncated; rebuilding it")
        elif status == "old":
            log(f"candidate cache {path} was written by an older edgeanchor; rebuilding it")
        else:
            assert cache is not None, "inspect_cache_file returns the cache with the status 'ours'"
            if cache.key != key:
                log(f"candidate cache {path} was written for other weights, anchors or annotations; rebuilding it")
            else:
                same, refresh = images_unchanged(cache, dataset)
                if same:
                    if refresh:
                        cache.save(path)  # same contents, new file times: record them for the fast check
                    log(f"reusing candidate cache {path} ({cache.num_candidates} candidates, "
                        f"{cache.num_images} images)")
                    return cache
                log(f"the images under {dataset.image_dir} changed since candidate cache {path} was built; "
                    "rebuilding it")
    cache = build_cache(detector, dataset, batch_size=batch_size, device=device, progress=progress, key=key)
    cache.save(path)
    return cache
