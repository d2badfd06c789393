"""Every user mistake: one `error:` line, the right exit code, no traceback, nothing of the user's changed.

One row per case. Each row runs the CLI in-process in a fresh folder holding a
small synthetic data set (and whatever the row adds), hashes every file there
before and after, and checks:

- the exit code (2 for a user mistake; 1 only for a measured failure);
- exactly one stderr line starts with ``error:``, it is the last line, and it
  contains the expected words;
- no traceback;
- no file under the folder was changed, added or removed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from edgeanchor.cli import main
from edgeanchor.datasets.synth import generate
from edgeanchor.models import build_detector, save_checkpoint
from tests.helpers import build_once


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A small data set, a checkpoint, an anchor file and a baseline, copied into every row's folder (built once
    per session; read-only)."""

    def build(root: Path) -> None:
        generate(root / "synth", num_images=20, seed=9, image_size=320, splits=(0.5, 0.25, 0.25), workers=1)
        det = build_detector("demo")
        save_checkpoint(det, root / "model.pt", meta={"note": "a checkpoint of ours"})
        (root / "keep.anchors.json").write_text(json.dumps(det.anchor_set.subset([0, 1, 2]).to_json()))
        (root / "notes.txt").write_text("the user's notes\n")
        (root / "stuff").mkdir()
        (root / "stuff" / "photo.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
        (root / "binary.bin").write_bytes(bytes(range(256)) * 4)

    return build_once(tmp_path_factory, "bad_input_template", build)


@dataclass
class Case:
    id: str
    argv: list[str]
    expect: str  # words the error line must contain (after 'error: ')
    code: int = 2
    setup: Callable[[Path], None] | None = None  # writes extra files before the hashing
    extra_files: dict = field(default_factory=dict)  # name -> text or bytes


D = ["--data", "{root}/synth/images"]
TRAIN = [*D, "--ann", "{root}/synth/annotations/train.json"]
VAL = [*D, "--ann", "{root}/synth/annotations/val.json"]
FAST_SEARCH = ["--max-evals", "5", "--workers", "1"]


def write_anchor_free(path) -> None:
    """A torch.save of an ultralytics (YOLOv8) model class, as its checkpoints pickle (fake module, never installed)."""
    import sys
    import types

    fake = {n: types.ModuleType(n) for n in ("ultralytics", "ultralytics.nn", "ultralytics.nn.tasks")}
    fake["ultralytics.nn.tasks"].DetectionModel = type("DetectionModel", (torch.nn.Module,),
                                                        {"__module__": "ultralytics.nn.tasks"})
    saved = {n: sys.modules.get(n) for n in fake}
    sys.modules.update(fake)
    try:
        torch.save({"model": fake["ultralytics.nn.tasks"].DetectionModel()}, path)
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n)
            else:
                sys.modules[n] = m


def coco_with(change) -> str:
    """A small valid COCO file (two images of the template's val split), changed by ``change``."""
    def make(root: Path) -> None:
        data = json.loads((root / "synth/annotations/val.json").read_text())
        change(data)
        (root / "bad.json").write_text(json.dumps(data))
    return make


def set_first(key, value, where="annotations"):
    return coco_with(lambda d: d[where][0].__setitem__(key, value))


def drop_first(key, where="annotations"):
    return coco_with(lambda d: d[where][0].pop(key))


def all_crowd(d):
    for a in d["annotations"]:
        a["iscrowd"] = 1


def duplicate_ids(d):
    d["annotations"][1]["id"] = d["annotations"][0]["id"]


def voc_xml(name: str, box=(10, 10, 40, 50)) -> str:
    return (f"<annotation>\n<filename>a.jpg</filename>\n<object>\n<name>{name}</name>\n<bndbox><xmin>{box[0]}"
            f"</xmin><ymin>{box[1]}</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox>\n</object>\n"
            "</annotation>\n")


def voc(files: dict):
    """A VOCdevkit folder ``voc`` with one good image ``a`` in split val (classes: the synthetic set's), then
    ``files`` (path -> text) written over it."""
    def make(root: Path) -> None:
        base = root / "voc"
        for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(next((root / "synth" / "images").rglob("*.jpg")), base / "JPEGImages" / "a.jpg")
        (base / "classes.txt").write_text("pole\nplank\ncoin\ncrate\nkite\n")
        (base / "Annotations" / "a.xml").write_text(voc_xml("coin"))
        (base / "ImageSets" / "Main" / "val.txt").write_text("a\n")
        for name, text in files.items():
            (base / name).write_text(text)
    return make


def write(name, content):
    def make(root: Path) -> None:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return make


def regress_baseline(change):
    base = {"format": "edgeanchor.regress/1", "identity": {}, "mAP": 0.7,
            "latency_ratios": {s: 0.8 for s in ("backbone", "head", "postprocess", "end_to_end")},
            "head_channels": [{"level": 0, "cls_channels": 12, "box_channels": 8}]}
    change(base)
    return write("base.json", json.dumps(base))


def fake_export(report, model_bytes=b"\x08\x07 truncated"):
    """An export folder whose report.json and graphs are as given (real images for bench)."""
    def make(root: Path) -> None:
        folder = root / "exp"
        (folder / "baseline").mkdir(parents=True)
        rep = report if not callable(report) else report(root)
        (folder / "report.json").write_text(json.dumps(rep))
        for sub in (folder, folder / "baseline"):
            for g in ("backbone", "head", "postprocess", "model"):
                (sub / f"{g}.onnx").write_bytes(model_bytes)
    return make


def good_report(root: Path) -> dict:
    return {"format": "edgeanchor.export", "format_version": 1, "data": str(root / "synth/images"),
            "report_ann": str(root / "synth/annotations/val.json"), "image_size": [320, 320]}


def search_json_not_ours(root: Path) -> None:
    (root / "srch").mkdir()
    (root / "srch" / "search.json").write_text(json.dumps({"nodes": [{"x": 1}]}))


def our_detections(root: Path) -> None:
    (root / "dets.json").write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1],
                                                  "score": 0.5}]))


