"""Exported graphs beyond ONNX Runtime: OpenVINO (ONNX and IR, explicit precision), OpenCV, the runtime
matrix of the report, bench on every runtime, and the one-line errors for what a runtime cannot do."""

import json
import pickle
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeanchor.cli import main
from edgeanchor.errors import EdgeAnchorError
from edgeanchor.exporting.parity import check_parity
from edgeanchor.runtimes import check_precision, open_graph, require
from tests.helpers import build_once

ov = pytest.importorskip("openvino", reason="OpenVINO is an optional extra: pip install 'edgeanchor[openvino]'")


@pytest.fixture(scope="module")
def split(demo_keep_split):
    return demo_keep_split


@pytest.fixture(scope="module")
def export(demo_keep_export, demo_keep_split, tmp_path_factory):
    """The demo export with a keep set that drops the last level (IR included), its two parity images, and
    the runtime matrix on them (computed once per session)."""
    from edgeanchor.datasets.coco import CocoDetection
    from edgeanchor.exporting.matrix import runtime_matrix
    from edgeanchor.pipeline import first_images

    images, anns = demo_keep_split
    folder = demo_keep_export
    imgs = first_images(CocoDetection.for_detector(folder.load_detector("baseline"), images, anns["train"]), 2)

    def build(root):
        (root / "matrix.pkl").write_bytes(pickle.dumps(runtime_matrix(folder, imgs, iters=3, threads=1)))

    return folder, imgs, pickle.loads((build_once(tmp_path_factory, "rt_matrix", build) / "matrix.pkl").read_bytes())


@pytest.mark.slow
def test_openvino_ir_is_written_and_in_parity_at_f32(export):
    folder, _, _ = export
    for variant in ("pruned", "baseline"):
        entry = folder.report["export"][variant]["openvino"]
        assert entry["parity"]["passed"] and entry["parity"]["runtime"] == "openvino"
        assert entry["parity"]["precision"] == "fp32"
        for graph in ("backbone", "head", "postprocess", "model", "model_nonms", "model_ncnn"):
            xml = folder.variant_dir(variant) / "openvino" / f"{graph}.xml"
            assert xml.is_file() and xml.with_suffix(".bin").stat().st_size > 0
        assert not (folder.variant_dir(variant) / "openvino" / "model_trt.xml").exists()
    # the IR keeps f32 weights (OpenVINO's save_model would compress them to f16 by default)
    core = ov.Core()
    weights = [op for op in core.read_model(str(folder.root / "openvino" / "head.xml")).get_ops()
               if op.get_type_name() == "Constant" and len(op.get_output_shape(0)) == 4]
    assert weights and all(str(op.get_output_element_type(0)) in ("<Type: 'float32'>", "f32") for op in weights)


class _ShapeHead(torch.nn.Module):
    """A conv whose output is flattened with shapes computed in the graph (Shape, Gather, Concat, Reshape),
    as the exported heads are: what OpenVINO's conversion folds."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y.permute(0, 2, 3, 1).reshape(y.shape[0], -1, 4).softmax(-1)


def _ir_text(xml: Path) -> str:
    """An IR's XML without what differs between two conversions of one graph: generated node names, rt_info."""
    text = re.sub(r"<rt_info>.*?</rt_info>", "", xml.read_text(), flags=re.S)
    return re.sub(r'name="([A-Za-z]+)_\d+"', r'name="\1_N"', text)


def test_ir_is_convert_models_without_its_telemetry(tmp_path, monkeypatch):
    """write_ir saves the IR that openvino.convert_model gives (same XML, byte-identical weights), but never
    calls it: convert_model's telemetry sends an event per step (a thread, a write to ~/intel/stats)."""
    from edgeanchor.exporting.openvino_ir import write_ir

    monkeypatch.setenv("HOME", str(tmp_path))  # where convert_model's telemetry writes, for the reference
    onnx_path = tmp_path / "head.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_ShapeHead().eval(), (torch.rand(1, 3, 16, 16),), str(onnx_path), input_names=["x"],
                          dynamic_axes={"x": {0: "n"}}, opset_version=17, dynamo=False)
    reference = tmp_path / "reference.xml"
    ov.save_model(ov.convert_model(str(onnx_path)), str(reference), compress_to_fp16=False)

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(ov, "convert_model", lambda *a, **k: pytest.fail("write_ir called convert_model"))
    written = write_ir({"head": (onnx_path, tmp_path / "ir" / "head.xml")})
    xml = Path(written["head"])
    assert _ir_text(xml) == _ir_text(reference)
    assert xml.with_suffix(".bin").read_bytes() == reference.with_suffix(".bin").read_bytes()
    assert list(home.iterdir()) == []  # no telemetry written in the user's home
    # the comparison can fail: the graph as read, unfolded, is not convert_model's IR
    unfolded = tmp_path / "unfolded.xml"
    ov.save_model(ov.Core().read_model(str(onnx_path)), str(unfolded), compress_to_fp16=False)
    assert _ir_text(unfolded) != _ir_text(reference)


