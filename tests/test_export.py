"""ONNX export against eager PyTorch, the TensorRT graph rewrite, and TensorRT's optional paths."""

import dataclasses
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from edgeanchor.errors import EdgeAnchorError
from edgeanchor.exporting import check_parity, export_decoded_onnx, export_onnx, make_session, onnx_export, run_session
from edgeanchor.exporting import tensorrt as trt_export
from edgeanchor.exporting.graphs import NMS_SCORE_FLOOR, SENTINEL, NonMaxSuppression
from edgeanchor.models.registry import ARCHS, wrap
from edgeanchor.pruning import prune
from edgeanchor.runtimes import tensorrt as trt_runtime
from tests.helpers import build_once, randomize_head_biases

# name -> (input size, num_classes); RetinaNet is small so its ResNet-50 exports in seconds.
MODELS = {"edgeanchor:demo_ssd": ((320, 320), 6), "torchvision:retinanet_resnet50_fpn": ((128, 128), 5)}
CASES = [("edgeanchor:demo_ssd", False), ("edgeanchor:demo_ssd", True),
         ("torchvision:retinanet_resnet50_fpn", False), ("torchvision:retinanet_resnet50_fpn", True)]


# ResNet-50 RetinaNet's exports take long: slow (the demo SSD's run in the fast tier)
CASE_PARAMS = [pytest.param((n, p), id=f"{n.split(':')[1]}-{'pruned' if p else 'full'}",
                            marks=[pytest.mark.slow] if "retinanet" in n else []) for n, p in CASES]
MODEL_PARAMS = [pytest.param(n, marks=[pytest.mark.slow] if "retinanet" in n else []) for n in MODELS]


def build(name):
    size, k = MODELS[name]
    torch.manual_seed(0)
    tv_model = ARCHS[name].builder(k, size).eval()
    randomize_head_biases(tv_model)
    return wrap(name, tv_model, image_size=size).eval()


def drop_last_level(det):
    """A keep set that prunes some anchors and drops the deepest level entirely."""
    levels = det.anchor_set.levels[:-1]
    if det.shared_head:  # same anchor positions on every kept level
        return {lv.anchors[p].id for lv in levels for p in (0, 2, 4, 7)}
    return {a.id for lv in levels for p, a in enumerate(lv.anchors) if p % 2 == 0}


