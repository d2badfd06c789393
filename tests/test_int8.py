"""prune-and-export --int8: QDQ graphs of backbone and head, an fp32 post-processing, calibration, mAP, report."""

import json

import numpy as np
import onnx
import pytest
import torch

from edgeanchor.datasets.coco import CocoDetection
from edgeanchor.errors import EdgeAnchorError
from edgeanchor.exporting import make_session, run_session
from edgeanchor.exporting.folder import ExportFolder
from edgeanchor.exporting.int8 import (
    CalibrationReader,
    Int8Options,
    calibration_images,
    calibration_indices,
    check_int8_options,
    join_graphs,
    op_counts,
    quantize_graph,
)
from edgeanchor.exporting.parity import match_detections

VARIANTS = ("pruned", "baseline")


@pytest.fixture(scope="module")
def split(demo_split):
    return demo_split


@pytest.fixture(scope="module")
def export(demo_export_run):
    """The shared demo export (``--int8``): the trained demo, searched, pruned, exported with int8 graphs."""
    folder, stdout, _ = demo_export_run
    assert "int8" in json.loads(stdout)  # quantization printed nothing else on stdout
    return ExportFolder.open(folder)


def report_images(folder: ExportFolder, n: int = 4) -> list[np.ndarray]:
    """The first ``n`` report-split images as the model sees them, (1, 3, H, W) each."""
    dataset = CocoDetection.for_detector(folder.load_detector("pruned"), folder.data, folder.report_ann)
    return [dataset[i][0][None].numpy() for i in range(n)]


def producers(model: onnx.ModelProto) -> dict:
    return {o: n for n in model.graph.node for o in n.output}


@pytest.mark.slow
def test_backbone_and_head_convolutions_are_wrapped_in_qdq(export):
    for variant in VARIANTS:
        for graph in ("backbone_int8", "head_int8"):
            model = onnx.load(str(export.graph_path(variant, graph)))
            made_by = producers(model)
            convs = [n for n in model.graph.node if n.op_type == "Conv"]
            assert convs, (variant, graph)
            for conv in convs:  # activations and weights both arrive dequantized from int8
                assert made_by[conv.input[0]].op_type == "DequantizeLinear", (variant, graph, conv.name)
                assert made_by[conv.input[1]].op_type == "DequantizeLinear", (variant, graph, conv.name)
                weight = made_by[conv.input[1]].input[0]
                init = next(t for t in model.graph.initializer if t.name == weight)
                assert init.data_type == onnx.TensorProto.INT8  # symmetric int8 weights, one scale per channel
                scale = next(t for t in model.graph.initializer if t.name == made_by[conv.input[1]].input[1])
                assert list(scale.dims) == [init.dims[0]]
            if graph == "head_int8":  # the last convolutions give float outputs (Int8Options.head_outputs)
                assert all(made_by[o.name].op_type != "DequantizeLinear" for o in model.graph.output)
                assert not any(made_by.get(i) and made_by[i].op_type == "Conv" for n in model.graph.node
                               if n.op_type == "QuantizeLinear" for i in n.input[:1])
            onnx.checker.check_model(model, full_check=True)


@pytest.mark.slow
def test_model_int8_is_the_int8_stages_then_the_fp32_postprocess(export):
    for variant in VARIANTS:
        joined = onnx.load(str(export.graph_path(variant, "model_int8")))
        parts = {g: onnx.load(str(export.graph_path(variant, g)))
                 for g in ("backbone_int8", "head_int8", "postprocess")}
        post = [n for n in joined.graph.node if n.name.startswith("postprocess/")]
        # the post-processing: the fp32 graph's nodes, op for op, without a single Q/DQ
        assert [n.op_type for n in post] and sorted(n.op_type for n in post) == sorted(
            n.op_type for n in parts["postprocess"].graph.node)
        assert not {"QuantizeLinear", "DequantizeLinear"} & {n.op_type for n in post}
        counts = {g: op_counts(m) for g, m in parts.items()}
        assert op_counts(joined) == {k: sum(c[k] for c in counts.values()) for k in counts["postprocess"]}
        onnx.checker.check_model(joined, full_check=True)


def io_signature(model: onnx.ModelProto) -> list:
    def sig(values):
        return [(v.name, v.type.tensor_type.elem_type, [d.dim_value for d in v.type.tensor_type.shape.dim])
                for v in values]
    return [sig(model.graph.input), sig(model.graph.output)]