@pytest.mark.slow
def test_openvino_f32_matches_onnxruntime_and_precision_is_recorded(export):
    folder, imgs, _ = export
    path = folder.graph_path("pruned", "model")
    ort_graph = open_graph("onnxruntime", path, threads=1)
    ov_graph = open_graph("openvino", path, threads=1)
    assert ov_graph.settings["precision"] == "fp32" and "float32" in ov_graph.settings["inference_precision_hint"]
    for image in imgs:
        a = ort_graph.run({"images": image[None]})
        b = ov_graph.run({"images": image[None]})
        assert int(a["num_detections"][0]) == int(b["num_detections"][0])
        np.testing.assert_allclose(b["detections"], a["detections"], atol=1e-3)


@pytest.mark.slow
def test_openvino_bf16_drifts_where_the_cpu_has_it(export):
    from edgeanchor.runtimes.openvino import capabilities as openvino_capabilities

    folder, imgs, _ = export
    if "BF16" not in openvino_capabilities():
        with pytest.raises(EdgeAnchorError, match="no bf16 support"):
            check_precision("openvino", "bf16")
        return
    path = folder.graph_path("pruned", "head")
    feats = {n: t for n, t in open_graph("onnxruntime", folder.graph_path("pruned", "backbone")).run(
        {"images": imgs[:1]}).items()}
    f32 = open_graph("openvino", path, precision="f32").run(feats)
    bf16 = open_graph("openvino", path, precision="bf16")
    assert "bfloat16" in bf16.settings["inference_precision_hint"]
    drift = max(float(np.abs(bf16.run(feats)[k] - f32[k]).max()) for k in f32)
    assert drift > 1e-4  # what an unset precision hint silently gives on such a CPU


@pytest.mark.slow
def test_parity_catches_a_runtime_that_differs(export):
    """bf16 is not f32: check_parity on OpenVINO bf16 fails the raw-tensor checks (when the CPU has bf16)."""
    from edgeanchor.runtimes.openvino import capabilities as openvino_capabilities

    if "BF16" not in openvino_capabilities():
        pytest.skip("this CPU has no bf16 in OpenVINO")
    folder, imgs, _ = export
    det = folder.graph_detector("baseline")
    res = check_parity(det, folder.variant_dir("baseline"), imgs, runtime="openvino", precision="bf16",
                       files={"head": folder.graph_path("baseline", "head")})
    assert res["precision"] == "bf16" and not res["head"]["allclose"] and not res["passed"]


@pytest.mark.slow
def test_runtime_matrix_rows(export):
    folder, _, matrix = export
    rt = matrix["runtimes"]
    assert set(rt) == {"onnxruntime", "openvino", "opencv", "tensorrt"}
    for runtime in ("onnxruntime", "openvino"):
        cells = rt[runtime]["graphs"]
        for graph in ("backbone", "head", "postprocess", "model", "model_nonms", "model_ncnn"):
            cell = cells[graph]
            assert cell["loads"] and cell["parity"]["passed"], (runtime, graph, cell)
            lat = cell["latency_ms"]
            assert lat["pruned"] > 0 and lat["baseline"] > 0
            assert lat["ratio_of_medians"] == pytest.approx(lat["pruned"] / lat["baseline"])
            for key in ("pruned", "baseline", "ratio"):  # each figure inside its 95 % interval
                assert lat[f"{key}_ci"][0] <= lat[key] <= lat[f"{key}_ci"][1]
            assert isinstance(cell["stability"]["unstable"], bool)
        assert not cells["model_trt"]["loads"] and "TensorRT only" in cells["model_trt"]["why"]
    assert rt["openvino"]["graphs"]["model"]["file"].startswith("openvino/")  # the IR is what runs
    if not rt["tensorrt"]["installed"]:
        assert "TensorRT" in rt["tensorrt"]["why"]
    assert matrix["machine"]["load_average_1_5_15min"] is not None
    st = matrix["stability"]
    assert set(st["load_average"]) == {"1min", "5min", "15min"} and st["cpu_count"] >= 1 and st["threads"] == 1


@pytest.mark.slow
def test_runtime_matrix_in_report_md(export):
    from edgeanchor.exporting.matrix import matrix_markdown

    folder, _, matrix = export
    text = "\n".join(matrix_markdown(matrix))
    assert "| onnxruntime" in text and "| openvino" in text
    assert "model_trt.onnx is for TensorRT only" in text


