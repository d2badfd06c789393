"""The ncnn decoded graph (edgeanchor.exporting.ncnn_graph): ONNX Runtime against PyTorch's decode, and only ops ncnn has.

No ncnn needed: benchmarks/ncnn_check.py runs the pnnx conversion and ncnn itself.
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from edgeanchor.exporting.graphs import DecodeBoxes
from edgeanchor.exporting.ncnn_graph import FORBIDDEN_OPS, NCNN_OPS, NcnnDecodedGraph, export_ncnn_graph
from edgeanchor.models import build_detector
from edgeanchor.models.registry import ARCHS, wrap
from edgeanchor.pruning import prune
from tests.helpers import randomize_head_biases

BOX_TOL, SCORE_TOL = 1e-3, 1e-4


def drop_last_level(det):
    """A keep set that prunes some anchors and drops the deepest level entirely."""
    levels = [det.anchor_set.levels[i] for i in det.active_levels[:-1]]
    if getattr(det, "shared_head", False):  # RetinaNet: same anchor positions on every kept level
        return {lv.anchors[p].id for lv in levels for p in (0, 2, 4, 7)}
    return {a.id for lv in levels for p, a in enumerate(lv.anchors) if p % 2 == 0}


def retinanet(size):
    torch.manual_seed(0)
    tv_model = ARCHS["torchvision:retinanet_resnet50_fpn"].builder(5, size).eval()
    randomize_head_biases(tv_model)
    return wrap("torchvision:retinanet_resnet50_fpn", tv_model, image_size=size).eval()


def build(case):
    if case == "retinanet-nonsquare":  # (H, W) differ: the clip's per-column bound (Min) is exercised
        return retinanet((128, 160))
    base = {"ssd": "demo", "yolo": "demo-yolo"}[case.split("-")[0]]
    det = build_detector(base).eval()
    if case.endswith("-pruned"):
        det = prune(det, drop_last_level(det)).eval()
        assert len(det.active_levels) < len(build_detector(base).active_levels)
    return det


# the ResNet-50 RetinaNet takes long: slow; the other cases run in the fast tier
CASES = ["ssd", "ssd-pruned", "yolo", "yolo-pruned", pytest.param("retinanet-nonsquare", marks=pytest.mark.slow)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    cache = {}

    def get(case):
        if case not in cache:
            det = build(case)
            path = tmp_path_factory.mktemp("ncnn") / f"{case}.onnx"
            cache[case] = (det, export_ncnn_graph(det, path))
        return cache[case]

    return get


def torch_reference(det, x):
    """Boxes (B, 4) and scores (B, C) from edgeanchor's own decode of the detector's head outputs."""
    with torch.no_grad():
        head = [t for pair in det.head(det.backbone(x)) for t in pair]
        boxes, probs = DecodeBoxes(det)(head)
    if det.postprocess_spec.score_fn == "softmax":
        probs = probs[:, 1:]  # background column dropped
    return boxes.numpy(), probs.numpy()


@pytest.mark.parametrize("case", CASES)
def test_onnxruntime_matches_pytorch_decode(exported, case):
    det, info = exported(case)
    sess = ort.InferenceSession(info["file"], providers=["CPUExecutionProvider"])
    num_boxes = int(det.level_starts[-1])
    columns = det.num_classes - (1 if det.postprocess_spec.score_fn == "softmax" else 0)
    assert info["outputs"] == {"boxes": [1, num_boxes, 4], "scores": [1, num_boxes, columns]}
    for seed in range(2):
        x = torch.rand(1, 3, *det.image_size, generator=torch.Generator().manual_seed(seed))
        boxes, scores = sess.run(["boxes", "scores"], {"images": x.numpy()})
        ref_boxes, ref_scores = torch_reference(det, x)
        assert boxes.shape == (1, num_boxes, 4) and scores.shape == (1, num_boxes, columns)
        assert np.abs(boxes[0] - ref_boxes).max() <= BOX_TOL
        assert np.abs(scores[0] - ref_scores).max() <= SCORE_TOL
        if det.postprocess_spec.score_fn != "yolo":  # clipped to the image
            h, w = det.image_size
            assert boxes.min() >= 0 and boxes[0][:, 0::2].max() <= w and boxes[0][:, 1::2].max() <= h


def _constant_values(graph):
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


@pytest.mark.parametrize("case", CASES)
def test_graph_has_only_ops_ncnn_runs(exported, case):
    det, info = exported(case)
    graph = onnx.load(info["file"]).graph
    ops = {n.op_type for n in graph.node}
    assert not ops & FORBIDDEN_OPS
    assert ops <= NCNN_OPS | {"Constant"}, ops - NCNN_OPS
    values = _constant_values(graph)
    for node in graph.node:
        if node.op_type == "Slice":
            assert all(name in values for name in node.input[1:]), "Slice bounds must be constants"
            if len(node.input) > 4 and node.input[4]:
                assert (values[node.input[4]] == 1).all(), f"strided Slice {node.name}"
    # Only 3-D or 4-D tensors (ncnn drops the batch axis and holds at most 4 dims).
    inferred = onnx.shape_inference.infer_shapes(onnx.load(info["file"])).graph
    for vi in [*inferred.value_info, *inferred.output]:
        assert len(vi.type.tensor_type.shape.dim) <= 4, vi.name
    meta = {p.key: p.value for p in onnx.load(info["file"]).metadata_props}
    assert meta["first_label"] == str(det.first_label) and meta["score_fn"] == det.postprocess_spec.score_fn


def test_module_in_eager_mode_matches_reference():
    det = build("ssd-pruned")
    x = torch.rand(1, 3, *det.image_size, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        boxes, scores = NcnnDecodedGraph(det).eval()(x)
    ref_boxes, ref_scores = torch_reference(det, x)
    assert np.abs(boxes[0].numpy() - ref_boxes).max() <= BOX_TOL
    assert np.abs(scores[0].numpy() - ref_scores).max() <= SCORE_TOL
