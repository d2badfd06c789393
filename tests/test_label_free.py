"""Label-free search: unlabelled folders and videos, pseudo-labels, the fidelity scorer, and the bad inputs."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import edgeanchor as ea
from edgeanchor.cli import main
from tests.helpers import synth_split

cv2 = pytest.importorskip("cv2")

NUM_IMAGES = 4


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    return synth_split(tmp_path_factory, "label_free_split", num_images=12, seed=7, splits=(0.34, 0.33, 0.33))


@pytest.fixture(scope="module")
def frames(split, tmp_path_factory):
    """The first test images as RGB arrays, as a folder of PNGs and as a lossless FFV1 video (.mkv) at 2 fps."""
    from PIL import Image

    images, anns = split
    names = [im["file_name"] for im in json.loads(Path(anns["test"]).read_text())["images"]][:NUM_IMAGES]
    arrays = [np.asarray(Image.open(Path(images) / n).convert("RGB")) for n in names]
    root = tmp_path_factory.mktemp("label_free_frames")
    folder = root / "frames"
    folder.mkdir()
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(folder / f"frame_{i:06d}.png")
    video = root / "clip.mkv"
    h, w = arrays[0].shape[:2]
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"FFV1"), 2, (w, h))
    assert writer.isOpened(), "this OpenCV cannot write FFV1"
    for a in arrays:
        writer.write(a[:, :, ::-1].copy())  # RGB -> BGR, as OpenCV stores frames
    writer.release()
    return folder, video, arrays


@pytest.fixture(scope="module")
def demo():
    return ea.load("demo")


def test_video_frames_decode_exactly_and_step_by_the_frame_rate(frames):
    from PIL import Image

    folder, video, arrays = frames
    every = ea.data(video, frame_step=1)
    got = sorted(Path(every.images).glob("*.png"))
    assert [p.name for p in got] == [f"frame_{i:06d}.png" for i in range(NUM_IMAGES)]
    for p, a in zip(got, arrays):  # FFV1 is lossless: the decoded frames are the written pixels
        assert np.array_equal(np.asarray(Image.open(p).convert("RGB")), a)
    default = ea.data(video)  # 2 fps: about one frame a second is every 2nd frame
    assert sorted(p.name for p in Path(default.images).glob("*.png")) == ["frame_000000.png", "frame_000002.png"]
    assert sorted(p.name for p in Path(ea.data(video, frame_step=1, max_frames=3).images).glob("*.png")) == [
        "frame_000000.png", "frame_000001.png", "frame_000002.png"]
    assert not every.labelled and every.source == "video"
    listing = json.loads(Path(every.ann).read_text())
    assert listing["annotations"] == [] and len(listing["images"]) == NUM_IMAGES


def test_pseudo_label_file_is_the_models_detections_above_the_threshold(split, demo, tmp_path):
    images, anns = split
    thresh = 0.3
    reference = ea.data(images).with_reference(demo, thresh, progress=False)  # the whole folder, unlabelled
    ref = json.loads(Path(reference.ann).read_text())
    # independently: the same model's detections through evaluate on the labelled splits' image ids
    by_name = {}
    for name in ("train", "val", "test"):
        out = tmp_path / f"{name}.json"
        ea.evaluate(demo, ea.data(images, anns[name]), detections=out, progress=False)
        file_of = {im["id"]: im["file_name"] for im in json.loads(Path(anns[name]).read_text())["images"]}
        for d in json.loads(out.read_text()):
            by_name.setdefault(file_of[d["image_id"]], []).append(d)
    file_of = {im["id"]: im["file_name"] for im in ref["images"]}
    assert sorted(file_of.values()) == sorted(by_name)  # every image of the folder, none twice
    got = sorted((file_of[a["image_id"]], a["category_id"], a["bbox"], a["score"]) for a in ref["annotations"])
    want = sorted((n, d["category_id"], d["bbox"], d["score"]) for n, ds in by_name.items() for d in ds
                  if d["score"] >= thresh)
    assert got == want and len(got) > 0  # exactly: same boxes, scores and classes, bit for bit
    assert all(a["iscrowd"] == 0 and a["area"] == a["bbox"][2] * a["bbox"][3] for a in ref["annotations"])
    assert ref["info"]["reference"] == "pseudo-labels" and ref["info"]["pseudo_thresh"] == thresh
    assert ref["info"]["num_boxes"] == len(want)
    other = ea.data(images).with_reference(demo, 0.6, progress=False)
    assert other.ann != reference.ann  # the threshold is part of the reference's (and so the cache's) key


def test_pseudo_labels_follow_the_image_contents(split, demo, tmp_path):
    """An image rewritten under its name, with its size and mtime put back where they match, gets a new reference."""
    import os
    import shutil

    folder = Path(shutil.copytree(split[0], tmp_path / "images"))
    first = ea.data(str(folder)).with_reference(demo, 0.3, progress=False)
    again = ea.data(str(folder)).with_reference(demo, 0.3, progress=False)
    assert again.ann == first.ann  # same images: the reference is reused
    a, b = sorted(p for p in folder.rglob("*") if p.suffix in (".jpg", ".png"))[:2]
    st = a.stat()
    shutil.copyfile(b, a)  # another image's contents under the first one's name
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
    changed = ea.data(str(folder)).with_reference(demo, 0.3, progress=False)
    assert changed.ann != first.ann
    boxes = {p: [x["bbox"] for x in json.loads(Path(p).read_text())["annotations"]] for p in (first.ann, changed.ann)}
    assert boxes[first.ann] != boxes[changed.ann]  # the new reference holds the new contents' detections


def test_fidelity_scorer_equals_pycocotools_on_the_reference(split, demo):
    from edgeanchor.evaluation.cache import load_or_build_cache
    from edgeanchor.evaluation.coco_map import coco_map, coco_recall
    from edgeanchor.evaluation.predict import predict
    from edgeanchor.evaluation.subset import SubsetScorer

    images, anns = split
    reference = ea.data(images).with_reference(demo, 0.3, progress=False)
    dataset = reference.dataset(demo)
    cache = load_or_build_cache(demo, dataset, Path(reference.ann).with_suffix(".npz"), progress=False)
    scorer = SubsetScorer(cache, dataset.coco_json)
    level0 = [a.id for a in demo.anchor_set.levels[0].anchors]
    for removed in ([], level0[:2], level0 + [level0[-1] + 1]):
        pruned = ea.prune(demo, remove=removed) if removed else demo
        dets = predict(pruned, dataset, progress=False)
        want = coco_map(reference.ann, dets, backend="pycocotools")["mAP"]
        assert scorer.score(tuple(removed), full=False)["mAP"] == pytest.approx(want, abs=1e-12)
    # the unpruned model finds every box of its own reference: they are its detections, IoU 1
    assert coco_recall(reference.ann, predict(demo, dataset, progress=False)) == {"recall50": 1.0, "recall75": 1.0}


def test_label_free_search_on_a_video_gives_the_front_of_its_frames_as_a_folder(frames, demo, tmp_path):
    folder, video, _ = frames
    fronts = []
    for data, out in ((ea.data(folder), tmp_path / "folder"), (ea.data(video, frame_step=1), tmp_path / "video")):
        result = ea.search(demo, data, max_evals=6, workers=1, out=out, pseudo_thresh=0.3, progress=False)
        fronts.append([(p.removed, p.map, p.head_macs) for p in result.front])
        assert json.loads((out / "reference.json").read_text())["info"]["reference"] == "pseudo-labels"
        assert result.baseline["mAP"] > 0.9  # the unpruned model's fidelity to itself: its baseline
    assert fronts[0] == fronts[1]


def test_search_command_says_once_that_it_is_label_free(frames, tmp_path, capsys):
    _, video, _ = frames
    argv = ["search", "--data", str(video), "--frame-step", "1", "--pseudo-thresh", "0.3", "--max-evals", "3",
            "--workers", "1", "--out", str(tmp_path / "s")]
    assert main(argv) == 0
    captured = capsys.readouterr()
    said = [line for line in captured.err.splitlines() if line.startswith("label-free:")]
    assert len(said) == 1 and "score >= 0.3" in said[0] and "not accuracy" in said[0]
    assert "fidelity mAP" in captured.out and "label-free: agreement with the unpruned model" in captured.out


def _no_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was built before the input was checked")
    monkeypatch.setattr("edgeanchor.api.loading.load", refuse)
    monkeypatch.setattr("edgeanchor.api.load", refuse)


@pytest.mark.parametrize("case", ["thresh_high", "thresh_zero", "empty_folder", "no_frames", "corrupt_video",
                                  "frame_step_0", "ann_with_video", "train", "finetune", "search_thresh"])
def test_bad_label_free_input_is_one_line_before_any_model_work(case, frames, tmp_path, monkeypatch, capsys):
    folder, video, _ = frames
    _no_model(monkeypatch)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    zero = tmp_path / "zero.mkv"
    writer = cv2.VideoWriter(str(zero), cv2.VideoWriter_fourcc(*"FFV1"), 2, (32, 32))
    writer.release()
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    pe = ["prune-and-export", "--out", str(tmp_path / "out")]
    argv, words = {
        "thresh_high": ([*pe, "--data", str(folder), "--pseudo-thresh", "1.5"], "--pseudo-thresh"),
        "thresh_zero": ([*pe, "--data", str(folder), "--pseudo-thresh", "0"], "--pseudo-thresh"),
        "empty_folder": ([*pe, "--data", str(empty)], "holds no images"),
        "no_frames": ([*pe, "--data", str(zero)], str(zero)),
        "corrupt_video": ([*pe, "--data", str(corrupt)], str(corrupt)),
        "frame_step_0": ([*pe, "--data", str(video), "--frame-step", "0"], "--frame-step"),
        "ann_with_video": ([*pe, "--data", str(video), "--ann", str(tmp_path / "a.json")], "--ann"),
        "train": (["train", "--model", "demo", "--data", str(folder), "--epochs", "1", "--out",
                   str(tmp_path / "t.pt")], "training needs labels"),
        "finetune": ([*pe, "--data", str(folder), "--finetune-epochs", "1"], "needs labels"),
        "search_thresh": (["search", "--data", str(folder), "--pseudo-thresh", "1", "--out", str(tmp_path / "s")],
                          "--pseudo-thresh"),
    }[case]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], err
    assert not (tmp_path / "out").exists()


def test_folder_without_annotations_is_unlabelled_and_says_so(frames, tmp_path):
    folder, _, _ = frames
    split = ea.data(folder)
    assert split.source == "unlabelled" and not split.labelled
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    assert json.loads(Path(ea.data(copy).ann).read_text())["images"] == json.loads(Path(split.ann).read_text())[
        "images"]  # the listing: sorted names, ids 1..N


def test_label_free_settings_are_the_api_keywords():
    """One definition: the flags' defaults are those of ea.search / ea.evaluate (pseudo_thresh) and ea.data."""
    import dataclasses
    import inspect

    from edgeanchor.api.settings import LabelFreeSettings

    defaults = {f.name: f.default for f in dataclasses.fields(LabelFreeSettings)}
    for fn, names in ((ea.search, ["pseudo_thresh"]), (ea.evaluate, ["pseudo_thresh"]),
                      (ea.data, ["frame_step", "max_frames"])):
        params = inspect.signature(fn).parameters
        assert {n: params[n].default for n in names} == {n: defaults[n] for n in names}
    assert set(defaults) <= set(inspect.signature(ea.prune_and_export).parameters)