def images_for(size, n=2, seed=3):
    return torch.rand(n, 3, *size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def detectors():
    cache = {}
    for name in MODELS:
        det = build(name)
        cache[(name, False)] = det
        cache[(name, True)] = prune(det, drop_last_level(det))
    return cache


@pytest.fixture(scope="module")
def exported(detectors, tmp_path_factory):
    """Each case exported once per session (default opset, simplified); case -> (detector, result). Read-only."""
    cache = {}

    def get(case):
        if case not in cache:
            name = f"export-{case[0].replace(':', '-')}-{'pruned' if case[1] else 'full'}"
            cache[case] = (detectors[case], shared_export(tmp_path_factory, name, detectors[case]))
        return cache[case]

    return get


def shared_export(tmp_path_factory, name: str, det, **kwargs) -> dict:
    """export_onnx(det, folder, **kwargs), run once per test session (all xdist workers): its result."""

    def build(root):
        (root / "graphs").mkdir()
        (root / "result.pkl").write_bytes(pickle.dumps(export_onnx(det, root / "graphs", **kwargs)))

    return pickle.loads((build_once(tmp_path_factory, name, build) / "result.pkl").read_bytes())


def conv_counts(result):
    return {g: sum(n.op_type == "Conv" for n in onnx.load(result["files"][g]).graph.node)
            for g in ("backbone", "head", "model")}


# ---- parity -------------------------------------------------------------
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_onnxruntime_matches_pytorch_on_all_four_graphs(exported, case):
    det, result = exported(case)
    assert all(result["simplified"].values()), result["simplify_notes"]
    report = check_parity(det, Path(result["files"]["model"]).parent, images_for(det.image_size, seed=11))
    assert report["backbone"]["allclose"] and report["head"]["allclose"], report
    assert report["head"]["strict_allclose"], report  # head outputs are O(1): the plain atol=1e-5 holds
    for graph in ("postprocess", "model"):
        assert report[graph]["passed"], report
        assert report[graph]["matched_fraction"] >= 0.99, report
        assert min(report[graph]["counts_torch"]) > 0, "the comparison needs detections"
    assert report["passed"]


def test_parity_reports_a_broken_graph(exported, tmp_path):
    det, result = exported(("edgeanchor:demo_ssd", True))
    out = Path(result["files"]["model"]).parent
    for name in ("backbone", "head", "postprocess", "model"):
        (tmp_path / f"{name}.onnx").write_bytes((out / f"{name}.onnx").read_bytes())
    head = onnx.load(tmp_path / "head.onnx")
    for init in head.graph.initializer:  # perturb every head weight (not the fused head's int64 slice bounds)
        arr = onnx.numpy_helper.to_array(init)
        if arr.dtype == np.float32:
            init.CopyFrom(onnx.numpy_helper.from_array(arr * np.float32(1.01), init.name))
    onnx.save(head, tmp_path / "head.onnx")
    report = check_parity(det, tmp_path, images_for(det.image_size, n=1, seed=11))
    assert not report["head"]["allclose"] and not report["passed"]


# ---- graph structure ----------------------------------------------------
@pytest.mark.parametrize("name", MODEL_PARAMS)
def test_detections_output_is_static_and_padded(exported, name):
    det, result = exported((name, True))
    max_det = det.postprocess_spec.detections_per_img
    graph = onnx.load(result["files"]["model"]).graph
    declared = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in graph.output}
    assert declared == {"detections": [1, max_det, 6], "num_detections": [1]}
    assert [i.name for i in graph.input] == ["images"]
    assert sum(n.op_type == "NonMaxSuppression" for n in graph.node) == 1
    out = run_session(make_session(result["files"]["model"]), {"images": images_for(det.image_size, n=1, seed=5)})
    dets, num = out["detections"], out["num_detections"]
    assert dets.shape == (1, max_det, 6) and dets.dtype == np.float32
    assert num.shape == (1,) and num.dtype == np.int64
    n = int(num[0])
    assert 0 < n <= max_det
    assert np.all(np.diff(dets[0, :n, 4]) <= 0), "sorted by descending score"
    assert np.all(dets[0, n:] == 0), "zero rows after the detections"
    assert np.all(dets[0, :n, 4] > det.postprocess_spec.score_thresh)


def test_no_detections_gives_zero_rows(tmp_path):
    det = build("edgeanchor:demo_ssd")
    det.postprocess_spec = dataclasses.replace(det.postprocess_spec, score_thresh=1.0)  # no probability exceeds 1: no candidates
    result = export_onnx(det, tmp_path)  # traced with an empty NMS result
    out = run_session(make_session(result["files"]["model"]), {"images": images_for(det.image_size, n=1)})
    assert int(out["num_detections"][0]) == 0
    assert out["detections"].shape == (1, det.postprocess_spec.detections_per_img, 6) and not out["detections"].any()


def test_pruned_head_has_fewer_output_channels_in_the_graph(exported):
    det, full = exported(("edgeanchor:demo_ssd", False))
    pruned_det, pruned = exported(("edgeanchor:demo_ssd", True))
    k = det.num_classes
    last = det.anchor_set.num_levels - 1
    assert [c["level"] for c in full["head_channels"]] == list(range(last + 1))
    assert [c["level"] for c in pruned["head_channels"]] == list(range(last))
    for before, after in zip(full["head_channels"], pruned["head_channels"]):
        kept = pruned_det.anchor_set.levels[after["level"]].num_anchors
        # demo: 6 anchors per cell, every other one kept -> 3; K=6 -> 18 cls, 12 box channels
        assert after["cls_channels"] == kept * k < before["cls_channels"]
        assert after["box_channels"] == kept * 4 < before["box_channels"]
    outputs = [o.name for o in onnx.load(pruned["files"]["head"]).graph.output]
    assert f"cls_{last}" not in outputs and f"box_{last}" not in outputs


