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

import dataclasses
import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from PIL import Image

import edgeanchor
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
    Case("unlabelled-folder-without-images", ["evaluate", "--model", "demo", "--data", "{root}/synth/annotations"],
         "holds no images"),  # a folder without --ann is searched label-free: it needs images
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


# ==== issue 24, part 3: data-set readers (VOC XML, data.yaml, YOLO labels, text files) ===========================
# The rows below run on two small data sets added to the template: ``vocset`` (``data synth --format voc``, 4
# images, all in split train: ids 000001..000004) and ``yoloset`` (those images as images/val/a..d.jpg with one
# label each, and a data.yaml). Each row breaks one file; the checks are test_bad_input's.

YOLO_YAML = "path: .\nval: images/val\nnames: [pole, plank, coin, crate, kite]\n"
VOC_EVAL = ["evaluate", "--model", "demo", "--data", "{root}/vocset", "--split", "train"]
YOLO_EVAL = ["evaluate", "--model", "demo", "--data", "{root}/yoloset/data.yaml"]
BILLION_LAUGHS = ('<?xml version="1.0"?>\n<!DOCTYPE lolz [\n <!ENTITY lol "lol">\n'
                  + "".join(f' <!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">\n'
                            for i in range(1, 10))
                  + "]>\n<annotation><filename>&lol9;</filename></annotation>\n")
# Nine levels of nine aliases: 9**9 (387 million) strings once expanded, from about 330 bytes.
YAML_ALIAS_BOMB = ("a: &a [x, x, x, x, x, x, x, x, x]\n"
                   + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8))
                   + "val: images/val\nnames: *i\n")


@pytest.fixture(scope="module")
def data_template(template, tmp_path_factory):
    """The template plus ``vocset`` and ``yoloset`` (built once per session; read-only)."""

    def build(root: Path) -> None:
        shutil.copytree(template, root, dirs_exist_ok=True)
        assert main(["data", "synth", "--out", str(root / "vocset"), "--format", "voc", "--num-images", "4",
                     "--seed", "3", "--image-size", "64", "--workers", "1"]) == 0
        yolo = root / "yoloset"
        for name, image in zip("abcd", sorted((root / "vocset" / "JPEGImages").glob("*.jpg"))):
            for sub, text in (("images", None), ("labels", "0 0.5 0.5 0.25 0.25\n")):
                (yolo / sub / "val").mkdir(parents=True, exist_ok=True)
                if text is None:
                    shutil.copyfile(image, yolo / sub / "val" / f"{name}.jpg")
                else:
                    (yolo / sub / "val" / f"{name}.txt").write_text(text)
        (yolo / "data.yaml").write_text(YOLO_YAML)

    return build_once(tmp_path_factory, "bad_input_data_template", build)


def edit_xml(pattern: str, replacement: str, image_id: str = "000001"):
    """Rewrite the first match of ``pattern`` in vocset's Annotations/<image_id>.xml."""
    def make(root: Path) -> None:
        path = root / "vocset" / "Annotations" / f"{image_id}.xml"
        text, n = re.subn(pattern, replacement, path.read_text(), count=1)
        assert n == 1, pattern
        path.write_text(text)
    return make


def symlink(name: str, target: str):
    def make(root: Path) -> None:
        link = root / name
        link.unlink()
        link.symlink_to(root / target)
    return make


def labelimg_filename(filename: str):
    """A plain folder ``shots`` whose one XML has no image beside it, so its <filename> is what names the image."""
    return write("shots/y.xml", f"<annotation>\n<filename>{filename}</filename>\n<object><name>coin</name><bndbox>"
                                "<xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>\n"
                                "</annotation>\n")


def steps(*makes):
    def make(root: Path) -> None:
        for m in makes:
            m(root)
    return make


def make_folder(name: str):
    def make(root: Path) -> None:
        path = root / name
        path.unlink()
        path.mkdir()
    return make


def label(text: str | bytes, name: str = "a"):
    return write(f"yoloset/labels/val/{name}.txt", text)