def test_a_labelled_report_split_of_a_label_free_search_reports_both(split, demo):
    """report.json's reference entries: labels (mAP) and, as the search was label-free, fidelity beside it."""
    from edgeanchor.evaluation.coco_map import coco_map
    from edgeanchor.evaluation.predict import predict
    from edgeanchor.evaluation.pseudo import pseudo_labels
    from edgeanchor.pipeline import reference_json

    images, anns = split
    report_set = ea.data(images, anns["test"]).dataset(demo)
    pruned = ea.prune(demo, remove=[a.id for a in demo.anchor_set.levels[0].anchors])
    assert reference_json(demo, pruned, report_set, pseudo_thresh=None, metric="coco", progress=False) == {
        "reference": "labels"}
    got = reference_json(demo, pruned, report_set, pseudo_thresh=0.3, metric="coco", progress=False)
    assert got["reference"] == "labels" and got["pseudo_labels"]["pseudo_thresh"] == 0.3
    assert got["pseudo_labels"]["num_images"] == len(report_set)
    # the unpruned model's detections above 0.3 are the reference: each matches its own box (IoU 1) and they
    # outrank every detection below 0.3, so precision is 1 at every recall: fidelity 1, recall 1
    assert got["fidelity"]["baseline"] == 1.0
    assert got["pseudo_labels"]["recall"]["baseline"] == {"recall50": 1.0, "recall75": 1.0}
    reference, _ = pseudo_labels(demo, images, anns["test"], 0.3, progress=False)  # the file it scored against
    dets = predict(pruned, report_set, progress=False)
    want = coco_map(reference, dets, backend="pycocotools")["mAP"]
    assert got["fidelity"]["pruned"] == pytest.approx(want, abs=1e-12) and want < 1.0


def test_regress_names_its_map_rows_fidelity_on_a_label_free_export():
    from edgeanchor.regression import GATED_STAGES, compare

    stages = {s: 1.0 for s in GATED_STAGES}
    deployed = {"runtime": "onnxruntime", "precision": "fp32", "graph": "model.onnx", "mAP": 0.98}
    measured = {"mAP": 0.99, "latency_ratios": stages, "head_channels": [], "deployed_mAP": deployed}
    baseline = {"mAP": 1.0, "latency_ratios": stages, "head_channels": [], "deployed_mAP": {**deployed, "mAP": 0.985}}
    for reference, word in (("pseudo-labels", "fidelity mAP"), ("labels", "mAP")):
        rows = compare({**measured, "reference": reference}, baseline, map_tol=0.01, latency_tol=0.1)
        assert [r["metric"] for r in rows if "mAP" in r["metric"]] == [
            f"{word} (PyTorch)", f"{word} deployed (model.onnx, onnxruntime fp32)"]