CASES = [
    # ---- 1. nothing of the user's is ever lost
    Case("pe-out-is-the-data-folder", ["prune-and-export", *VAL, "--out", "{root}/synth", "--overwrite"],
         "also an input"),
    Case("pe-out-holds-the-images", ["prune-and-export", *VAL, "--out", "{root}/synth/images", "--overwrite"],
         "also an input"),
    Case("pe-out-unrelated-folder", ["prune-and-export", *VAL, "--out", "{root}/stuff", "--overwrite"],
         "not an edgeanchor export folder"),
    Case("pe-out-unrelated-file", ["prune-and-export", *VAL, "--out", "{root}/notes.txt", "--overwrite"],
         "is a file"),
    Case("train-out-is-its-annotations", ["train", "--model", "edgeanchor:demo_ssd", *TRAIN, "--epochs", "1",
                                          "--out", "{root}/synth/annotations/train.json", "--overwrite"],
         "also an input"),
    Case("train-out-unrelated-file", ["train", "--model", "edgeanchor:demo_ssd", *TRAIN, "--epochs", "1",
                                      "--out", "{root}/notes.txt", "--overwrite"], "not a checkpoint written by"),
    Case("train-out-existing-checkpoint", ["train", "--model", "edgeanchor:demo_ssd", *TRAIN, "--epochs", "1",
                                           "--out", "{root}/model.pt"], "exists; pass --overwrite"),
    Case("train-out-is-a-folder", ["train", "--model", "edgeanchor:demo_ssd", *TRAIN, "--epochs", "1",
                                   "--out", "{root}/stuff"], "is a folder"),
    Case("train-out-is-its-init", ["train", "--init", "{root}/model.pt", *TRAIN, "--epochs", "1",
                                   "--out", "{root}/model.pt", "--overwrite"], "also an input"),
    Case("evaluate-detections-is-its-annotations", ["evaluate", "--model", "demo", *VAL, "--detections",
                                                    "{root}/synth/annotations/val.json", "--overwrite"],
         "also an input"),
    Case("evaluate-detections-unrelated-file", ["evaluate", "--model", "demo", *VAL, "--detections",
                                                "{root}/notes.txt", "--overwrite"], "not a detections file"),
    Case("evaluate-detections-is-a-folder", ["evaluate", "--model", "demo", *VAL, "--detections", "{root}/stuff"],
         "is a folder"),
    Case("evaluate-detections-exists", ["evaluate", "--model", "demo", *VAL, "--detections", "{root}/dets.json"],
         "exists; pass --overwrite", setup=our_detections),
    Case("search-cache-unrelated-file", ["search", "--model", "demo", *VAL, "--out", "{root}/s", "--cache",
                                         "{root}/notes.txt", *FAST_SEARCH], "not a candidate cache"),
    Case("search-cache-is-a-folder", ["search", "--model", "demo", *VAL, "--out", "{root}/s", "--cache",
                                      "{root}/stuff", *FAST_SEARCH], "is a folder"),
    Case("search-out-unrelated-folder", ["search", "--model", "demo", *VAL, "--out", "{root}/stuff", *FAST_SEARCH],
         "holds no search of ours"),
    Case("search-out-is-a-file", ["search", "--model", "demo", *VAL, "--out", "{root}/notes.txt", *FAST_SEARCH],
         "is a file"),
    Case("prune-out-unrelated-file", ["prune", "--keep", "0,1", "--out", "{root}/notes.txt", "--overwrite"],
         "not a checkpoint written by"),
    Case("prune-out-is-its-model", ["prune", "--model", "{root}/model.pt", "--keep", "0,1", "--out",
                                    "{root}/model.pt", "--overwrite"], "also an input"),
    Case("prune-out-existing-checkpoint", ["prune", "--keep", "0,1", "--out", "{root}/model.pt"],
         "exists; pass --overwrite"),
    Case("prune-out-is-a-folder", ["prune", "--keep", "0,1", "--out", "{root}/stuff"], "is a folder"),
    Case("synth-out-unrelated-folder", ["data", "synth", "--out", "{root}/stuff", "--num-images", "4", "--seed", "0",
                                        "--overwrite"], "does not look like a synthetic data set"),
    Case("synth-out-is-a-file", ["data", "synth", "--out", "{root}/notes.txt", "--num-images", "4", "--seed", "0"],
         "is a file"),
    Case("bench-json-out-is-a-folder", ["bench", "{root}/exp", "--json-out", "{root}/stuff"], "is a folder",
         setup=fake_export(good_report)),
    Case("bench-json-out-unrelated-file", ["bench", "{root}/exp", "--json-out", "{root}/notes.txt"],
         "not a bench result", setup=fake_export(good_report)),
    Case("regress-json-out-unrelated-file", ["regress", "--baseline", "{root}/base.json", "--export", "{root}/exp",
                                             "--json-out", "{root}/notes.txt"], "not a regress verdict",
         setup=regress_baseline(lambda b: None)),
    Case("regress-update-over-unrelated-file", ["regress", "--baseline", "{root}/notes.txt", "--update",
                                                "--export", "{root}/exp"], "not a regression baseline written by"),
    Case("regress-update-over-annotations", ["regress", "--baseline", "{root}/synth/annotations/val.json",
                                             "--update", "--export", "{root}/exp", "--ann",
                                             "{root}/synth/annotations/val.json"], "also an input"),
    # ---- 3. exit codes that do not lie: a bad baseline or export is exit 2, found before measuring
    Case("regress-baseline-is-a-list", ["regress", "--baseline", "{root}/base.json", "--export", "{root}/exp"],
         "not an edgeanchor regression baseline", setup=write("base.json", "[1, 2]")),
    Case("regress-baseline-missing-stage", ["regress", "--baseline", "{root}/base.json", "--export", "{root}/exp"],
         "latency_ratios must give", setup=regress_baseline(lambda b: b["latency_ratios"].pop("backbone"))),
    Case("regress-baseline-map-string", ["regress", "--baseline", "{root}/base.json", "--export", "{root}/exp"],
         "mAP must be a number", setup=regress_baseline(lambda b: b.update(mAP="0.7"))),
    Case("regress-baseline-binary", ["regress", "--baseline", "{root}/binary.bin", "--export", "{root}/exp"],
         "not a text file"),
    Case("regress-iters-0", ["regress", "--baseline", "{root}/base.json", "--export", "{root}/exp", "--iters", "0"],
         "--iters must be >= 1", setup=regress_baseline(lambda b: None)),
    Case("regress-export-report-is-a-list", ["regress", "--baseline", "{root}/base.json", "--export", "{root}/exp"],
         "not an edgeanchor export report",
         setup=lambda r: (regress_baseline(lambda b: None)(r), fake_export([])(r))),
    Case("regress-baseline-of-another-model", ["regress", "--baseline", "{root}/base.json", "--export",
                                               "{root}/exp"], "does not record which model",
         setup=lambda r: (regress_baseline(lambda b: b.pop("identity"))(r), fake_export(good_report)(r))),
    # ---- 4. tracebacks that must be one line: COCO files
    Case("coco-category-id-not-a-number", ["evaluate", "--model", "demo", *D, "--ann", "{root}/bad.json"],
         "category ids must be integers", setup=set_first("id", "one", where="categories")),
    Case("coco-image-height-not-a-number", ["evaluate", "--model", "demo", *D, "--ann", "{root}/bad.json"],
         "height 'tall'", setup=set_first("height", "tall", where="images")),
    Case("coco-annotation-without-id", ["evaluate", "--model", "demo", *D, "--ann", "{root}/bad.json"],
         "has no integer 'id'", setup=drop_first("id")),
    Case("coco-duplicate-annotation-ids", ["evaluate", "--model", "demo", *D, "--ann", "{root}/bad.json"],
         "appears twice", setup=coco_with(duplicate_ids)),
    Case("coco-no-usable-annotation-search", ["search", "--model", "demo", *D, "--ann", "{root}/bad.json",
                                              "--out", "{root}/s", *FAST_SEARCH],
         "no usable object annotations", setup=coco_with(all_crowd)),
    Case("coco-no-usable-annotation-evaluate", ["evaluate", "--model", "demo", *D, "--ann", "{root}/bad.json"],
         "no usable object annotations", setup=coco_with(all_crowd)),
    Case("coco-binary-ann", ["evaluate", "--model", "demo", *D, "--ann", "{root}/binary.bin"], "not a text file"),
    Case("coco-ann-is-a-folder", ["evaluate", "--model", "demo", *D, "--ann", "{root}/stuff"], "is a folder"),
    Case("coco-missing-ann", ["evaluate", "--model", "demo", *D, "--ann", "{root}/nope.json"], "does not exist"),
    Case("coco-only-data", ["evaluate", "--model", "demo", *D], "give both --data and --ann"),
    # Pascal VOC data (a VOCdevkit folder, or images with XML beside them)
    Case("voc-malformed-xml", ["evaluate", "--model", "demo", "--data", "{root}/voc"],
         "a.xml:4: malformed XML", setup=voc({"Annotations/a.xml": "<annotation>\n<object>\n<name>coin</name>\n"
                                                                     "</annotation>\n"})),
    Case("voc-malformed-xml-search", ["search", "--model", "demo", "--data", "{root}/voc", "--metric", "voc07",
                                      "--out", "{root}/s", *FAST_SEARCH],
         "a.xml:1: malformed XML", setup=voc({"Annotations/a.xml": "<annotation><object>"})),
    Case("voc-class-not-in-list", ["evaluate", "--model", "demo", "--data", "{root}/voc", "--metric", "voc"],
         "class 'dragon' is not in the class list", setup=voc({"Annotations/a.xml": voc_xml("dragon")})),
    Case("voc-empty-split-file", ["search", "--model", "demo", "--data", "{root}/voc", "--out", "{root}/s",
                                  *FAST_SEARCH], "lists no images", setup=voc({"ImageSets/Main/val.txt": "\n"})),
    Case("voc-missing-split-file", ["evaluate", "--model", "demo", "--data", "{root}/voc", "--split", "test"],
         "ImageSets/Main/test.txt does not exist", setup=voc({})),
    Case("voc-missing-image", ["evaluate", "--model", "demo", "--data", "{root}/voc"], "is missing",
         setup=voc({"ImageSets/Main/val.txt": "a\nb\n", "Annotations/b.xml": voc_xml("coin")})),
    Case("voc-missing-xml", ["evaluate", "--model", "demo", "--data", "{root}/voc"], "b.xml is missing",
         setup=voc({"ImageSets/Main/val.txt": "a\nb\n"})),
    Case("voc-xml-without-image", ["evaluate", "--model", "demo", "--data", "{root}/shots"], "is missing",
         setup=write("shots/lonely.xml", voc_xml("coin"))),
    Case("voc-split-of-plain-folder", ["evaluate", "--model", "demo", "--data", "{root}/shots", "--split", "val"],
         "has no splits", setup=write("shots/lonely.xml", voc_xml("coin"))),
    Case("voc-bad-box", ["evaluate", "--model", "demo", "--data", "{root}/voc"], "xmax < xmin",
         setup=voc({"Annotations/a.xml": voc_xml("coin", box=(50, 10, 40, 20))})),
    Case("pe-voc-report-ann", ["prune-and-export", "--data", "{root}/voc", "--report-ann", "{root}/x.json",
                               "--out", "{root}/e"], "not used with Pascal VOC data", setup=voc({})),
    # anchor files
    Case("anchors-binary", ["inspect", "--model", "edgeanchor:demo_ssd", "--anchors", "{root}/binary.bin"],
         "not a text file"),
    Case("anchors-reference-base-size-0", ["inspect", "--model", "edgeanchor:demo_ssd", "--anchors", "{root}/a.json"],
         "base_size must be a positive", setup=write("a.json", json.dumps(
             {"base_size": 0, "scale_ratios": [[[0.1, 1.0]]] * 5}))),
    Case("anchors-reference-base-size-negative", ["train", "--model", "edgeanchor:demo_ssd", "--anchors",
                                                  "{root}/a.json", *TRAIN, "--epochs", "1", "--out", "{root}/o.pt"],
         "base_size must be a positive", setup=write("a.json", json.dumps(
             {"base_size": -300, "scale_ratios": [[[0.1, 1.0]]] * 5}))),
    Case("anchors-reference-nan-scale", ["inspect", "--model", "edgeanchor:demo_ssd", "--anchors", "{root}/a.json"],
         "positive, finite scale", setup=write("a.json", '{"base_size": 320, "scale_ratios": '
                                                         '[[[NaN, 1.0]], [], [], [], []]}')),
    Case("anchors-overanchorized-suffix", ["inspect", "--model", "edgeanchor:demo_ssd", "--anchors",
                                           "overanchorizedXYZ"], "cannot read 'overanchorizedXYZ'"),
    Case("anchors-overanchorized-zero", ["inspect", "--model", "edgeanchor:demo_ssd", "--anchors",
                                         "overanchorized:0x5"], "must each be 1 to 16"),
    Case("anchors-malformed", ["inspect", "--model", "edgeanchor:demo_ssd", "--anchors", "{root}/a.json"],
         "malformed", setup=write("a.json", '{"base_size": 300}')),
    Case("anchors-wrong-levels", ["inspect", "--model", "edgeanchor:demo_ssd", "--anchors", "{root}/a.json"],
         "levels but the model has 5", setup=write("a.json", json.dumps(
             {"base_size": 300, "scale_ratios": [[[0.1, 1.0]]]}))),
    # models and devices
    Case("num-classes-0", ["inspect", "--model", "edgeanchor:demo_ssd", "--num-classes", "0"],
         "--num-classes must be at least 2"),
    Case("num-classes-negative", ["inspect", "--model", "torchvision:ssd300_vgg16", "--num-classes", "-3"],
         "--num-classes must be at least 2"),
    Case("image-size-zero", ["inspect", "--model", "edgeanchor:demo_ssd", "--image-size", "0", "0"],
         "--image-size must be two integers"),
    Case("image-size-negative", ["inspect", "--model", "edgeanchor:demo_ssd", "--image-size", "-320", "320"],
         "--image-size must be two integers"),
    Case("image-size-too-small", ["inspect", "--model", "torchvision:ssd300_vgg16", "--image-size", "64", "64"],
         "does not fit"),
    Case("device-banana-train", ["train", "--model", "edgeanchor:demo_ssd", *TRAIN, "--epochs", "1", "--device",
                                 "banana", "--out", "{root}/o.pt"], "'banana' is not a device name"),
    Case("device-banana-evaluate", ["evaluate", "--model", "demo", *VAL, "--device", "banana"],
         "'banana' is not a device name"),
    Case("device-cuda-without-gpu", ["train", "--model", "edgeanchor:demo_ssd", *TRAIN, "--epochs", "1",
                                     "--device", "cuda", "--out", "{root}/o.pt"], "no CUDA GPU"),
    Case("unknown-model", ["inspect", "--model", "yolo:nope"], "unknown model"),
    Case("weights-missing", ["inspect", "--model", "edgeanchor:demo_ssd", "--weights", "{root}/nope.pth"],
         "does not exist"),
    Case("weights-not-torch", ["inspect", "--model", "edgeanchor:demo_ssd", "--weights", "{root}/notes.txt"],
         "cannot read weights"),
    # numeric flags
    Case("train-batch-size-0", ["train", "--model", "edgeanchor:demo_ssd", *TRAIN, "--epochs", "1", "--batch-size",
                                "0", "--out", "{root}/o.pt"], "--batch-size must be at least 1"),
    Case("train-workers-negative", ["train", "--model", "edgeanchor:demo_ssd", *TRAIN, "--epochs", "1", "--workers",
                                    "-1", "--out", "{root}/o.pt"], "--workers must be >= 0"),
    Case("train-lr-nan", ["train", "--model", "edgeanchor:demo_ssd", *TRAIN, "--epochs", "1", "--lr", "nan",
                          "--out", "{root}/o.pt"], "--lr must be a positive number"),
    Case("train-epochs-0", ["train", "--model", "edgeanchor:demo_ssd", *TRAIN, "--epochs", "0", "--out",
                            "{root}/o.pt"], "--epochs must be at least 1"),
    Case("evaluate-batch-size-0", ["evaluate", "--model", "demo", *VAL, "--batch-size", "0"],
         "--batch-size must be at least 1"),
    Case("search-max-evals-0", ["search", "--model", "demo", *VAL, "--out", "{root}/s", "--max-evals", "0"],
         "--max-evals must be an integer >= 1"),
    Case("search-workers-negative", ["search", "--model", "demo", *VAL, "--out", "{root}/s", "--workers", "-1"],
         "--workers must be an integer >= 1"),
    Case("search-min-map-above-1", ["search", "--model", "demo", *VAL, "--out", "{root}/s", "--min-map", "73"],
         "--min-map must be a COCO mAP between 0 and 1"),
    # Ray: port 1 of this machine refuses connections, so the check fails at once (ray.init would wait a minute)
    Case("search-ray-address-unreachable", ["search", "--model", "demo", *VAL, "--out", "{root}/s", "--executor",
                                            "ray", "--ray-address", "127.0.0.1:1"],
         "cannot reach the Ray cluster at 127.0.0.1:1 (connection refused); start a head node there with "
         "'ray start --head', or give a reachable --ray-address|Ray is not installed"),
    Case("pe-ray-address-unreachable", ["prune-and-export", *VAL, "--executor", "ray", "--ray-address",
                                        "127.0.0.1:1", "--out", "{root}/e"],
         "cannot reach the Ray cluster at 127.0.0.1:1|Ray is not installed"),
    Case("search-ray-address-without-ray", ["search", "--model", "demo", *VAL, "--out", "{root}/s", "--ray-address",
                                            "127.0.0.1:1"],
         "--ray-address '127.0.0.1:1' needs --executor ray; pass --executor ray, or leave --ray-address unset"),
    Case("search-ray-address-malformed", ["search", "--model", "demo", *VAL, "--out", "{root}/s", "--executor",
                                          "ray", "--ray-address", "head-node"],
         "--ray-address must be host:port, ray://host:port or auto (got 'head-node')|Ray is not installed"),
    Case("search-floor-above-baseline", ["search", "--model", "demo", *VAL, "--out", "{root}/s", "--min-map",
                                         "0.999", *FAST_SEARCH], "above the unpruned model's mAP"),
    Case("pe-parity-images-0", ["prune-and-export", *VAL, "--parity-images", "0", "--out", "{root}/e"],
         "--parity-images must be >= 1"),
    Case("pe-opset-99", ["prune-and-export", *VAL, "--opset", "99", "--out", "{root}/e"], "--opset 99 is not"),
    Case("pe-opset-5", ["prune-and-export", *VAL, "--opset", "5", "--out", "{root}/e"], "--opset 5 is not"),
    Case("pe-deploy-score-1", ["prune-and-export", *VAL, "--deploy-score-thresh", "1.5", "--out", "{root}/e"],
         "--deploy-score-thresh must be in [0, 1) (got 1.5)"),
    Case("pe-deploy-nms-0", ["prune-and-export", *VAL, "--deploy-nms-thresh", "0", "--out", "{root}/e"],
         "--deploy-nms-thresh must be in (0, 1] (got 0.0)"),
    Case("pe-nonms-topk-0", ["prune-and-export", *VAL, "--nonms-topk", "0", "--out", "{root}/e"],
         "--nonms-topk must be at least 1 (got 0)"),
    Case("pe-int8-opset-11", ["prune-and-export", *VAL, "--int8", "--opset", "11", "--out", "{root}/e"],
         "--opset 11 is too old for int8 (per-channel quantization needs 13 or newer); choose --opset 13 or newer"),
    Case("pe-matrix-iters-negative", ["prune-and-export", *VAL, "--matrix-iters", "-1", "--out", "{root}/e"],
         "--matrix-iters must be >= 0 (got -1)"),
    Case("bench-int8-without-int8-graphs", ["bench", "{root}/exp", "--precision", "int8", "--images",
                                            "{root}/synth/images"],
         "has no int8 graphs (backbone_int8.onnx); re-run prune-and-export with --int8", setup=fake_export(good_report)),
    Case("bench-onnxruntime-f16", ["bench", "{root}/exp", "--precision", "f16"],
         "runtime onnxruntime cannot run the exported graphs in fp16; pass --precision fp32 or int8",
         setup=fake_export(good_report)),
    Case("bench-opencv-int8", ["bench", "{root}/exp", "--runtime", "opencv", "--precision", "int8"],
         "runtime opencv cannot run the exported graphs in int8; pass --precision fp32|OpenCV is not installed",
         setup=fake_export(good_report)),
    Case("bench-model-trt-on-onnxruntime", ["bench", "{root}/exp", "--end-to-end", "model_trt"],
         "model_trt.onnx is for TensorRT only", setup=fake_export(good_report)),
    Case("evaluate-score-thresh-negative", ["evaluate", "--model", "demo", *VAL, "--score-thresh", "-0.1"],
         "--score-thresh must be in [0, 1) (got -0.1)"),
    Case("evaluate-max-det-0", ["evaluate", "--model", "demo", *VAL, "--max-det", "0"],
         "--max-det must be at least 1 (got 0)"),
    Case("yolo-image-size-not-multiple", ["inspect", "--model", "yolov5:n", "--image-size", "320", "300"],
         "not a multiple of the largest stride 32"),
    Case("yolo-anchor-free-weights", ["inspect", "--model", "yolov5:n", "--weights", "{root}/yolov8.pt"],
         "is anchor-free", setup=lambda root: write_anchor_free(root / "yolov8.pt")),
    Case("bench-threads-negative", ["bench", "{root}/exp", "--threads", "-2"], "--threads >= 0",
         setup=fake_export(good_report)),
    Case("bench-iters-0", ["bench", "{root}/exp", "--iters", "0"], "--iters must be >= 1",
         setup=fake_export(good_report)),
    Case("synth-num-images-0", ["data", "synth", "--out", "{root}/new", "--num-images", "0", "--seed", "0"],
         "need --num-images >= 1"),
    # resume files
    Case("train-resume-not-a-checkpoint", ["train", "--model", "edgeanchor:demo_ssd", *TRAIN, "--epochs", "1",
                                           "--out", "{root}/notes.txt", "--resume"], "not a checkpoint written by"),
    Case("train-resume-state-dict", ["train", "--model", "edgeanchor:demo_ssd", *TRAIN, "--epochs", "1",
                                     "--out", "{root}/sd.pt", "--resume"], "not a checkpoint written by",
         setup=lambda r: torch.save({"conv.weight": torch.zeros(1)}, r / "sd.pt")),
    Case("train-resume-finished-run", ["train", "--model", "edgeanchor:demo_ssd", *TRAIN, "--epochs", "1",
                                       "--out", "{root}/model.pt", "--resume"], "holds a finished run"),
    Case("train-resume-and-overwrite", ["train", "--model", "edgeanchor:demo_ssd", *TRAIN, "--epochs", "1",
                                        "--out", "{root}/model.pt", "--resume", "--overwrite"],
         "either --resume"),
    Case("search-json-not-ours", ["search", "--model", "demo", *VAL, "--out", "{root}/srch", *FAST_SEARCH],
         "not a search written by edgeanchor", setup=search_json_not_ours),
    # flags argparse itself rejects: the same one-line contract
    Case("flag-not-an-int", ["train", "--num-classes", "abc"], "invalid int value: 'abc'"),
    Case("flag-unknown-choice", ["bench", "--runtime", "foo"], "invalid choice: 'foo'"),
    Case("flag-missing-required", ["regress", "--export", "{root}/exp"], "required: --baseline"),
    Case("unknown-command", ["nope"], "invalid choice: 'nope'"),
    # pruning
    Case("prune-keep-unknown-id", ["prune", "--keep", "0,999", "--out", "{root}/p.pt"], "[999] are not in the model"),
    Case("prune-remove-unknown-id", ["prune", "--remove", "999", "--out", "{root}/p.pt"],
         "[999] are not in the model"),
    Case("prune-keep-not-numbers", ["prune", "--keep", "a,b", "--out", "{root}/p.pt"], "cannot read anchor ids"),
    Case("prune-keep-nothing", ["prune", "--keep", ",", "--out", "{root}/p.pt"], "cannot read anchor ids"),
    Case("prune-anchor-file-not-a-subset", ["prune", "--anchors", "{root}/a.json", "--out", "{root}/p.pt"],
         "not one of the model's anchors", setup=write("a.json", json.dumps(
             {"base_size": 320, "scale_ratios": [[[0.77, 3.0]], [], [], [], []]}))),
    # late checks, found before the long work
    Case("pe-target-head-macs-out-of-range", ["prune-and-export", *VAL, "--target-head-macs", "10", "--out",
                                              "{root}/e"], "--target-head-macs 10 is below the cheapest head"),
    Case("pe-finetune-without-train-ann", ["prune-and-export", *VAL, "--finetune-epochs", "2", "--out", "{root}/e"],
         "pass --train-ann"),
    Case("pe-method-greedy-shared-head", ["prune-and-export", "--model", "torchvision:retinanet_resnet50_fpn",
                                          "--image-size", "128", "128", *VAL, "--method", "greedy", "--out",
                                          "{root}/e"], "'--method shared'"),
    Case("pe-tensorrt-without-gpu", ["prune-and-export", *VAL, "--tensorrt", "fp16", "--out", "{root}/e"],
         "TensorRT"),
    # bench on a damaged export
    Case("bench-truncated-onnx", ["bench", "{root}/exp", "--iters", "1", "--warmup", "0", "--images",
                                  "{root}/synth/images"],
         "cannot load", setup=fake_export(good_report)),
    Case("bench-not-an-export", ["bench", "{root}/stuff"], "no report.json"),
    Case("bench-newer-export-format", ["bench", "{root}/exp"], "newer than this edgeanchor reads",
         setup=fake_export(lambda r: {**good_report(r), "format_version": 9})),
]


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>")
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, template, tmp_path, capsys, monkeypatch):
    root = tmp_path / "w"
    shutil.copytree(template, root)
    if case.setup:
        case.setup(root)
    monkeypatch.chdir(root)  # a default output such as exports/demo would land here, and be seen
    before = tree_hashes(root)
    argv = [a.replace("{root}", str(root)) for a in case.argv]
    code = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip()]
    assert code == case.code, f"exit {code}, stderr: {err[-500:]}"
    assert "Traceback" not in err
    error_lines = [ln for ln in lines if ln.startswith("error:")]
    assert len(error_lines) == 1 and lines[-1] == error_lines[0], err[-500:]
    assert any(part in error_lines[0] for part in case.expect.split("|")), error_lines[0]
    assert tree_hashes(root) == before, "a file was changed, added or removed"


