"""MediaPipe's box coding ("linear_size") and its packed regressors, on hand-worked values and a tiny graph.

The tiny graph has the layout of MediaPipe's BlazeFace short-range model as tf2onnx converts it (input
``input`` [1, 128, 128, 3] NHWC; per level a regressor conv of anchors x 16 values (box, then 6 keypoints)
and a classificator conv of anchors x 1, each Transpose -> Reshape -> Concat into ``regressors``
[1, 896, 16] and ``classificators`` [1, 896, 1]), with random weights, so the ``mediapipe`` preset
loads it as it loads the real model. The real model's parity with MediaPipe is
tests/test_onnx_mediapipe_real.py.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from edgeanchor.errors import EdgeAnchorError
from edgeanchor.models.checkpoint_file import check_rule_json
from edgeanchor.onnx_source.detector import build_onnx_detector
from edgeanchor.onnx_source.export import decode_points
from edgeanchor.onnx_source.graph import find_head, kept_rows, prune_graph
from edgeanchor.onnx_source.spec import load_head_spec
from edgeanchor.postprocess import PostprocessRule, candidates, decode, linear_size_decode

# ---- the decode, by hand ----------------------------------------------------------------------------------


def rule(box_coding: str, weights=(10.0, 10.0, 5.0, 5.0)) -> PostprocessRule:
    return PostprocessRule(score_fn="sigmoid", topk_scope="class", score_thresh=0.5, topk_candidates=100,
                           nms_thresh=0.3, detections_per_img=10, box_weights=weights, clip=False,
                           box_coding=box_coding)


def test_linear_size_decode_hand_worked():
    anchors = torch.tensor([[0.0, 0.0, 128.0, 128.0], [10.0, 20.0, 30.0, 60.0]])
    deltas = torch.tensor([[16.0, -32.0, 64.0, 32.0], [1.0, -2.0, 5.0, 2.5]])
    # box 0, weights 128 (MediaPipe's x_scale ... h_scale at 128 x 128): anchor centre (64, 64), size 128:
    #   cx = 64 + 16 / 128 * 128 = 80, cy = 64 - 32 / 128 * 128 = 32, w = 64 / 128 * 128 = 64, h = 32
    #   -> (80 - 32, 32 - 16, 80 + 32, 32 + 16) = (48, 16, 112, 48)
    got = linear_size_decode(deltas[:1], anchors[:1], (128.0, 128.0, 128.0, 128.0))
    assert got.tolist() == [[48.0, 16.0, 112.0, 48.0]]
    # box 1, weights (10, 10, 5, 5): anchor centre (20, 40), size (20, 40):
    #   cx = 20 + 1 / 10 * 20 = 22, cy = 40 - 2 / 10 * 40 = 32, w = 5 / 5 * 20 = 20, h = 2.5 / 5 * 40 = 20
    #   -> (12, 22, 32, 42)
    torch.testing.assert_close(decode(deltas[1:], anchors[1:], rule("linear_size")),
                               torch.tensor([[12.0, 22.0, 32.0, 42.0]]), rtol=0, atol=1e-5)
    # the same deltas with "centre_size" (torchvision's BoxCoder): w = 20 * exp(5 / 5), h = 40 * exp(2.5 / 5)
    w, h = 20 * math.e, 40 * math.exp(0.5)
    torch.testing.assert_close(decode(deltas[1:], anchors[1:], rule("centre_size")),
                               torch.tensor([[22 - w / 2, 32 - h / 2, 22 + w / 2, 32 + h / 2]]), rtol=1e-6, atol=1e-4)


def test_candidates_decode_with_the_rules_box_coding():
    anchors = torch.tensor([[0.0, 0.0, 128.0, 128.0], [10.0, 20.0, 30.0, 60.0]])
    deltas = torch.tensor([[16.0, -32.0, 64.0, 32.0], [1.0, -2.0, 5.0, 2.5]])
    logits = torch.tensor([[2.0], [-3.0]])  # sigmoid 0.88 and 0.047: only box 0 is above 0.5
    cands = candidates(logits, deltas, anchors, (128, 128), rule("linear_size", (128.0, 128.0, 128.0, 128.0)))
    assert cands.box_index.tolist() == [0] and cands.boxes_xyxy.tolist() == [[48.0, 16.0, 112.0, 48.0]]


def test_rule_json_reads_rules_written_before_box_coding(tmp_path):
    new = rule("linear_size")
    assert new.to_json()["box_coding"] == "linear_size"
    assert PostprocessRule.from_json(new.to_json()) == new
    old = {k: v for k, v in rule("centre_size").to_json().items() if k not in ("box_coding", "clip")}
    check_rule_json(old, tmp_path / "ckpt.pt", "postprocess")  # optional, as clip is
    assert PostprocessRule.from_json(old).box_coding == "centre_size"
    with pytest.raises(EdgeAnchorError, match=r"postprocess\.box_coding.*one of centre_size, linear_size"):
        check_rule_json({**new.to_json(), "box_coding": "exp"}, tmp_path / "ckpt.pt", "postprocess")


# ---- a tiny graph with MediaPipe's layout ------------------------------------------------------------------

LEVELS = ((16, 2), (8, 6))  # short range at 128 x 128: 16 x 16 cells x 2 anchors, 8 x 8 x 6 (512 + 384 = 896)
VALUES = 16  # regressors per anchor: box (x, y, w, h), then 6 keypoints (x, y)


def mediapipe_style_model(values: int = VALUES) -> onnx.ModelProto:
    """BlazeFace short range's head layout, as tf2onnx converts the TFLite model, with random weights."""
    rs = np.random.RandomState(0)

    def init(name, array):
        return numpy_helper.from_array(np.asarray(array), name)

    inits = [init("w_stem", (rs.randn(8, 3, 8, 8) * 0.1).astype(np.float32)),
             init("w_down", (rs.randn(8, 8, 2, 2) * 0.3).astype(np.float32)),
             init("reg_shape", np.array([1, -1, values], np.int64)), init("cls_shape", np.array([1, -1, 1], np.int64))]
    nodes = [helper.make_node("Transpose", ["input"], ["x"], "to_nchw", perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["x", "w_stem"], ["f0"], "stem", strides=[8, 8]),
             helper.make_node("Relu", ["f0"], ["f0r"], "stem_relu"),
             helper.make_node("Conv", ["f0r", "w_down"], ["f1"], "down", strides=[2, 2]),
             helper.make_node("Relu", ["f1"], ["f1r"], "down_relu")]
    for level, (feature, (_, a)) in enumerate(zip(("f0r", "f1r"), LEVELS, strict=True)):
        inits += [init(f"w_reg{level}", rs.randn(a * values, 8, 1, 1).astype(np.float32)),
                  init(f"b_reg{level}", rs.randn(a * values).astype(np.float32)),
                  init(f"w_cls{level}", rs.randn(a, 8, 1, 1).astype(np.float32)),
                  init(f"b_cls{level}", rs.randn(a).astype(np.float32))]
        for kind, shape in (("reg", "reg_shape"), ("cls", "cls_shape")):
            nodes += [helper.make_node("Conv", [feature, f"w_{kind}{level}", f"b_{kind}{level}"], [f"{kind}{level}"],
                                       f"{kind}{level}"),
                      helper.make_node("Transpose", [f"{kind}{level}"], [f"{kind}_t{level}"], f"{kind}_t{level}",
                                       perm=[0, 2, 3, 1]),
                      helper.make_node("Reshape", [f"{kind}_t{level}", shape], [f"{kind}_r{level}"], f"{kind}_r{level}")]
    nodes += [helper.make_node("Concat", ["reg_r0", "reg_r1"], ["regressors"], "regressors", axis=1),
              helper.make_node("Concat", ["cls_r0", "cls_r1"], ["classificators"], "classificators", axis=1)]
    graph = helper.make_graph(
        nodes, "blazeface_style", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 128, 128, 3])],
        [helper.make_tensor_value_info("regressors", TensorProto.FLOAT, [1, 896, values]),
         helper.make_tensor_value_info("classificators", TensorProto.FLOAT, [1, 896, 1])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model, full_check=True)
    return model


