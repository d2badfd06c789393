"""The fused SSD head (edgeanchor/exporting/fused_head.py): same outputs, one Conv per level, parity, fallback."""

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgeanchor.exporting import make_session, run_session
from edgeanchor.exporting.folder import ExportFolder
from edgeanchor.exporting.fused_head import FUSED_HEAD, FusedHead, can_fuse
from edgeanchor.exporting.graphs import HeadGraph, level_names
from edgeanchor.exporting.onnx_export import export_graphs, read_head_channels
from edgeanchor.models import build_detector
from edgeanchor.models.registry import ARCHS, wrap
from edgeanchor.pipeline import export_pair
from edgeanchor.pruning import prune
from tests.helpers import randomize_head_biases

SIZE, K = (320, 320), 6


@pytest.fixture(scope="module")
def demo():
    """The demo SSD (random weights, varied scores), its 5 levels of 6 anchors."""
    torch.manual_seed(0)
    tv_model = ARCHS["edgeanchor:demo_ssd"].builder(K, SIZE).eval()
    randomize_head_biases(tv_model)
    return wrap("edgeanchor:demo_ssd", tv_model, image_size=SIZE).eval()


def sparse_keep(det):
    """Every other anchor on levels 0-3, none on the deepest level (its head goes), one on level 0."""
    levels = det.anchor_set.levels
    keep = {a.id for lv in levels[1:-1] for p, a in enumerate(lv.anchors) if p % 2 == 0}
    return keep | {levels[0].anchors[3].id}


@pytest.fixture(scope="module")
def variants(demo):
    return {"full": demo, "pruned": prune(demo, sparse_keep(demo))}


def features(det, seed=5):
    image = torch.rand(1, 3, *det.image_size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return det.backbone(image)


def export_head(det, path: Path, fused: bool) -> tuple[onnx.ModelProto, dict]:
    result = export_graphs(det, {"head": path}, opset=17, simplify=True, trace_images=None, fused_head=fused)
    return onnx.load(str(path)), result


@pytest.mark.parametrize("variant", ["full", "pruned"])
def test_fused_outputs_equal_the_plain_head(variants, variant):
    det = variants[variant]
    assert can_fuse(det) and FUSED_HEAD
    plain, fused = HeadGraph(det, fused=False), HeadGraph(det)  # the default fuses
    assert not plain.is_fused and fused.is_fused
    feats = features(det)
    with torch.no_grad():
        ref, got = plain(*feats), fused(*feats)
    assert len(ref) == len(got) == 2 * len(det.active_levels)
    for r, g in zip(ref, got):
        assert r.shape == g.shape
        # Each output channel is the same dot product either way, and on the CPUs we ran (oneDNN, x86) the
        # demo's and SSD300's shapes came out bit-identical. oneDNN may still pick another kernel for another
        # channel count (an odd 7-channel input with 5+3 outputs differed by 3.6e-7; the non-oneDNN path with
        # 2 threads by 1.4e-6 on the pruned level 0), so the check is a float32-rounding tolerance.
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)


def test_pruned_level_drops_its_fused_conv(variants):
    full, pruned = variants["full"], variants["pruned"]
    assert len(pruned.active_levels) == len(full.active_levels) - 1  # the deepest level has no anchor left
    head = FusedHead(pruned)
    counts = pruned.anchor_set.anchors_per_level()
    assert [c.out_channels for c in head.convs] == [counts[i] * (K + 4) for i in pruned.active_levels]
    assert head.cls_channels == [counts[i] * K for i in pruned.active_levels]


@pytest.mark.parametrize("variant", ["full", "pruned"])
def test_onnx_head_has_one_conv_per_level_and_static_slices(variants, variant, tmp_path):
    det = variants[variant]
    plain, plain_res = export_head(det, tmp_path / "plain.onnx", fused=False)
    fused, fused_res = export_head(det, tmp_path / "fused.onnx", fused=True)
    assert fused_res["fused_head"] and not plain_res["fused_head"]
    ops = [n.op_type for n in fused.graph.node]
    num_levels = len(det.active_levels)
    assert ops.count("Conv") == num_levels and [n.op_type for n in plain.graph.node].count("Conv") == 2 * num_levels
    assert ops.count("Slice") == 2 * num_levels and "Split" not in ops
    consts = {t.name for t in fused.graph.initializer} | {o for n in fused.graph.node if n.op_type == "Constant"
                                                           for o in n.output}
    for node in fused.graph.node:
        if node.op_type == "Slice":  # starts, ends, axes, steps: constants, so the split is static
            assert all(name in consts for name in node.input[1:]), node
    weights = {t.name: list(t.dims) for t in fused.graph.initializer}
    counts = det.anchor_set.anchors_per_level()
    out_channels = sorted(weights[n.input[1]][0] for n in fused.graph.node if n.op_type == "Conv")
    assert out_channels == sorted(counts[i] * (K + 4) for i in det.active_levels)  # A*(K+4): shrinks with pruning
    # same names, shapes and channel records as the plain head, so nothing downstream changes
    assert [o.name for o in fused.graph.output] == [o.name for o in plain.graph.output] == level_names(det)["head"]
    assert [i.name for i in fused.graph.input] == [i.name for i in plain.graph.input]
    assert [[d.dim_value for d in o.type.tensor_type.shape.dim] for o in fused.graph.output] == \
        [[d.dim_value for d in o.type.tensor_type.shape.dim] for o in plain.graph.output]
    assert read_head_channels(fused, det.active_levels) == read_head_channels(plain, det.active_levels)