@pytest.mark.slow
def test_model_int8_has_the_inputs_and_outputs_of_model_onnx(export):
    for variant in VARIANTS:
        fp32 = onnx.load(str(export.graph_path(variant, "model")))
        int8 = onnx.load(str(export.graph_path(variant, "model_int8")))
        assert io_signature(int8) == io_signature(fp32)
        session = make_session(export.graph_path(variant, "model_int8"))
        out = run_session(session, {"images": report_images(export, 1)[0]})
        assert out["detections"].shape == tuple(io_signature(fp32)[1][0][2])


@pytest.mark.slow
def test_joining_the_fp32_stages_gives_model_onnx_exactly(export):
    """The join that builds model_int8 is exact: fp32 backbone + head + postprocess == model.onnx, bit for bit."""
    import onnxruntime as ort

    for variant in VARIANTS:
        parts = [onnx.load(str(export.graph_path(variant, g))) for g in ("backbone", "head", "postprocess")]
        joined = ort.InferenceSession(join_graphs(parts, ["b/", "h/", "p/"]).SerializeToString(),
                                      providers=["CPUExecutionProvider"])
        model = make_session(export.graph_path(variant, "model"))
        for image in report_images(export):
            got = dict(zip([o.name for o in joined.get_outputs()], joined.run(None, {"images": image})))
            want = run_session(model, {"images": image})
            assert all(np.array_equal(got[k], want[k]) for k in want), variant


@pytest.mark.slow
def test_int8_outputs_are_close_to_fp32_on_the_trained_demo(export):
    for variant in VARIANTS:
        sessions = {g: make_session(export.graph_path(variant, g)) for g in ("backbone", "head", "head_int8",
                                                                                 "model", "model_int8")}
        matched = total = 0
        for image in report_images(export):
            feats = run_session(sessions["backbone"], {"images": image})
            fp32, int8 = run_session(sessions["head"], feats), run_session(sessions["head_int8"], feats)
            for name, ref in fp32.items():  # relative to each output's range: ~0.1 % on average (0.5 % allowed);
                # the tail is wider where the 12 calibration images' clipped feature range is exceeded
                err, span = np.abs(int8[name] - ref), ref.max() - ref.min()
                assert err.mean() <= 0.005 * span and err.max() <= 0.15 * span, (variant, name)
            a, b = (run_session(sessions[g], {"images": image}) for g in ("model", "model_int8"))
            rows, n = a["detections"][0], int(a["num_detections"][0])
            ref = {"boxes": torch.from_numpy(rows[:n, :4]), "scores": torch.from_numpy(rows[:n, 4]),
                   "labels": torch.from_numpy(rows[:n, 5]).round().long()}
            m = match_detections(ref, b["detections"][0], int(b["num_detections"][0]), match_iou=0.8)
            matched, total = matched + m["num_matched"], total + max(m["num_torch"], m["num_onnx"])
        assert total > 0 and matched / total >= 0.8, (variant, matched, total)


@pytest.mark.slow
def test_report_has_the_int8_section(export):
    report = export.report
    int8 = report["int8"]
    assert int8["settings"]["method"] == "percentile" and int8["settings"]["format"] == "QDQ"
    assert int8["settings"]["head_outputs"] == "float"
    for variant in VARIANTS:
        entry = int8[variant]
        assert set(entry) >= {"map_fp32_onnx", "map_int8", "delta", "calibration", "files", "map_pytorch"}
        assert entry["delta"] == pytest.approx(entry["map_int8"] - entry["map_fp32_onnx"])
        assert 0 <= entry["map_int8"] <= 1 and entry["map_fp32_onnx"] > 0.1  # a trained model
        # model.onnx through ONNX Runtime scores as the PyTorch detector does (same rule for the SSD demo)
        assert entry["map_fp32_onnx"] == pytest.approx(entry["map_pytorch"], abs=0.01)
        assert entry["calibration"]["method"] == "percentile" and entry["calibration"]["split"].endswith("val.json")
        assert 1 <= entry["calibration"]["images"] <= 64
        for graph, file in entry["files"].items():
            assert (export.root / file).is_file()
            assert report["graphs"][variant][graph] == {"file": file, "runtimes": ["onnxruntime", "openvino"]}
    assert int8["settings"]["calibration_split"].endswith("val.json")
    md = export.report_md_path.read_text()
    assert "## int8" in md and "mAP int8 (model_int8.onnx)" in md and f"{int8['pruned']['map_int8']:.4f}" in md
    assert report["seconds"]["int8"] > 0


