"""The demo's synthetic data set, regenerated on demand (never committed).

The demo checkpoint was trained on ``edgeanchor data synth --seed 0
--num-images 3000``. Generation is deterministic, so any machine rebuilds
the very same images; they are cached under ``$EDGEANCHOR_CACHE`` (default
``~/.cache/edgeanchor``) and reused.
"""

from __future__ import annotations

from pathlib import Path

from ..io import atomic_dir, cache_root, log, read_json, write_json

DEMO_SEED = 0
DEMO_NUM_IMAGES = 3000
DEMO_IMAGE_SIZE = 320


def demo_data_dir() -> Path:
    return cache_root() / f"synth-seed{DEMO_SEED}-n{DEMO_NUM_IMAGES}-{DEMO_IMAGE_SIZE}px"


def ensure_demo_data(progress: bool = True) -> dict:
    """Generate the demo data set if it is not cached yet; returns its paths.

    The folder is built beside its final place and renamed when complete,
    marker included, so a killed run leaves no half data set.
    """
    from .synth import generate

    root = demo_data_dir()
    marker = root / "synth.json"
    if marker.is_file():
        return read_json(marker)
    info = {
        "image_dir": str(root / "images"),
        "annotations": {s: str(root / "annotations" / f"{s}.json") for s in ("train", "val", "test")},
        "seed": DEMO_SEED,
        "num_images": DEMO_NUM_IMAGES,
    }
    if progress:
        log(f"generating the demo data set ({DEMO_NUM_IMAGES} images) in {root} ...")
    try:
        # An incomplete folder (no marker) from an older version is replaced.
        with atomic_dir(root, replace=root.exists()) as tmp:
            generate(tmp, num_images=DEMO_NUM_IMAGES, seed=DEMO_SEED, image_size=DEMO_IMAGE_SIZE)
            write_json(tmp / "synth.json", info)
    except FileExistsError:  # another process finished first
        pass
    return read_json(marker)


def demo_split(split: str) -> tuple[str, str]:
    """(image_dir, annotation file) of a split of the demo data set."""
    info = ensure_demo_data()
    return info["image_dir"], info["annotations"][split]