DATA_FILE_CASES = [
    # VOC: files outside the data folder are never read
    Case("voc-split-id-leaves-the-folder", VOC_EVAL, "train.txt:2: image id '../../outside/evil' is not a plain "
         "file name", setup=steps(write("vocset/ImageSets/Main/train.txt", "000001\n../../outside/evil\n"),
                                  write("outside/evil.xml", voc_xml("coin")))),
    Case("voc-annotation-symlink-out", VOC_EVAL, "000001.xml resolves to",
         setup=symlink("vocset/Annotations/000001.xml", "notes.txt")),
    Case("voc-image-symlink-out", VOC_EVAL, "image id 000001:", setup=symlink("vocset/JPEGImages/000001.jpg",
                                                                             "stuff/photo.jpg")),
    Case("voc-labelimg-filename-absolute", ["evaluate", "--model", "demo", "--data", "{root}/shots"],
         "y.xml:2: <filename> /etc/passwd resolves to /etc/passwd, outside", setup=labelimg_filename("/etc/passwd")),
    Case("voc-labelimg-filename-dotdot", ["evaluate", "--model", "demo", "--data", "{root}/shots"],
         "y.xml:2: <filename>", setup=labelimg_filename("../notes.txt")),
    Case("voc-parent-of-a-devkit", ["evaluate", "--model", "demo", "--data", "{root}"],
         "holds the VOCdevkit year folder(s) vocset; give --data"),
    # VOC: numbers only Python would read
    Case("voc-coordinate-inf", VOC_EVAL, "<xmax> is 'inf' (not a plain decimal number)",
         setup=edit_xml(r"<xmax>[^<]*</xmax>", "<xmax>inf</xmax>")),
    Case("voc-coordinate-1e309", VOC_EVAL, "<xmax> is '1e309' (too large: it overflows to infinity)",
         setup=edit_xml(r"<xmax>[^<]*</xmax>", "<xmax>1e309</xmax>")),
    Case("voc-coordinate-underscore", VOC_EVAL, "<xmin> is '1_0' (not a plain decimal number)",
         setup=edit_xml(r"<xmin>[^<]*</xmin>", "<xmin>1_0</xmin>")),
    Case("voc-coordinate-nan", VOC_EVAL, "<ymin> is 'nan'", setup=edit_xml(r"<ymin>[^<]*</ymin>", "<ymin>nan</ymin>")),
    # VOC: DTDs, entities and size
    Case("voc-billion-laughs", VOC_EVAL, "000001.xml:2: the XML declares a DTD or entities",
         setup=write("vocset/Annotations/000001.xml", BILLION_LAUGHS)),
    Case("voc-doctype-without-entities", VOC_EVAL, "declares a DTD",
         setup=write("vocset/Annotations/000001.xml", "<!DOCTYPE annotation>\n<annotation></annotation>\n")),
    Case("voc-external-entity", VOC_EVAL, "declares a DTD", setup=write(
        "vocset/Annotations/000001.xml", '<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n'
        "<annotation><filename>&x;</filename></annotation>\n")),
    Case("voc-annotation-over-the-cap", VOC_EVAL, "000001.xml is larger than 1 MiB", setup=write(
        "vocset/Annotations/000001.xml", "<annotation>" + " " * (1 << 20) + "</annotation>\n")),
    # VOC: text files
    Case("voc-classes-txt-is-a-folder", VOC_EVAL, "classes.txt is a folder; it must be a text file",
         setup=make_folder("vocset/classes.txt")),
    Case("voc-classes-txt-not-utf8", VOC_EVAL, "classes.txt:2: not UTF-8 text (byte 0xff at byte offset 10)",
         setup=write("vocset/classes.txt", b"pole\nplank\xff\ncoin\ncrate\nkite\n")),
    Case("voc-split-file-not-utf8", VOC_EVAL, "train.txt:3: not UTF-8 text (byte 0xe9 at byte offset 14)",
         setup=write("vocset/ImageSets/Main/train.txt", b"000001\n000002\n\xe9\n")),
    # YOLO labels
    Case("yolo-negative-width", YOLO_EVAL, "labels/val/a.txt:1: the box has width -0.2 and height 0.2; both must "
         "be positive", setup=label("0 0.5 0.5 -0.2 0.2\n")),
    Case("yolo-zero-height", YOLO_EVAL, "labels/val/b.txt:2: the box has width 0.2 and height 0",
         setup=label("1 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0\n", "b")),
    Case("yolo-class-inf", YOLO_EVAL, "a.txt:1: the class id 'inf' is not a finite decimal number",
         setup=label("inf 0.5 0.5 0.2 0.2\n")),
    Case("yolo-class-1e309", YOLO_EVAL, "a.txt:1: the class id '1e309'", setup=label("1e309 0.5 0.5 0.2 0.2\n")),
    Case("yolo-class-nan", YOLO_EVAL, "a.txt:1: the class id 'nan'", setup=label("nan 0.5 0.5 0.2 0.2\n")),
    # inf coordinates once became a NaN box in the converted file, and the error named that cache file
    Case("yolo-inf-box-names-the-label-file", YOLO_EVAL, "labels/val/a.txt:1: value 2 'inf' is not a finite decimal",
         setup=label("0 inf 0.5 inf 0.2\n")),
    Case("yolo-label-path-is-a-folder", YOLO_EVAL, "the label file", setup=make_folder("yoloset/labels/val/c.txt")),
    Case("yolo-label-not-utf8", YOLO_EVAL, "a.txt:2: not UTF-8 text (byte 0x80 at byte offset 18)",
         setup=label(b"0 0.5 0.5 0.2 0.2\n\x80\n")),
    Case("yolo-image-list-not-utf8", YOLO_EVAL, "val.txt:2: not UTF-8 text (byte 0xc3 at byte offset 17)",
         setup=steps(write("yoloset/val.txt", b"images/val/a.jpg\n\xc3(\n"),
                     write("yoloset/data.yaml", YOLO_YAML.replace("images/val", "val.txt")))),
    # a 57-byte PNG declaring 100,000 x 100,000 grey pixels (tests/test_data_readers.py: png_header)
    Case("voc-image-declares-10-gigapixels", VOC_EVAL, "000002.jpg (Image size (10000000000 pixels) exceeds limit",
         setup=write("vocset/JPEGImages/000002.jpg", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x01\x86\xa0\x00\x01"
                                                     b"\x86\xa0\x08\x00\x00\x00\x00\x8d9T\x14\x00\x00\x00\x00IEND\xaeB`\x82")),
    # a split without objects: the message names the user's data, not the converted file under the cache root
    Case("yolo-no-objects-names-the-data-yaml", YOLO_EVAL, "the 'val' split of {root}/yoloset/data.yaml has no "
         "usable object annotations", setup=steps(*(label("", n) for n in "abcd"))),
    Case("voc-no-objects-names-the-folder", VOC_EVAL, "the VOC data {root}/vocset split train has no usable object",
         setup=steps(*(edit_xml(r"(?s)<object>.*</object>", "", f"00000{i}") for i in range(1, 5)))),
    # data.yaml
    Case("yolo-yaml-not-utf8", YOLO_EVAL, "data.yaml:3: not UTF-8 text (byte 0xff",
         setup=write("yoloset/data.yaml", YOLO_YAML.encode().replace(b"kite", b"k\xffte"))),
    Case("yolo-yaml-alias-bomb", YOLO_EVAL, "data.yaml:2: the YAML alias *a is not allowed",
         setup=write("yoloset/data.yaml", YAML_ALIAS_BOMB)),
    Case("yolo-nc-a-billion", YOLO_EVAL, "nc is 1000000000; it must be a whole number of classes from 1 to 100,000",
         setup=write("yoloset/data.yaml", "val: images/val\nnc: 1000000000\n")),
    Case("yolo-nc-a-string", YOLO_EVAL, "nc is '5'", setup=write("yoloset/data.yaml", YOLO_YAML + "nc: '5'\n")),
    Case("yolo-path-a-number", YOLO_EVAL, "'path' is 5; it must be a folder path",
         setup=write("yoloset/data.yaml", YOLO_YAML.replace("path: .", "path: 5"))),
]


