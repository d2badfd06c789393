"""Make and inspect data sets.

Actions:
  synth   write a deterministic synthetic COCO-format data set (5 shape
          classes whose aspect ratios h/w and sizes differ, so anchor shapes
          matter) to --out: images/{train,val,test}/*.jpg and
          annotations/{train,val,test}.json; with --format voc, a Pascal VOC
          folder instead: JPEGImages/, Annotations/*.xml,
          ImageSets/Main/{train,val,test}.txt and classes.txt (same images,
          same boxes; read it with --data DIR --split SPLIT).

Example:
  edgeanchor data synth --out data/synth --num-images 2000 --seed 0
  edgeanchor data synth --out data/synth-voc --num-images 2000 --seed 0 --format voc
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from ..errors import EdgeAnchorError
from ..io import atomic_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    synth = actions.add_parser(
        "synth",
        help="write a synthetic COCO-format data set",
        description="Write a deterministic synthetic COCO-format detection data set.",
    )
    synth.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    synth.add_argument("--num-images", type=int, required=True, help="images over all splits (80/10/10)")
    synth.add_argument("--seed", type=int, required=True, help="non-negative seed; same seed, same files")
    synth.add_argument("--image-size", type=int, default=320, help="side of the square images in pixels")
    synth.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (output is the same)")
    synth.add_argument("--format", choices=["coco", "voc"], default="coco",
                       help="coco (images/ + annotations/*.json) or voc (a VOCdevkit-style folder; default coco)")
    synth.add_argument("--overwrite", action="store_true", help="replace an existing synthetic data set at --out")
    synth.add_argument("--json", action="store_true", help="print a JSON result on stdout")


def run(args: argparse.Namespace) -> int:
    if args.action == "synth":
        return _run_synth(args)
    raise EdgeAnchorError("choose an action: edgeanchor data synth --out DIR --num-images N --seed S")


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse an output folder we would clobber by mistake."""
    if out.exists() and not out.is_dir():
        raise EdgeAnchorError(f"--out {out} is a file; choose a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise EdgeAnchorError(f"--out {out} exists and is not empty; pass --overwrite or choose another folder")
    # --overwrite deletes the old folder, so only do it for something this command made.
    if not _is_synth_output(out):
        raise EdgeAnchorError(
            f"--out {out} does not look like a synthetic data set (no annotations/train.json from "
            "edgeanchor); refusing to delete it, remove it yourself or choose another folder"
        )


def _is_synth_output(out: Path) -> bool:
    from ..data.voc_writer import is_synth_voc

    if is_synth_voc(out):
        return True
    try:
        info = json.loads((out / "annotations" / "train.json").read_text()).get("info", {})
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(info, dict) and info.get("generator") == "edgeanchor.data.synth"


def _run_synth(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..data import synth

    out = Path(args.out)
    if args.num_images < 1 or args.seed < 0 or args.image_size < 64 or args.workers < 1:
        raise EdgeAnchorError(
            f"--num-images {args.num_images} --seed {args.seed} --image-size {args.image_size} "
            f"--workers {args.workers}: need num-images >= 1, seed >= 0, image-size >= 64, workers >= 1"
        )
    _check_out(out, args.overwrite)
    start = time.perf_counter()
    with atomic_dir(out, replace=out.exists()) as tmp:
        with tqdm(total=args.num_images, desc="synth", unit="img", file=sys.stderr, leave=False) as bar:
            result = synth.generate(
                tmp, num_images=args.num_images, seed=args.seed, image_size=args.image_size,
                workers=args.workers, progress=bar.update,
            )
        if args.format == "voc":
            result = _as_voc(tmp, result)
    seconds = time.perf_counter() - start
    result = _relocate(result, tmp, out)
    result["seconds"] = round(seconds, 2)
    counts = ", ".join(f"{split} {n}" for split, n in result["num_images"].items())
    summary = (
        f"wrote {args.num_images} images ({counts}) with {sum(result['num_objects'].values())} objects "
        f"to {out} in {seconds:.1f} s"
    )
    if args.json:
        print(json.dumps(result, indent=2))
        print(summary, file=sys.stderr)
    else:
        print(summary)
    return 0


def _as_voc(tmp: Path, result: dict) -> dict:
    """Turn the COCO synthetic set just written in ``tmp`` into a VOC folder in its place."""
    import shutil

    from ..data.voc_writer import write_voc

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