@pytest.mark.parametrize("name", MODEL_PARAMS)
def test_dropped_level_leaves_no_conv_behind(exported, name):
    det, full = exported((name, False))
    pruned_det, pruned = exported((name, True))
    before, after = conv_counts(full), conv_counts(pruned)
    last = det.anchor_set.num_levels - 1
    if det.shared_head:
        # RetinaNet: P7's conv goes from the backbone; the shared head (4+1 convs per branch) runs on one level fewer
        per_level = before["head"] // det.anchor_set.num_levels
        assert per_level == 10
        expected = {"backbone": before["backbone"] - 1, "head": before["head"] - per_level}
    else:
        # demo: the deepest extractor stage (one conv) and that level's head convs go: its cls and box convs,
        # or the one convolution of the fused head (exporting/fused_head.py)
        stage_convs = sum(isinstance(m, torch.nn.Conv2d) for m in det.extractor.stages[last].modules())
        assert stage_convs == 1
        per_level = before["head"] // det.anchor_set.num_levels
        assert per_level == (1 if full["fused_head"] else 2)
        expected = {"backbone": before["backbone"] - 1, "head": before["head"] - per_level}
    expected["model"] = expected["backbone"] + expected["head"]
    assert after == expected
    names = [o.name for o in onnx.load(pruned["files"]["backbone"]).graph.output]
    assert names == [f"features_{i}" for i in pruned_det.active_levels] and f"features_{last}" not in names


def test_files_are_written_atomically_and_only_the_graphs(exported):
    _, result = exported(("edgeanchor:demo_ssd", True))
    out = Path(result["files"]["model"]).parent
    assert sorted(p.name for p in out.iterdir()) == ["backbone.onnx", "head.onnx", "model.onnx", "model_nonms.onnx",
                                                    "postprocess.onnx"]
    assert result["opset"] == 17 and result["input_shape"] == [1, 3, 320, 320]


# ---- options ------------------------------------------------------------
def test_opset_is_configurable(detectors, tmp_path):
    det = detectors[("edgeanchor:demo_ssd", True)]
    result = export_onnx(det, tmp_path, opset=13)
    assert result["opset"] == 13
    for path in result["files"].values():
        model = onnx.load(path)
        assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [13]
    report = check_parity(det, tmp_path, images_for(det.image_size, n=1, seed=11))
    assert report["passed"], report


def test_old_opset_and_bad_trace_image_are_user_errors(detectors, tmp_path):
    det = detectors[("edgeanchor:demo_ssd", True)]
    with pytest.raises(EdgeAnchorError, match="`opset` 10"):
        export_onnx(det, tmp_path, opset=10)
    with pytest.raises(EdgeAnchorError, match=r"\[1, 3, 320, 320\]"):
        export_onnx(det, tmp_path, trace_images=torch.rand(2, 3, 320, 320))


def double_first_output(model):
    """A copy whose first output is multiplied by 2: a 'simplified' graph that changed results."""
    bad = onnx.ModelProto()
    bad.CopyFrom(model)
    first = bad.graph.output[0].name
    for node in bad.graph.node:
        node.output[:] = [f"{first}_orig" if o == first else o for o in node.output]
    bad.graph.initializer.append(helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]))
    bad.graph.node.append(helper.make_node("Mul", [f"{first}_orig", "two"], [first]))
    return bad


@pytest.mark.parametrize("mode", ["wrong", "raises"])
def test_simplifier_fallback_keeps_the_unsimplified_graph(detectors, tmp_path, monkeypatch, mode):
    import onnxsim

    def fake_simplify(model, *args, **kwargs):
        if mode == "raises":
            raise RuntimeError("no can do")
        return double_first_output(model), True

    monkeypatch.setattr(onnxsim, "simplify", fake_simplify)
    det = detectors[("edgeanchor:demo_ssd", True)]
    result = export_onnx(det, tmp_path)
    assert result["simplified"] == {g: False for g in onnx_export.EXPORTED_GRAPHS}
    expected = "changed output" if mode == "wrong" else "onnxsim failed: RuntimeError: no can do"
    assert all(expected in note for note in result["simplify_notes"].values()), result["simplify_notes"]
    report = check_parity(det, tmp_path, images_for(det.image_size, n=1, seed=11))
    assert report["passed"], report  # the kept graphs are the correct, unsimplified ones
    assert not any(n.op_type == "Mul" and "two" in n.input for n in onnx.load(tmp_path / "backbone.onnx").graph.node)


