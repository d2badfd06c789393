"""The public Python API (``import edgeanchor as ea``): its names, its light import, and what each step does."""

import inspect
import json
import subprocess
import sys

import pytest
import torch

import edgeanchor as ea
from edgeanchor.models import build_detector
from edgeanchor.subset_search.run import choose_point
from tests.helpers import shared_synth_split

PUBLIC = ["AnchorSet", "BenchResult", "CheckFailed", "Data", "Detector", "EdgeAnchorError", "ExportFolder",
          "FrontPoint", "SearchResult", "__version__", "bench", "data", "evaluate", "export", "finetune", "inspect",
          "load", "prune", "prune_and_export", "regress", "save", "search", "synth", "wrap"]


def test_the_public_names_are_pinned():
    # A name removed or added here is a deliberate change of the public surface.
    assert ea.__all__ == PUBLIC
    for name in PUBLIC:
        assert getattr(ea, name) is not None
    for name in ("load", "wrap", "data", "evaluate", "search", "prune", "save", "finetune", "export", "bench",
                 "prune_and_export", "inspect", "regress", "synth"):
        fn = getattr(ea, name)
        assert callable(fn)
        assert inspect.signature(fn).parameters, name  # the API function's own signature
    assert issubclass(ea.EdgeAnchorError, Exception)


def test_typed_package():
    from pathlib import Path

    assert (Path(ea.__file__).parent / "py.typed").is_file()
    assert "py.typed" in (Path(ea.__file__).parent.parent / "pyproject.toml").read_text()


NO_TORCH = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch.") or name.startswith("torchvision"):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, Block())
"""


def test_import_is_light_and_help_needs_no_torch():
    code = NO_TORCH + """
import edgeanchor as ea
assert "torch" not in sys.modules
ea.data, ea.bench, ea.export, ea.evaluate, ea.search, ea.ExportFolder, ea.EdgeAnchorError, ea.Data
assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("edgeanchor"))
from edgeanchor.cli import main
assert main(["--help"]) == 0
assert main(["bench", "--help"]) == 0
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "prune-and-export" in proc.stdout


def test_api_functions_are_plain_functions_no_module_shadows():
    # ea.search & co are the API functions themselves, before and after any internal module is imported
    import pkgutil
    import types

    import edgeanchor.datasets.demo_data  # noqa: F401 - the packages once named like the functions
    import edgeanchor.subset_search.run  # noqa: F401

    modules = {m.name for m in pkgutil.iter_modules(ea.__path__)}
    assert not modules & set(ea.__all__), "a module named like a public name rebinds it on import"
    for name in ("data", "evaluate", "search", "prune", "export", "bench", "regress"):
        fn = getattr(ea, name)
        assert isinstance(fn, types.FunctionType) and fn.__module__.startswith("edgeanchor.api."), name
    assert "max_drop" in inspect.signature(ea.search).parameters
    assert inspect.getdoc(ea.export).startswith("Export a pruned detector and its unpruned baseline")
    assert pickle_round_trip(choose_point) is choose_point
    with pytest.raises(ea.EdgeAnchorError, match="the data 'some/folder' does not exist"):
        ea.data("some/folder").resolve()


def pickle_round_trip(obj):
    import pickle

    return pickle.loads(pickle.dumps(obj))


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    images, anns = shared_synth_split(tmp_path_factory, "api_split", num_images=30, seed=7, splits=(0.34, 0.33, 0.33))
    return images, anns


@pytest.fixture(scope="module")
def demo():
    return ea.load("demo")