def run(model: onnx.ModelProto, image: np.ndarray) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": image})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(path, model, detector) of the tiny graph loaded with the ``mediapipe`` preset."""
    path = tmp_path_factory.mktemp("mediapipe") / "blazeface_style.onnx"
    model = mediapipe_style_model()
    onnx.save(model, path)
    return path, model, build_onnx_detector(f"onnx:{path}", head="mediapipe")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(5))


def graph_input(images: torch.Tensor) -> np.ndarray:
    """MediaPipe's input: RGB pixel * 2 / 255 - 1, NHWC ([0, 1] images times 255 first)."""
    return np.ascontiguousarray((images * 255.0 * (2.0 / 255.0) - 1.0).permute(0, 2, 3, 1).numpy(), np.float32)


def test_find_head_reads_the_packed_regressors_as_the_box_convs(tiny):
    _, model, det = tiny
    match = det.source.match
    assert [(c.role, c.level, c.node, c.values_per_anchor, c.anchors) for c in match.convs] == [
        ("boxes", 0, "reg0", 16, 2), ("scores", 0, "cls0", 1, 2), ("boxes", 1, "reg1", 16, 6),
        ("scores", 1, "cls1", 1, 6)]
    # wrong keypoint count: the box conv's 32 channels are not 2 anchors x (4 + 2 x 5)
    spec = replace(det.spec, outputs=replace(det.spec.outputs, extra_points=5))
    with pytest.raises(EdgeAnchorError) as exc:
        find_head(model, spec)
    assert str(exc.value) == ("output 'regressors', level 0 (stride 8): node reg0 has 32 output channels, the spec says "
                              "2 anchors x 14 box and extra values = 28; fix levels[0].anchors or outputs.extra_points")


