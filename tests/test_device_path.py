"""The device path (issue 17): bench, regress and evaluate --export from the export folder alone, without torch.

The export folder (format 2) carries its report split, preprocessing and label map; the deployed graph's
mAP in ONNX Runtime and OpenVINO agrees with PyTorch's; boxes entering NMS are counted from model.onnx
exactly as the checkpoint counts them; and the three commands run in a subprocess where torch and
torchvision cannot be imported. TensorRT is tested up to the GPU (there is none here).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeanchor.benchmark.accuracy import evaluate_export, pick_backend
from edgeanchor.cli import main
from edgeanchor.datasets.coco import CocoDetection
from edgeanchor.datasets.imaging import boxes_to_original, load_image_array
from edgeanchor.errors import EdgeAnchorError
from edgeanchor.evaluation.coco_map import coco_map
from edgeanchor.evaluation.predict import predict
from edgeanchor.exporting.folder import FORMAT_VERSION, ExportFolder
from edgeanchor.runtimes import is_installed

# Makes torch and torchvision unimportable, as on a device where they are not installed:
# `import torch` raises ModuleNotFoundError and importlib.util.find_spec("torch") is None.
BLOCK_TORCH = "import sys\nfor _name in ('torch', 'torchvision'):\n    sys.modules[_name] = None\n"


@pytest.fixture(scope="module")
def export(demo_keep_export):
    """A format-2 export of the trained demo with a keep set that drops the last level (report split: 6 images)."""
    return demo_keep_export


@pytest.fixture(scope="module")
def no_torch_env(tmp_path_factory):
    """Environment of a subprocess in which torch and torchvision cannot be imported."""
    site = tmp_path_factory.mktemp("no_torch_site")
    (site / "sitecustomize.py").write_text(BLOCK_TORCH)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(Path(__file__).resolve().parents[1])])}
    proof = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert proof.returncode != 0 and "ModuleNotFoundError" in proof.stderr  # the block holds
    return env


def run_cli(env, *args):
    return subprocess.run([sys.executable, "-m", "edgeanchor", *args], env=env, capture_output=True, text=True,
                          timeout=600)


# ---------------------------------------------------------------------------------------- the folder


@pytest.mark.slow
def test_format_2_folder_holds_what_the_device_needs(export):
    report = export.report
    assert report["format_version"] == FORMAT_VERSION == 2
    ann = json.loads(Path(report["report_ann"]).read_text())
    assert Path(export.report_ann).read_bytes() == Path(report["report_ann"]).read_bytes()  # copied in, byte for byte
    assert Path(export.report_ann).is_relative_to(export.root) and Path(export.data).is_relative_to(export.root)
    for im in ann["images"]:  # the images, byte for byte
        assert (Path(export.data) / im["file_name"]).read_bytes() == (Path(report["data"]) / im["file_name"]).read_bytes()
    det = export.load_detector("baseline")
    dataset = CocoDetection.for_detector(det, report["data"], report["report_ann"])
    assert export.label_to_category() == {label: cat for cat, label in dataset.label_map.items()}
    assert export.model_info == {"arch": det.arch, "num_classes": det.num_classes, "first_label": det.first_label,
                                 "image_size": list(det.image_size), "baseline_anchors": 30}
    pre = export.preprocess
    assert (pre["image_size"], pre["resize"], pre["channel_order"], pre["layout"]) == ([320, 320], "stretch", "RGB",
                                                                                       "NCHW")


@pytest.mark.slow
def test_format_1_folder_still_works_with_torch_and_gives_the_same_map(export, tmp_path):
    old = tmp_path / "v1"
    shutil.copytree(export.root, old)
    shutil.rmtree(old / "data")
    report = json.loads((old / "report.json").read_text())
    report["format_version"] = 1
    del report["device"]
    (old / "report.json").write_text(json.dumps(report))
    v1 = ExportFolder.open(old)
    assert v1.model_info == export.model_info
    with pytest.raises(EdgeAnchorError, match="export format 1, which holds no copy of its report split"):
        _ = v1.report_ann  # the recorded paths are named, never read: the user gives them
    with pytest.raises(EdgeAnchorError, match="does not hold its report split's images"):
        _ = v1.data
    mine = evaluate_export(v1, data=report["data"], ann=report["report_ann"], progress=False)["mAP"]
    assert mine == evaluate_export(export, progress=False)["mAP"]


@pytest.mark.slow
def test_an_export_without_its_images_says_where_to_point(export, tmp_path, capsys):
    bare = tmp_path / "bare"  # as a split too large to bundle, on a machine without its recorded folder
    shutil.copytree(export.root, bare, ignore=shutil.ignore_patterns("images"))
    report = json.loads((bare / "report.json").read_text())
    report["device"]["images"], report["data"] = None, str(tmp_path / "elsewhere")
    (bare / "report.json").write_text(json.dumps(report))
    assert main(["bench", str(bare), "--iters", "1", "--warmup", "0"]) == 2
    assert "does not hold its report split's images" in (err := capsys.readouterr().err)
    assert "pass --images, a folder of images to time on" in err
    assert not list(bare.glob("bench_*"))
    assert main(["evaluate", "--export", str(bare)]) == 2
    assert "(this export does not hold its images; " in (err := capsys.readouterr().err)
    assert "pass --data, the folder that holds them" in err
    assert main(["evaluate", "--export", str(bare), "--data", export.data, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mAP"] == evaluate_export(export, progress=False)["mAP"]


# ---------------------------------------------------------------------------------------- preprocessing


def test_letterbox_and_box_mapping_hand_worked(tmp_path):
    from PIL import Image

    Image.new("RGB", (4, 2), (200, 100, 0)).save(tmp_path / "im.png")  # W=4, H=2
    pixels, orig = load_image_array(tmp_path / "im.png", (4, 4), "letterbox")
    # gain min(4/2, 4/4) = 1: 2x4 rows placed at top round((4-2)/2 - 0.1) = 1, grey 114 above and below
    assert orig == (2, 4) and pixels.shape == (3, 4, 4) and pixels.dtype == np.float32
    assert np.allclose(pixels[:, 0], 114 / 255) and np.allclose(pixels[:, 3], 114 / 255)
    assert np.allclose(pixels[0, 1:3], 200 / 255) and np.allclose(pixels[2, 1:3], 0)
    # input box (0, 1)-(4, 3) is the whole image: minus pad (0, 1), times 1/gain = 1
    assert boxes_to_original(np.array([[0.0, 1, 4, 3]]), orig, (4, 4), "letterbox").tolist() == [[0, 0, 4, 2]]
    # stretch 2x4 -> 4x4: x * 4/4, y * 2/4; clipped to the image
    assert boxes_to_original(np.array([[1.0, 2, 5, 4]]), orig, (4, 4), "stretch").tolist() == [[1, 1, 4, 2]]


# ---------------------------------------------------------------------------------------- accuracy


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_deployed_map_agrees_with_pytorch(export, runtime):
    if not is_installed(runtime):
        pytest.skip(f"{runtime} is not installed")
    for variant in ("pruned", "baseline"):
        got = evaluate_export(export, runtime=runtime, variant=variant, progress=False)
        det = export.graph_detector(variant)  # the rule the graphs use
        dataset = CocoDetection.for_detector(det, export.data, export.report_ann)
        ref = coco_map(export.report_ann, predict(det, dataset, progress=False))
        assert got["num_images"] == 6 and got["num_detections"] > 0
        assert got["graph"] == {"onnxruntime": "model.onnx", "openvino": "model.xml"}[runtime]  # OpenVINO: the IR
        assert abs(got["mAP"] - ref["mAP"]) <= 0.001 and abs(got["mAP50"] - ref["mAP50"]) <= 0.001
        # every export folder records each variant's PyTorch mAP with its graphs' rule (mAP_as_deployed)
        assert got["pytorch_mAP"] == pytest.approx(ref["mAP"], abs=1e-9)


@pytest.mark.slow
def test_nms_input_counts_from_the_graph_equal_the_checkpoints(export):
    from edgeanchor.benchmark.harness import load_images
    from edgeanchor.benchmark.nms_count import NmsCounter
    from edgeanchor.postprocess import topk_indices

    images, _ = load_images(export)
    for variant in ("pruned", "baseline"):
        det, counter = export.graph_detector(variant), NmsCounter(export.graph_path(variant, "model"), "onnxruntime")
        with torch.no_grad():
            expected = [int(topk_indices(det.image_candidates(det.head(det.backbone(torch.from_numpy(im))))[0],
                                         det.postprocess_spec, det.level_starts).numel()) for im in images]
        assert [counter.count(im) for im in images] == expected and sum(expected) > 0


def test_a_missing_coco_evaluator_falls_back_or_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)
    assert pick_backend("faster") == "pycocotools"
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    with pytest.raises(EdgeAnchorError, match="no COCO evaluator is installed; pip install faster-coco-eval"):
        pick_backend("faster")


# ---------------------------------------------------------------------------------------- without torch


@pytest.mark.slow
def test_bench_evaluate_and_regress_run_without_torch(export, no_torch_env, tmp_path):
    env, root = no_torch_env, str(export.root)
    bench = run_cli(env, "bench", root, "--iters", "2", "--warmup", "0", "--threads", "1",
                    "--json-out", str(tmp_path / "bench.json"))
    assert bench.returncode == 0, bench.stderr
    result = json.loads((tmp_path / "bench.json").read_text())
    assert "torch" not in result["machine"] and result["nms_input_boxes"]["pruned"]["counted_with"] == "onnxruntime"
    assert set(result["stages"]["pruned"]) == {"backbone", "head", "postprocess", "end_to_end"}

    evaluated = run_cli(env, "evaluate", "--export", root, "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    deployed = json.loads(evaluated.stdout)
    assert deployed["mAP"] == evaluate_export(export, progress=False)["mAP"]  # the same as with torch here

    base, verdict = tmp_path / "base.json", tmp_path / "verdict.json"
    common = ["--export", root, "--iters", "2", "--warmup", "0", "--latency-tol", "100"]
    update = run_cli(env, "regress", "--baseline", str(base), "--update", *common)
    assert update.returncode == 0, update.stderr
    stored = json.loads(base.read_text())
    assert "mAP" not in stored and stored["deployed_mAP"]["mAP"] == deployed["mAP"]
    check = run_cli(env, "regress", "--baseline", str(base), "--json-out", str(verdict), *common)
    assert check.returncode == 0, check.stdout + check.stderr
    rows = {r["metric"]: r for r in json.loads(verdict.read_text())["rows"]}
    assert rows["mAP deployed (model.onnx, onnxruntime fp32)"]["passed"] and "mAP (PyTorch)" not in rows


@pytest.mark.slow
def test_a_format_1_folder_without_torch_is_one_line(export, no_torch_env, tmp_path):
    old = tmp_path / "v1"
    shutil.copytree(export.root, old, ignore=shutil.ignore_patterns("data"))
    report = json.loads((old / "report.json").read_text())
    report["format_version"] = 1
    del report["device"]
    (old / "report.json").write_text(json.dumps(report))
    out = run_cli(no_torch_env, "evaluate", "--export", str(old))
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert "export format 1" in out.stderr and "re-run prune-and-export" in out.stderr


# ---------------------------------------------------------------------------------------- regress gate


def test_regress_gates_on_the_deployed_map():
    from edgeanchor.regression import compare

    chans = [{"level": 0, "cls_channels": 6, "box_channels": 4}]
    measured = {"deployed_mAP": {"runtime": "onnxruntime", "precision": "f32", "graph": "model.onnx", "mAP": 0.700},
                "latency_ratios": dict.fromkeys(("backbone", "head", "postprocess", "end_to_end"), 1.0),
                "head_channels": chans}
    baseline = {**measured, "mAP": 0.690, "deployed_mAP": {**measured["deployed_mAP"], "mAP": 0.706}}

    def deployed_row(measured, baseline):
        return [r for r in compare(measured, baseline, map_tol=0.005, latency_tol=0.1)
                if r["metric"].startswith("mAP deployed")][0]

    # 0.700 >= 0.706 - 0.005 = 0.701 fails; against a baseline of another precision, its PyTorch mAP
    # 0.690 - 0.005 = 0.685 is the bound and 0.700 passes
    assert not deployed_row(measured, baseline)["passed"] and deployed_row(measured, baseline)["bound"] == ">= 0.7010"
    other = {**baseline, "deployed_mAP": {**baseline["deployed_mAP"], "precision": "int8"}}
    assert deployed_row(measured, other)["passed"] and deployed_row(measured, other)["bound"] == ">= 0.6850"


@pytest.mark.slow
def test_regress_refuses_a_baseline_of_another_runtime(export, tmp_path, capsys):
    from edgeanchor.regression import FORMAT

    base = {"format": FORMAT, "identity": {}, "mAP": 0.7,
            "latency_ratios": dict.fromkeys(("backbone", "head", "postprocess", "end_to_end"), 1.0),
            "head_channels": [], "bench_settings": {"runtime": "openvino", "precision": "f32"}}
    from edgeanchor.regression import measured_identity

    base["identity"] = measured_identity(export, export.report_ann)
    (tmp_path / "b.json").write_text(json.dumps(base))
    assert main(["regress", "--baseline", str(tmp_path / "b.json"), "--export", str(export.root)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "measured with openvino at fp32, not onnxruntime at fp32" in err
    assert "pass --runtime openvino" in err


# ---------------------------------------------------------------------------------------- TensorRT up to the GPU


@pytest.mark.slow
def test_engine_paths_name_precision_tensorrt_version_and_gpu(export):
    path = export.engine_path("pruned", "model", "fp16", trt_version="10.3.0", gpu="NVIDIA Jetson Orin (nvgpu)")
    assert path == export.root / "tensorrt" / "model_fp16_trt10.3.0_nvidia-jetson-orin-nvgpu.engine"
    assert export.engine_path("baseline", "head", "fp32", trt_version="10.3.0", gpu="H200").parent == \
        export.root / "baseline" / "tensorrt"


@pytest.mark.slow
def test_tensorrt_without_its_parts_is_one_line(export, monkeypatch, no_torch_env):
    from edgeanchor.runtimes import check_precision
    from edgeanchor.runtimes import tensorrt as cudart  # the cuda-python helpers live with TensorRT

    with pytest.raises(EdgeAnchorError, match="pass `precision` fp32 or fp16"):
        check_precision("tensorrt", "int8")
    # cuda-python is installed here, but there is no GPU driver: the real binding says so
    with pytest.raises(EdgeAnchorError, match="TensorRT needs a CUDA GPU, and cuda-python finds none"):
        cudart.gpu_name()
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):  # as if not installed
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(EdgeAnchorError, match="needs cuda-python for device memory and timing; pip install cuda-python"):
        cudart.require_cudart()
    for args in (["bench", str(export.root), "--runtime", "tensorrt"],
                 ["evaluate", "--export", str(export.root), "--runtime", "tensorrt"],
                 ["bench", str(export.root), "--runtime", "tensorrt", "--precision", "int8"]):
        out = run_cli(no_torch_env, *args)
        assert out.returncode == 2 and out.stderr.count("\n") == 1 and out.stderr.startswith("error: "), out.stderr
        assert "TensorRT" in out.stderr or "tensorrt" in out.stderr