def test_every_case_has_a_unique_id():
    assert len({c.id for c in CASES}) == len(CASES) >= 80


# =====================================================================================================================
# Untrusted checkpoints and export folders (issue 24, part 2). Rows of the same contract as CASES: crafted from the
# shipped demo checkpoints, a yolov5 train.py checkpoint written by tests/test_yolov5_checkpoint.py, and a copy of
# the session's demo export (conftest's demo_keep_export) at {root}/exp.
# =====================================================================================================================

def edited_checkpoint(name: str, change, source: str = "demo") -> Callable[[Path], None]:
    """``{root}/<name>``: the shipped checkpoint ``source`` with ``change`` applied to its contents."""
    def make(root: Path) -> None:
        from edgeanchor.models.registry import SHIPPED

        obj = torch.load(SHIPPED[source], map_location="cpu", weights_only=True)
        change(obj)
        torch.save(obj, root / name)
    return make


def yolov5_checkpoint(change) -> Callable[[Path], None]:
    """``{root}/v5.pt``: a yolov5 train.py checkpoint whose model ``change`` alters before it is saved."""
    def make(root: Path) -> None:
        from tests.test_yolov5_checkpoint import write_checkpoint

        write_checkpoint(root / "v5.pt", change=change)
    return make


def torch_object_file(root: Path) -> None:
    """A torch.save of a Python object (pickled by class: the weights-only load refuses it)."""
    torch.save({"model": torch.nn.Identity()}, root / "objects.pt")