@pytest.mark.parametrize("case", DATA_FILE_CASES, ids=[c.id for c in DATA_FILE_CASES])
def test_bad_data_file(case, data_template, tmp_path, capsys, monkeypatch):
    expect = case.expect.replace("{root}", str(tmp_path / "w"))  # the folder test_bad_input copies the data into
    test_bad_input(dataclasses.replace(case, expect=expect), data_template, tmp_path, capsys, monkeypatch)


def test_the_data_sets_the_rows_break_are_valid(data_template, capsys):
    for argv in (VOC_EVAL, YOLO_EVAL):
        assert main([a.replace("{root}", str(data_template)) for a in argv]) == 0, capsys.readouterr().err[-500:]
    assert len({c.id for c in DATA_FILE_CASES} | {c.id for c in CASES}) == len(DATA_FILE_CASES) + len(CASES)


# Memory and time: each file below is read by a fresh torch-free process (the readers import no torch, so a tight
# address-space limit leaves a valid run room) under a deadline; the limit turns a runaway allocation into a
# MemoryError traceback, and the deadline a runaway parse into a failure, instead of a stuck machine. The deadline
# is only an upper bound: a valid run takes seconds, and it holds on a machine running two test suites at once.
SUBPROCESS_DEADLINE_S = 120
READER_LIMIT_BYTES = 1 << 30
READER = """
import resource, sys
from edgeanchor.api.data import data
from edgeanchor.errors import EdgeAnchorError
try:
    split = data(sys.argv[1], split=sys.argv[2] or None).resolve()
except EdgeAnchorError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(2)
assert "torch" not in sys.modules
print(split.ann)
"""
MANY_OBJECTS = 4000  # about 940 KB of LabelImg-style objects: a valid file just under the cap