def test_session_options(exported):
    det, result = exported(("edgeanchor:demo_ssd", True))
    feeds = {"images": images_for(det.image_size, n=1, seed=2)}
    fast = run_session(make_session(result["files"]["model"], intra_op_num_threads=1), feeds)
    plain = run_session(make_session(result["files"]["model"], graph_optimization_level="disable"), feeds)
    assert np.allclose(fast["detections"], plain["detections"], atol=1e-4)
    with pytest.raises(EdgeAnchorError, match="optimisation level"):
        make_session(result["files"]["model"], graph_optimization_level="max")
    with pytest.raises(EdgeAnchorError, match="does not exist"):
        make_session(Path(result["files"]["model"]).with_name("nope.onnx"))


def test_onnxruntime_nms_thresholds_match_torchvision(tmp_path):
    """ORT keeps score > score_threshold (strict) and suppresses IoU > iou_threshold, as torchvision's nms."""

    class Nms(torch.nn.Module):
        def forward(self, boxes, scores):
            return NonMaxSuppression.apply(boxes, scores, 10, 0.5, 0.3)

    # box 1 overlaps box 0 with IoU exactly 0.5 (50 / 100): kept; box 2 scores exactly 0.3: dropped
    boxes = torch.tensor([[[0.0, 0, 10, 10], [0, 0, 10, 5], [40, 40, 50, 50], [0, 0, 10, 9]]])
    scores = torch.tensor([[[0.9, 0.8, 0.3, 0.7]]])
    model = onnx_export.trace_to_onnx(Nms(), (boxes, scores), ["boxes", "scores"], ["selected"], 17)
    got = onnx_export.run_model(model, {"boxes": boxes.numpy(), "scores": scores.numpy()})["selected"]
    assert got[:, 2].tolist() == [0, 1] == Nms()(boxes, scores)[:, 2].tolist()
    assert SENTINEL < NMS_SCORE_FLOOR == 0.0  # non-candidates below; a threshold >= 0, as OpenCV requires