def _self_loop(model) -> None:
    model.model._modules["loop"] = model  # a module tree that contains itself


def _v7_yaml_width(model) -> None:
    from edgeanchor.models.yolov5_arch import V7_LAYOUT

    model.yaml = {**V7_LAYOUT, "nc": 3, "depth_multiple": 0.33, "width_multiple": 4096}


CHECKPOINT = ["inspect", "--model", "{root}/bad.pt"]
V5 = ["inspect", "--model", "{root}/v5.pt"]
OUTSIDE = "leads outside the export folder"

UNTRUSTED_CHECKPOINT_CASES = [
    Case("ckpt-empty-as-model", ["inspect", "--model", "{root}/empty.pt"], "empty.pt is empty; give an edgeanchor "
         "checkpoint", setup=write("empty.pt", b"")),
    Case("ckpt-empty-as-weights", ["inspect", "--model", "edgeanchor:demo_ssd", "--weights", "{root}/empty.pt"],
         "empty.pt is empty", setup=write("empty.pt", b"")),
    Case("ckpt-empty-as-yolo-weights", ["inspect", "--model", "yolov5:n", "--weights", "{root}/empty.pt"],
         "empty.pt is empty", setup=write("empty.pt", b"")),
    Case("ckpt-truncated", ["inspect", "--model", "edgeanchor:demo_ssd", "--weights", "{root}/cut.pt"],
         "not a PyTorch file or it is truncated",
         setup=lambda r: (r / "cut.pt").write_bytes((r / "model.pt").read_bytes()[:3000])),
    Case("ckpt-python-objects", ["inspect", "--model", "edgeanchor:demo_ssd", "--weights", "{root}/objects.pt"],
         "holds Python objects (torch.nn.modules.linear.Identity) that edgeanchor will not unpickle",
         setup=torch_object_file),
    Case("ckpt-python-objects-yolo", ["inspect", "--model", "yolov5:n", "--weights", "{root}/objects.pt"],
         "that edgeanchor will not unpickle", setup=torch_object_file),
    Case("ckpt-no-arch", CHECKPOINT, "bad.pt: the checkpoint has no 'arch'",
         setup=edited_checkpoint("bad.pt", lambda o: o.pop("arch"))),
    Case("ckpt-no-postprocess", CHECKPOINT, "bad.pt: the checkpoint has no 'postprocess'",
         setup=edited_checkpoint("bad.pt", lambda o: o.pop("postprocess"))),
    Case("ckpt-no-yolo-layout", CHECKPOINT, "bad.pt: config has no 'yolo_layout'",
         setup=edited_checkpoint("bad.pt", lambda o: o["config"].pop("yolo_layout"), source="demo-yolo")),
    Case("ckpt-arch-not-a-string", CHECKPOINT, "bad.pt: arch is 5, but it must be an architecture name",
         setup=edited_checkpoint("bad.pt", lambda o: o.update(arch=5))),
    Case("ckpt-arch-unknown", CHECKPOINT, "bad.pt: arch is 'torchvision:nope', but it must be one of",
         setup=edited_checkpoint("bad.pt", lambda o: o.update(arch="torchvision:nope"))),
    Case("ckpt-anchors-a-string", CHECKPOINT, "bad.pt: anchors is 'x', but it must be an anchor set",
         setup=edited_checkpoint("bad.pt", lambda o: o.update(anchors="x"))),
    Case("ckpt-anchors-a-list", CHECKPOINT, "bad.pt: anchors is [1, 2], but it must be an anchor set",
         setup=edited_checkpoint("bad.pt", lambda o: o.update(anchors=[1, 2]))),
    Case("ckpt-anchor-image-side", CHECKPOINT, "anchors.image_size is [200000, 200000], but it must be [height, "
         "width] in pixels, each from 1 to 16,384",
         setup=edited_checkpoint("bad.pt", lambda o: o["anchors"].update(image_size=[200000, 200000]))),
    Case("ckpt-num-classes-a-string", CHECKPOINT, "bad.pt: num_classes is '6', but it must be an integer from 1 "
         "to 100,000", setup=edited_checkpoint("bad.pt", lambda o: o.update(num_classes="6"))),
    Case("ckpt-num-classes-million", CHECKPOINT, "bad.pt: num_classes is 1000000, but it must be an integer from 1 "
         "to 100,000", setup=edited_checkpoint("bad.pt", lambda o: o.update(num_classes=10**6))),
    # within the bound, but more classes than the file holds weights for: 6 -> 60 classes, found before building
    Case("ckpt-num-classes-not-in-the-weights", CHECKPOINT, "with num_classes 60 needs a model of 1,793,872 "
         "parameters, but the file holds only", setup=edited_checkpoint("bad.pt", lambda o: o.update(num_classes=60))),
    Case("ckpt-yolo-width-multiple", CHECKPOINT, "bad.pt: width_multiple is 4096, but it must be a number above 0.0 "
         "and at most 4", setup=edited_checkpoint("bad.pt", lambda o: o["config"].update(width_multiple=4096),
                                                  source="demo-yolo")),
    Case("ckpt-yolo-depth-multiple-string", CHECKPOINT, "bad.pt: depth_multiple is '1'",
         setup=edited_checkpoint("bad.pt", lambda o: o["config"].update(depth_multiple="1"), source="demo-yolo")),
    Case("ckpt-postprocess-unknown-score-fn", CHECKPOINT, "postprocess.score_fn is 'magic', but it must be one of",
         setup=edited_checkpoint("bad.pt", lambda o: o["postprocess"].update(score_fn="magic"))),
    Case("ckpt-state-dict-not-tensors", CHECKPOINT, "state_dict['x'] is 'str', but it must be a tensor",
         setup=edited_checkpoint("bad.pt", lambda o: o["state_dict"].update(x="y"))),
    Case("ckpt-yolo-weights-edgeanchor-crafted", ["inspect", "--model", "yolov5:n", "--weights", "{root}/bad.pt"],
         "bad.pt: num_classes is 1000000", setup=edited_checkpoint("bad.pt", lambda o: o.update(num_classes=10**6),
                                                                   source="demo-yolo")),
    # yolov5 train.py checkpoints (read by the restricted unpickler)
    Case("v5-stride-a-string", V5, "v5.pt: Detect.stride is '8,16,32', but it must be 3 positive strides",
         setup=yolov5_checkpoint(lambda m: setattr(m.detect, "stride", "8,16,32"))),
    Case("v5-nc-a-string", V5, "v5.pt: Detect.nc is '3', but it must be an integer from 1 to 100,000",
         setup=yolov5_checkpoint(lambda m: setattr(m.detect, "nc", "3"))),
    Case("v5-names-mixed-keys", V5, "v5.pt: names is {0: 'a', '1': 'b', 2: 'c'}, but it must be a list of class "
         "names", setup=yolov5_checkpoint(lambda m: setattr(m, "names", {0: "a", "1": "b", 2: "c"}))),
    Case("v5-cyclic-module-tree", V5, "v5.pt: module model.loop contains itself (a cycle",
         setup=yolov5_checkpoint(_self_loop)),
    Case("v5-cyclic-module-tree-as-weights", ["inspect", "--model", "yolov5:n", "--weights", "{root}/v5.pt"],
         "contains itself (a cycle", setup=yolov5_checkpoint(_self_loop)),
    # runtimes that cannot load a graph: their own first line, whole, with the fix (the folder is not "damaged")
    Case("export-onnxruntime-cannot-load", ["bench", "{root}/exp", "--iters", "1", "--warmup", "0", "--images",
                                            "{root}/synth/images"], "backbone.onnx failed:Protobuf parsing "
         "failed.); write it again with prune-and-export",
         setup=fake_export(good_report)),
    Case("export-openvino-cannot-load", ["bench", "{root}/exp", "--runtime", "openvino", "--iters", "1", "--warmup",
                                         "0", "--images", "{root}/synth/images"],
         "backbone.onnx\" Please check that model format: \".onnx\" is supported and the model is "
         "correct|OpenVINO is not installed", setup=fake_export(good_report)),
    Case("v5-width-multiple-4096", V5, "v5.pt: yaml.width_multiple is 4096, but it must be a number above 0.0 and "
         "at most 4", setup=yolov5_checkpoint(_v7_yaml_width)),
]