def labelimg_folder(root: Path, xml: str) -> Path:
    folder = root / "shots"
    folder.mkdir()
    Image.new("RGB", (64, 48), (90, 120, 30)).save(folder / "a.jpg")
    (folder / "a.xml").write_text(xml)
    return folder


def annotation(objects: str) -> str:
    return f"<annotation>\n<filename>a.jpg</filename>\n{objects}</annotation>\n"


def voc_object(name: str = "coin") -> str:
    return (f"\t<object>\n\t\t<name>{name}</name>\n\t\t<pose>Unspecified</pose>\n\t\t<truncated>0</truncated>\n"
            "\t\t<difficult>0</difficult>\n\t\t<bndbox>\n\t\t\t<xmin>3</xmin>\n\t\t\t<ymin>4</ymin>\n"
            "\t\t\t<xmax>20</xmax>\n\t\t\t<ymax>30</ymax>\n\t\t</bndbox>\n\t</object>\n")


def yolo_folder(root: Path, data_yaml: str) -> Path:
    (root / "images" / "val").mkdir(parents=True)
    Image.new("RGB", (64, 48)).save(root / "images" / "val" / "a.jpg")
    (root / "data.yaml").write_text(data_yaml)
    return root / "data.yaml"


BOUNDED_CASES = {  # id -> (builds the data, returns (data, split)), expected exit code, words of the last line
    "voc-billion-laughs": (lambda r: (labelimg_folder(r, BILLION_LAUGHS), ""), 2, "declares a DTD or entities"),
    "voc-4-mb-annotation": (lambda r: (labelimg_folder(r, annotation(voc_object() * 18_300)), ""), 2,
                            "larger than 1 MiB"),
    "voc-valid-near-the-cap": (lambda r: (labelimg_folder(r, annotation(voc_object() * MANY_OBJECTS)), ""), 0,
                               ".json"),
    # the class name is 'k' and 200,000 'i's, each its own text chunk (split by an empty element): joined once, as
    # the old `text += chunk` per chunk took time quadratic in the chunks
    "voc-valid-text-in-200k-chunks": (lambda r: (labelimg_folder(r, annotation(voc_object(
        "k" + "i<b/>" * 200_000))), ""), 0, ".json"),
    "yolo-yaml-alias-bomb": (lambda r: (yolo_folder(r, YAML_ALIAS_BOMB), "val"), 2, "YAML alias *a is not allowed"),
    "yolo-nc-a-billion": (lambda r: (yolo_folder(r, "val: images/val\nnc: 1000000000\n"), "val"), 2,
                          "nc is 1000000000"),
}