@pytest.mark.parametrize("variant", ["full", "pruned"])
def test_fused_onnx_head_matches_the_plain_one_in_onnxruntime(variants, variant, tmp_path):
    det = variants[variant]
    export_head(det, tmp_path / "plain.onnx", fused=False)
    export_head(det, tmp_path / "fused.onnx", fused=True)
    feeds = dict(zip(level_names(det)["features"], features(det, seed=9)))
    plain = run_session(make_session(tmp_path / "plain.onnx", intra_op_num_threads=1), feeds)
    fused = run_session(make_session(tmp_path / "fused.onnx", intra_op_num_threads=1), feeds)
    with torch.no_grad():
        ref = [t.numpy() for pair in det.head(features(det, seed=9)) for t in pair]
    for name, r in zip(level_names(det)["head"], ref):
        # ONNX Runtime's fused and plain convolutions were bit-identical on every shape we tried
        np.testing.assert_allclose(fused[name], plain[name], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(fused[name], r, rtol=1e-3, atol=1e-5)  # parity's head tolerance


@pytest.mark.slow
def test_exported_pair_is_fused_recorded_and_in_parity(variants, tmp_path):
    """export_pair (prune-and-export's export step): report entries say fused_head; parity holds on all graphs."""
    images = torch.rand(2, 3, *SIZE, generator=torch.Generator().manual_seed(11))
    folder = ExportFolder(tmp_path)
    result = export_pair(folder, variants["full"], variants["pruned"], images=images, log=lambda m: None)
    for variant, det in (("baseline", variants["full"]), ("pruned", variants["pruned"])):
        entry = result[variant]
        assert entry["fused_head"] is True
        parity = entry["parity"]
        assert parity["passed"] and parity["head"]["strict_allclose"], parity
        assert parity["model"]["matched_fraction"] == 1.0 and min(parity["model"]["counts_torch"]) > 0
        vdir = folder.variant_dir(variant)
        for graph in ("head", "model"):
            assert sum(n.op_type == "Conv" and "fused_head" in n.name
                       for n in onnx.load(str(vdir / f"{graph}.onnx")).graph.node) == len(det.active_levels)


def small_non_fusable():
    torch.manual_seed(0)
    tv_retina = ARCHS["torchvision:retinanet_resnet50_fpn"].builder(5, (128, 128)).eval()
    return {
        "retinanet": wrap("torchvision:retinanet_resnet50_fpn", tv_retina, image_size=(128, 128)).eval(),
        "yolov5n": build_detector("yolov5:n", num_classes=5, image_size=(160, 160)).eval(),
        "ssdlite": build_detector("torchvision:ssdlite320_mobilenet_v3_large", num_classes=6).eval(),
    }


@pytest.mark.parametrize("name", [pytest.param("retinanet", marks=pytest.mark.slow), "yolov5n", "ssdlite"])
def test_non_fusable_heads_export_unchanged(name, tmp_path):
    # RetinaNet: separate cls and box towers; YOLO: Detect is one conv already; SSDLite: each branch has its own
    # depthwise block, so the final 1x1 convolutions read different tensors.
    det = small_non_fusable()[name]
    assert not can_fuse(det) and not HeadGraph(det, fused=True).is_fused
    with pytest.raises(ValueError, match="cannot be fused"):
        FusedHead(det)
    plain, plain_res = export_head(det, tmp_path / "plain.onnx", fused=False)
    asked, asked_res = export_head(det, tmp_path / "asked.onnx", fused=True)
    assert plain_res["fused_head"] is False and asked_res["fused_head"] is False
    assert asked.graph.SerializeToString() == plain.graph.SerializeToString()