@pytest.mark.parametrize("case", UNTRUSTED_CHECKPOINT_CASES, ids=[c.id for c in UNTRUSTED_CHECKPOINT_CASES])
def test_untrusted_checkpoint(case, template, tmp_path, capsys, monkeypatch):
    test_bad_input(case, template, tmp_path, capsys, monkeypatch)
    err = capsys.readouterr().err  # already checked; torch's own advice and terminal escapes never show
    assert "weights_only" not in err and "\x1b" not in err


def edit_json(name: str, change) -> Callable[[Path], None]:
    """``change`` applied to ``{root}/exp/<name>`` (the export's report.json or its data/annotations.json)."""
    def make(root: Path) -> None:
        path = root / "exp" / name
        obj = json.loads(path.read_text())
        change(obj)
        path.write_text(json.dumps(obj))
    return make


def device(change):
    return edit_json("report.json", lambda r: change(r["device"]))


def symlink_outside(name: str) -> Callable[[Path], None]:
    """``{root}/exp/<name>`` replaced by a symlink to a copy of it outside the export folder."""
    def make(root: Path) -> None:
        inside = root / "exp" / name
        outside = root / f"outside-{inside.name}"
        shutil.copyfile(inside, outside)
        inside.unlink()
        inside.symlink_to(outside)
    return make