def head_out_channels(path) -> int:
    """Output channels of every Conv of a QDQ head (weights arrive through DequantizeLinear)."""
    model = onnx.load(str(path))
    made_by, inits = producers(model), {t.name: t for t in model.graph.initializer}
    return sum(inits[made_by[n.input[1]].input[0]].dims[0] for n in model.graph.node if n.op_type == "Conv")


@pytest.mark.slow
def test_pruned_int8_head_has_fewer_output_channels(export):
    pruned, base = (head_out_channels(export.graph_path(v, "head_int8")) for v in VARIANTS)
    assert 0 < pruned < base


@pytest.mark.slow
def test_calibration_is_seeded_and_quantization_deterministic(export, tmp_path):
    assert calibration_indices(100, 5, seed=0) == calibration_indices(100, 5, seed=0)
    assert calibration_indices(100, 5, seed=0) != calibration_indices(100, 5, seed=1)
    assert calibration_indices(3, 64, seed=0) == [0, 1, 2]
    dataset = CocoDetection.for_detector(export.load_detector("pruned"), export.data, export.report_ann)
    images = calibration_images(dataset, 3, seed=0)
    assert images.shape == (3, 3, *export.image_size) and images.dtype == np.float32
    reader = CalibrationReader.from_graph_outputs(export.graph_path("pruned", "backbone"),
                                                  CalibrationReader.from_images(images))
    files = [tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path / "c.onnx"]
    for f, keep_float in zip(files, (True, True, False)):
        quantize_graph(export.graph_path("pruned", "head"), f, reader, Int8Options(), keep_outputs_float=keep_float)
    assert files[0].read_bytes() == files[1].read_bytes()
    # requantized outputs (Int8Options.head_outputs "int8"): every head output comes out of a DequantizeLinear
    requantized = onnx.load(str(files[2]))
    made_by = producers(requantized)
    assert all(made_by[o.name].op_type == "DequantizeLinear" for o in requantized.graph.output)
    assert op_counts(requantized)["QuantizeLinear"] > op_counts(onnx.load(str(files[0])))["QuantizeLinear"]


def test_int8_settings_that_cannot_be_quantized_are_refused():
    check_int8_options(Int8Options(), opset=13)
    with pytest.raises(EdgeAnchorError, match="`opset` 11 is too old for int8"):
        check_int8_options(Int8Options(), opset=11)
    with pytest.raises(EdgeAnchorError, match="unknown int8 calibration method 'entropy'"):
        check_int8_options(Int8Options(method="entropy"))
    with pytest.raises(EdgeAnchorError, match="at least 1 image"):
        check_int8_options(Int8Options(num_images=0))
    with pytest.raises(EdgeAnchorError, match="unknown int8 head_outputs 'int4'"):
        check_int8_options(Int8Options(head_outputs="int4"))


@pytest.mark.slow
def test_openvino_reads_and_compiles_the_int8_graphs_as_int8(export):
    ov = pytest.importorskip("openvino")
    from edgeanchor.runtimes.openvino import compile_off_thread

    core = ov.Core()
    image = report_images(export, 1)[0]
    for variant in VARIANTS:
        for graph in ("backbone_int8", "head_int8", "model_int8"):
            compiled = compile_off_thread(core, core.read_model(str(export.graph_path(variant, graph))),
                                          {"INFERENCE_PRECISION_HINT": "f32"})
            precisions = {op.get_rt_info()["runtimePrecision"].astype(str)
                          for op in compiled.get_runtime_model().get_ordered_ops()
                          if op.get_rt_info()["layerType"].astype(str) == "Convolution"}
            assert precisions and precisions <= {"u8", "i8"}, (variant, graph, precisions)
        ov_out = compiled({"images": image})
        ort_out = run_session(make_session(export.graph_path(variant, "model_int8")), {"images": image})
        count = int(ort_out["num_detections"][0])
        got = {k.get_any_name(): v for k, v in ov_out.items()}
        assert abs(int(got["num_detections"][0]) - count) <= 1


@pytest.mark.slow
def test_the_export_folder_lists_the_int8_graphs_for_onnxruntime_and_openvino(export):
    assert {"backbone_int8", "head_int8", "model_int8"} <= set(export.graphs("baseline"))
    assert {"backbone_int8", "head_int8", "model_int8"} <= set(export.runtimes()["openvino"])
    assert {"backbone_int8", "head_int8", "model_int8"} <= set(export.runtimes()["onnxruntime"])