def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (READER_LIMIT_BYTES, READER_LIMIT_BYTES))


@pytest.mark.parametrize("case", sorted(BOUNDED_CASES))
def test_reader_bounded_in_memory_and_time(case, tmp_path):
    make, code, words = BOUNDED_CASES[case]
    path, split = make(tmp_path)
    before = tree_hashes(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(Path(edgeanchor.__file__).parents[1]),
           "EDGEANCHOR_CACHE": str(tmp_path.parent / f"{tmp_path.name}-cache"), "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", READER, str(path), split], capture_output=True, text=True,
                          timeout=SUBPROCESS_DEADLINE_S, env=env, preexec_fn=_limit_address_space)
    lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
    assert proc.returncode == code, proc.stderr[-800:]
    assert "Traceback" not in proc.stderr and words in lines[-1]
    assert [ln for ln in lines if ln.startswith("error:")] == (lines[-1:] if code else [])
    assert tree_hashes(tmp_path) == before
    if case == "voc-valid-near-the-cap":
        assert len(json.loads(Path(lines[-1]).read_text())["annotations"]) == MANY_OBJECTS
    if case == "voc-valid-text-in-200k-chunks":
        assert json.loads(Path(lines[-1]).read_text())["categories"] == [{"id": 1, "name": "k" + "i" * 200_000}]
# ======================================================================================================
# Issue 24, API misuse and wording (helper wt-apimisc): CLI rows, then API rows. Own lists, own tests.
# ======================================================================================================

APIMISC_CASES = [
    Case("search-ray-address-port-out-of-range", ["search", "--model", "demo", *VAL, "--out", "{root}/s",
                                                  "--executor", "ray", "--ray-address", "127.0.0.1:99999"],
         "--ray-address '127.0.0.1:99999' has port 99999; a port is 1 to 65535"),
    Case("pe-ray-address-port-zero", ["prune-and-export", *VAL, "--executor", "ray", "--ray-address",
                                      "ray://head:0", "--out", "{root}/e"],
         "--ray-address 'ray://head:0' has port 0; a port is 1 to 65535"),
    Case("search-max-drop-negative", ["search", "--model", "demo", *VAL, "--out", "{root}/s", "--max-drop", "-1"],
         "--max-drop must be between 0 and 1 in mAP units, 0.005 = half a point (got -1.0)"),
    Case("search-data-does-not-exist", ["search", "--model", "demo", "--data", "{root}/nonexistent", "--out",
                                        "{root}/s"], "the data '{root}/nonexistent' does not exist"),
    Case("prune-keep-repeated-id", ["prune", "--keep", "0,0,1", "--out", "{root}/p.pt"],
         "--keep lists anchor ids [0] more than once"),
    Case("prune-remove-repeated-id", ["prune", "--remove", "3,3", "--out", "{root}/p.pt"],
         "--remove lists anchor ids [3] more than once"),
    Case("evaluate-export-with-model-settings", ["evaluate", "--export", "{root}/exp", "--weights", "{root}/model.pt",
                                                 "--batch-size", "3", "--device", "cpu"],
         "--weights, --batch-size cannot be used with --export"),
]


@pytest.mark.parametrize("case", APIMISC_CASES, ids=[c.id for c in APIMISC_CASES])
def test_bad_input_apimisc(case, template, tmp_path, capsys, monkeypatch):
    case = Case(case.id, case.argv, case.expect.replace("{root}", str(tmp_path / "w")), case.code, case.setup)
    test_bad_input(case, template, tmp_path, capsys, monkeypatch)


@pytest.fixture(scope="module")
def demo_det():
    import edgeanchor as ea

    return ea.load("demo")


def _search_result():
    from edgeanchor.api.results import SearchResult

    front = [{"removed": [1], "mAP": 0.61, "head_macs": 100, "boxes": 10, "num_anchors": 1, "anchors_file": "a.json",
              "cost": 100.0}]
    return SearchResult({"front": front, "baseline": {"mAP": 0.62}, "floor": 0.6}, [0, 1], "s")