def first_image(root: Path) -> str:
    return json.loads((root / "exp" / "data" / "annotations.json").read_text())["images"][0]["file_name"]


def replace_graph(name: str, by: str) -> Callable[[Path], None]:
    return lambda root: shutil.copyfile(root / "exp" / by, root / "exp" / name)


EVAL = ["evaluate", "--export", "{root}/exp"]
BENCH = ["bench", "{root}/exp", "--iters", "1", "--warmup", "0"]
REGRESS = ["regress", "--baseline", "{root}/base.json", "--export", "{root}/exp", "--iters", "1", "--warmup", "0"]

UNTRUSTED_EXPORT_CASES = [
    Case("export-no-preprocess-image-size", EVAL, "device.preprocess.image_size is None, but it must be [height, width]",
         setup=device(lambda d: d["preprocess"].pop("image_size"))),
    Case("export-image-size-200000", BENCH, "report.json: image_size is [200000, 200000], but it must be [height, "
         "width] in pixels, each from 1 to 16,384",
         setup=edit_json("report.json", lambda r: r.update(image_size=[200000, 200000]))),
    Case("export-preprocess-image-size-200000", EVAL, "device.preprocess.image_size is [200000, 200000]",
         setup=device(lambda d: d["preprocess"].update(image_size=[200000, 200000]))),
    Case("export-no-model-arch", EVAL, "report.json: device.model has no 'arch'",
         setup=device(lambda d: d["model"].pop("arch"))),
    Case("export-num-classes-string", EVAL, "device.model.num_classes is '6'",
         setup=device(lambda d: d["model"].update(num_classes="6"))),
    Case("export-label-key-not-int", EVAL, "device.label_to_category is {'one': 1}, but it must be a map of model "
         "label", setup=device(lambda d: d["label_to_category"].update(one=1))),
    Case("export-label-value-string", EVAL, "but it must be a map of model label",
         setup=device(lambda d: d["label_to_category"].update({"1": "cat"}))),
    Case("export-missing-file-name", EVAL, "annotations.json: images[0] needs an integer 'id' and a 'file_name'",
         setup=edit_json("data/annotations.json", lambda a: a["images"][0].pop("file_name"))),
    Case("export-bbox-a-string", EVAL, "annotations[0] (id 1) needs integer 'image_id' and 'category_id' and a "
         "'bbox' of 4 finite numbers", setup=edit_json("data/annotations.json",
                                                       lambda a: a["annotations"][0].update(bbox="1 2 3 4"))),
    Case("export-bbox-a-string-bench", BENCH, "a 'bbox' of 4 finite numbers", setup=edit_json(
        "data/annotations.json", lambda a: a["annotations"][0].update(bbox="1 2 3 4"))),
    Case("export-annotations-absolute", EVAL, f"device.annotations '/etc/passwd' {OUTSIDE} (to /etc/passwd)",
         setup=device(lambda d: d.update(annotations="/etc/passwd"))),
    Case("export-annotations-dotdot", BENCH, f"device.annotations '../synth/annotations/val.json' {OUTSIDE}",
         setup=device(lambda d: d.update(annotations="../synth/annotations/val.json"))),
    Case("export-annotations-dotdot-regress", REGRESS, f"device.annotations '../synth/annotations/val.json' {OUTSIDE}",
         setup=lambda r: (regress_baseline(lambda b: None)(r),
                          device(lambda d: d.update(annotations="../synth/annotations/val.json"))(r))),
    Case("export-images-dotdot", EVAL, f"device.images '../synth/images' {OUTSIDE}",
         setup=device(lambda d: d.update(images="../synth/images"))),
    Case("export-images-absolute-bench", BENCH, f"device.images '/etc' {OUTSIDE}",
         setup=device(lambda d: d.update(images="/etc"))),
    Case("export-file-name-dotdot", EVAL, "file_name '../../../synth/images/x.jpg' leaves the image folder",
         setup=edit_json("data/annotations.json",
                         lambda a: a["images"][0].update(file_name="../../../synth/images/x.jpg"))),
    Case("export-file-name-absolute-bench", BENCH, "file_name '/etc/hostname' leaves the image folder",
         setup=edit_json("data/annotations.json", lambda a: a["images"][0].update(file_name="/etc/hostname"))),
    Case("export-symlinked-model", EVAL, f"model.onnx {OUTSIDE}", setup=symlink_outside("model.onnx")),
    Case("export-symlinked-head-bench", BENCH, f"head.onnx {OUTSIDE}", setup=symlink_outside("head.onnx")),
    Case("export-symlinked-report", EVAL, f"report.json {OUTSIDE}", setup=symlink_outside("report.json")),
    Case("export-symlinked-image", EVAL, OUTSIDE,
         setup=lambda r: symlink_outside(f"data/images/{first_image(r)}")(r)),
    # graphs of another model in the folder
    Case("export-model-without-nms", BENCH, "has 0 NonMaxSuppression nodes, where an edgeanchor end-to-end graph "
         "has one", setup=replace_graph("model.onnx", by="model_nonms.onnx")),
    Case("export-head-of-another-model", BENCH, "head.onnx takes features_4, which backbone.onnx beside it does not "
         "give", setup=replace_graph("head.onnx", by="baseline/head.onnx")),
    Case("export-postprocess-of-another-model", BENCH, "postprocess.onnx takes cls_4, which head.onnx beside it",
         setup=replace_graph("postprocess.onnx", by="baseline/postprocess.onnx")),
    # graphs of another input size than the report says: ONNX Runtime's InvalidArgument, as one line
    Case("export-graphs-of-another-shape", BENCH, "ONNX Runtime cannot run", setup=lambda r: (
        edit_json("report.json", lambda rep: rep.update(image_size=[256, 256]))(r),
        device(lambda d: d["preprocess"].update(image_size=[256, 256]))(r))),
    Case("export-graphs-of-another-shape-evaluate", EVAL, "the graph does not fit the rest of its export folder",
         setup=device(lambda d: d["preprocess"].update(image_size=[256, 256]))),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", UNTRUSTED_EXPORT_CASES, ids=[c.id for c in UNTRUSTED_EXPORT_CASES])
def test_untrusted_export_folder(case, template, demo_keep_export, tmp_path, capsys, monkeypatch):
    from dataclasses import replace

    def setup(root: Path) -> None:
        shutil.copytree(demo_keep_export.root, root / "exp", symlinks=True)
        if case.setup:
            case.setup(root)

    test_bad_input(replace(case, setup=setup), template, tmp_path, capsys, monkeypatch)


# The memory cases, as a user meets them: a fresh process under an address-space limit, with a deadline. 4 GiB of
# address space holds torch with its libraries and a normal run (the first row shows it); without the checks,
# building a model of 10**6 classes or width 4096 needs far more, and so does a 200000 x 200000 input.
MEMORY_LIMIT = 4 * 2**30
MEMORY_CASES = [
    Case("memory-normal-run-fits", ["inspect", "--model", "{root}/model.pt"], "", code=0),
    Case("memory-num-classes-million", CHECKPOINT, "num_classes is 1000000",
         setup=edited_checkpoint("bad.pt", lambda o: o.update(num_classes=10**6))),
    Case("memory-width-multiple-4096", CHECKPOINT, "width_multiple is 4096",
         setup=edited_checkpoint("bad.pt", lambda o: o["config"].update(width_multiple=4096), source="demo-yolo")),
    Case("memory-v5-width-multiple-4096", V5, "width_multiple is 4096", setup=yolov5_checkpoint(_v7_yaml_width)),
]


def _limit_address_space() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_limited(argv: list[str], cwd: Path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    return subprocess.run([sys.executable, "-m", "edgeanchor", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=30, preexec_fn=_limit_address_space)


def check_limited(case: Case, root: Path) -> None:
    before = tree_hashes(root)
    out = run_limited([a.replace("{root}", str(root)) for a in case.argv], root)
    assert out.returncode == case.code, out.stderr[-800:]
    assert "Traceback" not in out.stderr and "MemoryError" not in out.stderr
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == (1 if case.code else 0), out.stderr[-800:]
    assert not errors or case.expect in errors[0], errors
    assert tree_hashes(root) == before


@pytest.mark.parametrize("case", MEMORY_CASES, ids=[c.id for c in MEMORY_CASES])
def test_memory_cases_under_an_address_space_limit(case, template, tmp_path):
    root = tmp_path / "w"
    shutil.copytree(template, root)
    if case.setup:
        case.setup(root)
    check_limited(case, root)


@pytest.mark.slow
def test_a_huge_input_size_in_an_export_under_an_address_space_limit(template, demo_keep_export, tmp_path):
    root = tmp_path / "w"
    shutil.copytree(template, root)
    shutil.copytree(demo_keep_export.root, root / "exp")
    check_limited(Case("fits", EVAL, "", code=0), root)  # the export itself runs under the limit
    device(lambda d: d["preprocess"].update(image_size=[200000, 200000]))(root)
    edit_json("report.json", lambda r: r.update(image_size=[200000, 200000]))(root)
    check_limited(Case("image-size-200000", EVAL, "image_size is [200000, 200000]"), root)