def test_data_splits_and_errors(split, tmp_path, monkeypatch):
    images, anns = split
    val = ea.data(images, anns["val"])
    assert (val.images, val.ann, val.source) == (images, anns["val"], "coco")
    assert ea.data(val) is val and val.with_ann(anns["test"]).ann == anns["test"]
    with pytest.raises(ea.EdgeAnchorError, match="single COCO annotation file"):
        val.other_split("test")
    # nothing is read or generated until the split is used, so a step checks its own settings first
    import edgeanchor.datasets.demo_data as demo_data

    monkeypatch.setattr(demo_data, "ensure_demo_data", lambda *a, **k: pytest.fail("generated too early"))
    demo = ea.data("demo", split="test")
    with pytest.raises(ea.EdgeAnchorError, match="`max_drop` must be between 0 and 1"):
        ea.search(ea.load("demo"), demo, max_drop=3.0)
    bad = ea.data(images, anns["val"], split="test")
    with pytest.raises(ea.EdgeAnchorError, match="split 'test' needs a YOLO data.yaml"):
        bad.resolve()
    with pytest.raises(ea.EdgeAnchorError, match="give both `data` and `ann`"):
        ea.data(None, anns["val"]).resolve()
    with pytest.raises(ea.EdgeAnchorError, match="annotation file"):
        ea.evaluate(ea.load("demo"), ea.data(images, tmp_path / "missing.json"), progress=False)