def test_model_graph_nms_threshold_is_not_negative(exported):
    _, result = exported(("edgeanchor:demo_ssd", True))
    model = onnx.load(result["files"]["model"])
    consts = {o: n for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    inits = {t.name: t for t in model.graph.initializer}
    nms = [n for n in model.graph.node if n.op_type == "NonMaxSuppression"]
    assert len(nms) == 1
    name = nms[0].input[4]
    tensor = inits[name] if name in inits else consts[name].attribute[0].t
    assert float(onnx.numpy_helper.to_array(tensor).reshape(-1)[0]) >= 0.0


# ---- TensorRT graph and command (no TensorRT needed) --------------------
@pytest.fixture(scope="module")
def decoded(detectors, tmp_path_factory):
    det = detectors[("edgeanchor:demo_ssd", True)]
    return det, shared_export(tmp_path_factory, "export-decoded", det, decoded=True)


def test_decoded_graph_matches_pytorch(decoded):
    det, result = decoded
    image = images_for(det.image_size, n=1, seed=4)
    out = run_session(make_session(result["files"]["decoded"]), {"images": image})
    with torch.no_grad():
        cls, box = det.flatten_head(det.head(det.backbone(image)))
        cands = det.image_candidates(det.head(det.backbone(image)))[0]
    assert out["scores"].shape == (1, det.anchor_set.num_boxes, det.num_classes)
    assert np.allclose(out["scores"][0], torch.softmax(cls[0], -1).numpy(), atol=1e-5)
    got = out["boxes_xyxy"][0][cands.box_index.numpy()]
    assert np.allclose(got, cands.boxes_xyxy.numpy(), atol=1e-3)


def test_trt_graph_has_the_efficient_nms_plugin(decoded, tmp_path):
    det, _ = decoded
    alone = export_decoded_onnx(det, tmp_path / "decoded.onnx")  # the decoded graph on its own
    assert alone["files"] == {"decoded": str(tmp_path / "decoded.onnx")} and alone["simplified"] == {"decoded": True}
    info = trt_export.make_trt_graph(tmp_path / "decoded.onnx", tmp_path / "model_trt.onnx", det.postprocess_spec)
    model = onnx.load(info["path"])
    onnx.checker.check_model(model)  # custom domain "TRT" is declared
    plugins = [n for n in model.graph.node if n.op_type == "EfficientNMS_TRT"]
    assert len(plugins) == 1 and plugins[0] is model.graph.node[-1]
    node = plugins[0]
    assert node.domain == "TRT" and list(node.input) == ["boxes_xyxy", "scores"]
    assert list(node.output) == ["num_detections", "detection_boxes", "detection_scores", "detection_classes"]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["score_threshold"] == pytest.approx(det.postprocess_spec.score_thresh)
    assert attrs["iou_threshold"] == pytest.approx(det.postprocess_spec.nms_thresh)
    assert attrs["max_output_boxes"] == det.postprocess_spec.detections_per_img == 100
    assert attrs["background_class"] == 0  # SSD: softmax column 0 is background
    assert attrs["score_activation"] == 0 and attrs["box_coding"] == 0 and attrs["plugin_version"] == b"1"
    outs = {o.name: ([d.dim_value for d in o.type.tensor_type.shape.dim], o.type.tensor_type.elem_type)
            for o in model.graph.output}
    assert outs == {"num_detections": ([1, 1], TensorProto.INT32),
                    "detection_boxes": ([1, 100, 4], TensorProto.FLOAT),
                    "detection_scores": ([1, 100], TensorProto.FLOAT),
                    "detection_classes": ([1, 100], TensorProto.INT32)}
    assert not any(n.op_type == "NonMaxSuppression" for n in model.graph.node)
    assert info["num_boxes"] == det.anchor_set.num_boxes and info["num_classes"] == det.num_classes


def test_trt_plugin_attributes_for_retinanet(detectors):
    attrs = trt_export.plugin_attributes(detectors[("torchvision:retinanet_resnet50_fpn", False)].postprocess_spec)
    assert attrs["background_class"] == -1 and attrs["max_output_boxes"] == 300
    assert attrs["score_threshold"] == pytest.approx(0.05) and attrs["iou_threshold"] == pytest.approx(0.5)


def test_trt_graph_needs_the_decoded_graph(exported, tmp_path):
    det, result = exported(("edgeanchor:demo_ssd", True))
    with pytest.raises(EdgeAnchorError, match="decoded=True"):
        trt_export.make_trt_graph(result["files"]["model"], tmp_path / "x.onnx", det.postprocess_spec)
    assert not (tmp_path / "x.onnx").exists()


def test_trtexec_command():
    cmd = trt_export.trtexec_command("out/model trt.onnx", "fp16", timing_cache="out/timing.cache")
    assert cmd == ("trtexec '--onnx=out/model trt.onnx' '--saveEngine=out/model trt_fp16.engine' "
                   "--memPoolSize=workspace:1024 --fp16 --timingCacheFile=out/timing.cache")
    assert "--fp16" not in trt_export.trtexec_command("m.onnx", "fp32", engine_path="m.plan")
    int8 = trt_export.trtexec_command("m.onnx", "int8", calib_cache="m.calib", trtexec="/usr/src/tensorrt/bin/trtexec")
    assert int8.startswith("/usr/src/tensorrt/bin/trtexec ") and "--int8 --fp16 --calib=m.calib" in int8
    with pytest.raises(EdgeAnchorError, match="calibration cache"):
        trt_export.trtexec_command("m.onnx", "int8")
    with pytest.raises(EdgeAnchorError, match="unknown precision 'int4'"):
        trt_export.trtexec_command("m.onnx", "int4")


# ---- TensorRT missing ---------------------------------------------------
def test_missing_tensorrt_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    with pytest.raises(EdgeAnchorError, match="TensorRT is not available") as info:
        trt_runtime.require_tensorrt()
    assert "\n" not in str(info.value)
    with pytest.raises(EdgeAnchorError, match="TensorRT is not available"):
        trt_runtime.build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", precision="fp16")
    assert not (tmp_path / "m.engine").exists()


def test_tensorrt_without_gpu_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(EdgeAnchorError, match="needs a CUDA GPU") as info:
        trt_runtime.require_tensorrt()
    assert "\n" not in str(info.value)


def test_build_engine_checks_its_arguments_first(tmp_path):
    with pytest.raises(EdgeAnchorError, match="unknown precision"):
        trt_runtime.build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", precision="bf16")
    with pytest.raises(EdgeAnchorError, match="calibration images"):
        trt_runtime.build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", precision="int8")


def test_importing_export_does_not_import_tensorrt():
    import subprocess

    code = "import sys, edgeanchor.exporting, edgeanchor.exporting.tensorrt; print('tensorrt' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---- TensorRT present (skipped here) ------------------------------------
@pytest.fixture
def trt_graph(decoded, tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT engine builds need a CUDA GPU")
    det, result = decoded
    return det, trt_export.make_trt_graph(result["files"]["decoded"], tmp_path / "model_trt.onnx", det.postprocess_spec)["path"]


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_build_engine(trt_graph, tmp_path, precision):
    import tensorrt as trt

    det, onnx_path = trt_graph
    if precision != "fp32" and not hasattr(trt.BuilderFlag, "FP16"):
        pytest.skip(f"TensorRT {trt.__version__} has no fp16/int8 builder flags")
    calib = images_for(det.image_size, n=4, seed=8) if precision == "int8" else None
    result = trt_runtime.build_engine(onnx_path, tmp_path / f"m_{precision}.engine", precision=precision,
                                     calib_images=calib, timing_cache=tmp_path / "timing.cache",
                                     log_path=tmp_path / "build.log")
    assert Path(result["engine"]).stat().st_size > 0
    assert (tmp_path / "timing.cache").stat().st_size > 0 and (tmp_path / "build.log").read_text()
    if precision == "int8":
        assert Path(result["calib_cache"]).is_file()
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(Path(result["engine"]).read_bytes())
    names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
    assert names == {"images", *trt_export.TRT_OUTPUTS}


@pytest.mark.parametrize("case", CASE_PARAMS)
def test_nms_free_graph_gives_the_best_candidates_in_fixed_shapes(exported, case):
    det, result = exported(case)
    model = onnx.load(result["files"]["model_nonms"])
    ops = {n.op_type for n in model.graph.node}
    assert "NonMaxSuppression" not in ops and "NonZero" not in ops  # nothing data-dependent
    k = result["nonms_topk"]
    assert k == min(1000, det.anchor_set.num_boxes * (det.num_classes - (det.postprocess_spec.score_fn == "softmax")))
    shapes = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    assert shapes == {"boxes": [1, k, 4], "scores": [1, k], "labels": [1, k]}
    images = images_for(det.image_size)
    parity = check_parity(det, result["out_dir"], images)["model_nonms"]
    assert parity["passed"] and parity["counts_torch"] == parity["counts_onnx"]
    assert sum(parity["counts_torch"]) > 0  # real candidates were compared
    out = run_session(make_session(result["files"]["model_nonms"]), {"images": images[:1]})
    scores = out["scores"][0]
    assert np.all(scores[:-1] >= scores[1:]) and np.all(scores >= 0)  # best first, zero padding


def test_nms_free_topk_is_configurable(detectors, tmp_path):
    det = detectors[("edgeanchor:demo_ssd", True)]
    result = export_onnx(det, tmp_path, nonms_topk=7)
    assert result["nonms_topk"] == 7
    out = run_session(make_session(result["files"]["model_nonms"]), {"images": images_for(det.image_size)[:1]})
    assert out["boxes"].shape == (1, 7, 4)
    with pytest.raises(EdgeAnchorError, match="`nonms_topk` must be at least 1"):
        export_onnx(det, tmp_path / "x", nonms_topk=0)
