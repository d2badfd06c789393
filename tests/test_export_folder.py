"""ExportFolder (the one owner of the export layout) and atomic_dir (build beside, rename into place)."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from edgeanchor.errors import EdgeAnchorError
from edgeanchor.exporting.folder import FORMAT, FORMAT_VERSION, ExportFolder, check_output, is_export_folder
from edgeanchor.io import atomic_dir, clean_stale_builds
from edgeanchor.models import build_detector
from edgeanchor.pruning import prune


def minimal_report(**extra):
    return {"data": "imgs", "report_ann": "ann.json", "image_size": [320, 320], **extra}


_DEMO = []


def write_minimal(folder, tmp_path, variants=True, **extra):
    """Both variants (the demo, unpruned, unless ``variants`` is False) and a report over a one-image split
    whose image is missing."""
    if not _DEMO:
        _DEMO.append(build_detector("demo"))
    ann = Path(tempfile.mkdtemp(dir=tmp_path.parent)) / "ann.json"  # not in tmp_path: its listing is tested
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "width": 4, "height": 4}],
                               "annotations": [], "categories": [{"id": c, "name": str(c)} for c in range(1, 6)]}))
    if variants:
        folder.write_variant("pruned", _DEMO[0])
        folder.write_variant("baseline", _DEMO[0])
    return folder.write_report({**minimal_report(report_ann=str(ann)), **extra},
                               render=lambda r: f"# {r.get('model')} v{r['format_version']}\n")


def test_report_is_stamped_versioned_and_round_trips(tmp_path):
    with ExportFolder.build(tmp_path / "e") as folder:
        write_minimal(folder, tmp_path, model="x")
    assert folder.root == tmp_path / "e"
    opened = ExportFolder.open(tmp_path / "e")
    assert opened.report["format"] == FORMAT and opened.report["format_version"] == FORMAT_VERSION == 2
    # the annotations are copied in; the image (missing here) is not, and the recorded folder is never read
    assert opened.image_size == (320, 320)
    with pytest.raises(EdgeAnchorError, match="does not hold its report split's images .* pass `data`"):
        _ = opened.data
    assert opened.report_ann == str(tmp_path / "e" / "data" / "annotations.json")
    assert opened.label_to_category() == {1: 1, 2: 2, 3: 3, 4: 4, 5: 5}  # 5 categories, 6 classes: contiguous
    assert opened.model_info["num_classes"] == 6 and opened.preprocess["resize"] == "stretch"
    assert (tmp_path / "e" / "report.md").read_text() == "# x v2\n"
    assert is_export_folder(tmp_path / "e") and not is_export_folder(tmp_path)


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(format_version=3), "newer than this edgeanchor reads"),
    (lambda r: r.update(format_version=2), "device must hold preprocess, label_to_category and model"),
    (lambda r: r.pop("format_version"), "no valid format_version"),
    (lambda r: r.update(format_version="1"), "no valid format_version"),
    (lambda r: r.update(format="other"), "not an edgeanchor export report"),
    (lambda r: r.update(image_size=[0, 320]), r"image_size is \[0, 320\], but it must be \[height, width\]"),
    (lambda r: r.update(report_ann=None), "report_ann must be a path"),
])
def test_open_rejects_unknown_or_malformed_reports(tmp_path, change, message):
    report = {"format": FORMAT, "format_version": 1, **minimal_report()}
    change(report)
    (tmp_path / "report.json").write_text(json.dumps(report))
    with pytest.raises(EdgeAnchorError, match=message):
        ExportFolder.open(tmp_path)


@pytest.mark.parametrize("content", ["[]", "not json", b"\x89PNG\r\n\x1a\n\x00\xff"])
def test_open_rejects_non_reports(tmp_path, content):
    path = tmp_path / "report.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(EdgeAnchorError):
        ExportFolder.open(tmp_path)
    with pytest.raises(EdgeAnchorError, match="does not exist"):
        ExportFolder.open(tmp_path / "missing")
    with pytest.raises(EdgeAnchorError, match="no report.json"):
        ExportFolder.open(tmp_path.parent)


def test_variants_detectors_and_runtime_table(tmp_path):
    det = build_detector("demo")
    pruned = prune(det, [a.id for a in det.anchor_set.levels[0].anchors])
    with ExportFolder.build(tmp_path / "e") as folder:
        folder.write_variant("pruned", pruned, meta={"x": 1})
        folder.write_variant("baseline", det)
        for v in ("pruned", "baseline"):
            for g in ("backbone", "head", "postprocess", "model"):
                folder.graph_path(v, g).write_bytes(b"")
        write_minimal(folder, tmp_path, variants=False)
    opened = ExportFolder.open(tmp_path / "e")
    assert opened.checkpoint_path("baseline").parent.name == "baseline"
    assert opened.load_detector("pruned").anchor_set == pruned.anchor_set
    assert opened.load_detector("pruned") is opened.load_detector("pruned")  # loaded once
    four = ["backbone", "head", "postprocess", "model"]
    assert opened.runtimes() == {"onnxruntime": four, "openvino": four, "opencv": four, "tensorrt": four}
    assert set(opened.report["graphs"]["baseline"]) == {"backbone", "head", "postprocess", "model"}
    assert opened.graphs_for_runtime("onnxruntime", "pruned")["end_to_end"].name == "model.onnx"
    with pytest.raises(EdgeAnchorError, match="has no int8 graphs"):
        opened.graphs_for_runtime("onnxruntime", "pruned", precision="int8")
    (opened.variant_dir("pruned") / "openvino").mkdir()
    (opened.variant_dir("pruned") / "openvino" / "model.xml").write_text("<net/>")
    assert opened.graphs_for_runtime("openvino", "pruned")["end_to_end"].name == "model.xml"  # the IR when there
    assert opened.graphs_for_runtime("onnxruntime", "pruned")["end_to_end"].name == "model.onnx"
    opened.graph_path("baseline", "head").unlink()
    with pytest.raises(EdgeAnchorError, match="no baseline head graph"):
        opened.graphs_for_runtime("onnxruntime", "baseline")


def test_build_keeps_the_old_folder_until_the_new_one_is_complete(tmp_path):
    out = tmp_path / "e"
    with ExportFolder.build(out) as folder:
        (folder.root / "marker").write_text("old")
        write_minimal(folder, tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        with ExportFolder.build(out, overwrite=True) as folder:
            (folder.root / "marker").write_text("new")
            assert (out / "marker").read_text() == "old"  # still in place while building
            raise RuntimeError("boom")
    assert (out / "marker").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]  # no build folder left behind
    with ExportFolder.build(out, overwrite=True) as folder:
        (folder.root / "marker").write_text("new")
        write_minimal(folder, tmp_path)
    assert (out / "marker").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]
    with pytest.raises(RuntimeError, match="without a report"):
        with ExportFolder.build(tmp_path / "f"):
            pass
    assert not (tmp_path / "f").exists()


def test_check_output_refuses_what_is_not_ours(tmp_path):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "ann.json").write_text("{}")
    with pytest.raises(EdgeAnchorError, match="also an input"):
        check_output(data, overwrite=True, inputs=[data / "images", data / "ann.json"])
    with pytest.raises(EdgeAnchorError, match="not an edgeanchor export folder"):
        check_output(data, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(EdgeAnchorError, match="is a file"):
        check_output(tmp_path / "file", overwrite=True)
    (tmp_path / "empty").mkdir()
    check_output(tmp_path / "empty", overwrite=False)  # an empty folder is reused
    with ExportFolder.build(tmp_path / "ours") as folder:
        write_minimal(folder, tmp_path)
    with pytest.raises(EdgeAnchorError, match="pass `overwrite`"):
        check_output(tmp_path / "ours", overwrite=False)
    check_output(tmp_path / "ours", overwrite=True)


def test_atomic_dir_refuses_to_replace_unless_asked(tmp_path):
    out = tmp_path / "d"
    with pytest.raises(FileExistsError):
        with atomic_dir(out) as tmp:
            (tmp / "a").write_text("1")
            out.mkdir()  # another process finished first
    assert list(out.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_build_folders_of_killed_runs_are_cleaned(tmp_path):
    dead, out = _dead_pid(), tmp_path / "e"
    (tmp_path / f".e.build-{dead}-abc").mkdir()
    (tmp_path / f".e.build-{os.getpid()}-live").mkdir()  # a live run's build folder stays
    (tmp_path / ".e.build-notapid").mkdir()  # not named like ours: left alone
    # a run killed mid-swap: the previous output was moved aside and the new one not yet moved in
    (tmp_path / f".e.old-{dead}-xyz" / "previous").mkdir(parents=True)
    (tmp_path / f".e.old-{dead}-xyz" / "previous" / "report.json").write_text("{}")
    touched = clean_stale_builds(out)
    assert len(touched) == 2
    assert (out / "report.json").read_text() == "{}"  # put back, not deleted
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".e.build-notapid", f".e.build-{os.getpid()}-live", "e"])


def test_tensorrt_files_and_bench_results_have_their_paths_here():
    folder = ExportFolder(Path("out"))
    files = folder.engine_files("baseline", "model_trt", "fp16", trt_version="10.3.0", gpu="NVIDIA H100 80GB HBM3")
    # the engine bench and evaluate open (and prune-and-export --tensorrt builds) is the one engine_path names
    assert files.engine == folder.engine_path("baseline", "model_trt", "fp16", trt_version="10.3.0",
                                              gpu="NVIDIA H100 80GB HBM3")
    assert files.engine == Path("out/baseline/tensorrt/model_trt_fp16_trt10.3.0_nvidia-h100-80gb-hbm3.engine")
    assert files.build_log == files.engine.with_suffix(".log")
    assert files.build_log == folder.build_log_path("baseline", "model_trt", "fp16", trt_version="10.3.0",
                                                    gpu="NVIDIA H100 80GB HBM3")
    # the caches are the variant's, shared with the report's trtexec line
    assert files.timing_cache == Path("out/baseline/timing.cache")
    assert files.calib_cache == Path("out/baseline/calib.cache")
    assert folder.trtexec_engine_path("pruned", "model_trt", "int8") == Path("out/model_trt_int8.engine")
    # fp32 keeps the name earlier versions wrote, in either spelling
    assert folder.bench_path("openvino") == folder.bench_path("openvino", "f32") == Path("out/bench_openvino.json")
    assert folder.bench_path("openvino", "f16") == folder.bench_path("openvino", "fp16") == \
        Path("out/bench_openvino_fp16.json")