# (id, the call on the demo detector, the parameter the one error line must name, words it must contain)
API_MISUSE = [
    ("load-none", lambda det, ea: ea.load(None), "name_or_path", "must be a str or a path (os.PathLike) (got None)"),
    ("prune-name-not-detector", lambda det, ea: ea.prune("demo", [0]), "det",
     "must be a Detector (got 'demo', a str); build one with ea.load('demo')"),
    ("inspect-name-not-detector", lambda det, ea: ea.inspect("demo"), "det", "must be a Detector (got 'demo', a str)"),
    ("bench-int-folder", lambda det, ea: ea.bench(5), "folder",
     "must be an ExportFolder, a str, a path (os.PathLike) or None (got 5, an int)"),
    ("bench-str-iters", lambda det, ea: ea.bench("exp", iters="5"), "iters", "must be an int or 'auto' (got '5', a str)"),
    ("export-int-out", lambda det, ea: ea.export(det, 5, baseline=det, data="demo"), "out",
     "must be a str or a path (os.PathLike) (got 5, an int)"),
    ("export-name-baseline", lambda det, ea: ea.export(det, "exp", baseline="demo", data="demo"), "baseline",
     "must be a Detector (got 'demo', a str)"),
    ("prune-float-ids", lambda det, ea: ea.prune(det, [0.5, 1.0]), "keep", "(got [0.5, 1.0], a list: 0.5, a float"),
    ("prune-bool-mask", lambda det, ea: ea.prune(det, [True, False]), "keep", "(got [True, False], a list: True, a bool"),
    ("prune-repeated-ids", lambda det, ea: ea.prune(det, [4, 4]), "keep", "lists anchor ids [4] more than once"),
    ("prune-unknown-id", lambda det, ea: ea.prune(det, [0, 30]), "keep", "anchor ids [30] are not in the model"),
    ("search-missing-data", lambda det, ea: ea.search(det, "nonexistent"), None,
     "the data 'nonexistent' does not exist; give an image folder with its COCO annotation file"),
    ("search-str-max-drop", lambda det, ea: ea.search(det, "demo", max_drop="0.01"), "max_drop",
     "must be a number or None (got '0.01', a str)"),
    ("search-port-out-of-range", lambda det, ea: ea.search(det, "demo", executor="ray",
                                                           ray_address="127.0.0.1:99999"),
     "ray_address", "has port 99999; a port is 1 to 65535"),
    ("choose-negative-drop", lambda det, ea: _search_result().choose(max_drop=-1), "max_drop",
     "must be between 0 and 1 in mAP units, 0.005 = half a point (got -1)"),
    ("choose-min-map-above-1", lambda det, ea: _search_result().choose(min_map=1.5), "min_map",
     "must be a COCO mAP between 0 and 1 (got 1.5)"),
    ("choose-negative-target", lambda det, ea: _search_result().choose(target_head_macs=-5), "target_head_macs",
     "must be a positive number (got -5)"),
]


@pytest.mark.parametrize("call, param, words", [row[1:] for row in API_MISUSE], ids=[row[0] for row in API_MISUSE])
def test_api_misuse_is_one_line_naming_the_parameter(demo_det, tmp_path, monkeypatch, call, param, words):
    import edgeanchor as ea
    from edgeanchor.errors import EdgeAnchorError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(EdgeAnchorError) as info:
        call(demo_det, ea)
    message = str(info.value)
    assert "\n" not in message and words in message, message
    if param:
        assert f"`{param}`" in message, message
    assert not any(tmp_path.iterdir()), "nothing is written"


def test_apimisc_ids_are_unique():
    ids = [c.id for c in CASES] + [c.id for c in APIMISC_CASES]
    assert len(set(ids)) == len(ids)
    assert len({row[0] for row in API_MISUSE}) == len(API_MISUSE)
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
         # the runtime's line is quoted whole up to a length, so how much of it shows depends on the tmp path
         "backbone.onnx (Unable to read the model|OpenVINO is not installed",
         setup=fake_export(good_report)),
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


# The memory cases, as a user meets them: a fresh process under an address-space limit, with a deadline (an upper
# bound that holds while torch imports on a machine running two test suites at once). 4 GiB of
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
                          text=True, timeout=SUBPROCESS_DEADLINE_S, preexec_fn=_limit_address_space)


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