def test_precision_rules():
    check_precision("onnxruntime", "f32")  # the older spelling of fp32, still accepted
    check_precision("onnxruntime", "fp32")
    check_precision("onnxruntime", "int8")
    for runtime, precision, named in (("onnxruntime", "f16", "fp16"), ("onnxruntime", "fp16", "fp16"),
                                      ("onnxruntime", "bf16", "bf16"), ("opencv", "int8", "int8"),
                                      ("torch", "int8", "int8"), ("tensorrt", "bf16", "bf16")):
        with pytest.raises(EdgeAnchorError, match=f"cannot run the exported graphs in {named};"):
            check_precision(runtime, precision)
    with pytest.raises(EdgeAnchorError, match="unknown precision"):
        check_precision("openvino", "fp64")


@pytest.mark.slow
def test_trt_only_graph_on_another_runtime(export):
    folder, _, _ = export
    for runtime in ("onnxruntime", "openvino", "opencv"):
        with pytest.raises(EdgeAnchorError, match="is for TensorRT only"):
            open_graph(runtime, folder.graph_path("pruned", "model_trt"))


@pytest.mark.slow
@pytest.mark.parametrize("runtime,module,extra", [("openvino", "openvino", "openvino"), ("opencv", "cv2", "opencv")])
def test_missing_runtime_names_its_extra(runtime, module, extra, export, monkeypatch, capsys):
    folder, _, _ = export
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if it were not installed
    with pytest.raises(EdgeAnchorError, match=f'pip install "edgeanchor\\[{extra}\\]"'):
        require(runtime)
    assert main(["bench", str(folder.root), "--runtime", runtime, "--iters", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and f"edgeanchor[{extra}]" in err[-1] and len(err) == 1


@pytest.mark.slow
def test_bench_openvino_records_its_precision(export, tmp_path):
    folder, _, _ = export
    out = tmp_path / "b.json"
    assert main(["bench", str(folder.root), "--runtime", "openvino", "--iters", "3", "--warmup", "1",
                 "--threads", "1", "--json-out", str(out), "--json"]) == 0
    result = json.loads(out.read_text())
    assert result["precision"] == "fp32" and result["settings"]["precision"] == "fp32"
    assert result["settings"]["graphs"]["end_to_end"] == "model.xml"  # the IR
    assert set(result["ratio_of_medians"]) == {"backbone", "head", "postprocess", "end_to_end"}


@pytest.mark.slow
def test_bench_end_to_end_graph_choice(export, tmp_path, capsys):
    folder, _, _ = export
    out = tmp_path / "b.json"
    assert main(["bench", str(folder.root), "--end-to-end", "model_nonms", "--iters", "2", "--warmup", "0",
                 "--threads", "1", "--json-out", str(out)]) == 0
    assert json.loads(out.read_text())["settings"]["graphs"]["end_to_end"] == "model_nonms.onnx"
    assert main(["bench", str(folder.root), "--end-to-end", "model_trt", "--json-out", str(out)]) == 2
    assert "is for TensorRT only" in capsys.readouterr().err


@pytest.mark.slow
def test_pruned_export_is_smaller_in_every_runtime(export):
    """The pruned head's outputs have fewer channels in OpenVINO's compiled model too."""
    folder, _, _ = export
    core = ov.Core()
    chans = {}
    for variant in ("pruned", "baseline"):
        model = core.read_model(str(folder.variant_dir(variant) / "openvino" / "head.xml"))
        chans[variant] = sum(int(o.get_partial_shape()[1].get_length()) for o in model.outputs)
    assert chans["pruned"] < chans["baseline"]


@pytest.mark.slow
def test_training_with_loader_workers_then_openvino_in_one_process(split, tmp_path):
    """Killed by SIGSEGV (SI_KERNEL) before OpenVINO compiled off the main thread: a training run with
    DataLoader workers, then prune-and-export with OpenVINO, in one process (see compile_off_thread)."""
    import subprocess
    import sys as _sys

    images, anns = split
    script = f"""
from edgeanchor.cli import main
assert main(["train", "--model", "edgeanchor:demo_ssd", "--data", {images!r}, "--ann", {anns["train"]!r},
             "--batch-size", "4", "--warmup-iters", "1", "--no-progress", "--epochs", "1", "--workers", "1",
             "--out", {str(tmp_path / "a.pt")!r}]) == 0
assert main(["prune-and-export", "--model", "demo", "--data", {images!r}, "--ann", {anns["val"]!r},
             "--max-evals", "12", "--workers", "1", "--parity-images", "1", "--matrix-iters", "2",
             "--out", {str(tmp_path / "e")!r}]) == 0
"""
    proc = subprocess.run([_sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