def test_search_choose_prune_and_evaluate_agree(demo, split, tmp_path, capsys):
    images, anns = split
    val = ea.data(images, anns["val"])
    result = ea.search(demo, val, max_drop=0.02, max_evals=25, workers=1, out=tmp_path / "s", progress=False)
    stored = json.loads((tmp_path / "s" / "search.json").read_text())
    assert result.to_json() == stored and result.num_evals == stored["num_evals"] == len(stored["nodes"]) <= 25
    front = result.front
    assert front and [p.head_macs for p in front] == sorted(p.head_macs for p in front)
    assert all(p.keep | set(p.removed) == set(demo.anchor_set.ids) and not p.keep & set(p.removed) for p in front)
    # choose() with no criterion is the search's own rule
    assert result.choose().removed == tuple(sorted(choose_point(stored)["removed"]))
    cheapest_above = [p for p in front if p.map >= result.baseline["mAP"] - 0.5]
    assert result.choose(max_drop=0.5) == cheapest_above[0]
    with pytest.raises(ea.EdgeAnchorError, match="no front point reaches"):
        result.choose(min_map=(1 + result.baseline["mAP"]) / 2)  # above every point (the baseline's included)
    with pytest.raises(ea.EdgeAnchorError, match="one of `max_drop`, `min_map` or `target_head_macs`"):
        result.choose(max_drop=0.1, min_map=0.1)
    target = front[-1].head_macs
    best = max((p for p in front if p.head_macs <= target), key=lambda p: (p.map, -p.head_macs))
    assert result.choose(target_head_macs=target) == best
    # the pruned model's measured mAP equals the search's cached score of its keep set (exact slicing)
    point = result.choose()
    pruned = ea.prune(demo, point)
    assert set(pruned.anchor_set.ids) == set(point.keep)
    metrics = ea.evaluate(pruned, val, backend="pycocotools", progress=False)
    assert metrics["mAP"] == pytest.approx(point.map, abs=1e-6)
    assert metrics["num_images"] == 10
    fig = result.plot(tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG" and fig.axes[0].get_xlabel() == "head MACs (M)"
    assert capsys.readouterr().out == ""  # nothing on stdout


def test_prune_forms_and_save_round_trip(demo, tmp_path):
    ids = demo.anchor_set.ids
    a = ea.prune(demo, ids[:10])
    b = ea.prune(demo, remove=ids[10:])
    assert a.anchor_set == b.anchor_set
    path = tmp_path / "p.pt"
    anchors = ea.save(a, path)
    assert anchors == tmp_path / "p.anchors.json"
    assert ea.prune(demo, anchors).anchor_set == a.anchor_set  # an anchor file as keep
    with pytest.raises(ea.EdgeAnchorError, match="exists"):
        ea.save(a, path)
    loaded = ea.load(str(path))
    x = torch.rand(1, 3, 320, 320)
    with torch.no_grad():
        assert torch.equal(loaded(x)[0]["boxes"], a(x)[0]["boxes"])
    with pytest.raises(ea.EdgeAnchorError, match="not both or neither"):
        ea.prune(demo)
    with pytest.raises(ea.EdgeAnchorError, match="not in the model"):
        ea.prune(demo, [999])


def test_prune_says_how_to_pass_ids_given_as_a_string(demo, tmp_path, monkeypatch):
    """A string is an anchor file's path; "0,3" (the CLI's --keep form) names no file, and the error says to pass
    a list. A file of that name is still read as an anchor file."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ea.EdgeAnchorError) as err:
        ea.prune(demo, " 0, 3")
    assert str(err.value) == ("keep=' 0, 3' is read as an anchor file, and there is none; to keep anchor ids, "
                              "pass them as a list: prune(det, [0, 3])")
    assert ea.prune(demo, [0, 3]).anchor_set.ids == [0, 3]
    with pytest.raises(ea.EdgeAnchorError, match="anchor file missing.json does not exist; check the path"):
        ea.prune(demo, "missing.json")  # not ids: the file error as before
    ea.save(ea.prune(demo, [0, 3]), tmp_path / "k.pt")
    (tmp_path / "k.anchors.json").rename(tmp_path / "0,3")
    assert ea.prune(demo, "0,3").anchor_set.ids == [0, 3]  # a file of that name is an anchor file


def _same_detections(a, b, size):
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for da, db in zip(a(x), b(x)):
            assert torch.equal(da["boxes"], db["boxes"]) and torch.equal(da["labels"], db["labels"])


def test_wrap_a_torchvision_object_equals_loading_it_by_name(tmp_path):
    from edgeanchor.models.registry import ARCHS

    tv = ARCHS["edgeanchor:demo_ssd"].builder(6, (320, 320))
    torch.save(tv.state_dict(), tmp_path / "sd.pt")
    det = ea.wrap(tv)
    assert det.arch == "edgeanchor:demo_ssd" and det.image_size == (320, 320)
    assert det.extractor is tv.backbone  # the object's own modules and weights, no copy
    _same_detections(det, build_detector("edgeanchor:demo_ssd", num_classes=6, weights=str(tmp_path / "sd.pt")),
                     (320, 320))
    ea.save(det, tmp_path / "w.pt")
    _same_detections(det, ea.load(str(tmp_path / "w.pt")), (320, 320))


def test_wrap_names_torchvision_architectures_and_refuses_others():
    import torchvision.models.detection as tvd

    from edgeanchor.models.demo import build_demo_ssd

    ssdlite = tvd.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=4)
    assert ea.wrap(ssdlite).arch == "torchvision:ssdlite320_mobilenet_v3_large"
    retina = tvd.retinanet_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=3)
    det = ea.wrap(retina, image_size=(128, 128))
    assert det.arch == "torchvision:retinanet_resnet50_fpn_v2" and det.image_size == (128, 128)
    with pytest.raises(ea.EdgeAnchorError, match="cannot wrap a Conv2d"):
        ea.wrap(torch.nn.Conv2d(3, 3, 1))
    odd = build_demo_ssd(6, widths=(8, 16, 24, 32, 48, 64, 64))  # the demo's layout, other widths
    with pytest.raises(ea.EdgeAnchorError, match="not a standard edgeanchor:demo_ssd"):
        ea.wrap(odd)


def test_wrap_a_yolov5_object_round_trips(tmp_path):
    from edgeanchor.models.yolov5_arch import build_yolov5

    net = build_yolov5("n", nc=3)
    det = ea.wrap(net, image_size=(128, 160))
    assert det.arch == "yolov5:n" and det.num_classes == 3 and det.image_size == (128, 160)
    ea.save(det, tmp_path / "y.pt")
    _same_detections(det, ea.load(str(tmp_path / "y.pt")), (128, 160))


@pytest.mark.slow
def test_finetune_trains_a_copy(demo, split):
    images, anns = split
    pruned = ea.prune(demo, demo.anchor_set.ids[:12])
    before = {k: v.clone() for k, v in pruned.state_dict().items()}
    tuned = ea.finetune(pruned, ea.data(images, anns["train"]), epochs=1, batch_size=4, max_iters_per_epoch=2,
                        workers=0, progress=False)
    assert tuned is not pruned and tuned.anchor_set == pruned.anchor_set
    assert all(torch.equal(before[k], v) for k, v in pruned.state_dict().items())  # the input is unchanged
    assert any(not torch.equal(before[k], v) for k, v in tuned.state_dict().items())
    with pytest.raises(ea.EdgeAnchorError, match="`epochs` must be at least 1"):
        ea.finetune(pruned, ea.data(images, anns["train"]), epochs=0)


def test_errors_are_raised_in_api_terms(demo, split):
    images, anns = split
    val = ea.data(images, anns["val"])
    with pytest.raises(ea.EdgeAnchorError, match="`max_drop` must be between 0 and 1"):
        ea.search(demo, val, max_drop=2.0)
    with pytest.raises(ea.EdgeAnchorError, match="unknown model"):
        ea.load("no-such-model")
    with pytest.raises(ea.EdgeAnchorError, match="unknown metric"):
        ea.evaluate(demo, val, metric="banana")
    with pytest.raises(ea.EdgeAnchorError, match="`iters` must be >= 1"):
        ea.bench("nowhere", iters=0)
    with pytest.raises(ea.EdgeAnchorError, match="`map_tol` and `latency_tol` must be >= 0"):
        ea.regress("nowhere", baseline="b.json", map_tol=-1)


def test_synth_writes_the_same_set_as_the_command_and_guards_its_output(tmp_path):
    from edgeanchor.cli import main

    result = ea.synth(tmp_path / "a", num_images=6, seed=3, workers=1, progress=False)
    assert main(["data", "synth", "--out", str(tmp_path / "b"), "--num-images", "6", "--seed", "3",
                 "--workers", "1"]) == 0
    assert sum(result["num_images"].values()) == 6 and result["out_dir"] == str(tmp_path / "a")
    for split in ("train", "val", "test"):
        a = json.loads((tmp_path / "a" / "annotations" / f"{split}.json").read_text())
        b = json.loads((tmp_path / "b" / "annotations" / f"{split}.json").read_text())
        assert a["annotations"] == b["annotations"]  # same seed, same boxes, API or command
    with pytest.raises(ea.EdgeAnchorError, match="exists and is not empty; pass `overwrite`"):
        ea.synth(tmp_path / "a", num_images=6, seed=3, workers=1, progress=False)
    ea.synth(tmp_path / "a", num_images=4, seed=1, workers=1, progress=False, overwrite=True)  # ours: replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ea.EdgeAnchorError, match="does not look like a synthetic data set"):
        ea.synth(tmp_path / "mine", num_images=4, seed=1, workers=1, progress=False, overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_export_settings_are_refused_before_anything_is_exported(demo, split, tmp_path):
    from edgeanchor.runtimes import is_installed

    images, anns = split
    test = ea.data(images, anns["test"])
    pruned = ea.prune(demo, sorted(demo.anchor_set.ids)[::3])
    for formats, message in ((("onnx", "coreml"), "unknown format 'coreml'"), (("openvino",), "must include onnx")):
        with pytest.raises(ea.EdgeAnchorError, match=message):
            ea.export(pruned, tmp_path / "bad", baseline=demo, data=test, formats=formats)
    with pytest.raises(ea.EdgeAnchorError, match="too old for int8"):
        ea.export(pruned, tmp_path / "bad", baseline=demo, data=test, int8=True, opset=11)
    if not is_installed("tensorrt"):
        with pytest.raises(ea.EdgeAnchorError, match="TensorRT is not available here"):
            ea.export(pruned, tmp_path / "bad", baseline=demo, data=test, formats=("onnx", "tensorrt"))
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_export_formats_int8_and_evaluating_the_export(demo, split, tmp_path):
    from edgeanchor.benchmark.accuracy import evaluate_export

    images, anns = split
    test, val = ea.data(images, anns["test"]), ea.data(images, anns["val"])
    pruned = ea.prune(demo, sorted(demo.anchor_set.ids)[::3])
    folder = ea.export(pruned, tmp_path / "exp", baseline=demo, data=test, formats=["onnx"], int8=True,
                       calib_data=val, parity_images=2)
    assert not (folder.root / "openvino").exists() and "openvino" not in folder.report["export"]["pruned"]
    int8 = folder.report["int8"]
    assert int8["settings"]["calibration_split"] == anns["val"]
    for variant in ("pruned", "baseline"):
        assert (folder.variant_dir(variant) / "model_int8.onnx").is_file()
        assert int8[variant]["delta"] == pytest.approx(int8[variant]["map_int8"] - int8[variant]["map_fp32_onnx"])
        # model.onnx's mAP measured by the int8 step is the one evaluating the export gives
        got = ea.evaluate(folder, variant=variant, progress=False)
        assert got["mAP"] == pytest.approx(int8[variant]["map_fp32_onnx"], abs=1e-9)
        # export() records each variant's PyTorch mAP with the graphs' rule, as prune-and-export does
        assert got["pytorch_mAP"] == folder.report["mAP_as_deployed"][variant]
        assert abs(got["mAP"] - got["pytorch_mAP"]) <= 0.001
    # evaluating the export folder is the deployed graph in the runtime, by path or object, on any split
    by_path = ea.evaluate(str(folder.root), progress=False)
    assert by_path["graph"] == "model.onnx" and by_path["runtime"] == "onnxruntime"
    assert by_path["mAP"] == evaluate_export(folder, progress=False)["mAP"]
    on_val = ea.evaluate(folder, val, progress=False)
    assert on_val["ann"] == anns["val"] and on_val["num_images"] == len(json.loads(open(anns["val"]).read())["images"])
    int8_map = ea.evaluate(folder, precision="int8", progress=False)
    assert int8_map["graph"] == "model_int8.onnx" and int8_map["mAP"] == pytest.approx(int8["pruned"]["map_int8"])
    # settings of the other path are refused, naming them
    with pytest.raises(ea.EdgeAnchorError, match="`batch_size` apply to a detector in PyTorch"):
        ea.evaluate(folder, batch_size=4)
    with pytest.raises(ea.EdgeAnchorError, match="`metric` voc07 is not available for an export folder"):
        ea.evaluate(folder, metric="voc07")
    with pytest.raises(ea.EdgeAnchorError, match="`runtime`, `variant` apply to an export folder"):
        ea.evaluate(demo, test, runtime="onnxruntime", variant="baseline")
    with pytest.raises(ea.EdgeAnchorError, match="is not an edgeanchor export folder"):
        ea.evaluate(tmp_path)
    with pytest.raises(ea.EdgeAnchorError, match=r"demo is not an export folder; evaluate a detector \(load"):
        ea.evaluate("demo")


@pytest.mark.parametrize("size", [(640,), (640, 640, 3), ()])
def test_load_refuses_an_image_size_that_is_not_a_pair(size):
    """(640,) raised IndexError, (640, 640, 3) was cut to (640, 640) and () meant the default."""
    with pytest.raises(ea.EdgeAnchorError, match=r"`image_size` is \(.*\); give \(height, width\) in pixels"):
        ea.load("demo", image_size=size)


@pytest.mark.parametrize("name", ["model_raw.onnx", "mine.pt"])
def test_save_refuses_a_path_inside_an_export_folder(tmp_path, name):
    """prune --out E/model_raw.onnx --overwrite replaced the export's drop-in (its head.json, priors and report
    then described another model) and left files that made prune-and-export --overwrite refuse the folder."""
    from edgeanchor.api import check_save_path
    from edgeanchor.exporting.folder import FORMAT

    (tmp_path / "report.json").write_text(json.dumps({"format": FORMAT}))
    (tmp_path / "model_raw.onnx").write_bytes(b"the export's")
    with pytest.raises(ea.EdgeAnchorError, match=rf"{name} is inside the export folder .*; write the pruned model "
                                                 "outside it"):
        check_save_path(tmp_path / name, overwrite=True)
    assert (tmp_path / "model_raw.onnx").read_bytes() == b"the export's"
    check_save_path(tmp_path / "elsewhere" / name)  # not an export folder: allowed
