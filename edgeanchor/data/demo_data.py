"""The demo's synthetic data set, regenerated on demand (never committed).

The demo checkpoint was trained on ``edgeanchor data synth --seed 0
--num-images 3000``. Generation is deterministic, so any machine rebuilds
the very same images; they are cached under ``$EDGEANCHOR_CACHE`` (default
``~/.cache/edgeanchor``) and reused.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..io import make_temp_dir, read_json, write_json

DEMO_SEED = 0
DEMO_NUM_IMAGES = 3000
DEMO_IMAGE_SIZE = 320


def cache_root() -> Path:
    return Path(os.environ.get("EDGEANCHOR_CACHE", Path.home() / ".cache" / "edgeanchor"))


def demo_data_dir() -> Path:
    return cache_root() / f"synth-seed{DEMO_SEED}-n{DEMO_NUM_IMAGES}-{DEMO_IMAGE_SIZE}px"


def ensure_demo_data(progress: bool = True) -> dict:
    """Generate the demo data set if it is not cached yet; returns its paths."""
    from .synth import generate

    root = demo_data_dir()
    marker = root / "synth.json"
    if marker.is_file():
        return read_json(marker)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(root)
    try:
        if progress:
            print(f"generating the demo data set ({DEMO_NUM_IMAGES} images) in {root} ...", flush=True)
        generate(tmp, num_images=DEMO_NUM_IMAGES, seed=DEMO_SEED, image_size=DEMO_IMAGE_SIZE)
        if root.exists():  # another process finished first
            shutil.rmtree(tmp)
            return read_json(marker)
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    info = {
        "image_dir": str(root / "images"),
        "annotations": {s: str(root / "annotations" / f"{s}.json") for s in ("train", "val", "test")},
        "seed": DEMO_SEED,
        "num_images": DEMO_NUM_IMAGES,
    }
    write_json(marker, info)
    return info


def demo_split(split: str) -> tuple[str, str]:
    """(image_dir, annotation file) of a split of the demo data set."""
    info = ensure_demo_data()
    return info["image_dir"], info["annotations"][split]