def test_packed_split_equals_the_graphs_columns(tiny, images):
    _, model, det = tiny
    regressors, classificators = run(model, graph_input(images))
    cls, box, extras = head_columns(det, images)
    # box: columns 0..3 (x, y, w, h: the preset's xywh order keeps them); keypoints: columns 4..15
    np.testing.assert_allclose(box[0].numpy(), regressors[0, :, :4], rtol=0, atol=2e-5)
    np.testing.assert_allclose(extras[0].numpy(), regressors[0, :, 4:], rtol=0, atol=2e-5)
    np.testing.assert_allclose(cls[0].numpy(), classificators[0], rtol=0, atol=2e-5)


def head_columns(det, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The detector's flattened scores, boxes and keypoints (N, B, columns each), in the graph's row order."""
    with torch.no_grad():
        features = det.backbone(images)
        cls, box = det.flatten_head(det.head(features))
        extras = torch.cat([flatten(det.extras_at(j, f), 12) for j, f in enumerate(features)], dim=1)
    return cls, box, extras


def flatten(x: torch.Tensor | None, columns: int) -> torch.Tensor:
    from edgeanchor.postprocess import flatten_level

    assert x is not None
    return flatten_level(x, columns)


def mediapipe_anchors() -> np.ndarray:
    """SsdAnchorsCalculator's short-range anchors by hand: (x_center, y_center, w, h) normalised, (896, 4).

    Strides 8, 16, 16, 16 at 128: a 16 x 16 layer of 2 anchors (aspect ratio 1 and the interpolated one), then
    three 8 x 8 layers merged into 6 a cell; fixed_anchor_size: every w and h is 1; centres (col + 0.5) / cols.
    """
    rows = []
    for cells, per_cell in LEVELS:
        for y in range(cells):
            for x in range(cells):
                rows += [[(x + 0.5) / cells, (y + 0.5) / cells, 1.0, 1.0]] * per_cell
    return np.asarray(rows, np.float32)


def mediapipe_decode(raw: np.ndarray, anchors: np.ndarray, scale: float = 128.0) -> tuple[np.ndarray, np.ndarray]:
    """TensorsToDetectionsCalculator's decode with reverse_output_order, no exponential, 6 keypoints:
    boxes (xmin, ymin, xmax, ymax) and keypoints (x, y) x 6, normalised."""
    x = raw[:, 0] / scale * anchors[:, 2] + anchors[:, 0]
    y = raw[:, 1] / scale * anchors[:, 3] + anchors[:, 1]
    w = raw[:, 2] / scale * anchors[:, 2]
    h = raw[:, 3] / scale * anchors[:, 3]
    boxes = np.stack([x - w / 2, y - h / 2, x + w / 2, y + h / 2], axis=1)
    points = raw[:, 4:].reshape(-1, 6, 2) / scale * anchors[:, None, 2:4] + anchors[:, None, 0:2]
    return boxes, points.reshape(-1, 12)


def test_decode_equals_mediapipes_formulas_on_the_graphs_outputs(tiny, images):
    _, model, det = tiny
    regressors, _ = run(model, graph_input(images))
    want_boxes, want_points = mediapipe_decode(regressors[0], mediapipe_anchors())
    with torch.no_grad():
        features = det.backbone(images)
        _, box = det.flatten_head(det.head(features))
        boxes = decode(box[0], det.decode_priors, det.postprocess_spec) / 128.0
        points = decode_points(det, features, torch.arange(896)) / 128.0
    assert det.postprocess_spec.box_coding == "linear_size"
    assert det.postprocess_spec.box_weights == (128.0, 128.0, 128.0, 128.0)
    np.testing.assert_allclose(boxes.numpy(), want_boxes, rtol=0, atol=1e-6)
    np.testing.assert_allclose(points.numpy(), want_points, rtol=0, atol=1e-6)


def test_ncnn_graph_decodes_linear_sizes_as_decode_does(tiny, images):
    from edgeanchor.exporting.ncnn_graph import NcnnDecodedGraph

    _, _, det = tiny
    with torch.no_grad():
        _, box = det.flatten_head(det.head(det.backbone(images)))
        got = NcnnDecodedGraph(det).decode_boxes(box)
    want = decode(box[0], det.decode_priors, det.postprocess_spec)
    torch.testing.assert_close(got[0], want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("keep", [{0: [1], 1: [0, 3, 5]}, {1: [2]}], ids=["slice-both", "drop-level-0"])
def test_prune_slices_the_packed_convs_in_whole_anchor_blocks(tiny, images, keep):
    from edgeanchor.pruning import prune

    _, model, det = tiny
    match = det.source.match
    image = graph_input(images)
    regressors, classificators = run(model, image)
    pruned_graph = prune_graph(model, match, det.spec, keep)
    rows = kept_rows(det.spec, match, keep)
    got_reg, got_cls = run(pruned_graph, image)
    np.testing.assert_array_equal(got_reg, regressors[:, rows])
    np.testing.assert_array_equal(got_cls, classificators[:, rows])
    # the pruned detector (edgeanchor's own slicing of the split convs) gives the same columns
    ids = [a.id for i, level in enumerate(det.anchor_set.levels) for p, a in enumerate(level.anchors)
           if p in keep.get(i, ())]
    cls, box, extras = head_columns(prune(det, ids), images)
    np.testing.assert_allclose(box[0].numpy(), got_reg[0, :, :4], rtol=0, atol=2e-5)
    np.testing.assert_allclose(extras[0].numpy(), got_reg[0, :, 4:], rtol=0, atol=2e-5)
    np.testing.assert_allclose(cls[0].numpy(), got_cls[0], rtol=0, atol=2e-5)


def test_mediapipe_preset_loads_with_the_real_models_names():
    spec = load_head_spec("mediapipe")
    assert spec.outputs.packed_extras and spec.outputs.extra_points == 6


def test_packed_extras_refuse_a_named_extras_conv(tmp_path):
    path = tmp_path / "head.yaml"
    path.write_text("outputs: {boxes: r, scores: c, extras: r, extra_points: 1}\n"
                    "scoring: {fn: sigmoid, background_column: false}\n"
                    "levels: [{stride: 8, anchors: [[8, 8]], convs: {boxes: reg0, extras: reg0}}]\n")
    with pytest.raises(EdgeAnchorError) as exc:
        load_head_spec(path)
    assert str(exc.value) == (f"head spec {path}: levels[0].convs names an extras conv, but outputs.extras is the boxes output, "
                              "whose convs hold both; name that conv under boxes only")
